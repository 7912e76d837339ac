"""The ``capsnet`` command line's parsers: every command and option, with help. Options
that set a config field take their defaults from the config's dataclass
(:func:`capsnet.cli.parser.field_args`). Building the parsers imports no PyTorch (names
come from ``capsnet.names``), so help and argument errors answer at once."""

from __future__ import annotations

import argparse
from pathlib import Path

from capsnet import __version__, names
from capsnet.cli.argtypes import (
    name_value,
    non_negative,
    path,
    positive,
    seed,
    strengths,
    weight,
)
from capsnet.cli.parser import Parser
from capsnet.cli.parser import field_args as _field_args

RUN = "a run directory, a checkpoint file or a pretrained name (`capsnet pretrained`)"
EXPLORE_DEFAULT = "capsnet-mnist"  # the shipped paper network on MNIST
DESCRIPTION = (
    "Capsule networks (Sabour, Frosst & Hinton, 2017): train them, test them, draw their "
    "figures, classify images, export to ONNX and explore them in a browser. "
    "`capsnet COMMAND --help` shows a command's options."
)
TRAIN_CONFIG = "capsnet.training.config:TrainConfig"
QUIET = "only warnings and results"
THREADS = "PyTorch's intra-op threads (default: PyTorch's own, one per core)"


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset-option",
        type=name_value,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting of the dataset itself, e.g. shift=3 for multimnist (repeatable)",
    )
    p.add_argument("--data-dir", help="directory holding the IDX files (or <name>/ below it)")
    p.add_argument("--test-limit", type=positive, help="evaluate on the first N test images")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")


TABLE1_FIELDS = ("epochs", "batch_size", "train_limit", "val_size")


def _train_fields(tasks, models, precisions) -> dict[str, tuple]:
    return {
        "dataset": (str, _dataset_help(tasks)),
        "model": (str, f"one of {', '.join(models)}"),
        "epochs": (positive, "training epochs"),
        "batch_size": (positive, "images per step"),
        "lr": (float, "Adam learning rate"),
        "lr_decay": (float, "per-epoch factor of the learning rate (exponential schedule)"),
        "lr_schedule": (str, "learning-rate schedule", ("choices", names.LR_SCHEDULES)),
        "warmup_epochs": (float, "linear learning-rate warm-up, epochs"),
        "weight_decay": (float, "decoupled weight decay (AdamW); 0: the paper's Adam"),
        "max_shift": (non_negative, "random shift, pixels (mnist, fashion-mnist)"),
        "rotation": (float, "beyond the paper: random rotation, ± degrees"),
        "scale": (float, "beyond the paper: random scaling by 1 ± this"),
        "elastic": (float, "beyond the paper: elastic distortion α, pixels (σ = 4)"),
        "squeeze": (float, "beyond the paper: random horizontal squeeze by 1 − [0, this]"),
        "erase": (non_negative, "beyond the paper: zero a random square of this side, pixels"),
        "blur": (float, "beyond the paper: Gaussian blur, σ uniform in [0, this] pixels"),
        "blank": (float, "beyond the paper: this share of training images made blank, no class"),
        "train_limit": (positive, "train on the first N training images"),
        "val_size": (
            non_negative,
            "validation images held out of the training split (default: a tenth, 50 to 5000)",
        ),
        "seed": (int, "random seed"),
        "precision": (str, "autocast dtype", ("choices", precisions)),
        "compile": (None, "torch.compile the model"),
        "tensorboard": (None, "log scalars and figures to RUN_DIR/tensorboard"),
    }


def _dataset_help(tasks) -> str:
    return f"one of {', '.join(sorted([*tasks, *names.OFFICIAL]))}, folder:PATH or npz:PATH"


def _add_image_args(p: argparse.ArgumentParser) -> None:
    """The image policy of folder:, npz:, cifar10, svhn and smallnorb (saved in the run)."""
    size_help = "the size images are brought to (default: the data's own)"
    p.add_argument("--input-size", type=positive, nargs=2, metavar=("H", "W"), help=size_help)
    p.add_argument("--resize", choices=names.RESIZE, help="how images reach --input-size")
    p.add_argument("--channels", type=int, choices=(1, 3), help="default: from the data")
    p.add_argument("--normalize", choices=names.NORMALIZE, help="default: the dataset's")


def _bench_fields(models, precisions) -> dict[str, tuple]:
    return {
        "model": (str, f"one of {', '.join(models)}"),
        "batch_size": (positive, "images per step"),
        "device": (str, "auto, cpu, cuda or cuda:N"),
        "precision": (str, "autocast dtype", ("choices", precisions)),
        "compile": (None, "torch.compile the model"),
        "steps": (positive, "timed steps (median reported)"),
        "warmup": (non_negative, "untimed steps first"),
    }


def _add_option_arg(p: argparse.ArgumentParser, flag: str, text: str) -> None:
    p.add_argument(
        flag, type=name_value, action="append", default=[], metavar="NAME=VALUE", help=text
    )


def _add_load_option(p: argparse.ArgumentParser, which: str = "the saved model config") -> None:
    """--model-option for a command that loads a model: fields that keep its weights."""
    text = (
        f"a field of {which} to change as the model loads, e.g. input_norm=peak or "
        "routing_iterations=1; only those that keep the weights' names and shapes (repeatable)"
    )
    _add_option_arg(p, "--model-option", text)


def _add_model_args(p: argparse.ArgumentParser, routings) -> None:
    """Model config overrides: the common ones by name, any field by --model-option."""
    p.add_argument("--routing", choices=sorted(routings), help="default: the model's own")
    p.add_argument("--routing-iterations", type=positive, help="default: the model's own")
    p.add_argument("--no-reconstruction", action="store_true", help="train without the decoder")
    p.add_argument(
        "--reconstruction-weight",
        type=float,
        help="× the summed squared reconstruction error (default: the model's, 0.01)",
    )
    _add_option_arg(p, "--model-option", "a field of the model's config, e.g. class_dim=8")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="capsnet", description=DESCRIPTION)
    parser.add_argument("-q", "--quiet", action="store_true", help=QUIET)
    parser.add_argument("--threads", type=positive, metavar="N", help=THREADS)
    parser.add_argument("--version", action="version", version=f"capsnet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _training_parsers(sub, names.TASKS, names.MODELS, names.PRECISIONS, names.ROUTINGS)
    _experiment_parsers(sub, names.TASKS, names.MODELS, names.PRECISIONS)
    _tool_parsers(sub, names.TASKS, names.DATASETS)
    return parser


def _command(sub, name: str, text: str) -> argparse.ArgumentParser:
    """A (sub)command's parser; -q and --threads work after the command too."""
    p = sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
    p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=QUIET)
    p.add_argument("--threads", type=positive, metavar="N", default=argparse.SUPPRESS, help=THREADS)
    return p


def _training_parsers(sub, tasks, models, precisions, routings) -> None:
    t = _command(sub, "train", "train a model and test the validation-selected checkpoint")
    t.add_argument("--out", required=True, type=path, help="run directory to write")
    _field_args(t, TRAIN_CONFIG, _train_fields(tasks, models, precisions))
    init_help = (
        f"fine-tune: start from the model and weights of RUN, {RUN}; its model (--model "
        "defaults to it), --model-option fields that keep its weights changing as it loads; "
        "a fresh optimiser, schedule and --epochs"
    )
    _field_args(t, TRAIN_CONFIG, {"init": (str, init_help, ("metavar", "RUN"))})
    _add_model_args(t, routings)
    _add_image_args(t)
    t.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out with its saved config, to its own --epochs unless "
        "given (only --epochs and --device may change)",
    )
    t.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a run already in --out (its files only; refused if --out holds others)",
    )
    _add_data_args(t)

    e = _command(
        sub, "evaluate", "test a run: eval.json, per-class classes.json/png in RUN_DIR or --out"
    )
    e.add_argument("run_dir", metavar="RUN", help=RUN)
    e.add_argument("--out", type=path, help="default: RUN_DIR (a pretrained model: nothing)")
    e.add_argument("--dataset", help="default: the run's dataset; " + _dataset_help(tasks))
    e.add_argument("--batch-size", type=positive, default=500, help="images per step")
    _add_load_option(e)
    _add_data_args(e)

    b = _command(sub, "bench", "measure training and inference images/s and peak memory")
    _field_args(b, "capsnet.tools.bench:BenchConfig", _bench_fields(models, precisions))
    _add_option_arg(b, "--model-option", "a field of the model's config, e.g. class_dim=8")
    b.add_argument("--json", action="store_true", help="print one JSON object")
    b.add_argument("--csv", type=path, help="append the result to this CSV file")


def _experiment_parsers(sub, tasks, models, precisions) -> None:
    m = _command(sub, "multimnist", "MultiMNIST sets (train with --dataset multimnist)")
    msub = m.add_subparsers(dest="action", required=True, metavar="ACTION")
    mk = _command(msub, "make", "write a fixed, seeded MultiMNIST set to .npz")
    mk.add_argument("--out", required=True, type=path, help=".npz file to write")
    mk.add_argument("--split", choices=["train", "test"], default="test", help="of MNIST")
    mk.add_argument("--pairs-per-digit", type=positive, default=1, help="partners per digit")
    pad_shift = {
        "pad": (non_negative, "canvas border, pixels"),
        "shift": (non_negative, "max shift per digit"),
    }
    _field_args(mk, "capsnet.data.multimnist:MultiMNISTConfig", pad_shift)
    mk.add_argument("--limit", type=positive, help="use the first N digits of the split")
    mk.add_argument("--seed", type=seed, default=0, help="of the pairs")
    mk.add_argument("--data-dir", help="where MNIST is (default: searched, else downloaded)")
    mk.add_argument("--overwrite", action="store_true", help="replace an existing --out")

    x = _command(sub, "experiment", "the paper's experiments")
    xsub = x.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    t1 = _command(xsub, "table1", "baseline vs CapsNet ablation, N seeds per row")
    t1.add_argument("--out", type=path, default=Path("results"), help="default: results/")
    table1_datasets = ["mnist", "multimnist", "fashion-mnist"]
    t1.add_argument("--dataset", choices=table1_datasets, default="mnist", help="of every run")
    table1 = {
        "size": (str, "the models' size", ("choices", names.TABLE1_SIZES)),
        "rows": (str, "rows of the table", ("nargs", "+"), ("choices", names.TABLE1_ROWS)),
        "seeds": (seed, "a run per row and seed", ("nargs", "+")),
    }
    _field_args(t1, "capsnet.tools.experiments:Table1Config", table1)
    fields = _train_fields(tasks, models, precisions)
    _field_args(t1, TRAIN_CONFIG, {k: fields[k] for k in TABLE1_FIELDS})
    _add_data_args(t1)
    _generalisation_parser(xsub, fields)


def _generalisation_parser(xsub, fields: dict[str, tuple]) -> None:
    g = _command(xsub, "generalisation", "contenders at one budget: clean, affNIST, robustness")
    g.add_argument("--out", type=path, default=Path("results"), help="default: results/")
    g.add_argument(
        "--contenders", nargs="+", metavar="[LABEL=]MODEL",
        help=f"models, each one of {', '.join(names.MODELS)}; LABEL (default: MODEL) names "
        "its runs and row (default: capsnet-mnist aff-capsnet baseline-cnn)",
    )  # fmt: skip
    g.add_argument(
        "--model-option", type=name_value, action="append", default=[], metavar="LABEL.NAME=VALUE",
        help="a field of a contender's model config, e.g. cnn.hidden=[64] (repeatable)",
    )  # fmt: skip
    kinds = ", ".join(names.PERTURBATION_NAMES)
    spec = {
        "seeds": (seed, "a run per contender and seed", ("nargs", "+")),
        "perturbations": (
            str, f"some of {kinds}; none: no sweep (default: all; none on multimnist)",
            ("nargs", "*"), ("choices", names.PERTURBATION_NAMES), ("metavar", "NAME"),
        ),
        "sweep_limit": (
            positive, "sweep the first N test images (default: --test-limit)", ("metavar", "N")
        ),
        "sweep_seed": (seed, "of the random perturbations, the same for every run"),
    }  # fmt: skip
    _field_args(g, "capsnet.tools.generalisation:GeneralisationConfig", spec)
    g.add_argument(
        "--strengths", type=strengths, action="append", default=[], metavar="NAME=S,S,...",
        help="a perturbation's strengths, ascending (repeatable; default: the sweep's own)",
    )  # fmt: skip
    shared = [k for k in fields if k not in ("model", "seed", "tensorboard")]
    _field_args(g, TRAIN_CONFIG, {k: fields[k] for k in shared})
    _add_data_args(g)


def _tool_parsers(sub, tasks, datasets) -> None:
    p = _command(sub, "predict", "classify pictures or .npy arrays with a run")
    p.add_argument("run_dir", metavar="RUN", help=RUN)
    pictures = ".png, .jpg, .bmp, .gif, .tif, .webp or .npy"
    p.add_argument("images", nargs="+", type=path, metavar="IMAGE", help=pictures)
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    p.add_argument(
        "--fit",
        choices=names.FITS,
        help="mnist: bring pictures of any size, dark-on-light or light-on-dark, to MNIST's "
        "preprocessing (the paper's lighting removed, specks dropped, ink white on black, "
        "longer side 20 px, centred by mass in 28×28, which larger inputs get in their "
        "middle); for 1-channel models of at least 28×28 (default: inputs must already be "
        "the model's size)",
    )
    p.add_argument("--batch-size", type=positive, default=500, help="images per step")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    _add_load_option(p)

    x = _command(sub, "export", "export the classifier and decoder to ONNX")
    x.add_argument("run_dir", metavar="RUN", help=RUN)
    x.add_argument("--onnx", required=True, type=path, metavar="FILE", help="classifier file")
    x.add_argument("--data-dir", help="where the run's test images are (default: as trained)")
    x.add_argument("--dataset", choices=sorted(tasks), help="default: the run's own")
    x.add_argument(
        "--check-images", type=non_negative, default=100,
        help="test images the files are checked on (default: 100); 0, or no test set on disk: "
        "random ones",
    )  # fmt: skip
    x.add_argument(
        "--overwrite", action="store_true", help="replace FILE and FILE.decoder.onnx if they exist"
    )
    _add_load_option(x)

    v = _command(sub, "explore", "serve the interactive capsule explorer")
    v.add_argument("run_dir", metavar="RUN", nargs="?", default=EXPLORE_DEFAULT, help=RUN)
    v.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1 (loopback only)")
    v.add_argument("--port", type=int, default=8000, help="default: 8000; 0 picks a free port")
    v.add_argument("--data-dir", help="where the run's test images are (for random images)")
    _add_load_option(v)

    d = _command(sub, "data", "find (or download) a dataset, check its files, print its directory")
    d.add_argument("dataset", choices=sorted(datasets))
    d.add_argument("--data-dir", help="look here first (default: the search path only)")
    d.add_argument("--no-download", action="store_true", help="fail rather than download")
    _report_parsers(sub)


def _report_parsers(sub) -> None:
    f = _command(sub, "figures", "draw a run's figures (paper Figs. 3-5, routing, curves)")
    f.add_argument("run_dir", metavar="RUN", help=RUN)
    f.add_argument("--out", type=path, help="default: RUN_DIR (pretrained: ./NAME-figures)")
    f.add_argument("--data-dir", help="where the run's dataset is (default: as in training)")
    f.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N (default: cpu)")
    f.add_argument(
        "--overwrite", action="store_true", help="replace figures already in --out (not RUN_DIR)"
    )
    _add_load_option(f, "the saved model config (with a run directory, needs --out)")

    a = _command(sub, "average", "average the weights of fine-tunes of one model (a model soup)")
    a.add_argument(
        "run_dir", nargs="+", metavar="RUN", help="run directories or pretrained names; two or more"
    )
    a.add_argument("--out", type=path, required=True, help="run directory for the mean")
    a.add_argument(
        "--weights", type=weight, nargs="+", metavar="W",
        help="one non-negative weight per RUN, normalised to sum 1 (default: equal)",
    )  # fmt: skip
    a.add_argument("--overwrite", action="store_true", help="replace a mean already in --out")
    _add_load_option(a, "every run's saved config")

    _command(sub, "pretrained", "list the pretrained models shipped with capsnet")
    _command(sub, "build-kernels", "build the native CPU kernels now (else on first use)")

    r = _command(sub, "robustness", "accuracy under rotation, scale, shear, … (JSON, PNG)")
    r.add_argument("run_dir", metavar="RUN", help=RUN)
    r.add_argument("--against", nargs="+", default=[], metavar="RUN", help="models to compare")
    r.add_argument("--out", type=path, required=True, help="directory for robustness.json/png")
    kinds = list(names.PERTURBATION_NAMES)
    r.add_argument(
        "--perturbations", nargs="+", choices=kinds, default=kinds, metavar="NAME",
        help=f"some of {', '.join(kinds)} (default: all)",
    )  # fmt: skip
    r.add_argument("--limit", type=positive, help="the first N test images (default: all)")
    r.add_argument("--seed", type=seed, default=0, help="of the random perturbations")
    r.add_argument("--data-dir", help="where the first run's test images are")
    r.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    r.add_argument("--overwrite", action="store_true", help="replace an earlier report in --out")
    _add_load_option(r, "every compared model's saved config")


__all__ = ["EXPLORE_DEFAULT", "build_parser"]
