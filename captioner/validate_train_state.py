"""Checks of a resumable training state (``last.safetensors``'s ``train``): what ``--resume``
needs, each field typed and bounded; one line naming a bad field."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from .checkpoint_format import fail as _fail
from .config import TrainConfig
from .fields import FieldError, Spec, bounds_text, shown as _shown, within


def _bounds(lo: float | None = None, hi: float | None = None, lo_open: bool = False,
            hi_open: bool = False) -> Spec:
    """The bounds of one number of the training state."""
    return Spec(min=lo, max=hi, min_open=lo_open, max_open=hi_open)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _get(obj: Any, name: str, path, label: str) -> Any:
    if not isinstance(obj, dict):
        _fail(path, label.rstrip("."), f"must be an object, got {_shown(obj)}")
    if name not in obj:
        _fail(path, label + name, "missing")
    return obj[name]


def _number(value: Any, path, where: str, bound: Spec = Spec(), integer: bool = False,
            infinite: bool = False) -> None:
    kind = "an integer" if integer else "a number" if infinite else "a finite number"
    ok = _is_int(value) if integer else (
        (_is_int(value) or isinstance(value, float)) and not math.isnan(value)
        and (infinite or math.isfinite(value)))
    if not ok or not within(value, bound):
        _fail(path, where, " ".join(filter(None, [f"must be {kind}", bounds_text(bound)]))
              + f", got {_shown(value)}")


def _byte_tensor(value: Any, path, where: str, numel: int | None = None) -> None:
    if not (isinstance(value, torch.Tensor) and value.dtype == torch.uint8 and value.dim() == 1
            and (numel is None or value.numel() == numel)):
        size = f" of {numel} bytes" if numel else ""
        _fail(path, where, f"must be a byte tensor{size} (a random generator's state)")


#: the resume loop counters: name -> (integer?, bound)
LOOP = {"step": (True, _bounds(0)), "epoch": (True, _bounds(0)), "batch": (True, _bounds(0)),
        "bad_epochs": (True, _bounds(0))}
#: ReduceLROnPlateau's state that its load_state_dict takes without looking
SCHEDULER = {"factor": (False, _bounds(0, 1, True, True)), "patience": (True, _bounds(0)),
             "cooldown": (True, _bounds(0)), "cooldown_counter": (True, _bounds(0)),
             "num_bad_epochs": (True, _bounds(0)), "last_epoch": (True, _bounds(0))}


def check_train_state(train: Any, path: str | Path) -> None:
    """Check the resumable training state of a checkpoint (``Trainer.save``), tensors already
    put back in place: ``train_config`` is a valid TrainConfig, ``use_features`` (if kept) a bool,
    ``loop`` has non-negative integer step/epoch/batch/bad_epochs and a finite best score,
    ``optimizer`` has parameter groups with unique parameter ids, positive finite learning rates
    and state only for those ids, ``scheduler`` has sane counters and one min_lr per group, and
    ``rng`` (and each other rank's in ``rank_rng``) holds generator states and Python's. Raises
    ``ValueError("{path}: field train.X: {problem}")``."""
    t = "train."
    try:
        TrainConfig.from_dict(_get(train, "train_config", path, t))
    except FieldError as exc:
        _fail(path, f"{t}train_config.{exc.field}", exc.problem)
    use = train.get("use_features", False)  # kept by runs saved before the data told it
    if not isinstance(use, bool):
        _fail(path, t + "use_features", f"must be true or false, got {_shown(use)}")
    _check_loop(_get(train, "loop", path, t), path, t + "loop.")
    groups = _check_optimizer(_get(train, "optimizer", path, t), path, t + "optimizer.")
    _check_scheduler(_get(train, "scheduler", path, t), path, t + "scheduler.", len(groups))
    _check_rng(_get(train, "rng", path, t), path, t + "rng.")
    ranks = train.get("rank_rng", [])  # ranks 1.. of a run of several processes
    if not isinstance(ranks, list):
        _fail(path, t + "rank_rng", f"must be a list, got {_shown(ranks)}")
    for i, state in enumerate(ranks):
        _check_rng(state, path, f"{t}rank_rng.{i}.")


def _check_loop(loop: Any, path, at: str) -> None:
    for name, (integer, bound) in LOOP.items():
        _number(_get(loop, name, path, at), path, at + name, bound, integer)
    best = "best_score" if "best_score" in loop or "best_bleu4" not in loop else "best_bleu4"
    _number(_get(loop, best, path, at), path, at + best)


def _check_optimizer(opt: Any, path, o: str) -> list:
    """The optimizer's state; returns its parameter groups."""
    groups = _get(opt, "param_groups", path, o)
    if not isinstance(groups, list) or not groups:
        _fail(path, o + "param_groups", f"must be a non-empty list, got {_shown(groups)}")
    ids: set[int] = set()
    for i, group in enumerate(groups):
        g = f"{o}param_groups.{i}."
        params = _get(group, "params", path, g)
        if not isinstance(params, list) or not all(_is_int(p) and p >= 0 for p in params) \
                or ids & set(params) or len(set(params)) != len(params):
            _fail(path, g + "params", "must be a list of distinct parameter ids")
        ids |= set(params)
        _number(_get(group, "lr", path, g), path, g + "lr", _bounds(0))
        for name in ("eps", "weight_decay"):
            if name in group:
                _number(group[name], path, g + name, _bounds(0))
        betas = group.get("betas", (0, 0))
        if not (isinstance(betas, (list, tuple)) and len(betas) == 2
                and all(_is_number(b) and 0 <= b < 1 for b in betas)):
            _fail(path, g + "betas", f"must be two numbers >= 0 and < 1, got {_shown(betas)}")
    state = _get(opt, "state", path, o)
    if not isinstance(state, dict):
        _fail(path, o + "state", f"must be an object, got {_shown(state)}")
    for pid, value in state.items():
        if pid not in ids or not isinstance(value, dict):
            _fail(path, f"{o}state.{pid}", "is not the state of a parameter of any group")
    return groups


def _check_scheduler(sched: Any, path, s: str, groups: int) -> None:
    for name, (integer, bound) in SCHEDULER.items():
        _number(_get(sched, name, path, s), path, s + name, bound, integer)
    _number(_get(sched, "best", path, s), path, s + "best", infinite=True)  # starts at -inf
    min_lrs = _get(sched, "min_lrs", path, s)
    if not isinstance(min_lrs, list) or len(min_lrs) != groups or \
            not all(_is_number(v) and v >= 0 for v in min_lrs):
        _fail(path, s + "min_lrs", f"must be {groups} numbers >= 0 (one per parameter "
                                   f"group), got {_shown(min_lrs)}")


def _check_rng(rng: Any, path, r: str) -> None:
    _byte_tensor(_get(rng, "torch", path, r), path, r + "torch", torch.get_rng_state().numel())
    _byte_tensor(_get(rng, "generator", path, r), path, r + "generator")
    for i, cuda in enumerate(rng.get("cuda", [])):
        _byte_tensor(cuda, path, f"{r}cuda.{i}")
    try:  # random.getstate(): (version, 625 ints, gauss_next)
        version, words, gauss = json.loads(_get(rng, "python", path, r))
        ok = _is_int(version) and len(words) == 625 and all(map(_is_int, words)) and \
            (gauss is None or _is_number(gauss))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        _fail(path, r + "python", "must be the JSON of Python's random.getstate()")
