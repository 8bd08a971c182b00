"""Training objectives behind one interface, ``objective.loss(batch) -> named loss terms``:
``xe`` (the paper's likelihood, with the estimator terms of attention that draws) and ``scst``
(self-critical training). One module per objective, registered in
``captioner.registry.OBJECTIVES`` (found by scanning this package)."""

from ..registry import OBJECTIVES
from .base import Objective, StepContext
from .likelihood import Likelihood, caption_losses
from .scst import SelfCritical

__all__ = ["OBJECTIVES", "Likelihood", "Objective", "SelfCritical", "StepContext",
           "caption_losses"]
