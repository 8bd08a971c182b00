"""The training loop around a ``Trainer``: epochs of steps, validation at each epoch end (the
best weights kept, the learning rate decayed, early stopping), the limits (``--max-steps``,
``--max-minutes``, a signal), ``last.safetensors`` saved so that a resume goes on exactly."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from .data.dataset import collate
from .distributed import broadcast, epoch_batches
from .trainer import Trainer, ignore_interrupts


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


def result(t: Trainer, stopped: str) -> TrainResult:
    st = t.state
    return TrainResult(st["step"], t.epochs_done(), st["best_score"], t.cfg.select_by,
                       t.run_dir, stopped, t.rank, t.wall_seconds() / 60)


def end_of_epoch(t: Trainer, schedule: bool = True) -> bool:
    """Validate, keep the best, decay the learning rate (when ``schedule``); True when early
    stopping is due. A stop mid-epoch scores without ``schedule``: early stopping and the
    decay count epoch ends only, so a resume goes on as if the run had not stopped."""
    metrics = t.validate()
    value = metrics.get(t.cfg.select_by, 0.0)
    if schedule:
        t.scheduler.step(value)
    st = t.state
    epoch_best = st.get("epoch_best", st["best_score"])  # runs saved before had one best
    if value > st["best_score"]:  # best.safetensors: the best weights scored, wherever
        st["best_score"] = value
        t.save("best", with_train=False)
    if schedule:
        if value > epoch_best:
            st["epoch_best"], st["bad_epochs"] = value, 0
        else:
            st["bad_epochs"] += 1
    lr, epochs = t.optimizer.param_groups[0]["lr"], t.epochs_done()
    t.log.log({"step": st["step"], "epoch": epochs, **{f"val/{k}": v for k, v in metrics.items()},
               "lr": lr, "minutes": round(t.wall_seconds() / 60, 2)})
    if t.cfg.progress and t.rank == 0 and not sys.stderr.isatty():
        print(f"epoch {epochs}: step {st['step']}, val {t.cfg.select_by} {value:.4f}, "
              f"lr {lr:.3g}", file=sys.stderr, flush=True)
    return st["bad_epochs"] >= t.cfg.early_stop


def finished(t: Trainer) -> bool:
    """Whether the run has nothing left to do: its epochs or steps are done, or early stopping
    ended it and --epochs was not raised since (raising it trains on)."""
    cfg, st = t.cfg, t.state
    if st.get("early_stopped") is not None and cfg.epochs > st["early_stopped"]:
        del st["early_stopped"]
        st["bad_epochs"] = 0
    return (st["epoch"] >= cfg.epochs or bool(cfg.max_steps and st["step"] >= cfg.max_steps)
            or st.get("early_stopped") is not None)


def limit_reached(t: Trainer, started: float) -> str | None:
    """What stops the run now, if anything: a signal ("SIGINT", "SIGTERM"), "max_steps" or
    "max_minutes" (every rank agrees with rank 0)."""
    cfg = t.cfg
    if cfg.max_steps and t.state["step"] >= cfg.max_steps:
        return "max_steps"
    reason = t.stop.requested if t.stop else None
    if not reason and cfg.max_minutes and time.perf_counter() - started > cfg.max_minutes * 60:
        reason = "max_minutes"
    return broadcast(reason, t.world)


def run(t: Trainer) -> TrainResult:
    """Train until the epochs end, a limit (--max-steps, --max-minutes, a signal) or early
    stopping; ``last.safetensors`` then holds where it stopped."""
    cfg, st = t.cfg, t.state
    if finished(t):
        return result(t, "finished")
    t.model.train()
    started = time.perf_counter()
    total = cfg.epochs * t.per_epoch
    # a log file gets one line per epoch (end_of_epoch), not a bar's carriage returns
    bar = tqdm(total=min(total, cfg.max_steps) if cfg.max_steps else total, initial=st["step"],
               desc="train", unit="step", dynamic_ncols=True,
               disable=not cfg.progress or t.rank or not sys.stderr.isatty())
    stopped = "epochs"
    while st["epoch"] < cfg.epochs:
        limit = train_epoch(t, bar, started)
        if limit:  # stopped mid-epoch: score the weights it stopped with too, unless a
            stopped = limit  # signal stopped it (it stops at once)
            if limit in ("max_steps", "max_minutes") and (st["batch"] or st["best_score"] < 0):
                end_of_epoch(t, schedule=False)
            break
        st["epoch"] += 1
        st["batch"] = 0
        early_stop = end_of_epoch(t)
        if cfg.keep_epochs:
            t.save(f"epoch{st['epoch']}", with_train=False)
        if early_stop:
            stopped = "early_stop"
            st["early_stopped"] = cfg.epochs  # done, unless resumed with more epochs
            break
        t.save("last", with_train=True)
    if stopped != "epochs":
        t.save("last", with_train=True)
    bar.close()
    t.log.close()
    return result(t, stopped)


def train_epoch(t: Trainer, bar: tqdm, started: float) -> str | None:
    """The rest of the current epoch; the limit that stopped it early, if one did."""
    cfg, st = t.cfg, t.state
    batches = epoch_batches(len(t.dataset), cfg.batch_size, cfg.seed, st["epoch"], t.rank,
                            t.world)
    loader = DataLoader(t.dataset, batch_sampler=batches[st["batch"]:],
                        num_workers=cfg.num_workers, collate_fn=collate,
                        worker_init_fn=ignore_interrupts,
                        # its own generator: making a loader must not draw from the global
                        # RNG, or a resumed run's dropout would shift
                        generator=torch.Generator().manual_seed(cfg.seed))
    t0, n_caps = time.perf_counter(), 0
    logged = (t0, 0)  # when the log's last record was written, and the captions by then
    for batch in loader:
        terms = t.train_step(batch)
        st["step"] += 1
        st["batch"] += 1
        n_caps += len(batch.captions)
        now = time.perf_counter()
        bar.update(1)
        bar.set_postfix(epoch=st["epoch"], loss=f"{terms['total']:.3f}",
                        caps_s=f"{n_caps * t.world / (now - t0):.0f}")
        if st["step"] % 10 == 0:  # the speed since the last record, not the epoch's mean
            speed = (n_caps - logged[1]) * t.world / (now - logged[0])
            logged = (now, n_caps)
            t.log.log({"step": st["step"], "epoch": t.epochs_done(), "captions_per_s": speed,
                       **{f"train/{k}": v for k, v in terms.items()}})
        if cfg.save_every and st["step"] % cfg.save_every == 0:
            t.save("last", with_train=True)
        limit = limit_reached(t, started)
        if limit:
            return limit
    return None
