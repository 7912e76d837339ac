"""Make a finished run a shipped pretrained model: src/capsnet/pretrained/<name>/.

Usage:
  python scripts/ship_model.py RUN_DIR NAME --description TEXT [--data-dir DIR]

Evaluates the run's best (validation-selected) weights on the run's full test set in
float32 and rounded to float16; ships float16 when its accuracy is within ±0.02 points of
float32 (issue 14's rule), else float32. Copies the run's record (config.json with its
machine-specific data_dir cleared, metrics.json, history.csv, command.txt, train.log),
writes best.safetensors and pretrained.json (both accuracies, dtype, sha256, size, origin).
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
from pathlib import Path

import torch

from capsnet.data.tasks import load_test
from capsnet.files import read_json, write_json
from capsnet.models.checkpoint import save_checkpoint
from capsnet.targets import num_correct
from capsnet.tools.predict import predict
from capsnet.training import evaluate, load_run
from capsnet.training.pretrained import MANIFEST, ROOT, WEIGHTS, sha256

RECORD = ("metrics.json", "history.csv", "command.txt", "train.log")
TOLERANCE = 0.0002  # ±0.02 percentage points


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("name")
    ap.add_argument("--description", required=True)
    ap.add_argument("--data-dir")
    ap.add_argument("--check-data-dir", help="test subset the tests re-check (repo-relative)")
    ap.add_argument("--check-limit", type=int, default=1000)
    args = ap.parse_args()

    config = read_json(args.run_dir / "config.json")
    train = config["train"]
    model, _ = load_run(args.run_dir)
    x, y = load_test(
        train["dataset"], args.data_dir or train["data_dir"], options=train.get("dataset_options")
    )
    fp32 = evaluate(model, x, y, batch_size=500)["accuracy"]
    rounded = copy.deepcopy(model).half().float()  # the weights rounded to float16
    fp16 = evaluate(rounded, x, y, batch_size=500)["accuracy"]
    use_half = abs(fp16 - fp32) <= TOLERANCE
    print(
        f"test accuracy: float32 {fp32:.4%}, float16 {fp16:.4%} -> shipping "
        f"{'float16' if use_half else 'float32'}"
    )

    out = ROOT / args.name
    out.mkdir(parents=True, exist_ok=True)
    for name in RECORD:
        if (args.run_dir / name).is_file():
            shutil.copy2(args.run_dir / name, out / name)
    config["train"] = {**train, "data_dir": None}
    write_json(out / "config.json", config)
    if use_half:
        model.half()
    meta = read_json(args.run_dir / "metrics.json")
    save_checkpoint(out / WEIGHTS, model, train["model"], epoch=meta.get("best_epoch"))
    shipped, _ = load_run(out)
    cx, cy = load_test(train["dataset"], args.check_data_dir, limit=args.check_limit)
    check = int(num_correct(predict(shipped, cx.float() / 255), cy)) / len(cx)
    write_json(
        out / MANIFEST,
        {
            "name": args.name,
            "model": train["model"],
            "dataset": train["dataset"],
            "test_accuracy": fp16 if use_half else fp32,
            "float32_test_accuracy": fp32,
            "float16_test_accuracy": fp16,
            "test_examples": len(y),
            "dtype": "float16" if use_half else "float32",
            "sha256": sha256(out / WEIGHTS),
            "bytes": (out / WEIGHTS).stat().st_size,
            "origin": str(args.run_dir),
            "description": args.description,
            "subset_check": {
                "data_dir": args.check_data_dir,
                "limit": args.check_limit,
                "accuracy": check,
            },
        },
    )
    print(json.dumps(read_json(out / MANIFEST), indent=2))


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
