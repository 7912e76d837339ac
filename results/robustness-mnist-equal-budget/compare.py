"""Issue 33's robustness goal at equal budget, from robustness JSONs of one sweep (the same
MNIST test images, sweep seed 0: the first 2,000 in every comparison made before
2026-12-07 11:30 UTC, all 10,000 in the full10k files).

    python compare.py CAPSULE_GROUP CNN_GROUP [CNN_GROUP ...]

A group is LABEL=FILE:MODEL[,FILE:MODEL...]: the seeds of one contender, each a model key of
a robustness JSON. The capsule group is read as swept; each CNN group is one way of sweeping the
CNN's seeds (e.g. with nothing and with autolevels). At every perturbation and strength the
script prints the capsule mean ± sample std, each CNN group's mean, and the capsule mean minus
the best CNN group's mean ("gap"); a perturbation some reports lack is named and left out.
Verdict: the points where the gap is below -2, and the geometric points where it is below 0.
Means over seeds; no rounding before the difference."""

import json
import statistics
import sys
from pathlib import Path

from capsnet.tools.experiments import mean_std

GEOMETRIC = ("rotation", "scale", "shear", "translation", "elastic")


def read_group(spec: str) -> tuple[str, list[dict], set[int]]:
    """The group's label, its members' curves and how many test images their reports swept."""
    label, members = spec.split("=", 1)
    curves, sizes = [], set()
    for member in members.split(","):
        path, model = member.rsplit(":", 1)
        report = json.loads(Path(path).read_text())
        if report["seed"] != 0:
            raise SystemExit(f"{path}: not a sweep of seed 0")
        sizes.add(report["test_examples"])
        curves.append(report["models"][model])
    return label, curves, sizes


def fmt(values: list[float]) -> str:
    """'mean ± sample std', or the one value."""
    mean, std = mean_std(values)
    return f"{mean:6.2f}       " if std is None else f"{mean:6.2f} ± {std:4.2f}"


def main() -> None:
    caps_label, caps, sizes = read_group(sys.argv[1])
    cnns = []
    for spec in sys.argv[2:]:
        label, curves, group_sizes = read_group(spec)
        cnns.append((label, curves))
        sizes |= group_sizes
    if len(sizes) > 1:
        raise SystemExit(f"the reports swept different numbers of test images: {sorted(sizes)}")
    print(
        f"capsule: {caps_label} ({len(caps)} seeds); CNN groups: "
        + ", ".join(f"{label} ({len(c)} seeds)" for label, c in cnns)
    )
    behind, geometric_behind = [], []
    every = caps + [c for _, group in cnns for c in group]
    for name, curve in caps[0].items():
        if any(name not in c for c in every):  # swept for some reports only
            print(f"{name}: not in every report, left out")
            continue
        for c in every:
            if c[name]["strength"] != curve["strength"]:
                raise SystemExit(f"{name}: the reports swept different strengths")
        for i, strength in enumerate(curve["strength"]):
            values = [100 * c[name]["accuracy"][i] for c in caps]
            m = statistics.mean(values)
            cnn_means = [
                statistics.mean(100 * c[name]["accuracy"][i] for c in group) for _, group in cnns
            ]
            gap = m - max(cnn_means)
            print(
                f"{name:11s} {strength:6g}: capsule {fmt(values)}; CNN "
                + " / ".join(f"{v:6.2f}" for v in cnn_means)
                + f"; gap {gap:+6.2f}"
            )
            if gap < -2:
                behind.append(f"{name} {strength:g} ({gap:+.2f})")
            if name in GEOMETRIC and strength != 0 and gap < 0:
                geometric_behind.append(f"{name} {strength:g} ({gap:+.2f})")
    print("more than 2 points behind:", "; ".join(behind) or "nowhere")
    print("behind under a geometric change:", "; ".join(geometric_behind) or "nowhere")


if __name__ == "__main__":
    main()
