"""The random states a run draws from, saved in its checkpoint and restored on resume, so a
resumed run continues with exactly the draws it would have made."""

from __future__ import annotations

import json
import random

import torch

from .errors import TrainingError


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
