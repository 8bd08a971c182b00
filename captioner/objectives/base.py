"""The objective contract: ``Objective.loss(batch) -> named loss terms`` with ``total`` among
them, built from a ``StepContext``. One module per objective in this package, registered with
``@OBJECTIVES.register("name")`` (found by scanning); the Trainer looks it up by
``TrainConfig.objective``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ..config import TrainConfig
from ..data.dataset import Batch, CaptionDataset
from ..models.model import CaptionModel


@dataclass
class StepContext:
    """What an objective needs to compute a batch's loss: the model (and the module to call,
    its DDP wrapper under torchrun), the device, the training RNG and the autocast context."""

    model: CaptionModel
    forward: nn.Module
    device: torch.device
    generator: torch.Generator
    autocast: Callable[[], AbstractContextManager]


class Objective:
    """A training objective. ``check`` refuses settings it cannot train with before any work;
    ``loss`` returns the named terms of one batch, ``total`` among them."""

    def __init__(self, ctx: StepContext, cfg: TrainConfig, dataset: CaptionDataset):
        self.ctx, self.cfg = ctx, cfg

    @classmethod
    def check(cls, cfg: TrainConfig) -> None:
        """Raise FieldError (naming the field) for settings this objective refuses; run when a
        TrainConfig is built."""

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _forward(self, batch: Batch, captions: torch.Tensor, lengths: torch.Tensor,
                 image_index: torch.Tensor, inputs: torch.Tensor | None = None,
                 module: nn.Module | None = None):
        """Teacher-forced decoder outputs (logits in float32) for ``captions`` of the batch's
        images (or of ``inputs``, features already computed), through ``module`` (default: the
        context's, the DDP wrapper under torchrun)."""
        ctx = self.ctx
        source = batch.inputs.to(ctx.device, non_blocking=True) if inputs is None else inputs
        encoded = batch.encoded if inputs is None else True
        with ctx.autocast():
            out = (module or ctx.forward)(source, captions.to(ctx.device), lengths,
                                          image_index.to(ctx.device), ctx.generator,
                                          encoded=encoded)
        return out


def rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The global RNG states that dropout draws from (CPU, and ``device``'s when CUDA)."""
    return (torch.get_rng_state(),
            torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


@contextmanager
def replayed(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device
              ) -> Iterator[None]:
    """Within it the global RNG starts again from ``state``; afterwards it is where it was."""
    cpu, cuda = state
    with torch.random.fork_rng(devices=[device] if cuda is not None else []):
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, device)
        yield
