"""The training loop: single process or DistributedDataParallel (torchrun), resumable exactly.

Run folder: ``last.safetensors`` (model + full training state, every ``save_every`` steps, each
epoch and on SIGINT/SIGTERM), ``best.safetensors`` (best validation score, ``--select-by``; model
only), with ``--keep-epochs`` each epoch's weights as ``epochN.safetensors``, and
``metrics.jsonl``. What a step optimises is the objective's (``objectives.py``).
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from tqdm import tqdm

from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .config import BATCH_BY, SELECT_METRICS, ModelConfig, TrainConfig
from .data.dataset import CaptionPairs, PreparedData, collate
from .decoding import DecodeOptions
from .distributed import broadcast, epoch_batches, leave_group, setup
from .errors import TrainingError
from .interrupt import GracefulStop
from .evaluate import decode_split, score
from .models.model import build_model
from .objectives import StepContext, objective_class
from .resume import load_resumable, resumed_config, rng_state, set_rng_state
from .runlock import RunLock, refuse_existing_run
from .runlog import RunLog


@dataclass
class TrainResult:
    step: int
    epoch: int | float  # epochs trained, a stop mid-epoch as a fraction (``epochs_done``)
    best_score: float  # the best validation score (``select_by``)
    select_by: str
    run_dir: Path
    stopped: str  # "epochs", "max_steps", "max_minutes", "early_stop", "finished" (a finished
    # run resumed: nothing done), or the signal that stopped it ("SIGINT", "SIGTERM")
    rank: int = 0  # this process's rank under torchrun
    minutes: float = 0.0  # the run's wall time, over every process that trained it (resumes)

    @property
    def epochs_text(self) -> str:
        """"1 epoch", "4 epochs", "1.738 epochs"."""
        return f"{self.epoch:g} epoch{'' if self.epoch == 1 else 's'}"

    @property
    def time_text(self) -> str:
        """"12.3 min", "2.25 h"."""
        return f"{self.minutes:.1f} min" if self.minutes < 120 else f"{self.minutes / 60:.2f} h"


def resolve_model_config(data: PreparedData, config: ModelConfig, encoder_given: bool
                         ) -> tuple[ModelConfig, bool]:
    """Fit the model config to the data: vocabulary size, caption length and, when the folder
    has features and the encoder stays frozen, the features' encoder/grid/preprocessing.
    Returns (config, whether the model then reads the features)."""
    config = replace(config, vocab_size=len(data.vocab), max_len=data.max_len)
    feats = data.features
    frozen = config.fine_tune_blocks in (None, 0)
    if feats and frozen and (not encoder_given or config.encoder == feats["encoder"]):
        config = replace(config, fine_tune_blocks=0, **data.feature_config())
    return config, data.serves_features(config)


def _ignore_interrupts(worker_id: int) -> None:
    """In a data loading worker: Ctrl-C is the main process's to handle (it saves and stops);
    the worker would only print a traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def check_train_config(cfg: TrainConfig) -> None:
    """Refuse settings no run can train with, before any work (one line naming the flag)."""
    if cfg.batch_by not in BATCH_BY:
        raise TrainingError(f"--batch-by must be one of {', '.join(BATCH_BY)}, "
                            f"not {cfg.batch_by!r}")
    if cfg.select_by not in SELECT_METRICS:
        raise TrainingError(f"--select-by must be one of {', '.join(SELECT_METRICS)}, "
                            f"not {cfg.select_by!r}")
    try:
        objective_class(cfg.objective).check(cfg)
    except ValueError as exc:
        raise TrainingError(str(exc)) from None


class Trainer:
    """Builds the run once (model, optimizer, data, objective, loop state) from the flags or
    the checkpoint it resumes; ``run()`` trains until a stopping rule."""

    def __init__(self, model_config: ModelConfig, cfg: TrainConfig, resume: bool = False,
                 encoder_given: bool = True):
        check_train_config(cfg)
        self.rank, self.world, self.device = setup()
        self.run_dir = Path(cfg.out)
        self.cfg = cfg
        self.data = PreparedData(cfg.data)
        ckpt = self._checkpoint_to_resume() if resume else None
        init = None
        if ckpt is not None:
            self.cfg = cfg = resumed_config(TrainConfig.from_dict(ckpt.train["train_config"]), cfg)
            model_config = ckpt.config
        else:
            init = self._checkpoint_for_data(cfg.init, "--init", with_train=False) \
                if cfg.init else None
            model_config = self._fresh_model_config(model_config, init, encoder_given)
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self.model = self._build_model(model_config, ckpt or init, from_checkpoint=ckpt is not None)
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
        self.stop: GracefulStop | None = None  # set by ``train``: signals stop after a step
        if ckpt is not None:
            self._restore(ckpt.train)
        self.dataset = self.data.dataset("train", self.config)
        if cfg.batch_by == "caption":
            self.dataset = CaptionPairs(self.dataset)
        self.per_epoch = len(epoch_batches(len(self.dataset), cfg.batch_size, cfg.seed, 0,
                                           self.rank, self.world))
        context = StepContext(self.model, self.ddp, self.device, self.generator, self._autocast)
        self.objective = objective_class(cfg.objective)(context, cfg, self.dataset)
        self.log = RunLog(self.run_dir, cfg.logdir, self.rank, self.state["step"])
        self._clocked = time.perf_counter()  # when ``seconds`` was last brought up to date

    # -- building ------------------------------------------------------------------------
    def _checkpoint_to_resume(self) -> Checkpoint:
        return self._same_vocabulary(load_resumable(self.run_dir), self.run_dir, "--resume")

    def _checkpoint_for_data(self, path, flag: str, with_train: bool = True) -> Checkpoint:
        return self._same_vocabulary(load_checkpoint(path, with_train=with_train), path, flag)

    def _same_vocabulary(self, ckpt: Checkpoint, where, flag: str) -> Checkpoint:
        """``ckpt``, refused when its vocabulary is not this data's."""
        if ckpt.vocab != self.data.vocab:
            raise TrainingError(f"{where}: trained with a different vocabulary than "
                                f"{self.cfg.data}; {flag} needs the data it was trained on")
        return ckpt

    def _fresh_model_config(self, config: ModelConfig, init: Checkpoint | None,
                            encoder_given: bool) -> ModelConfig:
        """The flags' model, or ``--init``'s (its architecture; the encoder blocks to train
        from the flags), fitted to the data."""
        if init is not None:
            tune = config.fine_tune_blocks
            config = replace(init.config, fine_tune_blocks=init.config.fine_tune_blocks
                             if tune is None else tune)
            encoder_given = True
        return resolve_model_config(self.data, config, encoder_given)[0]

    def _build_model(self, config: ModelConfig, source: Checkpoint | None,
                     from_checkpoint: bool):
        """The model with ``source``'s weights; a model that reads the prepared features gets
        the exact encoder that computed them."""
        features = self.data.serves_features(config)
        model = build_model(config, pretrained=False if (source or features) else None)
        if source is not None:
            model.load_state_dict(source.weights)
        if features and not from_checkpoint:
            model.encoder.load_state_dict(
                load_file(str(self.data.root / "features" / "encoder.safetensors")))
        return model.to(self.device)

    def _restore(self, train: dict) -> None:
        """Optimizer, scheduler, loop position and RNG states of the checkpoint resumed."""
        self.optimizer.load_state_dict(train["optimizer"])
        self.scheduler.load_state_dict(train["scheduler"])
        self.state = train["loop"]
        if "best_bleu4" in self.state:  # a run saved before --select-by
            self.state["best_score"] = self.state.pop("best_bleu4")
        self.seconds = train.get("seconds", 0.0)  # 0: saved before the wall time was kept
        set_rng_state(train["rng"], self.generator)
        threads = train.get("threads")
        if threads and threads != torch.get_num_threads() and self.rank == 0:
            print(f"note: this run was trained with {threads} CPU threads and resumes with "
                  f"{torch.get_num_threads()}; it continues, but not bit for bit as it would "
                  f"have (set OMP_NUM_THREADS={threads} for that)", file=sys.stderr)

    # -- checkpoints ---------------------------------------------------------------------
    def save(self, name: str, with_train: bool) -> None:
        if self.rank != 0:
            return
        train = None
        if with_train:
            train = {"train_config": self.cfg.to_dict(), "optimizer": self.optimizer.state_dict(),
                     "scheduler": self.scheduler.state_dict(), "loop": dict(self.state),
                     "rng": rng_state(self.generator), "threads": torch.get_num_threads(),
                     "seconds": self.wall_seconds()}
        save_checkpoint(self.run_dir / f"{name}.safetensors", self.config, self.data.vocab,
                        self.model.state_dict(), train)

    # -- one step ------------------------------------------------------------------------
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

    # -- validation ----------------------------------------------------------------------
    def validate(self) -> dict[str, float]:
        """BLEU and CIDEr-D of the decoded val captions (rank 0), shared with every rank."""
        metrics = {}
        if self.rank == 0 and "val" in self.data.meta["splits"]:
            preds = decode_split(self.model, self.data.vocab, self.data, "val",
                                 DecodeOptions(beam_size=self.cfg.val_beam_size),
                                 max_images=self.cfg.val_max_images)
            metrics, _ = score(preds, coco=False)
        return broadcast(metrics, self.world)

    def end_of_epoch(self, schedule: bool = True) -> bool:
        """Validate, keep the best, decay the learning rate (when ``schedule``); True when
        early stopping is due."""
        metrics = self.validate()
        value = metrics.get(self.cfg.select_by, 0.0)
        if schedule:
            self.scheduler.step(value)
        st = self.state
        epoch_best = st.get("epoch_best", st["best_score"])  # runs saved before had one best
        if value > st["best_score"]:  # best.safetensors: the best weights scored, wherever
            st["best_score"] = value
            self.save("best", with_train=False)
        if schedule:  # early stopping counts epoch ends only: a mid-epoch stop shifts nothing
            if value > epoch_best:
                st["epoch_best"], st["bad_epochs"] = value, 0
            else:
                st["bad_epochs"] += 1
        lr, epochs = self.optimizer.param_groups[0]["lr"], self.epochs_done()
        self.log.log({"step": st["step"], "epoch": epochs,
                      **{f"val/{k}": v for k, v in metrics.items()}, "lr": lr,
                      "minutes": round(self.wall_seconds() / 60, 2)})
        if self.cfg.progress and self.rank == 0 and not sys.stderr.isatty():
            print(f"epoch {epochs}: step {st['step']}, val {self.cfg.select_by} "
                  f"{value:.4f}, lr {lr:.3g}", file=sys.stderr, flush=True)
        return st["bad_epochs"] >= self.cfg.early_stop

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> TrainResult:
        """Train until the epochs end, a limit (--max-steps, --max-minutes) or early stopping;
        ``last.safetensors`` then holds where it stopped."""
        cfg, st = self.cfg, self.state
        if self._finished():
            return self._result("finished")
        self.model.train()
        self.started = time.perf_counter()
        total = cfg.epochs * self.per_epoch
        # a log file gets one line per epoch (end_of_epoch), not a bar's carriage returns
        self.bar = tqdm(total=min(total, cfg.max_steps) if cfg.max_steps else total,
                        initial=st["step"], desc="train", unit="step", dynamic_ncols=True,
                        disable=not cfg.progress or self.rank or not sys.stderr.isatty())
        stopped = "epochs"
        while st["epoch"] < cfg.epochs:
            limit = self._train_epoch()
            if limit:  # stopped mid-epoch: score the weights it stopped with too, unless told
                stopped = limit  # to stop by a signal (it stops at once)
                if limit in ("max_steps", "max_minutes") and (st["batch"] or st["best_score"] < 0):
                    self.end_of_epoch(schedule=False)
                break
            st["epoch"] += 1
            st["batch"] = 0
            early_stop = self.end_of_epoch()
            if cfg.keep_epochs:
                self.save(f"epoch{st['epoch']}", with_train=False)
            if early_stop:
                stopped = "early_stop"
                st["early_stopped"] = cfg.epochs  # done, unless resumed with more epochs
                break
            self.save("last", with_train=True)
        if stopped != "epochs":
            self.save("last", with_train=True)
        self.bar.close()
        self.log.close()
        return self._result(stopped)

    def _train_epoch(self) -> str | None:
        """The rest of the current epoch; the limit that stopped it early, if one did."""
        cfg, st = self.cfg, self.state
        batches = epoch_batches(len(self.dataset), cfg.batch_size, cfg.seed, st["epoch"],
                                self.rank, self.world)
        loader = DataLoader(self.dataset, batch_sampler=batches[st["batch"]:],
                            num_workers=cfg.num_workers, collate_fn=collate,
                            worker_init_fn=_ignore_interrupts,
                            # its own generator: making a loader must not draw from the
                            # global RNG, or a resumed run's dropout would shift
                            generator=torch.Generator().manual_seed(cfg.seed))
        t0, n_caps = time.perf_counter(), 0
        logged = (t0, 0)  # when the log's last record was written, and the captions by then
        for batch in loader:
            terms = self.train_step(batch)
            st["step"] += 1
            st["batch"] += 1
            n_caps += len(batch.captions)
            now = time.perf_counter()
            self.bar.update(1)
            self.bar.set_postfix(epoch=st["epoch"], loss=f"{terms['total']:.3f}",
                                 caps_s=f"{n_caps * self.world / (now - t0):.0f}")
            if st["step"] % 10 == 0:  # the speed since the last record, not the epoch's mean
                speed = (n_caps - logged[1]) * self.world / (now - logged[0])
                logged = (now, n_caps)
                self.log.log({"step": st["step"], "epoch": self.epochs_done(),
                              "captions_per_s": speed,
                              **{f"train/{k}": v for k, v in terms.items()}})
            if cfg.save_every and st["step"] % cfg.save_every == 0:
                self.save("last", with_train=True)
            limit = self._limit_reached()
            if limit:
                return limit
        return None

    def _result(self, stopped: str) -> TrainResult:
        st = self.state
        return TrainResult(st["step"], self.epochs_done(), st["best_score"], self.cfg.select_by,
                           self.run_dir, stopped, self.rank, self.wall_seconds() / 60)

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

    def _finished(self) -> bool:
        """Whether the run has nothing left to do: its epochs or steps are done, or early
        stopping ended it and --epochs was not raised since (raising it trains on)."""
        cfg, st = self.cfg, self.state
        if st.get("early_stopped") is not None and cfg.epochs > st["early_stopped"]:
            del st["early_stopped"]
            st["bad_epochs"] = 0
        return (st["epoch"] >= cfg.epochs or bool(cfg.max_steps and st["step"] >= cfg.max_steps)
                or st.get("early_stopped") is not None)

    def _limit_reached(self) -> str | None:
        """What stops the run now, if anything: a signal ("SIGINT", "SIGTERM"), "max_steps"
        or "max_minutes" (every rank agrees with rank 0)."""
        cfg = self.cfg
        if cfg.max_steps and self.state["step"] >= cfg.max_steps:
            return "max_steps"
        reason = self.stop.requested if self.stop else None
        if not reason and cfg.max_minutes and \
                time.perf_counter() - self.started > cfg.max_minutes * 60:
            reason = "max_minutes"
        return broadcast(reason, self.world)

    def close(self, ended: bool) -> None:
        """Leave the process group, if this run joined one, after dropping the DDP wrapper (and
        the objective that holds it), which hold the group. ``ended``: the run stopped normally
        on every rank, so the ranks leave together (see ``leave_group``)."""
        if self.world > 1:
            self.ddp = self.objective = None
            leave_group(wait=ended)


def train(model_config: ModelConfig, train_config: TrainConfig, resume: bool = False,
          encoder_given: bool = True) -> TrainResult:
    """Train (or resume) a captioner in ``train_config.out``, see ``Trainer``. The folder is
    locked for the run (a second writer is refused), a new run refuses a folder that holds
    another's files, and SIGINT/SIGTERM stop after the current step with last.safetensors
    saved (``TrainResult.stopped`` names the signal)."""
    owner = int(os.environ.get("RANK", "0")) == 0  # only rank 0 writes the run folder
    with (RunLock(train_config.out) if owner else nullcontext()), GracefulStop() as stop:
        if owner and not resume:
            refuse_existing_run(train_config.out)
        trainer = Trainer(model_config, train_config, resume, encoder_given)
        trainer.stop = stop
        result = None
        try:
            result = trainer.run()
        finally:
            trainer.close(ended=result is not None)
        return result
