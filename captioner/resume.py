"""Continuing a run: its last checkpoint checked, its random states, and what a resume may
change (the limits, where the data is) against what it may not (everything else)."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import torch

from .checkpoint import Checkpoint, load_checkpoint
from .config import ModelConfig, TrainConfig
from .errors import TrainingError
from .validate_train_state import check_train_state

#: flags a --resume may change: where the data is, how far to train, how to show it
RESUME_MAY_CHANGE = {"data", "epochs", "max_steps", "max_minutes", "no_progress", "num_workers"}
#: model flags whose ModelConfig field has another name
MODEL_FLAG_FIELDS = {"grid": "grid_size", "fine_tune": "fine_tune_blocks", "no_gate": "gate"}


def load_resumable(run_dir: str | Path) -> Checkpoint:
    """The run's ``last.safetensors`` with its training state checked (one line naming a bad
    field); a folder without one raises TrainingError saying so."""
    last = Path(run_dir) / "last.safetensors"
    if not last.is_file():
        raise TrainingError(f"{run_dir}: has no run to resume (no last.safetensors); drop "
                            "--resume to start one")
    ckpt = load_checkpoint(last)
    if ckpt.train is None:
        raise TrainingError(f"{last}: has no training state to resume from")
    check_train_state(ckpt.train, last)
    return ckpt


def resumed_config(saved: TrainConfig, flags: TrainConfig) -> TrainConfig:
    """The saved run's config with what a resume may change taken from ``flags``, as given:
    the folders, the limits (--epochs, --max-steps, --max-minutes; a smaller --epochs ends the
    run sooner, --max-steps 0 lifts a step limit) and the progress bar. Everything else is the
    saved run's (``resume_flags`` refuses flags that disagree with it)."""
    return replace(saved, out=flags.out, data=flags.data, max_steps=flags.max_steps,
                   epochs=flags.epochs, max_minutes=flags.max_minutes, progress=flags.progress)


def resume_flags(args, flags: TrainConfig, model_flags: ModelConfig) -> TrainConfig:
    """For ``train --resume``: the saved run's TrainConfig with the flags a resume may change,
    where given (``args.given``); any other flag given with a value unlike the run's is
    refused, one line listing each. ``flags``/``model_flags`` are what the flags describe."""
    ckpt = load_resumable(args.out)
    saved = TrainConfig.from_dict(ckpt.train["train_config"])
    given = args.given - {"resume", "out"}
    conflicts = []
    for flag in sorted(given - RESUME_MAY_CHANGE):
        field = MODEL_FLAG_FIELDS.get(flag, flag)
        if hasattr(saved, field):
            mine, theirs = getattr(flags, field), getattr(saved, field)
        elif hasattr(ckpt.config, field):
            mine, theirs = getattr(model_flags, field), getattr(ckpt.config, field)
        else:  # an attention kind's option: --KIND-OPTION
            kind, _, option = flag.partition("_")
            mine = getattr(args, flag)
            theirs = ckpt.config.attention_options.get(option) \
                if kind == ckpt.config.attention else f"no such option ({ckpt.config.attention})"
        if mine != theirs:
            conflicts.append(f"--{flag.replace('_', '-')} {mine} (run: {theirs})")
    if conflicts:
        raise ValueError(f"--resume continues {args.out} as it was saved, but "
                         f"{'; '.join(conflicts)}; drop those flags, or start a new run from its "
                         "weights with --init")
    changes = {k: getattr(flags, k) for k in ("epochs", "max_steps", "max_minutes", "num_workers")
               if k in given}
    return replace(saved, out=args.out, data=args.data or saved.data, progress=flags.progress,
                   **changes)


def rng_state(generator: torch.Generator) -> dict:
    """Every random state a run draws from: torch's, the run's generator, Python's (CUDA's)."""
    state = {"torch": torch.get_rng_state(), "generator": generator.get_state(),
             "python": json.dumps(random.getstate())}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, generator: torch.Generator) -> None:
    """Restore what ``rng_state`` saved (the same kind of device is needed)."""
    torch.set_rng_state(state["torch"])
    if state["generator"].numel() != generator.get_state().numel():
        raise TrainingError("the checkpoint's sampling state is from another device type "
                            "(CPU vs CUDA); resume on the kind of device that trained it")
    generator.set_state(state["generator"])
    py = json.loads(state["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))
    if torch.cuda.is_available() and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


