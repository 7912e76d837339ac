"""The ``capsnet`` command line. The only module that parses arguments or draws progress."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from capsnet.allocator import keep_freed_memory
from capsnet.errors import CapsNetError, ConfigError

log = logging.getLogger("capsnet")


class _LogProgress:
    """Progress when stderr is not a terminal (``nohup``, a log file, CI): one log line
    every ``interval`` seconds instead of a bar, so long runs show where they are."""

    def __init__(self, total: int, desc: str = "", interval: float = 60.0, **_: object):
        self.total, self.desc, self.interval = total, desc, interval
        self.n, self.postfix = 0, ""
        self.start = self.last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.interval and self.n < self.total:
            self.last = now
            rate = self.n / max(now - self.start, 1e-9)
            log.info(
                "%s: %d/%d (%.0f%%), %.1f/s%s",
                self.desc,
                self.n,
                self.total,
                100 * self.n / self.total,
                rate,
                self.postfix,
            )

    def set_postfix(self, ordered_dict: dict[str, object] | None = None, **kwargs: object) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = "".join(f", {k} {v}" for k, v in items.items())

    def close(self) -> None: ...


def _progress():
    if not sys.stderr.isatty():
        return _LogProgress
    from tqdm.auto import tqdm

    return partial(tqdm, unit="img", leave=False, dynamic_ncols=True, mininterval=0.5)


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


def _option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got '{text}'")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset-option",
        type=_option,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting of the dataset itself, e.g. shift=3 for multimnist (repeatable)",
    )
    p.add_argument("--data-dir", help="directory holding the IDX files (or <name>/ below it)")
    p.add_argument("--test-limit", type=_positive, help="evaluate on the first N test images")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")


def _dataset_help(tasks: dict[str, object]) -> str:
    from capsnet.data.custom import OFFICIAL

    names = ", ".join(sorted([*tasks, *OFFICIAL]))
    return f"one of {names}, folder:PATH or npz:PATH (default: mnist)"


def _add_image_args(p: argparse.ArgumentParser) -> None:
    """Image policy (folder:, npz:, cifar10, svhn, smallnorb) and model options."""
    from capsnet.data.images import NORMALIZE, RESIZE

    p.add_argument("--input-size", type=_positive, nargs=2, metavar=("H", "W"))
    p.add_argument("--resize", choices=RESIZE, help="how images reach --input-size")
    p.add_argument("--channels", type=int, choices=(1, 3), help="default: from the data")
    p.add_argument("--normalize", choices=NORMALIZE, help="default: the dataset's")
    p.add_argument(
        "--model-option",
        type=_option,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a field of the model's config, e.g. none_of_the_above=false (repeatable)",
    )


def _image_options(args: argparse.Namespace) -> dict[str, object]:
    names = ("input_size", "resize", "channels", "normalize")
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def _parser() -> argparse.ArgumentParser:
    from capsnet.data import DATASETS
    from capsnet.data.tasks import TASKS
    from capsnet.experiments import ROW_NAMES, SIZES
    from capsnet.models import list_models
    from capsnet.routing import ROUTINGS
    from capsnet.runtime import PRECISIONS

    parser = argparse.ArgumentParser(prog="capsnet", description=__doc__)
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and results")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a model and test the validation-selected checkpoint")
    t.add_argument("--dataset", default="mnist", help=_dataset_help(TASKS))
    t.add_argument("--out", required=True, type=Path, help="run directory to write")
    t.add_argument("--model", default="capsnet-mnist", help=f"one of {', '.join(list_models())}")
    t.add_argument("--epochs", type=_positive, default=10)
    t.add_argument("--batch-size", type=_positive, default=100)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--lr-decay", type=float, default=0.96, help="per-epoch factor (default 0.96)")
    t.add_argument("--routing", choices=sorted(ROUTINGS), help="default: the model's own")
    t.add_argument("--routing-iterations", type=_positive)
    t.add_argument("--no-reconstruction", action="store_true", help="train without the decoder")
    t.add_argument(
        "--reconstruction-weight",
        type=float,
        help="factor of the summed squared reconstruction error (default: the model's, 0.0005)",
    )
    t.add_argument("--max-shift", type=_non_negative, default=2, help="random shift, pixels")
    t.add_argument("--train-limit", type=_positive, help="train on the first N training images")
    t.add_argument("--val-size", type=_non_negative, default=5000)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--precision", choices=PRECISIONS, default="fp32", help="autocast dtype")
    t.add_argument("--compile", action="store_true", help="torch.compile the model")
    t.add_argument("--tensorboard", action="store_true", help="log to RUN_DIR/tensorboard")
    _add_image_args(t)
    t.add_argument("--resume", action="store_true", help="continue the run in --out")
    t.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    _add_data_args(t)

    e = sub.add_parser("evaluate", help="test a trained run; writes RUN_DIR/eval.json")
    e.add_argument("run_dir", type=Path)
    e.add_argument("--dataset", help="default: the run's dataset; " + _dataset_help(TASKS))
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

    p = sub.add_parser("predict", help="classify PNG/JPEG images or .npy arrays with a run")
    p.add_argument("run_dir", type=Path)
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help=".png, .jpg or .npy")
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    p.add_argument("--batch-size", type=_positive, default=500)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")

    x = sub.add_parser("export", help="export the classifier and decoder to ONNX")
    x.add_argument("run_dir", type=Path)
    x.add_argument("--onnx", required=True, type=Path, metavar="FILE", help="classifier file")
    x.add_argument("--dataset", choices=sorted(DATASETS), help="default: the run's dataset")
    x.add_argument("--data-dir", help="where the test images for the check are")
    x.add_argument("--check-images", type=_positive, default=100, help="default: 100")

    v = sub.add_parser("explore", help="serve the interactive capsule explorer")
    v.add_argument("run_dir", type=Path)
    v.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1 (loopback only)")
    v.add_argument("--port", type=int, default=8000, help="default: 8000; 0 picks a free port")
    v.add_argument("--data-dir", help="where the run's test images are (for random images)")

    d = sub.add_parser("data", help="find (or download) a dataset and print its directory")
    d.add_argument("dataset", choices=sorted(DATASETS))
    d.add_argument("--data-dir")
    d.add_argument("--no-download", action="store_true")

    f = sub.add_parser("figures", help="draw a run's figures (paper Figs. 3-5, routing, curves)")
    f.add_argument("run_dir", type=Path)
    f.add_argument("--out", type=Path, help="directory for the PNG files (default: RUN_DIR)")
    f.add_argument("--data-dir", help="where the run's dataset is (default: as in training)")
    f.add_argument("--device", default="cpu")

    m = sub.add_parser("multimnist", help="MultiMNIST sets (train with --dataset multimnist)")
    msub = m.add_subparsers(dest="action", required=True, metavar="ACTION")
    mk = msub.add_parser("make", help="write a fixed, seeded MultiMNIST set to .npz")
    mk.add_argument("--out", required=True, type=Path, help=".npz file to write")
    mk.add_argument("--split", choices=["train", "test"], default="test")
    mk.add_argument("--pairs-per-digit", type=_positive, default=1)
    mk.add_argument("--pad", type=_non_negative, default=4, help="canvas border, pixels")
    mk.add_argument("--shift", type=_non_negative, default=4, help="max shift per digit")
    mk.add_argument("--limit", type=_positive, help="use the first N digits of the split")
    mk.add_argument("--seed", type=int, default=0)
    mk.add_argument("--data-dir")
    mk.add_argument("--overwrite", action="store_true")

    x = sub.add_parser("experiment", help="the paper's experiments")
    xsub = x.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    t1 = xsub.add_parser("table1", help="baseline vs CapsNet ablation, N seeds per row")
    t1.add_argument("--out", type=Path, default=Path("results"), help="default: results/")
    t1.add_argument("--dataset", choices=["mnist", "multimnist", "fashion-mnist"], default="mnist")
    t1.add_argument("--size", choices=sorted(SIZES), default="paper", help="model sizes")
    t1.add_argument("--rows", nargs="+", choices=ROW_NAMES, default=list(ROW_NAMES))
    t1.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    t1.add_argument("--epochs", type=_positive, default=10)
    t1.add_argument("--batch-size", type=_positive, default=100)
    t1.add_argument("--train-limit", type=_positive)
    t1.add_argument("--val-size", type=_non_negative, default=5000)
    _add_data_args(t1)
    return parser


def _cmd_train(args: argparse.Namespace) -> None:
    from capsnet.runtime import distributed_from_env, resolve_device
    from capsnet.train import TrainConfig, train
    from capsnet.viz import save_figures

    overrides: dict[str, object] = dict(args.model_option)
    if args.routing is not None:
        overrides["routing"] = args.routing
    if args.routing_iterations is not None:
        overrides["routing_iterations"] = args.routing_iterations
    if args.no_reconstruction:
        overrides["reconstruction"] = False
    if args.reconstruction_weight is not None:
        overrides["reconstruction_weight"] = args.reconstruction_weight
    cfg = TrainConfig(
        dataset=args.dataset,
        dataset_options=dict(args.dataset_option) | _image_options(args),
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
        tensorboard=args.tensorboard,
    )
    m = train(cfg, args.out, resume=args.resume, overwrite=args.overwrite, progress=_progress())
    if not distributed_from_env().is_main:
        return  # under torchrun, rank 0 reports
    for png in save_figures(args.out, data_dir=args.data_dir, device=resolve_device(args.device)):
        log.info("wrote %s", png)
    print(
        f"test accuracy {m['test_accuracy']:.4%} (error {m['test_error']:.2%}) on "
        f"{m['test_examples']} images; best epoch {m['best_epoch']}; "
        f"{m['train_images_per_second']:.0f} train images/s; run in {args.out}"
    )


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from capsnet.checkpoint import load_run, read_json, write_json
    from capsnet.data.tasks import load_test
    from capsnet.metrics import ClassCounts, write_class_report
    from capsnet.predict import class_names, run_data
    from capsnet.runtime import resolve_device
    from capsnet.train import environment, evaluate

    if not args.run_dir.is_dir():
        raise ConfigError(f"{args.run_dir}: not a run directory")
    trained = read_json(args.run_dir / "config.json")["train"]
    dataset = args.dataset or trained["dataset"]
    options = dict(args.dataset_option)
    if dataset == trained["dataset"]:  # its own test set: as made in training, unless told
        options = {**trained.get("dataset_options", {}), **options}
    device = resolve_device(args.device)
    model, config = load_run(args.run_dir, device)
    x, y = load_test(dataset, args.data_dir, options=options)
    if x.shape[1:] != (config.in_channels, *config.input_size):
        raise ConfigError(
            f"{dataset} images are {tuple(x.shape[1:])} but the model expects "
            f"{(config.in_channels, *config.input_size)}"
        )
    if args.test_limit is not None:
        x, y = x[: args.test_limit], y[: args.test_limit]
    counts = ClassCounts(config.num_classes)
    r = evaluate(model, x, y, args.batch_size, device, _progress(), "test", counts=counts)
    result = {
        "dataset": dataset,
        "test_accuracy": r["accuracy"],
        "test_error": r["error"],
        "test_loss": r["loss"],
        "test_examples": len(y),
        **environment(),
    }
    own = dataset == trained["dataset"]
    name = "eval.json" if own else f"eval-{_file_safe(dataset)}.json"
    write_json(args.run_dir / name, result)
    names = class_names(dataset, config.num_classes, run_data(args.run_dir).get("class_names"))
    stem = args.run_dir / ("classes" if own else f"classes-{_file_safe(dataset)}")
    for path in write_class_report(counts.report(names), stem, f"{dataset}: {r['accuracy']:.2%}"):
        log.info("wrote %s", path)
    print(f"test accuracy {r['accuracy']:.4%} (error {r['error']:.2%}) on {len(y)} images")


def _file_safe(dataset: str) -> str:
    """A dataset name usable in a file name (``folder:/a/b`` → ``folder-a-b``)."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in dataset).strip("-")


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
        f"{r['cpu_features']}, {r['cpu_threads']} threads, torch "
        f"{r['torch_version']}): train {r['train_images_per_second']:.1f} img/s, inference "
        f"{r['infer_images_per_second']:.1f} img/s, peak memory {r['peak_memory_mb']:.0f} MiB "
        f"({r['memory_kind']})"
    )


def _cmd_figures(args: argparse.Namespace) -> None:
    from capsnet.runtime import resolve_device
    from capsnet.viz import save_figures

    for png in save_figures(args.run_dir, args.out, args.data_dir, resolve_device(args.device)):
        print(png)


def _cmd_multimnist(args: argparse.Namespace) -> None:
    import numpy as np

    from capsnet.checkpoint import atomic_write
    from capsnet.data import MultiMNISTConfig, load_split
    from capsnet.data.multimnist import fixed_pairs

    if args.out.exists() and not args.overwrite:
        raise ConfigError(f"{args.out}: exists; use --overwrite or another --out")
    images, labels = load_split("mnist", args.split, args.data_dir)
    if args.limit is not None:
        images, labels = images[: args.limit], labels[: args.limit]
    cfg = MultiMNISTConfig(pad=args.pad, shift=args.shift)
    x, t = fixed_pairs(images, labels, args.pairs_per_digit, cfg, args.seed)

    def write(p: Path) -> None:
        with p.open("wb") as f:  # a file object: np.savez would append ".npz" to a path
            np.savez_compressed(
                f,
                images=x[:, 0].numpy(),  # (N, H, W) uint8 overlays
                labels=t.labels.numpy(),  # (N, 2) int64
                sources=t.images[:, :, 0].numpy(),  # (N, 2, H, W) uint8, each digit alone
            )

    atomic_write(args.out, write)
    print(f"{len(x)} MultiMNIST images of {x.shape[-2]}×{x.shape[-1]} written to {args.out}")


def _cmd_experiment(args: argparse.Namespace) -> None:
    from capsnet.experiments import Table1Config, run_table1
    from capsnet.train import TrainConfig

    train = TrainConfig(
        dataset=args.dataset,
        dataset_options=dict(args.dataset_option),
        data_dir=args.data_dir,
        epochs=args.epochs,
        batch_size=args.batch_size,
        train_limit=args.train_limit,
        val_size=args.val_size,
        test_limit=args.test_limit,
        device=args.device,
    )
    cfg = Table1Config(train=train, seeds=tuple(args.seeds), rows=tuple(args.rows), size=args.size)
    print(run_table1(cfg, args.out, progress=_progress()))


def _cmd_predict(args: argparse.Namespace) -> None:
    from capsnet.checkpoint import load_run
    from capsnet.data.custom import saved_policy
    from capsnet.predict import class_names, predict, read_inputs, run_data, run_train_config
    from capsnet.runtime import resolve_device

    device = resolve_device(args.device)
    model, config = load_run(args.run_dir, device)
    data = run_data(args.run_dir)  # class names and image policy saved by training
    dataset = run_train_config(args.run_dir).get("dataset")
    names = class_names(dataset, config.num_classes, data.get("class_names"))
    inputs = read_inputs(args.images, config.in_channels, config.input_size, saved_policy(data))
    lengths = predict(model, inputs.images, args.batch_size, device)
    for n, (k, row) in enumerate(zip(lengths.argmax(1).tolist(), lengths.tolist(), strict=True)):
        if args.json:
            obj = {"file": inputs.files[n], "index": inputs.indices[n], "class": k}
            obj |= {"class_name": names[k], "lengths": [round(v, 6) for v in row]}
            print(json.dumps(obj))
        else:
            print(f"{inputs.names[n]}\t{names[k]}\t" + " ".join(f"{v:.4f}" for v in row))


def _cmd_export(args: argparse.Namespace) -> None:
    from capsnet.export import export_run

    diffs = export_run(args.run_dir, args.onnx, args.dataset, args.data_dir, args.check_images)
    for path, d in diffs.items():
        worst = ", ".join(f"{name} {v:.2e}" for name, v in d.items())
        print(f"wrote {path}; max abs difference to PyTorch: {worst}")


def _cmd_explore(args: argparse.Namespace) -> None:
    from capsnet.explore import listen, load_explorer, serve, url

    app = load_explorer(args.run_dir, args.data_dir, args.host)
    sock = listen(args.host, args.port)
    print(f"capsnet explorer: {url(sock)} (Ctrl-C stops it)", flush=True)
    serve(app, sock)


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
        "figures": _cmd_figures,
        "multimnist": _cmd_multimnist,
        "experiment": _cmd_experiment,
        "predict": _cmd_predict,
        "export": _cmd_export,
        "explore": _cmd_explore,
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
