"""Why do capsules collapse under blur and lost resolution? Measurements on shipped models.

    python -m experiments.blur_diagnosis --data-dir ../shared/data [--limit 2000]
        [--models capsnet-mnist efficient-capsnet-mnist] [--runs RUN ...] [--dataset mnist]
        [--perturbations blur resolution] [--input-norm NORM]

For each model, first its class scores on a blank (all-zero) image, then for each strength of
each of ``--perturbations`` (the robustness sweep's, same seed; default blur and resolution),
on the first ``--limit`` test images of ``--dataset`` (``mnist`` or ``multimnist``), one row:

- ``acc``: accuracy as the sweep measures it (MultiMNIST: both digits named);
- ``mode``/``share``: the class most often scored highest, and the share of images where it is;
- ``acc/max``: accuracy when each perturbed image is first divided by its brightest pixel
  (contrast restored; a clean MNIST digit's brightest pixel is already 1 or near it);
- ``peak``: the mean brightest pixel of the perturbed images (the contrast left);
- ``prim``: mean length of the primary capsules, and ``sat``: the share of them longer than
  0.9 (the squash's saturated end), ``live``: the share longer than 0.1;
- ``top``/``2nd``: mean length of the longest and second longest class capsule;
- ``true``: mean length of the true classes' capsules;
- ``c_max``: mean over children of their largest coupling coefficient (1/K = uniform).

Models: shipped names (``capsnet.load_pretrained``) or run directories (``--runs``), loaded
with ``input_norm`` set to ``--input-norm`` if given. Capsule
measurements need a model with ``encode`` and ``classes`` (the CapsNet family); others
print accuracies only.
"""

from __future__ import annotations

import argparse
import math

import torch

from capsnet import load_pretrained, load_run
from capsnet.data.tasks import load_test
from capsnet.nn.layers import normalise_input
from capsnet.targets import OverlayTargets, Targets, num_correct
from capsnet.tools.perturbations import PERTURBATIONS
from capsnet.tools.predict import predict


def _accuracy(scores: torch.Tensor, targets: Targets) -> float:
    return int(num_correct(scores, targets)) / len(scores)


@torch.no_grad()
def _capsule_stats(model, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """``y``: the true labels, (N,) or (N, L). ``x`` is normalised as the model's forward
    normalises it (``input_norm``) before ``encode``."""
    if not (hasattr(model, "encode") and hasattr(model, "classes")):
        return {}
    x = normalise_input(x, model.config.input_norm)
    u = torch.cat([model.encode(b) for b in x.split(500)])  # (N, I, 8)
    routed = [model.classes(b) for b in u.split(500)]
    lengths = torch.cat([r[1] for r in routed])  # (N, K)
    coupling = torch.cat([r[2] for r in routed])  # (N, I, K)
    prim = u.norm(dim=-1)
    top2 = lengths.topk(2, dim=1).values
    return {
        "prim": prim.mean().item(),
        "sat": (prim > 0.9).double().mean().item(),
        "live": (prim > 0.1).double().mean().item(),
        "top": top2[:, 0].mean().item(),
        "2nd": top2[:, 1].mean().item(),
        "true": lengths.gather(1, y.view(len(y), -1)).mean().item(),
        "c_max": coupling.amax(-1).mean().item(),
    }


def diagnose(
    label: str, model, images: torch.Tensor, targets: Targets, perturbations: list[str]
) -> None:
    blank = predict(model, torch.zeros_like(images[:1]))[0]  # (K,)
    print(f"{label:28s} blank image: " + " ".join(f"{v:.3f}" for v in blank.tolist()))
    labels = targets.labels if isinstance(targets, OverlayTargets) else targets
    for name in perturbations:
        p = PERTURBATIONS[name]
        for s in p.strengths:
            x = p.transform(images, float(s), torch.Generator().manual_seed(0))
            scores = predict(model, x, 500)  # (N, K)
            counts = torch.bincount(scores.argmax(1), minlength=len(blank))
            row = {
                "acc": _accuracy(scores, targets),
                "acc/max": _accuracy(predict(model, normalise_input(x, "peak"), 500), targets),
                "mode": counts.argmax().item(),
                "share": counts.max().item() / len(x),
                "peak": x.amax(dim=(1, 2, 3)).mean().item(),
            }
            row |= _capsule_stats(model, x, labels)
            cells = " ".join(
                f"{k} {v}" if isinstance(v, int) else f"{k} {v:.3f}"
                for k, v in row.items()
                if not math.isnan(v)
            )
            print(f"{label:28s} {name:10s} {s:4.2f}  {cells}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir")
    ap.add_argument("--limit", type=int, default=2000)
    ap.add_argument("--models", nargs="*", default=["capsnet-mnist", "efficient-capsnet-mnist"])
    ap.add_argument("--runs", nargs="*", default=[])
    ap.add_argument("--dataset", choices=["mnist", "multimnist"], default="mnist")
    ap.add_argument("--perturbations", nargs="+", choices=list(PERTURBATIONS))
    ap.add_argument("--input-norm")
    args = ap.parse_args()
    options = {"overrides": {"input_norm": args.input_norm}} if args.input_norm else {}
    images, targets = load_test(args.dataset, args.data_dir, limit=args.limit)
    images = images.float() / 255  # uint8 (N, 1, H, W) → [0, 1]
    models = {m: load_pretrained(m, **options)[0] for m in args.models}
    models |= {r: load_run(r, **options)[0] for r in args.runs}
    for label, model in models.items():
        diagnose(label, model, images, targets, args.perturbations or ["blur", "resolution"])


if __name__ == "__main__":
    main()
