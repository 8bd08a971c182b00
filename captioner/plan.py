"""What a training run starts from, decided once: a new run's configs fitted to its data, a run
from another run's model (``--init``), or the continuation of a run (``--resume``).

Given values are merged into a base by their declarations (``fields.merge``): a resumed run
takes only what ``TrainConfig`` marks ``resume=True`` (its limits, where its data is) and
refuses any other value that differs from the run's; a run from ``--init`` keeps what the
weights fix (``weights=True``) and takes the rest. The checkpoint is loaded and checked here,
once, and handed to the Trainer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .checkpoint import Checkpoint, load_checkpoint
from .config import ModelConfig, TrainConfig
from .data.dataset import PreparedData
from .errors import TrainingError
from .fields import FieldError, merge, spec_of
from .validate_train_state import check_train_state

#: what may be given with --attention-kind options: ``{kind: {option: value}}``
KindOptions = Mapping[str, Mapping[str, Any]]


@dataclass
class RunPlan:
    """A run's resolved configs, its data, and the checkpoint it starts from: ``weights`` (the
    --init or resumed model) and, when resuming, ``resumed`` (with its training state)."""

    model_config: ModelConfig
    train_config: TrainConfig
    data: PreparedData
    weights: Checkpoint | None = None
    resumed: Checkpoint | None = None


def fit_to_data(data: PreparedData, config: ModelConfig) -> ModelConfig:
    """The model config for ``data``: its vocabulary size and caption length, and, where the
    config leaves them open (None) and the folder has features of the same (or an unnamed)
    encoder, the features' encoder, grid and preprocessing. Whether the model then reads the
    features instead of the images is ``data.serves_features`` (a frozen encoder, an exact
    match)."""
    config = replace(config, vocab_size=len(data.vocab), max_len=data.max_len)
    feats = data.features
    if feats and config.encoder in (None, feats["encoder"]):
        open_fields = {k: v for k, v in data.feature_config().items()
                       if getattr(config, k) in (None, 0)}
        if config.fine_tune_blocks is None:  # features mean a frozen encoder unless told
            open_fields["fine_tune_blocks"] = 0
        config = replace(config, **open_fields)
    return config


def split_options(base: ModelConfig, changes: Mapping[str, Any]
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
    """``changes`` (model fields by name, ``attention_options`` by kind) as the model fields
    and the options of the model's kind; options of another kind are refused (one line)."""
    changes = dict(changes)
    by_kind: KindOptions = changes.pop("attention_options", None) or {}
    kind = changes.get("attention", base.attention)
    for other, options in by_kind.items():
        if other != kind and options:
            raise FieldError(f"attention_options.{other}.{next(iter(options))}",
                             f"is an option of {other} attention, and the model's is {kind}")
    return changes, dict(by_kind.get(kind, {}))


def _same_vocabulary(ckpt: Checkpoint, data: PreparedData, where: Any, flag: str) -> Checkpoint:
    if ckpt.vocab != data.vocab:
        raise TrainingError(f"{where}: trained with a different vocabulary than {data.root}; "
                            f"{flag} needs the data it was trained on")
    return ckpt


def new_run(model: ModelConfig | Mapping[str, Any], cfg: TrainConfig) -> RunPlan:
    """A new run: ``model`` (a config, or the fields given by name, ``attention_options`` by
    kind) fitted to ``cfg.data``; with ``cfg.init``, that checkpoint's model with the given
    fields that its weights do not fix (any other that differs is refused, one line)."""
    if not cfg.data:
        raise FieldError("data", "is required (a folder written by `captioner prepare`)")
    data = PreparedData(cfg.data)
    if not cfg.init:
        if not isinstance(model, ModelConfig):
            fields, options = split_options(ModelConfig(), model)
            model = ModelConfig(**fields, attention_options=options)
        return RunPlan(fit_to_data(data, model), cfg, data)
    if isinstance(model, ModelConfig):
        raise ValueError("a run from init takes its model from the checkpoint: give the model "
                         "fields to change by name (a mapping), not a ModelConfig")
    init = _same_vocabulary(load_checkpoint(cfg.init, with_train=False), data, cfg.init,
                            "--init")
    fields, options = split_options(init.config, model)
    config, conflicts = merge(init.config, {**fields, "attention_options": options},
                              lambda spec: not spec.weights, f"{init.config.attention}-")
    if conflicts:
        raise ValueError(f"--init {cfg.init} keeps the architecture of its model, but "
                         f"{'; '.join(conflicts)}; drop those flags to start from its weights, "
                         "or train a new model without --init")
    return RunPlan(fit_to_data(data, config), cfg, data, weights=init)


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


def resumed_run(out: str | Path, model: Mapping[str, Any] | None = None,
                train: Mapping[str, Any] | None = None) -> RunPlan:
    """The run in ``out`` continued: its saved configs with the given ``train`` fields a
    resume may change (``resume=True``: epochs, max_steps, max_minutes, num_workers, progress,
    data) taken as given; any other given value, ``model`` ones included, that differs from the
    run's is refused, one line listing each (``--lr 0.5 (run: 0.0004)``). What belongs to the
    command, not the run (``session=True``: the progress bar) is this command's."""
    ckpt = load_resumable(out)
    saved = TrainConfig.from_dict(ckpt.train["train_config"])
    fields, options = split_options(ckpt.config, model or {})
    session = {f.name: f.default for f in dataclasses.fields(TrainConfig) if spec_of(f).session}
    train = {**session, **(train or {}), "out": str(out)}
    cfg, conflicts = merge(saved, train, lambda spec: spec.resume)
    _, model_conflicts = merge(ckpt.config, {**fields, "attention_options": options},
                               lambda spec: False, f"{ckpt.config.attention}-")
    conflicts += model_conflicts
    if conflicts:
        raise ValueError(f"--resume continues {out} as it was saved, but "
                         f"{'; '.join(conflicts)}; drop those flags, or start a new run from its "
                         "weights with --init")
    data = PreparedData(cfg.data)
    _same_vocabulary(ckpt, data, out, "--resume")
    return RunPlan(ckpt.config, cfg, data, weights=ckpt, resumed=ckpt)
