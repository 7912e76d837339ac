"""What each ``capsnet`` command does with its parsed arguments (``cmd_<command>``); the
parsers and their defaults are in :mod:`capsnet.cli.options`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

from capsnet.cli.progress import progress_factory as _progress
from capsnet.errors import ConfigError

log = logging.getLogger("capsnet")


def _from_args(cls: type, args: argparse.Namespace, **more: object):
    """``cls`` built from the fields ``args`` has (as ``capsnet.cli.options`` added them: those of
    config fields only if given on the command line), ``more`` taking precedence; lists
    become tuples."""
    names = {f.name for f in dataclasses.fields(cls)}
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in vars(args).items()}
    return cls(**({k: v for k, v in given.items() if k in names} | more))


def _image_options(args: argparse.Namespace) -> dict[str, object]:
    names = ("input_size", "resize", "channels", "normalize")
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def _model_overrides(args: argparse.Namespace) -> dict[str, object]:
    named = {
        "routing": args.routing,
        "routing_iterations": args.routing_iterations,
        "reconstruction": False if args.no_reconstruction else None,
        "reconstruction_weight": args.reconstruction_weight,
    }
    return {**{k: v for k, v in named.items() if v is not None}, **dict(args.model_option)}


def cmd_train(args: argparse.Namespace) -> None:
    # imported here, not at the top: `capsnet --help` and argument errors load no PyTorch
    from capsnet.cli.resume import check_resume_options
    from capsnet.runtime import distributed_from_env, resolve_device
    from capsnet.tools.viz import save_figures
    from capsnet.training import Run, TrainConfig, train
    from capsnet.training.finetune import init_model

    fine_tune = "init" in args and "model" not in args and not args.resume
    cfg = _from_args(
        TrainConfig,
        args,
        dataset_options=dict(args.dataset_option) | _image_options(args),
        model_overrides=_model_overrides(args),
        **({"model": init_model(args.init).name} if fine_tune else {}),  # --init's own
    )
    run = Run(args.out, names=False)
    if args.resume:
        cfg = check_resume_options(args, cfg, run)
    m = train(cfg, run, resume=args.resume, overwrite=args.overwrite, progress=_progress())
    if not distributed_from_env().is_main:
        return  # under torchrun, rank 0 reports
    for png in save_figures(run, data_dir=args.data_dir, device=resolve_device(args.device)):
        log.info("wrote %s", png)
    print(
        f"test accuracy {m['test_accuracy']:.4%} (error {m['test_error']:.2%}) on "
        f"{m['test_examples']} images; best epoch {m['best_epoch']}; "
        f"{m['train_images_per_second']:.0f} train images/s; run in {args.out}"
    )


def cmd_evaluate(args: argparse.Namespace) -> None:
    # imported here, not at the top: `capsnet --help` and argument errors load no PyTorch
    from capsnet.runtime import resolve_device
    from capsnet.training.evaluation import evaluate_run

    r = evaluate_run(
        args.run_dir,
        dataset=args.dataset,
        options=dict(args.dataset_option),
        data_dir=args.data_dir,
        limit=args.test_limit,
        batch_size=args.batch_size,
        device=resolve_device(args.device),
        progress=_progress(),
        out=args.out,
        overrides=dict(args.model_option),
    )
    n = r["test_examples"]
    print(f"test accuracy {r['test_accuracy']:.4%} (error {r['test_error']:.2%}) on {n} images")


def cmd_bench(args: argparse.Namespace) -> None:
    # imported here, not at the top: `capsnet --help` and argument errors load no PyTorch
    from capsnet.tools.bench import BenchConfig, append_csv, benchmark, check_csv, summary

    cfg = _from_args(BenchConfig, args, model_overrides=dict(args.model_option))
    if args.csv:
        check_csv(args.csv)
    r = benchmark(cfg)
    if args.csv:
        append_csv(args.csv, r)
    if args.json:
        print(json.dumps(r))
        return
    print(summary(r))


def cmd_figures(args: argparse.Namespace) -> None:
    # imported here, not at the top: `capsnet --help` and argument errors load no PyTorch
    from capsnet.runtime import resolve_device
    from capsnet.tools.viz import save_figures

    device = resolve_device(args.device)
    pngs = save_figures(
        args.run_dir,
        args.out,
        data_dir=args.data_dir,
        device=device,
        overwrite=args.overwrite,
        overrides=dict(args.model_option),
    )
    for png in pngs:
        print(png)


def cmd_multimnist(args: argparse.Namespace) -> None:
    # imported here, not at the top: `capsnet --help` and argument errors load no PyTorch
    from capsnet.data import MultiMNISTConfig, load_split
    from capsnet.data.multimnist import fixed_pairs, save_npz
    from capsnet.files import check_new_file

    check_new_file(args.out, args.overwrite)
    images, labels = load_split("mnist", args.split, args.data_dir)
    if args.limit is not None:
        images, labels = images[: args.limit], labels[: args.limit]
    cfg = MultiMNISTConfig(**{k: getattr(args, k) for k in ("pad", "shift") if k in args})
    x, t = fixed_pairs(images, labels, args.pairs_per_digit, cfg, args.seed)
    save_npz(args.out, x, t)
    print(f"{len(x)} MultiMNIST images of {x.shape[-2]}×{x.shape[-1]} written to {args.out}")


def cmd_experiment(args: argparse.Namespace) -> None:
    # imported here, not at the top: `capsnet --help` and argument errors load no PyTorch
    from capsnet.tools.experiments import Table1Config, run_table1
    from capsnet.tools.generalisation import GeneralisationConfig, run_generalisation
    from capsnet.training import TrainConfig

    train = _from_args(TrainConfig, args, dataset_options=dict(args.dataset_option))
    if args.experiment == "generalisation":
        more = {"contenders": _contenders(args), "strengths": dict(args.strengths)}
        cfg = _from_args(GeneralisationConfig, args, train=train, **more)
        _print_generalisation(run_generalisation(cfg, args.out, progress=_progress()), args.out)
        return
    cfg = _from_args(Table1Config, args, train=train)
    print(run_table1(cfg, args.out, progress=_progress()))


def _contenders(args: argparse.Namespace) -> tuple:
    """``--contenders [LABEL=]MODEL …`` with ``--model-option LABEL.NAME=VALUE``."""
    # imported here, not at the top: `capsnet --help` and argument errors load no PyTorch
    from capsnet.tools.generalisation import DEFAULT_CONTENDERS, Contender

    if args.contenders is None:
        specs = [(c.label, c.model) for c in DEFAULT_CONTENDERS]
    else:
        specs = [(s.partition("=")[0], s.partition("=")[2] or s) for s in args.contenders]
    options: dict[str, dict[str, object]] = {}
    for key, value in args.model_option:
        label, dot, name = key.partition(".")
        if not dot or not name:
            raise ConfigError(f"--model-option {key}=…: expected LABEL.NAME=VALUE")
        options.setdefault(label, {})[name] = value
    labels = [label for label, _ in specs]
    if unknown := sorted(set(options) - set(labels)):
        raise ConfigError(f"--model-option for {', '.join(unknown)}: contenders are {labels}")
    return tuple(Contender(label, model, options.get(label, {})) for label, model in specs)


def _print_generalisation(report: dict, out: Path) -> None:
    cross = report["cross_dataset"]
    for label, c in report["contenders"].items():
        s = c["summary"]
        line = f"{label}: clean {100 * s['clean_accuracy']['mean']:.2f}%"
        if cross:
            line += f", {cross} {100 * s[cross]['mean']:.2f}%"
        print(line + f" (mean of {len(c['runs'])} seeds)")
    print("wrote " + ", ".join(str(out / f"generalisation.{x}") for x in ("json", "md", "png")))


def cmd_predict(args: argparse.Namespace) -> None:
    # imported here, not at the top: `capsnet --help` and argument errors load no PyTorch
    from capsnet.runtime import resolve_device
    from capsnet.tools.predict import predict, read_inputs
    from capsnet.training import Run

    device = resolve_device(args.device)
    run = Run(args.run_dir)
    model = run.load_model(device, overrides=dict(args.model_option))
    config = model.config
    names = run.class_names_for(config.num_classes)
    size = config.input_size
    inputs = read_inputs(args.images, config.in_channels, size, run.image_policy, fit=args.fit)
    scores = predict(model, inputs.images, args.batch_size, device)
    for n, (k, row) in enumerate(zip(scores.argmax(1).tolist(), scores.tolist(), strict=True)):
        if args.json:
            obj = {"file": inputs.files[n], "index": inputs.indices[n], "class": k}
            obj |= {"class_name": names[k], "scores": [round(v, 6) for v in row]}
            print(json.dumps(obj))
        else:
            print(f"{inputs.names[n]}\t{names[k]}\t" + " ".join(f"{v:.4f}" for v in row))


def cmd_export(args: argparse.Namespace) -> None:
    # imported here, not at the top: `capsnet --help` and argument errors load no PyTorch
    from capsnet.tools.export import export_run

    diffs = export_run(
        args.run_dir,
        args.onnx,
        data_dir=args.data_dir,
        check_images=args.check_images,
        dataset=args.dataset,
        overwrite=args.overwrite,
        overrides=dict(args.model_option),
    )
    for path, d in diffs.items():
        worst = ", ".join(f"{name} {v:.2e}" for name, v in d.items())
        print(f"wrote {path}; max abs difference to PyTorch: {worst}")


def cmd_explore(args: argparse.Namespace) -> None:
    # imported here, not at the top: `capsnet --help` and argument errors load no PyTorch
    from capsnet.tools.explore import listen, load_explorer, serve, url

    with listen(args.host, args.port) as sock:  # a bad port fails before any loading
        overrides = dict(args.model_option)
        app = load_explorer(args.run_dir, args.data_dir, args.host, overrides=overrides)
        print(f"capsnet explorer: {url(sock)} (Ctrl-C stops it)", flush=True)
        serve(app, sock)


def cmd_average(args: argparse.Namespace) -> None:
    # imported here, not at the top: `capsnet --help` and argument errors load no PyTorch
    from capsnet.files import check_new_file, check_writable_dir
    from capsnet.models.checkpoint import BEST
    from capsnet.tools.average import average_runs
    from capsnet.training.rundir import CONFIG

    if len(args.run_dir) < 2:
        raise ConfigError("average needs two runs or more")
    if args.weights is not None and len(args.weights) != len(args.run_dir):
        n, k = len(args.weights), len(args.run_dir)
        raise ConfigError(f"--weights: {n} given for {k} runs; give one per run")
    if args.weights is not None and sum(args.weights) <= 0:
        raise ConfigError("--weights: at least one must be above 0")
    check_writable_dir(args.out)
    if args.out.is_dir():
        for name in (CONFIG, BEST):
            check_new_file(args.out / name, args.overwrite)
    averaged = average_runs(args.run_dir, args.out, args.weights, overrides=dict(args.model_option))
    pairs = zip(averaged["runs"], averaged["weights"], strict=True)
    shares = ", ".join(f"{run} {w:.3g}" for run, w in pairs)
    print(f"wrote {args.out / BEST} and {args.out / CONFIG}: the mean of {shares}")


def cmd_pretrained(args: argparse.Namespace) -> None:
    # imported here, not at the top: `capsnet --help` and argument errors load no PyTorch
    from capsnet.training.pretrained import list_pretrained

    models = list_pretrained()
    if not models:
        print("no pretrained models are shipped with this version")
    for p in models:
        size = f"{p.bytes / 2**20:.1f} MB {p.dtype}"
        where = f"{p.path}\ttrained in {p.run}"  # files that exist, or marked as the repository's
        print(f"{p.name}\t{p.model} on {p.dataset}\t{p.test_accuracy:.2%} test\t{size}\t{where}")


def cmd_build_kernels(args: argparse.Namespace) -> int:
    """Build (or find built) each native kernel, printing where and how long it took; 1 if
    one cannot be built (the warning above says why; PyTorch's path runs instead)."""
    # imported here, not at the top: `capsnet --help` and argument errors load no PyTorch
    from capsnet.nn import native

    if not native.enabled():
        print("native kernels are off (CAPSNET_NATIVE=0): nothing to build")
        return 0
    failed = 0
    for what, kernels in native.KERNELS.items():
        start = time.perf_counter()
        module = kernels()
        took = f"{time.perf_counter() - start:.1f} s"
        if module is None:
            print(f"native {what} kernel: not built ({took}); PyTorch's path will run")
            failed += 1
        else:
            print(f"native {what} kernel: ready in {took}, {Path(module.__file__).parent}")
    return 1 if failed else 0


def cmd_robustness(args: argparse.Namespace) -> None:
    # imported here, not at the top: `capsnet --help` and argument errors load no PyTorch
    from capsnet.files import check_new_file, check_writable_dir
    from capsnet.runtime import resolve_device
    from capsnet.tools.robustness import compare_runs

    def step(label: str, name: str, strength: float, accuracy: float) -> None:
        log.info("%s: %s %g: %.2f%%", label, name, strength, 100 * accuracy)

    check_writable_dir(args.out)  # made by the report once the runs have loaded
    if args.out.is_dir():
        for name in ("robustness.json", "robustness.png"):
            check_new_file(args.out / name, args.overwrite)
    runs = [args.run_dir, *args.against]
    report = compare_runs(
        runs,
        args.out,
        limit=args.limit,
        names=args.perturbations,
        seed=args.seed,
        data_dir=args.data_dir,
        device=resolve_device(args.device),
        on_step=step,
        overrides=dict(args.model_option),
    )
    for label, curves in report["models"].items():
        worst = ", ".join(f"{n} {100 * min(c['accuracy']):.1f}%" for n, c in curves.items())
        print(f"{label}: lowest accuracy per perturbation: {worst}")
    print(f"wrote {args.out / 'robustness.json'} and {args.out / 'robustness.png'}")


def cmd_data(args: argparse.Namespace) -> None:
    # imported here, not at the top: `capsnet --help` and argument errors load no PyTorch
    from capsnet.data.sources import verify_dataset

    print(verify_dataset(args.dataset, args.data_dir, download=not args.no_download))
