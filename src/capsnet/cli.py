"""The ``capsnet`` command line. The only module that parses arguments or draws progress."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from capsnet.allocator import keep_freed_memory
from capsnet.errors import CapsNetError, ConfigError

log = logging.getLogger("capsnet")


def _progress():
    from tqdm.auto import tqdm

    return partial(tqdm, unit="img", leave=False, dynamic_ncols=True, mininterval=0.5, disable=None)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be ≥ 0, got {value}")
    return value


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="directory holding the IDX files (or <name>/ below it)")
    p.add_argument("--test-limit", type=_positive, help="evaluate on the first N test images")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")


def _parser() -> argparse.ArgumentParser:
    from capsnet.data import DATASETS
    from capsnet.models import list_models
    from capsnet.runtime import PRECISIONS

    parser = argparse.ArgumentParser(prog="capsnet", description=__doc__)
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and results")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a model and test the validation-selected checkpoint")
    t.add_argument("--dataset", choices=sorted(DATASETS), default="mnist")
    t.add_argument("--out", required=True, type=Path, help="run directory to write")
    t.add_argument("--model", default="capsnet-mnist", help=f"one of {', '.join(list_models())}")
    t.add_argument("--epochs", type=_positive, default=10)
    t.add_argument("--batch-size", type=_positive, default=100)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--lr-decay", type=float, default=0.96, help="per-epoch factor (default 0.96)")
    t.add_argument("--routing-iterations", type=_positive)
    t.add_argument("--no-reconstruction", action="store_true", help="train without the decoder")
    t.add_argument("--max-shift", type=_non_negative, default=2, help="random shift, pixels")
    t.add_argument("--train-limit", type=_positive, help="train on the first N training images")
    t.add_argument("--val-size", type=_non_negative, default=5000)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--precision", choices=PRECISIONS, default="fp32", help="autocast dtype")
    t.add_argument("--compile", action="store_true", help="torch.compile the model")
    t.add_argument("--resume", action="store_true", help="continue the run in --out")
    t.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    _add_data_args(t)

    e = sub.add_parser("evaluate", help="test a trained run; writes RUN_DIR/eval.json")
    e.add_argument("run_dir", type=Path)
    e.add_argument("--dataset", choices=sorted(DATASETS), help="default: the run's dataset")
    e.add_argument("--batch-size", type=_positive, default=500)
    _add_data_args(e)

    b = sub.add_parser("bench", help="measure training and inference images/s and peak memory")
    b.add_argument("--model", default="capsnet-mnist", help=f"one of {', '.join(list_models())}")
    b.add_argument("--batch-size", type=_positive, default=100)
    b.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    b.add_argument("--precision", choices=PRECISIONS, default="fp32")
    b.add_argument("--compile", action="store_true", help="torch.compile the model")
    b.add_argument("--steps", type=_positive, default=10, help="timed steps (median reported)")
    b.add_argument("--warmup", type=_non_negative, default=2)
    b.add_argument("--json", action="store_true", help="print one JSON object")
    b.add_argument("--csv", type=Path, help="append the result to this CSV file")

    d = sub.add_parser("data", help="find (or download) a dataset and print its directory")
    d.add_argument("dataset", choices=sorted(DATASETS))
    d.add_argument("--data-dir")
    d.add_argument("--no-download", action="store_true")
    return parser


def _cmd_train(args: argparse.Namespace) -> None:
    from capsnet.checkpoint import load_run
    from capsnet.data import get_spec, load_split
    from capsnet.runtime import distributed_from_env
    from capsnet.train import TrainConfig, train
    from capsnet.viz import save_reconstructions

    overrides: dict[str, object] = {}
    if args.routing_iterations is not None:
        overrides["routing_iterations"] = args.routing_iterations
    if args.no_reconstruction:
        overrides["reconstruction"] = False
    cfg = TrainConfig(
        dataset=args.dataset,
        data_dir=args.data_dir,
        model=args.model,
        model_overrides=overrides,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        lr_decay=args.lr_decay,
        max_shift=args.max_shift,
        train_limit=args.train_limit,
        val_size=args.val_size,
        test_limit=args.test_limit,
        device=args.device,
        seed=args.seed,
        precision=args.precision,
        compile=args.compile,
    )
    m = train(cfg, args.out, resume=args.resume, overwrite=args.overwrite, progress=_progress())
    if not distributed_from_env().is_main:
        return  # under torchrun, rank 0 reports
    model, config = load_run(args.out)
    if getattr(config, "reconstruction", False):
        x, y = load_split(m["dataset"], "test", args.data_dir)
        png = save_reconstructions(
            model,
            x[:10].float() / 255,
            y[:10],
            args.out / "reconstructions.png",
            get_spec(m["dataset"]).class_names,
        )
        log.info("wrote %s", png)
    print(
        f"test accuracy {m['test_accuracy']:.4%} (error {m['test_error']:.2%}) on "
        f"{m['test_examples']} images; best epoch {m['best_epoch']}; "
        f"{m['train_images_per_second']:.0f} train images/s; run in {args.out}"
    )


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from capsnet.checkpoint import load_run, read_json, write_json
    from capsnet.data import load_split
    from capsnet.runtime import resolve_device
    from capsnet.train import environment, evaluate

    if not args.run_dir.is_dir():
        raise ConfigError(f"{args.run_dir}: not a run directory")
    dataset = args.dataset or read_json(args.run_dir / "config.json")["train"]["dataset"]
    device = resolve_device(args.device)
    model, config = load_run(args.run_dir, device)
    x, y = load_split(dataset, "test", args.data_dir)
    if x.shape[1:] != (config.in_channels, *config.input_size):
        raise ConfigError(
            f"{dataset} images are {tuple(x.shape[1:])} but the model expects "
            f"{(config.in_channels, *config.input_size)}"
        )
    if args.test_limit is not None:
        x, y = x[: args.test_limit], y[: args.test_limit]
    r = evaluate(model, x, y, args.batch_size, device, _progress(), "test")
    result = {
        "dataset": dataset,
        "test_accuracy": r["accuracy"],
        "test_error": r["error"],
        "test_loss": r["loss"],
        "test_examples": len(y),
        **environment(),
    }
    write_json(args.run_dir / "eval.json", result)
    print(f"test accuracy {r['accuracy']:.4%} (error {r['error']:.2%}) on {len(y)} images")


def _cmd_bench(args: argparse.Namespace) -> None:
    from capsnet.bench import BenchConfig, append_csv, benchmark

    cfg = BenchConfig(
        model=args.model,
        batch_size=args.batch_size,
        device=args.device,
        precision=args.precision,
        compile=args.compile,
        warmup=args.warmup,
        steps=args.steps,
    )
    r = benchmark(cfg)
    if args.csv:
        append_csv(args.csv, r)
    if args.json:
        print(json.dumps(r))
        return
    print(
        f"{r['model']} batch {r['batch_size']} {r['precision']}"
        f"{' compiled' if r['compile'] else ''} on {r['device']} ({r['device_name']}, "
        f"{r['cpu_threads']} threads, torch "
        f"{r['torch_version']}): train {r['train_images_per_second']:.1f} img/s, inference "
        f"{r['infer_images_per_second']:.1f} img/s, peak memory {r['peak_memory_mb']:.0f} MiB "
        f"({r['memory_kind']})"
    )


def _cmd_data(args: argparse.Namespace) -> None:
    from capsnet.data import find_dataset

    print(find_dataset(args.dataset, args.data_dir, download=not args.no_download))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from capsnet.runtime import distributed_from_env

    logging.basicConfig(
        level=logging.WARNING if args.quiet or not distributed_from_env().is_main else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    keep_freed_memory()  # large activations otherwise cost page faults every step
    commands = {
        "train": _cmd_train,
        "evaluate": _cmd_evaluate,
        "bench": _cmd_bench,
        "data": _cmd_data,
    }
    try:
        commands[args.command](args)
    except CapsNetError as e:
        print(f"capsnet: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("capsnet: interrupted", file=sys.stderr)
        return 130
    return 0
