"""Weight averaging: one model whose weights are the weighted mean of several runs' weights.

Fine-tunes of one pretrained model tend to stay in one basin of the loss, so the mean of
their weights is itself a good model: a "model soup" (Wortsman et al., "Model soups:
averaging weights of multiple fine-tuned models improves accuracy without increasing
inference time", ICML 2022), or, with two models and weights 1 − α and α, WiSE-FT's
interpolation (Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022). Runs
trained from different initialisations are not in one basin, and their mean is usually
a bad model: nothing here can tell the two cases apart, so evaluate the result.

:func:`average_runs` writes the mean as a run directory (``config.json`` and
``best.safetensors``) that every tool reads like a trained run.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from capsnet.errors import ConfigError
from capsnet.files import write_json
from capsnet.models.checkpoint import BEST, save_checkpoint, weight_difference
from capsnet.models.contract import model_name
from capsnet.training.environment import environment
from capsnet.training.run import Run
from capsnet.training.rundir import AVERAGED, CONFIG, RUN_FILES


def normalised_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    """``weights`` (default: equal) divided by their sum; ValueError unless they are ``n``
    non-negative numbers with a positive sum."""
    given = [1.0] * n if weights is None else [float(x) for x in weights]
    if len(given) != n or any(not x >= 0 for x in given) or not sum(given) > 0:
        raise ValueError(
            f"weights must be {n} non-negative numbers with a positive sum, got {given}"
        )
    return [x / sum(given) for x in given]


def average_weights(
    states: Sequence[Mapping[str, Tensor]], weights: Sequence[float] | None = None
) -> dict[str, Tensor]:
    """θ = Σᵢ wᵢ θᵢ / Σᵢ wᵢ for every floating-point tensor of the state dicts ``states``
    (computed in float64, returned in the first state's dtype; ``weights`` default to
    equal). BatchNorm's running means and variances are averaged like any weight; tensors
    that are not floating point (BatchNorm's step counters) are taken from the first state.

    ValueError if no state is given, the states' tensor names or shapes differ,
    or ``weights`` are not one non-negative number per state with a positive sum."""
    if not states:
        raise ValueError("no weights to average")
    w = torch.tensor(normalised_weights(weights, len(states)), dtype=torch.float64)  # (N,)
    for n, state in enumerate(states[1:], 2):
        if difference := weight_difference(state, states[0], f"model {n}", "model 1"):
            raise ValueError(f"the models' weights differ: {difference}")
    averaged = {}
    for key, first in states[0].items():
        if not first.is_floating_point():
            averaged[key] = first.clone()
            continue
        stacked = torch.stack([s[key].to(torch.float64) for s in states])  # (N, *shape)
        averaged[key] = torch.tensordot(w, stacked, dims=1).to(first.dtype)  # (*shape)
    return averaged


def _same_model(runs: Sequence[Run], models: Sequence[nn.Module]) -> None:
    """ConfigError naming the run where the model, its config (the field) or the dataset
    differs from the first run's."""
    first, name = runs[0], model_name(models[0])
    configs = [m.config.to_dict() for m in models]
    for run, model, config in zip(runs[1:], models[1:], configs[1:], strict=True):
        if model_name(model) != name:
            raise ConfigError(
                f"{run.name}: holds a {model_name(model)}, {first.name} a {name}; "
                "only runs of one model can be averaged"
            )
        for key in sorted(configs[0]):  # one model, so the same fields
            ours, theirs = configs[0][key], config[key]
            if ours != theirs:
                raise ConfigError(
                    f"{run.name}: model config differs from {first.name}'s ({key} {theirs!r} "
                    f"against {ours!r}); give --model-option {key}=VALUE to load them alike"
                )
        if run.dataset != first.dataset:
            raise ConfigError(
                f"{run.name}: trained on {run.dataset}, {first.name} on {first.dataset}"
            )


def average_runs(
    paths: Sequence[str | Path],
    out: Path,
    weights: Sequence[float] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write into ``out`` a run whose weights are the weighted mean (:func:`average_weights`)
    of the best checkpoints of ``paths`` (run directories or shipped models, each with its
    training config), each model loaded with ``overrides``; return what ``out/config.json``
    records of it (``averaged``).

    The models must be the same model with the same config (after ``overrides``) and trained
    on the same dataset, and ``out`` must not hold a trained run's files (its history,
    metrics, last checkpoint or training state), else ConfigError. ``out/config.json`` is
    the first run's, with the model config as loaded and ``averaged``: the runs, the weights
    (normalised to sum 1), and where and when the mean was taken. ``out`` gets no history or
    metrics: evaluate it."""
    trained = [name for name in RUN_FILES if name not in (CONFIG, BEST) and (out / name).exists()]
    if trained:
        raise ConfigError(
            f"{out}: holds a trained run ({', '.join(trained)}); choose another --out"
        )
    runs = [Run(p) for p in paths]
    for run in runs:
        run.require_run()
        if run.path.resolve() == out.resolve():
            raise ConfigError(f"{out}: is the directory of {run.name}; choose another --out")
    models = [run.load_model(overrides=overrides) for run in runs]
    _same_model(runs, models)
    try:
        mean = average_weights([m.state_dict() for m in models], weights)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    model = models[0]
    model.load_state_dict(mean)
    averaged = {
        "runs": [run.name for run in runs],
        "weights": normalised_weights(weights, len(runs)),
        "environment": environment(),
    }
    config = copy.deepcopy(runs[0].config)
    config["model"] = {"name": model_name(model), "config": model.config.to_dict()}
    config[AVERAGED] = averaged
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out / BEST, model, model_name(model), averaged=averaged["runs"])
    write_json(out / CONFIG, config)
    return averaged


__all__ = ["average_runs", "average_weights", "normalised_weights"]
