"""The ``Trainer``: one run's model, optimizer, data, objective and state, built once from a
``RunPlan``; it takes a step, validates, saves and restores. The loop that drives it is
``loop.py``.

Run folder: ``last.safetensors`` (model + full training state), ``best.safetensors`` (the best
validation score, ``--select-by``; model only), with ``--keep-epochs`` each epoch's weights as
``epochN.safetensors``, and ``metrics.jsonl``.
"""

from __future__ import annotations

import random
import signal
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from .checkpoint import fill, save_checkpoint
from .data.dataset import CaptionPairs
from .decoding import DecodeOptions
from .distributed import broadcast, epoch_batches, gather, leave_group, setup
from .errors import TrainingError
from .evaluate import decode_split, score
from .interrupt import GracefulStop
from .models.model import CaptionModel, build_model
from .objectives import StepContext
from .plan import RunPlan
from .registry import OBJECTIVES
from .rng import rng_state, set_rng_state
from .runlog import RunLog


def ignore_interrupts(worker_id: int) -> None:
    """In a data loading worker: Ctrl-C is the main process's to handle (it saves and stops);
    the worker would only print a traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def build_for_run(plan: RunPlan, device: torch.device) -> CaptionModel:
    """The run's model: the weights it starts from (--init or resumed: built on the meta
    device and filled with them, nothing initialised), else freshly initialised; a model that
    reads the prepared features gets the exact encoder that computed them."""
    config, data = plan.model_config, plan.data
    features = data.serves_features(config)
    if plan.weights is not None:
        with torch.device("meta"):
            model = build_model(config, pretrained=False)
        fill(model, plan.weights.weights)
    else:
        model = build_model(config, pretrained=False if features else None)
    if features and plan.resumed is None:
        encoder_file = data.root / "features" / "encoder.safetensors"
        model.encoder.load_state_dict(load_file(str(encoder_file)))
    return model.to(device)


class Trainer:
    """A run built once from its plan (model, optimizer, scheduler, data, objective, loop
    state and random states, restored when it resumes); ``train_step`` takes one optimizer
    step, ``validate`` scores the val split, ``save`` writes a checkpoint."""

    def __init__(self, plan: RunPlan):
        cfg = self.cfg = plan.train_config
        self.rank, self.world, self.device = setup()
        self.run_dir = Path(cfg.out)
        self.data = plan.data
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self.model = build_for_run(plan, self.device)
        self.config = self.model.config
        self.ddp = (torch.nn.parallel.DistributedDataParallel(
            self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            if self.world > 1 else self.model)
        self.optimizer = torch.optim.Adam(self.model.parameter_groups(
            cfg.lr, cfg.encoder_lr, cfg.weight_decay))
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="max", factor=cfg.lr_decay, patience=cfg.lr_patience)
        # draws of stochastic attention happen on the training device (a CUDA tensor cannot
        # be sampled with a CPU generator)
        self.generator = torch.Generator(self.device).manual_seed(cfg.seed)
        self.state = {"step": 0, "epoch": 0, "batch": 0, "best_score": -1.0, "bad_epochs": 0,
                      "epoch_best": -1.0}
        self.seconds = 0.0  # the run's wall time up to ``_clocked``, over all its processes
        self.stop: GracefulStop | None = None  # signals stop the loop after a step
        if plan.resumed is not None:
            self._restore(plan.resumed.train)
        self.dataset = self.data.dataset("train", self.config)
        if cfg.batch_by == "caption":
            self.dataset = CaptionPairs(self.dataset)
        self.per_epoch = len(epoch_batches(len(self.dataset), cfg.batch_size, cfg.seed, 0,
                                           self.rank, self.world))
        context = StepContext(self.model, self.ddp, self.device, self.generator, self._autocast)
        self.objective = OBJECTIVES.get(cfg.objective)(context, cfg, self.dataset)
        self.log = RunLog(self.run_dir, cfg.logdir, self.rank, self.state["step"])
        self._clocked = time.perf_counter()  # when ``seconds`` was last brought up to date

    def _restore(self, train: dict) -> None:
        """Optimizer, scheduler, loop position and RNG states of the checkpoint resumed."""
        self.optimizer.load_state_dict(train["optimizer"])
        self.scheduler.load_state_dict(train["scheduler"])
        self.state = train["loop"]
        if "best_bleu4" in self.state:  # a run saved before --select-by
            self.state["best_score"] = self.state.pop("best_bleu4")
        self.seconds = train.get("seconds", 0.0)  # 0: saved before the wall time was kept
        # each rank's own, when saved by as many ranks: rank 0's in "rng", the others' after it
        ranks = [train["rng"], *train.get("rank_rng", [])]
        set_rng_state(ranks[self.rank] if len(ranks) == self.world else ranks[0],
                      self.generator)
        threads = train.get("threads")
        if threads and threads != torch.get_num_threads() and self.rank == 0:
            print(f"note: this run was trained with {threads} CPU threads and resumes with "
                  f"{torch.get_num_threads()}; it continues, but not bit for bit as it would "
                  f"have (set OMP_NUM_THREADS={threads} for that)", file=sys.stderr)

    def save(self, name: str, with_train: bool) -> None:
        """Write ``{name}.safetensors`` (rank 0; every rank calls it): the weights and,
        ``with_train``, everything a resume needs, each rank's random states among it."""
        ranks = gather(rng_state(self.generator), self.world) if with_train else None
        if self.rank != 0:
            return
        train = None
        if with_train:
            train = {"train_config": self.cfg.to_dict(), "optimizer": self.optimizer.state_dict(),
                     "scheduler": self.scheduler.state_dict(), "loop": dict(self.state),
                     "rng": ranks[0], "threads": torch.get_num_threads(),
                     "seconds": self.wall_seconds()}
            if self.world > 1:  # the other ranks draw their own dropout masks and locations
                train["rank_rng"] = ranks[1:]
        save_checkpoint(self.run_dir / f"{name}.safetensors", self.config, self.data.vocab,
                        self.model.state_dict(), train)

    def train_step(self, batch) -> dict[str, float]:
        """One optimizer step on the objective's loss; the terms as floats."""
        terms = self.objective.loss(batch)
        self._descend(terms["total"])
        return {k: float(v.detach()) for k, v in terms.items()}

    def _autocast(self):
        """bfloat16 autocast when --amp is on and training runs on CUDA, else a no-op."""
        return torch.autocast("cuda", dtype=torch.bfloat16,
                              enabled=self.cfg.amp and self.device.type == "cuda")

    def _descend(self, total: torch.Tensor) -> None:
        """Backpropagate ``total`` and take an optimizer step; a non-finite loss stops."""
        if not torch.isfinite(total):
            raise TrainingError(f"loss became {total.item()} at step {self.state['step']}; "
                                f"stopped, {self.run_dir / 'last.safetensors'} is the last good "
                                "checkpoint (try a lower --lr)")
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()

    def validate(self) -> dict[str, float]:
        """BLEU and CIDEr-D of the decoded val captions (rank 0), shared with every rank."""
        metrics = {}
        if self.rank == 0 and "val" in self.data.meta["splits"]:
            preds = decode_split(self.model, self.data.vocab, self.data, "val",
                                 DecodeOptions(beam_size=self.cfg.val_beam_size),
                                 max_images=self.cfg.val_max_images)
            metrics, _ = score(preds, coco=False)
        return broadcast(metrics, self.world)

    def wall_seconds(self) -> float:
        """The run's wall time so far (building, training, validating), added up over every
        process that trained it: a resumed run carries on from its checkpoint's figure."""
        now = time.perf_counter()
        self.seconds += now - self._clocked
        self._clocked = now
        return self.seconds

    def epochs_done(self) -> int | float:
        """Epochs trained so far, the current one's done fraction included (3 decimals): what
        the log's ``epoch`` says, so a run stopped mid-epoch logs e.g. 5.23 after epoch 5."""
        st = self.state
        return round(st["epoch"] + st["batch"] / self.per_epoch, 3) if st["batch"] else st["epoch"]

    def close(self, ended: bool) -> None:
        """Leave the process group, if this run joined one, after dropping the DDP wrapper (and
        the objective that holds it), which hold the group. ``ended``: the run stopped normally
        on every rank, so the ranks leave together (see ``leave_group``)."""
        if self.world > 1:
            self.ddp = self.objective = None
            leave_group(wait=ended)
