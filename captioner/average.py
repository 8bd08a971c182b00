"""Checkpoint averaging: one model whose weights are the mean of several checkpoints of one
architecture and vocabulary, such as the last epochs of a run (as Vaswani et al., 2017, averaged
their last checkpoints). It decodes at the cost of one model, where an ensemble of the same
checkpoints runs each of them. ``epochs_near_best`` picks a run's set: the epochs up to its
best, or just past it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from .checkpoint import Checkpoint, load_checkpoint, read_train_header, save_checkpoint
from .errors import UserError


def average_checkpoints(paths: Sequence[str | Path]) -> Checkpoint:
    """The checkpoint whose floating-point weights are the mean of ``paths``' (summed in float64,
    stored in each tensor's own dtype); other tensors (counters) are the first's, as are the
    config and vocabulary. Raises ValueError naming the file and what differs when the
    checkpoints do not share one config and one vocabulary. No training state: it is a model to
    evaluate, decode with, or start a new run from (``train --init``)."""
    if len(paths) < 2:
        raise ValueError(f"averaging needs two checkpoints or more, got {len(paths)}")
    first = load_checkpoint(paths[0], with_train=False)
    sums = {k: v.double() if v.is_floating_point() else v for k, v in first.weights.items()}
    for path in paths[1:]:
        ckpt = load_checkpoint(path, with_train=False)
        _same_model(first, ckpt, paths[0], path)
        for key, value in ckpt.weights.items():
            if value.is_floating_point():
                sums[key] += value.double()
    weights = {k: (v / len(paths)).to(first.weights[k].dtype) if v.is_floating_point() else v
               for k, v in sums.items()}
    return Checkpoint(first.config, first.vocab, weights)


def _same_model(first: Checkpoint, other: Checkpoint, first_path, path) -> None:
    for f in fields(first.config):
        a, b = getattr(first.config, f.name), getattr(other.config, f.name)
        if a != b:
            raise ValueError(f"{path}: {f.name} is {b!r} where {first_path} has {a!r}; "
                             "only checkpoints of one model configuration average")
    if other.vocab != first.vocab:
        raise ValueError(f"{path}: a different vocabulary than {first_path}")


def write_average(paths: Sequence[str | Path], out: str | Path) -> Checkpoint:
    """Average ``paths`` and write the result to ``out`` (atomically); ``out`` may not be one of
    them."""
    target = Path(out).resolve()
    if any(Path(p).resolve() == target for p in paths):
        raise ValueError(f"--out {out} is one of the checkpoints to average: write elsewhere")
    ckpt = average_checkpoints(paths)
    save_checkpoint(out, ckpt.config, ckpt.vocab, ckpt.weights)
    return ckpt


def epochs_near_best(run_dir: str | Path, count: int, past: int = 0) -> list[Path]:
    """The checkpoints of ``count`` consecutive epochs of a run ending ``past`` epochs after its
    best (0: the best and the epochs before it; fewer at either end of the run, but ``past`` > 0
    needs an epoch after the best), its ``epochN.safetensors`` kept by ``train --keep-epochs``.
    "Best" is by the run's own ``--select-by`` score at the epoch ends in its ``metrics.jsonl``
    (a stop mid-epoch is no epoch). On Flickr8k val, ending at the best was the better set for
    one seed and ending one past it for another (README): try both. Raises UserError naming the
    run and the problem."""
    run = Path(run_dir)
    log, last = run / "metrics.jsonl", run / "last.safetensors"
    if not log.is_file() or not last.is_file():
        raise UserError(f"--run {run}: not a training run (no metrics.jsonl or last.safetensors)")
    select_by = ((read_train_header(last) or {}).get("train_config") or {}).get("select_by")
    if not select_by:
        raise UserError(f"--run {run}: {last.name} carries no training config")
    key = "val/" + select_by
    scores: dict[int, float] = {}
    for line in log.read_text().splitlines():
        record = json.loads(line) if line.strip() else {}
        epoch = record.get("epoch")
        if key in record and float(epoch).is_integer():
            scores.setdefault(int(epoch), record[key])  # one row an epoch end
    if not scores:
        raise UserError(f"--run {run}: no epoch has ended with a validation yet")
    best = max(scores, key=lambda e: (scores[e], -e))  # the earliest of equal scores
    last_epoch = max(scores)
    if past and best == last_epoch:
        raise UserError(f"--run {run}: its best epoch ({key[4:]}) is its last (epoch {best}): "
                        f"no epoch after it to end --past-best {past} at")
    end = min(best + past, last_epoch)
    paths = [run / f"epoch{e}.safetensors" for e in range(max(1, end - count + 1), end + 1)]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise UserError(f"--run {run}: {', '.join(missing)} missing (train with --keep-epochs "
                        "to keep each epoch's weights)")
    if len(paths) < 2:
        raise UserError(f"--run {run}: its best epoch ({key[4:]}) is the 1st and the set ends "
                        "there: nothing to average it with")
    return paths
