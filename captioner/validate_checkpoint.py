"""Checkpoints validated on load: the JSON header's configs are built through their field
declarations (``fields.build``: every type, bound and choice, a missing or unknown field named by
its dotted path), the weights have the shapes the config implies, and the training state is what
resume needs (``validate_train_state``).

Each check raises ``ValueError("{path}: field {name}: {problem}")``, one line, before anything is
built from the file (an edited ``max_len`` of 1e9 would make decoding hang, a ``hidden_dim``
that disagrees with the weights would end in a traceback deep in ``load_state_dict``). The model
the weights are checked against is built once, on the meta device (no memory, no download, no
initialisation), and is the one ``load_model`` then fills with the weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch

from .checkpoint_format import FORMAT, fail as _fail, unflatten
from .config import ModelConfig
from .fields import FieldError, shown as _shown
from .models.model import CaptionModel, build_model
from .validate_train_state import check_train_state
from .vocab import Vocabulary


def check_config_json(data: Any, cls: type, path: str | Path, label: str = "") -> Any:
    """Build the config ``cls`` (ModelConfig, TrainConfig) from its JSON ``data`` through its
    ``from_dict`` (which knows its own older layouts), so every declared check runs: types (int
    is not bool, float accepts int and must be finite, lists for tuples), bounds, choices,
    nested dataclasses such as ``Preprocess``, the attention kind's ``attention_options``, and
    missing and unknown fields. Returns the config; raises ``ValueError("{path}: field
    {label}{name}: {problem}")``."""
    try:
        return cls.from_dict(data)
    except FieldError as exc:
        _fail(path, label + exc.field, exc.problem)


# -- weights ------------------------------------------------------------------------------

#: config fields that size the decoder's tensors, tried one by one to explain a wrong shape
SIZE_FIELDS = ("vocab_size", "embed_dim", "hidden_dim", "attention_dim")


def build_skeleton(config: ModelConfig) -> CaptionModel:
    """The model ``config`` describes, on the meta device: shapes and dtypes without
    allocating memory (so even absurd sizes cost nothing), initialising or downloading weights.
    ``load_state_dict(weights, assign=True)`` makes it a real model."""
    with torch.device("meta"), _no_init():
        return build_model(config, pretrained=False)


def _build_shapes(config: ModelConfig) -> dict[str, torch.Tensor]:
    return build_skeleton(config).state_dict()


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
    that would; found by building the model with each field one larger (or smaller, at its
    upper bound) and seeing how the tensor's shape moves, so no parameter names are hard-coded
    here."""
    for name in SIZE_FIELDS:
        value = getattr(config, name)
        moved = None
        for delta in (1, -1):
            try:
                moved = _build_shapes(dataclasses.replace(config, **{name: value + delta}))
                break
            except Exception:  # noqa: BLE001 - that size does not build: try the other way
                continue
        moved = moved.get(key) if moved is not None else None
        if moved is None or len(moved.shape) != len(want):
            continue
        steps = {(g - w) / (m - w) * delta for g, w, m in zip(got, want, moved.shape) if m != w}
        still = all(g == w for g, w, m in zip(got, want, moved.shape) if m == w)
        if still and len(steps) == 1 and (k := steps.pop()) == int(k) and k and value + k >= 1:
            return name, f"; the weights fit {name} {value + int(k)}"
    return ("encoder" if key.startswith("encoder.") else "weights"), ""


def check_weights(config: ModelConfig, vocab_len: int, weights: Mapping[str, torch.Tensor],
                  path: str | Path) -> CaptionModel:
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
        skeleton = build_skeleton(config)
        expected = skeleton.state_dict()
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
    return skeleton


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


class Validated(NamedTuple):
    """What the checks built on the way: the config, the vocabulary, and the model the weights
    fit, on the meta device."""

    config: ModelConfig
    vocab: Vocabulary
    skeleton: CaptionModel


def validate_parts(path: str | Path, metadata: Mapping[str, str],
                   tensors: Mapping[str, torch.Tensor], with_train: bool = True) -> Validated:
    """Run every check on a checkpoint's parts as ``load_checkpoint`` reads them: the header
    ``metadata`` (format, config, vocab, train and, in older files, extra: JSON strings) and
    the ``tensors`` (``model.*`` weights, ``train.*`` training state). ``with_train=False``
    skips the training state (``tensors`` may then hold the weights only). Raises
    ``ValueError``, one line."""
    if metadata.get("format") != FORMAT:
        _fail(path, "format", f"must be {FORMAT!r}, got {_shown(metadata.get('format'))}")
    config = check_config_json(_json_field(metadata, "config", path), ModelConfig, path)
    try:
        vocab = Vocabulary.from_json(metadata.get("vocab", "null"))
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        _fail(path, "vocab", f"not a vocabulary ({type(exc).__name__}: {exc})")
    weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    skeleton = check_weights(config, len(vocab), weights, path)
    if "extra" in metadata and not isinstance(_json_field(metadata, "extra", path), dict):
        _fail(path, "extra", "must be an object")  # other JSON metadata of older files
    if with_train and (train := _json_field(metadata, "train", path)) is not None:
        try:
            train = unflatten(train, tensors)
        except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
            _fail(path, "train", f"malformed training state ({type(exc).__name__}: {exc})")
        check_train_state(train, path)
    return Validated(config, vocab, skeleton)


def validate(path: str | Path, with_train: bool = True) -> Validated:
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
    return validate_parts(path, metadata, tensors, with_train)
