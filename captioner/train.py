"""Training a captioner: ``train`` starts a run (new, or from another run's model with
``TrainConfig.init``), ``resume`` continues one exactly, single process or under torchrun (DDP).

The run folder is locked while it trains (a second writer is refused), a new run refuses a
folder that holds another's files, and SIGINT/SIGTERM stop after the current step with
``last.safetensors`` saved (``TrainResult.stopped`` names the signal). What is trained from
what is decided in ``plan.py``, the step in ``trainer.py``, the loop in ``loop.py``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from .config import ModelConfig, TrainConfig
from .distributed import epoch_batches
from .errors import TrainingError
from .interrupt import GracefulStop
from .loop import TrainResult, run
from .plan import RunPlan, new_run, resumed_run
from .runlock import RunLock, refuse_existing_run
from .trainer import Trainer

__all__ = ["TrainResult", "Trainer", "TrainingError", "epoch_batches", "resume", "train"]


def _owner() -> bool:
    return int(os.environ.get("RANK", "0")) == 0  # only rank 0 writes the run folder


def _train(plan: RunPlan, out: str | Path, resume: bool) -> TrainResult:
    """Train ``plan`` (checked already: nothing is written for a refused one) in ``out``."""
    with (RunLock(out) if _owner() else nullcontext()), GracefulStop() as stop:
        if _owner() and not resume:
            refuse_existing_run(out)
        trainer = Trainer(plan)
        trainer.stop = stop
        result = None
        try:
            result = run(trainer)
        finally:
            trainer.close(ended=result is not None)
        return result


def train(model: ModelConfig | Mapping[str, Any], cfg: TrainConfig) -> TrainResult:
    """Train a new captioner in ``cfg.out`` on ``cfg.data``. ``model`` is its config, or the
    fields given by name (``attention_options`` by kind: ``{"hard": {"entropy": 0.01}}``);
    fields left open (``encoder``, ``grid_size``, ``preprocess``: None) come from the data's
    features or the encoder. With ``cfg.init`` the run starts from that checkpoint's model, and
    ``model`` gives the fields to change (those its weights do not fix)."""
    return _train(new_run(model, cfg), cfg.out, resume=False)


def resume(out: str | Path, model: Mapping[str, Any] | None = None,
           train: Mapping[str, Any] | None = None) -> TrainResult:
    """Continue the run in ``out`` exactly where it stopped (the same batches in the same
    order, optimizer, scheduler and random states). ``train`` may change what a resume may
    (``TrainConfig`` fields declared ``resume=True``: the limits, workers, progress, where the
    data is); any other given value that differs from the run's is refused, one line."""
    return _train(resumed_run(out, model, train), out, resume=True)
