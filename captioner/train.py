"""The training loop: single process or DistributedDataParallel (torchrun), resumable exactly.

Run folder: ``last.safetensors`` (model + full training state, every ``save_every`` steps and
each epoch), ``best.safetensors`` (best validation score, ``--select-by``; model only),
``metrics.jsonl``.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from tqdm import tqdm

from .checkpoint import load_checkpoint, save_checkpoint
from .config import OBJECTIVES, SELECT_METRICS, ModelConfig, TrainConfig
from .data.prepared import CaptionPairs, PreparedData, collate
from .errors import UserError
from .evaluate import decode_split, score
from .losses import caption_log_likelihood, caption_losses, self_critical
from .models.captioner import build_model
from .rewards import CiderD
from .search import banned_mask, sample
from .vocab import Vocabulary


class TrainingError(UserError):
    """Training cannot go on (diverged, or mismatched data and checkpoint); one line."""


@dataclass
class TrainResult:
    step: int
    epoch: int
    best_score: float  # the best validation score (``select_by``)
    select_by: str
    run_dir: Path
    stopped: str  # "epochs", "max_steps" (also a --max-minutes stop), "early_stop"
    rank: int = 0  # this process's rank under torchrun


def resolve_model_config(data: PreparedData, config: ModelConfig, encoder_given: bool
                         ) -> tuple[ModelConfig, bool]:
    """Fit the model config to the data: vocabulary size, caption length and, when the folder
    has features and the encoder stays frozen, the features' encoder/grid/preprocessing.
    Returns (config, use_features)."""
    config = replace(config, vocab_size=len(data.vocab), max_len=data.max_len)
    feats = data.features
    frozen = config.fine_tune_blocks in (None, 0)
    if feats and frozen and (not encoder_given or config.encoder == feats["encoder"]):
        return replace(config, fine_tune_blocks=0, **data.feature_config()), True
    return config, False


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1
                  ) -> list[list[int]]:
    """This rank's batches of image indices for an epoch: a permutation fixed by (seed, epoch),
    padded to split evenly over ranks, so a resumed run sees exactly the same order."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    per_rank = math.ceil(n / world)
    order = (order * (world + 1))[: per_rank * world][rank::world]
    return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]


def _distributed() -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    rank = dist.get_rank() if world > 1 else 0
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def _rng_state(generator: torch.Generator) -> dict:
    state = {"torch": torch.get_rng_state(), "generator": generator.get_state(),
             "python": json.dumps(random.getstate())}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    if state["generator"].numel() != generator.get_state().numel():
        raise TrainingError("the checkpoint's sampling state is from another device type "
                            "(CPU vs CUDA); resume on the kind of device that trained it")
    generator.set_state(state["generator"])
    py = json.loads(state["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))
    if torch.cuda.is_available() and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def _broadcast(value, world: int):
    if world == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class Trainer:
    """Holds the model, optimizer and loop state; ``run()`` trains until a stopping rule."""

    def __init__(self, model_config: ModelConfig, cfg: TrainConfig, resume: bool = False,
                 encoder_given: bool = True):
        if cfg.batch_by not in ("image", "caption"):
            raise TrainingError(f"--batch-by must be image or caption, not {cfg.batch_by!r}")
        if cfg.objective not in OBJECTIVES:
            raise TrainingError(f"--objective must be one of {', '.join(OBJECTIVES)}, "
                                f"not {cfg.objective!r}")
        if cfg.select_by not in SELECT_METRICS:
            raise TrainingError(f"--select-by must be one of {', '.join(SELECT_METRICS)}, "
                                f"not {cfg.select_by!r}")
        if cfg.objective == "scst" and (cfg.batch_by != "image" or cfg.scst_samples < 2):
            raise TrainingError("--objective scst needs --batch-by image (an image's references "
                                "score its samples) and --scst-samples >= 2")
        self.rank, self.world, self.device = _distributed()
        self.cfg = cfg
        self.run_dir = Path(cfg.out)
        self.data = PreparedData(cfg.data)
        last = self.run_dir / "last.safetensors"
        ckpt, init = None, None
        if resume:
            ckpt = self._checkpoint_for_data(last, "--resume")
            if ckpt.train is None:
                raise TrainingError(f"{last}: has no training state to resume from")
            saved = TrainConfig.from_dict(ckpt.train["train_config"])
            self.cfg = cfg = replace(saved, out=cfg.out, data=cfg.data,
                                     max_steps=cfg.max_steps or saved.max_steps,
                                     epochs=max(cfg.epochs, saved.epochs), progress=cfg.progress)
            model_config = ckpt.config
            self.use_features = ckpt.train["use_features"]
        elif last.exists():
            raise TrainingError(f"{self.run_dir}: already has a run; use --resume to continue it "
                                "or pick another --out")
        else:
            init = self._checkpoint_for_data(cfg.init, "--init", with_train=False) \
                if cfg.init else None
            if init is not None:  # its model, with the encoder blocks to train from the flags
                tune = model_config.fine_tune_blocks
                model_config = replace(init.config, fine_tune_blocks=init.config.fine_tune_blocks
                                       if tune is None else tune)
                encoder_given = True
            model_config, self.use_features = resolve_model_config(self.data, model_config,
                                                                   encoder_given)
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self.model = build_model(model_config, pretrained=False if (ckpt or self.use_features)
                                 else None)
        self.config = self.model.config
        if ckpt is not None or init is not None:
            self.model.load_state_dict((ckpt or init).weights)
        if ckpt is None and self.use_features:  # the exact encoder that computed the features
            self.model.encoder.load_state_dict(
                load_file(str(self.data.root / "features" / "encoder.safetensors")))
        self.model.to(self.device)
        self.ddp = (torch.nn.parallel.DistributedDataParallel(
            self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            if self.world > 1 else self.model)
        enc_params = [p for p in self.model.encoder.parameters() if p.requires_grad]
        groups = [{"params": list(self.model.decoder.parameters()), "lr": cfg.lr}]
        if enc_params and not self.use_features:
            groups.append({"params": enc_params, "lr": cfg.encoder_lr or cfg.lr})
        self.optimizer = torch.optim.Adam(groups, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="max", factor=cfg.lr_decay, patience=cfg.lr_patience)
        # draws of stochastic attention happen on the training device (a CUDA tensor cannot
        # be sampled with a CPU generator)
        self.generator = torch.Generator(self.device).manual_seed(cfg.seed)
        self.state = {"step": 0, "epoch": 0, "batch": 0, "best_score": -1.0, "bad_epochs": 0}
        if ckpt is not None:
            t = ckpt.train
            self.optimizer.load_state_dict(t["optimizer"])
            self.scheduler.load_state_dict(t["scheduler"])
            self.state = t["loop"]
            if "best_bleu4" in self.state:  # a run saved before --select-by
                self.state["best_score"] = self.state.pop("best_bleu4")
            _set_rng_state(t["rng"], self.generator)
        self.dataset = self.data.dataset("train", None if self.use_features else
                                         self.config.preprocess)
        if cfg.batch_by == "caption":
            self.dataset = CaptionPairs(self.dataset)
        self.reward = None
        if cfg.objective == "scst":  # document frequencies from all training references
            self.reward = CiderD([[c.split() for c in e["captions"]]
                                  for e in self.dataset.entries])
            self.banned = banned_mask(self.config.vocab_size, device=self.device)
        self.writer = None
        if cfg.logdir and self.rank == 0:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(cfg.logdir)
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._trim_metrics()

    def _checkpoint_for_data(self, path, flag: str, with_train: bool = True):
        """A checkpoint to continue from, refused when its vocabulary is not this data's."""
        ckpt = load_checkpoint(path, with_train=with_train)
        if ckpt.vocab != self.data.vocab:
            raise TrainingError(f"{path}: trained with a different vocabulary than "
                                f"{self.cfg.data}; {flag} needs the data it was trained on")
        return ckpt

    # -- bookkeeping ---------------------------------------------------------------------
    def _trim_metrics(self) -> None:
        """Drop log lines written after the checkpoint we resume from."""
        path = self.run_dir / "metrics.jsonl"
        if path.exists():
            keep = [l for l in path.read_text().splitlines()
                    if l.strip() and json.loads(l).get("step", 0) <= self.state["step"]]
            path.write_text("".join(l + "\n" for l in keep))

    def _log(self, record: dict) -> None:
        if self.rank != 0:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "epoch"):
                    self.writer.add_scalar(k, v, record["step"])

    def save(self, name: str, with_train: bool) -> None:
        if self.rank != 0:
            return
        train = None
        if with_train:
            train = {"train_config": self.cfg.to_dict(), "use_features": self.use_features,
                     "optimizer": self.optimizer.state_dict(),
                     "scheduler": self.scheduler.state_dict(), "loop": dict(self.state),
                     "rng": _rng_state(self.generator)}
        save_checkpoint(self.run_dir / f"{name}.safetensors", self.config, self.data.vocab,
                        self.model.state_dict(), train)

    # -- the loop ------------------------------------------------------------------------
    def train_step(self, batch) -> dict[str, float]:
        if self.reward is not None:
            return self.scst_step(batch)
        cfg, model = self.cfg, self.model
        inputs = batch.inputs.to(self.device, non_blocking=True)
        with self._autocast():
            out = self.ddp(inputs, batch.captions.to(self.device), batch.lengths,
                           batch.image_index.to(self.device), self.generator)
        out.logits = out.logits.float()
        baseline = getattr(model.decoder.attention, "baseline", None)
        terms, new_baseline = caption_losses(out, self.config, baseline, cfg.label_smoothing)
        self._descend(terms["total"])
        if new_baseline is not None:
            model.decoder.attention.baseline.copy_(new_baseline)
        return {k: float(v.detach()) for k, v in terms.items()}

    def scst_step(self, batch) -> dict[str, float]:
        """Self-critical step: draw ``scst_samples`` captions per image, reward each with
        CIDEr-D against the image's references, and raise the log-probability of those that
        beat their siblings' mean. Dropout is off throughout, so the gradient is of the same
        distribution the captions were drawn from (hard attention: its inference-time context,
        no sampled locations)."""
        model, n = self.model, self.cfg.scst_samples
        inputs = batch.inputs.to(self.device, non_blocking=True)
        model.eval()
        try:
            with torch.no_grad():
                features = model.encode(inputs) if inputs.dim() == 4 else inputs
            drawn = sample(model.decoder, features, n, self.config.max_len, self.generator)
            words = [self.data.vocab.decode(row[:k]) for row, k in
                     zip(drawn.tokens.tolist(), drawn.lengths.tolist())]
            refs = [r for r in batch.references for _ in range(n)]
            rewards = torch.tensor(self.reward.scores(words, refs)).view(-1, n)
            start = torch.full_like(drawn.tokens[:, :1], Vocabulary.start_id)
            # a frozen encoder's features are reused; a trained one encodes again with gradients
            source = inputs if model.encoder.trainable else features
            with self._autocast():
                out = self.ddp(source, torch.cat([start, drawn.tokens], 1), drawn.lengths + 2,
                               torch.arange(len(inputs), device=self.device).repeat_interleave(n),
                               self.generator)
        finally:
            model.train()
        mask = out.mask.clone()
        forced = drawn.forced_end.nonzero().flatten()
        mask[forced, drawn.lengths[forced]] = False  # max_len's <end> was not drawn
        log_prob = caption_log_likelihood(out.logits, out.targets, mask, self.banned)
        loss = self_critical(log_prob, rewards, mask.sum())
        self._descend(loss)
        return {"scst": float(loss.detach()), "reward": float(rewards.mean()),
                "total": float(loss.detach())}

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
                                 self.cfg.val_beam_size, max_images=self.cfg.val_max_images)
            metrics, _ = score(preds, coco=False)
        return _broadcast(metrics, self.world)

    def end_of_epoch(self, schedule: bool = True) -> bool:
        """Validate, keep the best, decay the learning rate (when ``schedule``); True when
        early stopping is due."""
        metrics = self.validate()
        value = metrics.get(self.cfg.select_by, 0.0)
        if schedule:
            self.scheduler.step(value)
        if value > self.state["best_score"]:
            self.state["best_score"], self.state["bad_epochs"] = value, 0
            self.save("best", with_train=False)
        elif schedule:
            self.state["bad_epochs"] += 1
        self._log({"step": self.state["step"], "epoch": self.state["epoch"],
                   **{f"val/{k}": v for k, v in metrics.items()},
                   "lr": self.optimizer.param_groups[0]["lr"]})
        return self.state["bad_epochs"] >= self.cfg.early_stop

    def run(self) -> TrainResult:
        cfg, st = self.cfg, self.state
        self.model.train()
        stopped = "epochs"
        started = time.perf_counter()
        total_steps = cfg.max_steps or None
        bar = tqdm(total=total_steps, initial=st["step"], disable=not cfg.progress or self.rank,
                   desc="train", unit="step", dynamic_ncols=True)
        while st["epoch"] < cfg.epochs:
            batches = epoch_batches(len(self.dataset), cfg.batch_size, cfg.seed, st["epoch"],
                                    self.rank, self.world)
            loader = DataLoader(self.dataset, batch_sampler=batches[st["batch"]:],
                                num_workers=cfg.num_workers, collate_fn=collate,
                                # its own generator: making a loader must not draw from the
                                # global RNG, or a resumed run's dropout would shift
                                generator=torch.Generator().manual_seed(cfg.seed))
            t0, n_caps = time.perf_counter(), 0
            for batch in loader:
                terms = self.train_step(batch)
                st["step"] += 1
                st["batch"] += 1
                n_caps += len(batch.captions)
                speed = n_caps * self.world / (time.perf_counter() - t0)
                bar.update(1)
                bar.set_postfix(epoch=st["epoch"], loss=f"{terms['total']:.3f}",
                                caps_s=f"{speed:.0f}")
                if st["step"] % 10 == 0:
                    self._log({"step": st["step"], "epoch": st["epoch"], "captions_per_s": speed,
                               **{f"train/{k}": v for k, v in terms.items()}})
                if cfg.save_every and st["step"] % cfg.save_every == 0:
                    self.save("last", with_train=True)
                out_of_time = cfg.max_minutes and time.perf_counter() - started > cfg.max_minutes * 60
                if (cfg.max_steps and st["step"] >= cfg.max_steps) or _broadcast(out_of_time, self.world):
                    stopped = "max_steps"
                    break
            if stopped == "max_steps":
                break
            st["epoch"] += 1
            st["batch"] = 0
            if self.end_of_epoch():
                stopped = "early_stop"
                self.save("last", with_train=True)
                break
            self.save("last", with_train=True)
        bar.close()
        if stopped == "max_steps":
            if st["batch"] or st["best_score"] < 0:  # score the final weights too
                self.end_of_epoch(schedule=False)
            self.save("last", with_train=True)
        if self.writer:
            self.writer.close()
        return TrainResult(st["step"], st["epoch"], st["best_score"], cfg.select_by,
                           self.run_dir, stopped, self.rank)


def train(model_config: ModelConfig, train_config: TrainConfig, resume: bool = False,
          encoder_given: bool = True) -> TrainResult:
    """Train (or resume) a captioner; see ``Trainer``."""
    trainer = Trainer(model_config, train_config, resume, encoder_given)
    try:
        return trainer.run()
    finally:
        if trainer.world > 1 and dist.is_initialized():
            dist.destroy_process_group()
