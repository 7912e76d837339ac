"""Training: the loop (``loop``), one optimisation step (``step``), the loop's resumable
state (``state``), the run directory's files (``rundir``) and what they hold (``run``: the
model, the task), the training config (``config``),
environment facts (``environment``), what the loop needs of a progress display
(``progress``), an evaluation's per-class report (``metrics``), TensorBoard events
(``tensorboard``) and the shipped pretrained models (``pretrained``)."""

from capsnet.targets import num_correct
from capsnet.training.config import TrainConfig
from capsnet.training.environment import environment
from capsnet.training.evaluation import evaluate, to_input
from capsnet.training.loop import Session, train
from capsnet.training.progress import NoProgress, Progress, ProgressFactory
from capsnet.training.run import Run, load_run
from capsnet.training.rundir import RUN_FILES, RunDir
from capsnet.training.state import STATE_JSON, STATE_TENSORS
from capsnet.training.step import adam, build_model, train_step

__all__ = [
    "RUN_FILES",
    "STATE_JSON",
    "STATE_TENSORS",
    "NoProgress",
    "Progress",
    "ProgressFactory",
    "Run",
    "RunDir",
    "Session",
    "TrainConfig",
    "adam",
    "build_model",
    "environment",
    "evaluate",
    "load_run",
    "num_correct",
    "to_input",
    "train",
    "train_step",
]
