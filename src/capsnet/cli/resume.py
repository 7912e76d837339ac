"""``capsnet train --resume`` continues a run with its saved config: an option given on
the command line that differs from the run's is refused, not silently ignored."""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from capsnet.errors import ConfigError

if TYPE_CHECKING:
    from capsnet.training import RunDir, TrainConfig

RULE = "resume takes the saved config (only --epochs and --device may change)"
MAY_CHANGE = {"epochs", "device", "out", "resume", "overwrite", "quiet"}
IMAGE_OPTIONS = ("input_size", "resize", "channels", "normalize")  # dataset options
MODEL_OPTIONS = {  # option → the model config field it sets
    "routing": "routing",
    "routing_iterations": "routing_iterations",
    "no_reconstruction": "reconstruction",
    "reconstruction_weight": "reconstruction_weight",
}


def check_resume_options(args: argparse.Namespace, cfg: TrainConfig, run: RunDir) -> TrainConfig:
    """``cfg`` to resume with: its epochs the run's own unless ``--epochs`` was given.

    ConfigError naming the first option given (``args.given``) whose value differs from
    the saved run's; ``cfg`` is the TrainConfig the options make, ``run`` the RunDir to
    resume (its files are checked first, see ``RunDir.resume_config``)."""
    if args.overwrite:
        raise ConfigError("--resume continues the run in --out, --overwrite replaces it: not both")
    saved = run.resume_config(cfg.epochs if "epochs" in args.given else None)
    for text, given, was, dest in _given_settings(args, cfg, saved, run):
        if not _same(dest, given, was):
            raise ConfigError(f"{text} differs from the run's {_shown(was)}; {RULE}")
    return cfg if "epochs" in args.given else dataclasses.replace(cfg, epochs=saved.epochs)


def _given_settings(
    args: argparse.Namespace, cfg: TrainConfig, saved: TrainConfig, run: RunDir
) -> Iterator[tuple[str, Any, Any, str]]:
    """(the option as written, the value given, the run's, the option's dest) for each
    setting given on the command line, in its order."""
    # imported here, not at the top: `capsnet --help` and argument errors load no PyTorch
    from capsnet.data.tasks import dataset_options

    fields = {f.name for f in dataclasses.fields(saved)}
    data = dataclasses.asdict(dataset_options(saved.dataset, saved.dataset_options))
    resolved = run.config.get("model", {}).get("config")
    model = {**saved.model_overrides, **(resolved if isinstance(resolved, dict) else {})}
    for dest in [d for d in vars(args) if d in args.given and d not in MAY_CHANGE]:
        value, text = getattr(args, dest), _option(dest, getattr(args, dest))
        if dest in fields:
            yield text, getattr(cfg, dest), getattr(saved, dest), dest
        elif dest in IMAGE_OPTIONS:
            yield text, value, data.get(dest), dest
        elif dest in MODEL_OPTIONS:
            key = MODEL_OPTIONS[dest]
            yield text, cfg.model_overrides[key], model.get(key), dest
        elif dest in ("dataset_option", "model_option"):
            known = data if dest == "dataset_option" else model
            for key, v in value:
                yield f"--{dest.replace('_', '-')} {key}={_shown(v)}", v, known.get(key), dest


def _option(dest: str, value: Any) -> str:
    flag = "--" + dest.replace("_", "-")
    return flag if isinstance(value, bool) else f"{flag} {_shown(value)}"


def _shown(value: Any) -> str:
    if isinstance(value, list | tuple):
        return " ".join(map(_shown, value))
    return (
        "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    )


def _same(dest: str, given: Any, was: Any) -> bool:
    """Whether a setting given is the run's: paths compared as absolute ones (a new run
    saves them so; an older run's relative ones are taken from the current directory)."""
    # imported here, not at the top: `capsnet --help` and argument errors load no PyTorch
    from capsnet.data.custom import absolute_task

    if dest in ("data_dir", "init") and given is not None and was is not None:
        return Path(given).expanduser().resolve() == Path(was).expanduser().resolve()
    if dest == "dataset":
        return absolute_task(given) == absolute_task(was)
    return json.loads(json.dumps(given, default=str)) == json.loads(json.dumps(was, default=str))


__all__ = ["check_resume_options"]
