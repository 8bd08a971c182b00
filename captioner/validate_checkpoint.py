"""Checkpoints validated on load: every field of the JSON header has its type and a sane value,
the weights have the shapes the config implies, and the training state is what resume needs.

Each check raises ``ValueError("{path}: field {name}: {problem}")``, one line, before anything is
built from the file (an edited ``max_len`` of 1e9 would make decoding hang, a ``hidden_dim``
that disagrees with the weights would end in a traceback deep in ``load_state_dict``). The checks
work on plain data; ``validate(path)`` reads a file and runs them all.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import math
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch

from .argtypes import describe_bounds
from .config import ModelConfig
from .decoding import MAX_CAPTION_WORDS


class Bound(NamedTuple):
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False


#: Sane values by dotted path in ModelConfig / TrainConfig (a list's bound holds for each item).
#: A field that is missing here is only type-checked; one new line bounds it.
RANGES: dict[str, Bound] = {
    # ModelConfig
    "vocab_size": Bound(5),  # the four special tokens and at least one word
    "grid_size": Bound(1, 64),
    "fine_tune_blocks": Bound(-1),
    "feature_dim": Bound(0),  # 0: filled in from the encoder
    "embed_dim": Bound(1),
    "hidden_dim": Bound(1),
    "attention_dim": Bound(1),
    "dropout": Bound(0, 1, hi_open=True),
    "max_len": Bound(1, MAX_CAPTION_WORDS),  # decoding runs max_len steps: 1e9 would hang
    "alpha_c": Bound(0),
    "attention_options.baseline_decay": Bound(0, 1),
    "attention_options.reward_scale": Bound(0),
    "attention_options.entropy": Bound(0),
    "attention_options.expected_prob": Bound(0, 1),
    "preprocess.resize": Bound(1, 4096),
    "preprocess.crop": Bound(0, 4096),  # 0: no crop
    "preprocess.std": Bound(0, lo_open=True),
    # TrainConfig
    "epochs": Bound(1),
    "max_steps": Bound(0),
    "max_minutes": Bound(0),
    "batch_size": Bound(1),
    "lr": Bound(0, lo_open=True),
    "encoder_lr": Bound(0, lo_open=True),
    "weight_decay": Bound(0),
    "grad_clip": Bound(0),
    "label_smoothing": Bound(0, 1, hi_open=True),
    "scst_samples": Bound(1),
    "lr_decay": Bound(0, 1, lo_open=True, hi_open=True),  # ReduceLROnPlateau needs factor < 1
    "lr_patience": Bound(0),
    "early_stop": Bound(1),
    "val_beam_size": Bound(1),
    "val_max_images": Bound(0),
    "save_every": Bound(0),
    "num_workers": Bound(0),
}

#: String fields whose values come from a fixed list or registry: (module, name) of that list,
#: read when checking so a newly registered entry is accepted the day it is added. Encoder and
#: attention names are checked by their registries when the model is built.
CHOICES: dict[str, tuple[str, str]] = {
    "deep_output": ("captioner.config", "DEEP_OUTPUTS"),
    "select_by": ("captioner.config", "SELECT_METRICS"),
    "batch_by": ("captioner.config", "BATCH_BY"),
    "objective": ("captioner.objectives", "OBJECTIVES"),
}


def _choices(at: str) -> tuple[str, ...] | None:
    """The allowed values of field ``at``, or None when unrestricted or its owner is absent
    (then the owner refuses a bad value itself when the config is used)."""
    if at not in CHOICES:
        return None
    module, name = CHOICES[at]
    try:
        return tuple(getattr(importlib.import_module(module), name))
    except (ImportError, AttributeError):
        return None


def _shown(value: Any) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fail(path, name: str, problem: str) -> typing.NoReturn:
    raise ValueError(f"{path}: field {name}: {problem}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # JSON true is not the integer 1


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _matches(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return _is_int(value)
    if hint is float:
        return _is_number(value)
    if hint is str:
        return isinstance(value, str)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin in (tuple, list) or hint in (tuple, list):
        if not isinstance(value, (list, tuple)):  # JSON has lists only
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(map(_matches, value, args))
        return not args or all(_matches(v, args[0]) for v in value)
    if origin is dict or hint is dict or dataclasses.is_dataclass(hint):
        return isinstance(value, dict)  # contents are checked by their owner
    return True  # a kind of hint this module does not know: the field's user checks it


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    simple = {bool: "true or false", int: "an integer", float: "a finite number",
              str: "a string", type(None): "null"}
    if hint in simple:
        return simple[hint]
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin in (tuple, list):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"a list of {len(args)} values, each {_describe(args[0])}"
        return f"a list of values, each {_describe(args[0])}" if args else "a list"
    return "an object"


def _nested_class(name: str, data: dict) -> type | None:
    """The dataclass that describes a dict-typed field, where one owns it: the attention kind's
    ``Options`` for ``attention_options``."""
    if name != "attention_options":
        return None
    from .models.attention import ATTENTIONS

    options = getattr(ATTENTIONS.get(data.get("attention")), "Options", None)
    return options if dataclasses.is_dataclass(options) else None


def _check_fields(data: dict, cls: type, path, label: str, key: str) -> None:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name, f in fields.items():
        where, at = label + name, key + name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                _fail(path, where, "missing")
            continue
        value, hint = data[name], hints[name]
        if not _matches(value, hint):
            _fail(path, where, f"must be {_describe(hint)}, got {_shown(value)}")
        if dataclasses.is_dataclass(hint):
            _check_fields(value, hint, path, where + ".", at + ".")
        elif isinstance(value, dict) and (owner := _nested_class(name, data)) is not None:
            _check_fields(value, owner, path, where + ".", at + ".")
        bound = RANGES.get(at)
        items = value if isinstance(value, (list, tuple)) else [value]
        if bound and any(_is_number(v) and not _within(v, bound) for v in items):
            _fail(path, where, f"must be {describe_bounds(*bound)}, got {_shown(value)}")
        if (allowed := _choices(at)) is not None and value not in allowed:
            _fail(path, where, f"must be one of {', '.join(allowed)}, got {_shown(value)}")
    for name in data:
        if name not in fields:
            _fail(path, label + name, f"unknown field of {cls.__name__}")


def _within(v: float, b: Bound) -> bool:
    return (b.lo is None or (v > b.lo if b.lo_open else v >= b.lo)) and \
        (b.hi is None or (v < b.hi if b.hi_open else v <= b.hi))


def check_config_json(data: Any, cls: type, path: str | Path, label: str = "") -> None:
    """Check a config as read from JSON against the dataclass ``cls`` (ModelConfig,
    TrainConfig): each field has its declared type (int is not bool, float accepts int and must
    be finite, ``X | None``, lists for tuples, nested dataclasses such as ``Preprocess``
    recursively, and a dict owned by a part, like ``attention_options``, against that part's
    ``Options``), lies in ``RANGES`` and ``CHOICES``, required fields are present and unknown
    fields are named. Fields an older layout kept elsewhere are accepted when ``cls.from_dict``
    migrates them, and then checked where they went. ``label`` prefixes the field names in
    messages. Raises ``ValueError("{path}: field {name}: {problem}")``."""
    if not isinstance(data, dict):
        _fail(path, label.rstrip(".") or cls.__name__, f"must be an object, got {_shown(data)}")
    if set(data) - {f.name for f in dataclasses.fields(cls)} and hasattr(cls, "from_dict"):
        try:  # the class knows its own old layouts (ModelConfig's hard_* fields)
            data = dataclasses.asdict(cls.from_dict(data))
        except Exception:  # noqa: BLE001 - it does not: name the unknown field below
            pass
    _check_fields(data, cls, path, label, "")


# -- weights ------------------------------------------------------------------------------

#: config fields that size the decoder's tensors, tried one by one to explain a wrong shape
SIZE_FIELDS = ("vocab_size", "embed_dim", "hidden_dim", "attention_dim")


def _build_shapes(config: ModelConfig) -> dict[str, torch.Tensor]:
    """The state dict of the model ``config`` describes, on the meta device: shapes and dtypes
    without allocating memory (so even absurd sizes cost nothing) or downloading weights."""
    from .models import build_model

    with torch.device("meta"), _no_init():
        return build_model(config, pretrained=False).state_dict()


@contextlib.contextmanager
def _no_init():
    """Skip ``torch.nn.init`` while building on the meta device (there is nothing to fill, and
    meta ``normal_`` alone cost seconds of start-up: the ``transformers`` ``no_init_weights``
    pattern)."""
    names = [n for n in dir(torch.nn.init) if n.endswith("_") and not n.startswith("_")]
    saved = {n: getattr(torch.nn.init, n) for n in names}
    try:
        for n in names:
            setattr(torch.nn.init, n, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for n, fn in saved.items():
            setattr(torch.nn.init, n, fn)


def _guess_field(message: str, config: ModelConfig) -> str:
    """The config field a message from the model code is about: the one it names first."""
    found = [(m.start(), f.name) for f in dataclasses.fields(config)
             if (m := re.search(rf"\b{f.name}\b", message))]
    return min(found)[1] if found else "config"


def _explain_shape(config: ModelConfig, key: str, want: tuple, got: tuple) -> tuple[str, str]:
    """(field, note): the size field whose change would give the weights' shape, and the value
    that would; found by building the model with each field one larger and seeing how the
    tensor's shape moves, so no parameter names are hard-coded here."""
    for name in SIZE_FIELDS:
        value = getattr(config, name)
        try:
            moved = _build_shapes(dataclasses.replace(config, **{name: value + 1})).get(key)
        except Exception:  # noqa: BLE001 - that size does not build: not the answer
            continue
        if moved is None or len(moved.shape) != len(want):
            continue
        steps = {(g - w) / (m - w) for g, w, m in zip(got, want, moved.shape) if m != w}
        still = all(g == w for g, w, m in zip(got, want, moved.shape) if m == w)
        if still and len(steps) == 1 and (k := steps.pop()) == int(k) and k and value + k >= 1:
            return name, f"; the weights fit {name} {value + int(k)}"
    return ("encoder" if key.startswith("encoder.") else "weights"), ""


def check_weights(config: ModelConfig, vocab_len: int, weights: Mapping[str, torch.Tensor],
                  path: str | Path) -> None:
    """Check that ``weights`` (the model's state dict) are what ``config`` describes: the
    vocabulary has ``vocab_size`` words, every tensor of the model is there with the shape the
    config implies and no other, floating tensors are floating and finite. The expected tensors
    come from building the model on the meta device (instant, no memory, no download). A
    mismatch names the tensor, both shapes and the config field that explains it. Raises
    ``ValueError("{path}: field {name}: {problem}")``."""
    if vocab_len != config.vocab_size:
        _fail(path, "vocab_size", f"{config.vocab_size} disagrees with the vocabulary's "
                                  f"{vocab_len} words")
    try:
        expected = _build_shapes(config)
    except Exception as exc:  # noqa: BLE001 - the model code's own one-line complaint
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        _fail(path, _guess_field(message, config), f"cannot build the model it describes "
                                                   f"({message})")
    for key, want in expected.items():
        if key not in weights:
            field = "encoder" if key.startswith("encoder.") else _toggle_explains(config, weights)
            _fail(path, field, f"the config implies tensor {key}, which the weights lack")
        got = weights[key]
        if tuple(got.shape) != tuple(want.shape):
            field, note = _explain_shape(config, key, tuple(want.shape), tuple(got.shape))
            shapes = f"tensor {key} is {tuple(got.shape)}, the config implies {tuple(want.shape)}"
            _fail(path, field, f"{getattr(config, field)} disagrees with the weights ({shapes}"
                               f"{note})" if hasattr(config, field) else shapes)
        if want.dtype.is_floating_point and not got.dtype.is_floating_point:
            _fail(path, "weights", f"tensor {key} is {got.dtype}, expected floating point")
        if got.dtype.is_floating_point and not bool(torch.isfinite(got).all()):
            _fail(path, "weights", f"tensor {key} holds nan or inf")
    extra = [k for k in weights if k not in expected]
    if extra:
        field = "encoder" if extra[0].startswith("encoder.") else _toggle_explains(config, weights)
        _fail(path, field, f"the weights have tensor {extra[0]}, which the config does not imply")


def _toggle_explains(config: ModelConfig, weights: Mapping[str, torch.Tensor]) -> str:
    """The yes/no field (``gate``...) whose other value gives the weights' tensor names."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, bool):
            try:
                if set(_build_shapes(dataclasses.replace(config, **{f.name: not value}))) == \
                        set(weights):
                    return f.name
            except Exception:  # noqa: BLE001 - that value does not build: not the answer
                pass
    return "weights"  # no single setting explains it: the tensors themselves are off


# -- a whole file -------------------------------------------------------------------------

def _json_field(metadata: Mapping[str, str], name: str, path) -> Any:
    if name not in metadata:
        _fail(path, name, "missing from the header")
    try:
        return json.loads(metadata[name])
    except (TypeError, ValueError) as exc:
        _fail(path, name, f"malformed JSON ({exc})")


def validate_parts(path: str | Path, metadata: Mapping[str, str],
                   tensors: Mapping[str, torch.Tensor], with_train: bool = True) -> None:
    """Run every check on a checkpoint's parts as ``load_checkpoint`` reads them: the header
    ``metadata`` (format, config, vocab, train and, in older files, extra: JSON strings) and
    the ``tensors`` (``model.*`` weights, ``train.*`` training state). ``with_train=False``
    skips the training state (``tensors`` may then hold the weights only). Raises
    ``ValueError``, one line."""
    from .checkpoint import FORMAT, unflatten
    from .vocab import Vocabulary

    if metadata.get("format") != FORMAT:
        _fail(path, "format", f"must be {FORMAT!r}, got {_shown(metadata.get('format'))}")
    config_data = _json_field(metadata, "config", path)
    check_config_json(config_data, ModelConfig, path)
    config = ModelConfig.from_dict(config_data)
    try:
        vocab = Vocabulary.from_json(metadata.get("vocab", "null"))
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        _fail(path, "vocab", f"not a vocabulary ({type(exc).__name__}: {exc})")
    weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    check_weights(config, len(vocab), weights, path)
    if "extra" in metadata and not isinstance(_json_field(metadata, "extra", path), dict):
        _fail(path, "extra", "must be an object")  # other JSON metadata of older files
    if with_train and (train := _json_field(metadata, "train", path)) is not None:
        try:
            train = unflatten(train, tensors)
        except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
            _fail(path, "train", f"malformed training state ({type(exc).__name__}: {exc})")
        from .validate_train_state import check_train_state

        check_train_state(train, path)


def validate(path: str | Path, with_train: bool = True) -> None:
    """Read the checkpoint at ``path`` and run every check on it (``validate_parts``); a file
    that is not a safetensors file raises ``ValueError`` naming it, like ``load_checkpoint``."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()
                       if with_train or k.startswith("model.")}
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own types
        raise ValueError(f"{path}: not a captioner checkpoint "
                         f"({type(exc).__name__}: {exc})") from None
    validate_parts(path, metadata, tensors, with_train)
