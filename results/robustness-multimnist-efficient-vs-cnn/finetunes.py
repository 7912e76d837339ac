"""The MultiMNIST fine-tunes of efficient-capsnet-multimnist, and a model trained from scratch
with autolevels, beside the shipped model and the equal-budget CNN (seed 1), from committed
robustness JSONs of one sweep (the first 2,000 test pairs, sweep seed 0; a pair is right when
both digits are).

    python finetunes.py > finetunes.txt   (run in this directory)

Per perturbation and strength, each model's accuracy (%) and, for each run but the shipped
model, its difference from the CNN. No rounding before the difference."""

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNS = {  # label → (JSON, model key)
    "shipped": (HERE / "robustness.json", "efficient-capsnet-multimnist"),
    "cnn": (HERE / "robustness.json", "/work/runs/multimnist-baseline-cnn-small-16ep-s1"),
    "ft-control": (HERE.parent / "multimnist-efficient-capsnet-ft2-blank0/robustness.json", None),
    "ft-blank0.1": (
        HERE.parent / "multimnist-efficient-capsnet-ft2-blank0.1/robustness.json",
        None,
    ),
    "ft-autolevels": (
        HERE.parent / "multimnist-efficient-capsnet-ft2-autolevels/robustness.json",
        None,
    ),
    "ft-autolevels-4ep": (
        HERE.parent / "multimnist-efficient-capsnet-ft4-autolevels/robustness.json",
        None,
    ),
    "scratch-autolevels": (
        HERE.parent / "multimnist-efficient-capsnet-autolevels-16ep/robustness.json",
        None,
    ),
}
REFERENCES = ("shipped", "cnn")  # every other run is compared with the CNN


def curves() -> dict[str, dict]:
    out = {}
    for label, (path, key) in RUNS.items():
        report = json.loads(path.read_text())
        if report["test_examples"] != 2000 or report["seed"] != 0:
            raise SystemExit(f"{path}: not the 2,000-pair sweep of seed 0")
        models = report["models"]
        out[label] = models[key] if key else next(iter(models.values()))  # one model per file
    return out


def main() -> None:
    runs = curves()
    tunes = [label for label in runs if label not in REFERENCES]
    print(
        "perturbation strength | "
        + " | ".join(runs)
        + " | "
        + " | ".join(f"{t} - cnn" for t in tunes)
    )
    for name, curve in runs["shipped"].items():
        if any(c[name]["strength"] != curve["strength"] for c in runs.values()):
            raise SystemExit(f"{name}: the reports swept different strengths")
        for i, strength in enumerate(curve["strength"]):
            acc = {label: 100 * c[name]["accuracy"][i] for label, c in runs.items()}
            cells = [f"{acc[label]:6.2f}" for label in runs]
            cells += [f"{acc[t] - acc['cnn']:+6.2f}" for t in tunes]
            print(f"{name:11s} {strength:5g} | " + " | ".join(cells))


if __name__ == "__main__":
    main()
