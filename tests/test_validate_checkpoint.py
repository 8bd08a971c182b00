"""Checkpoints validated on load: an edited header, weights that disagree with it, or an edited
training state give one ValueError naming the field, before anything is built from them."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from conftest import tiny_config
from safetensors import safe_open
from safetensors.torch import save_file

from captioner.checkpoint import load_checkpoint, save_checkpoint
from captioner.config import ModelConfig, TrainConfig
from captioner.models import build_model
from captioner.validate_checkpoint import check_config_json, check_weights, validate, validate_parts
from captioner.validate_train_state import check_train_state
from captioner.vocab import Vocabulary

WORDS = ["<pad>", "<start>", "<end>", "<unk>", *[f"w{i}" for i in range(16)]]  # vocab 20


def _train_state(model) -> dict:
    """What Trainer.save stores, after one optimizer step (so Adam has per-parameter state)."""
    opt = torch.optim.Adam([{"params": list(model.decoder.parameters()), "lr": 4e-4},
                            {"params": list(model.encoder.parameters()), "lr": 1e-4}])
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.1)
    opt.step()
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.8, patience=2)
    return {"train_config": TrainConfig().to_dict(), "use_features": False,
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "loop": {"step": 7, "epoch": 1, "batch": 3, "best_score": -1.0, "bad_epochs": 0},
            "rng": {"torch": torch.get_rng_state(), "generator": torch.Generator().get_state(),
                    "python": json.dumps(random.getstate())}}


@pytest.fixture(scope="module")
def _saved(tmp_path_factory) -> bytes:
    model = build_model(tiny_config())
    path = tmp_path_factory.mktemp("ckpt") / "last.safetensors"
    save_checkpoint(path, model.config, Vocabulary(WORDS), model.state_dict(), _train_state(model))
    return path.read_bytes()


@pytest.fixture
def ckpt(tmp_path, _saved):
    """A real checkpoint of a tiny model (vocab 20, embed 8, hidden 16, attention 8, 4x4 grid)
    with its training state, written by captioner's own save_checkpoint; each test its copy."""
    path = tmp_path / "last.safetensors"
    path.write_bytes(_saved)
    return path


def _read(path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}


def _edit(path, section: str, change) -> None:
    """Rewrite the file with ``change(parsed JSON of header section)`` applied, as a person
    editing the header would."""
    metadata, tensors = _read(path)
    data = json.loads(metadata[section])
    change(data)  # in place
    metadata[section] = json.dumps(data)
    save_file(tensors, str(path), metadata=metadata)


def _refused(path, match: str) -> str:
    with pytest.raises(ValueError) as info:
        validate(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: field ")
    assert match in message, message
    return message


def _set(**changes):
    return lambda data: data.update(changes)


def test_a_checkpoint_as_saved_passes_every_check(ckpt):
    validate(ckpt)
    validate(ckpt, with_train=False)


# -- the header's config ------------------------------------------------------------------

@pytest.mark.parametrize("changes, message", [
    (dict(grid_size=-3), "field grid_size: must be an integer between 1 and 64, got -3"),
    (dict(max_len=10**9), "field max_len: must be an integer between 1 and 200, got 1000000000"),
    (dict(max_len=1e9), "field max_len: must be an integer, got 1000000000.0"),
    (dict(hidden_dim="16"), 'field hidden_dim: must be an integer, got "16"'),
    (dict(dropout=1.5), "field dropout: must be a finite number >= 0 and < 1, got 1.5"),
    (dict(dropout=float("nan")), "field dropout: must be a finite number, got NaN"),
    (dict(gate=1), "field gate: must be true or false, got 1"),
    (dict(vocab_size=True), "field vocab_size: must be an integer, got true"),
    (dict(fine_tune_blocks="all"), 'field fine_tune_blocks: must be an integer or null, got "all"'),
    (dict(deep_output="cubic"), 'field deep_output: must be one of linear, tanh, got "cubic"'),
    (dict(colour="red"), "field colour: unknown field of ModelConfig"),
    (dict(encoder="nope"), "field encoder: must be one of tiny, resnet50"),
    (dict(attention="nope"), 'field attention: must be one of soft, hard, got "nope"'),
    (dict(attention="hard", attention_options={"expected_prob": 2}),
     "field attention_options.expected_prob: must be a finite number between 0 and 1, got 2"),
    (dict(attention="hard", attention_options={"temperature": 2}),
     "field attention_options.temperature: unknown field of Options"),
])
def test_an_edited_config_field_is_named_in_one_line(ckpt, changes, message):
    _edit(ckpt, "config", _set(**changes))
    _refused(ckpt, message)


@pytest.mark.parametrize("changes, message", [
    (dict(crop=-1), "field preprocess.crop: must be an integer between 0 and 4096, got -1"),
    (dict(resize=10**6), "field preprocess.resize: must be an integer between 1 and 4096, got 1000000"),
    (dict(mean=[0.5]), "field preprocess.mean: must be a list of 3 values, each a finite number"),
    (dict(std=[0.5, 0.5, 0]), "field preprocess.std: must be a finite number > 0, got [0.5, 0.5, 0]"),
    (dict(size=3), "field preprocess.size: unknown field of Preprocess"),
])
def test_the_nested_preprocessing_is_checked_field_by_field(ckpt, changes, message):
    _edit(ckpt, "config", lambda c: c["preprocess"].update(changes))
    _refused(ckpt, message)


def test_a_missing_field_takes_its_default_and_is_checked_as_that(ckpt):
    _edit(ckpt, "config", lambda c: c.pop("vocab_size"))  # 0: "the data's", which it is not
    _refused(ckpt, "field vocab_size: 0 disagrees with the vocabulary's 20 words")


def test_fields_an_older_checkpoint_kept_elsewhere_pass_and_are_checked_where_they_went():
    old = {**tiny_config("hard").to_dict(), "hard_expected_prob": 0.5, "hard_inference": "argmax"}
    old.pop("attention_options")
    check_config_json(old, ModelConfig, "old.safetensors")
    old["hard_expected_prob"] = 7
    with pytest.raises(ValueError, match="field attention_options.expected_prob: must be a finite number between"):
        check_config_json(old, ModelConfig, "old.safetensors")


def test_a_train_config_is_checked_against_its_own_dataclass():
    check_config_json(TrainConfig().to_dict(), TrainConfig, "x")
    for changes, message in [(dict(lr=0), "field lr: must be a finite number > 0, got 0"),
                             (dict(encoder_lr=None), None),
                             (dict(batch_size=0), "field batch_size: must be an integer >= 1, got 0"),
                             (dict(lr_decay=1.0),
                              "field lr_decay: must be a finite number > 0 and < 1, got 1.0"),
                             (dict(select_by="bleu"), "field select_by: must be one of BLEU-4")]:
        data = {**TrainConfig().to_dict(), **changes}
        if message is None:
            check_config_json(data, TrainConfig, "x")
        else:
            with pytest.raises(ValueError, match=f"^x: {message}".replace("(", r"\(")):
                check_config_json(data, TrainConfig, "x")


# -- the config against the vocabulary and the weights ------------------------------------

def test_vocab_size_edited_disagrees_with_the_vocabulary(ckpt):
    _edit(ckpt, "config", _set(vocab_size=25))
    _refused(ckpt, "field vocab_size: 25 disagrees with the vocabulary's 20 words")


def test_a_word_list_longer_than_the_vocabulary_is_refused(ckpt):
    _edit(ckpt, "vocab", lambda v: v["words"].append("zebra"))
    _refused(ckpt, "field vocab_size: 20 disagrees with the vocabulary's 21 words")


def test_vocab_size_and_words_edited_together_still_disagree_with_the_weights(ckpt):
    _edit(ckpt, "vocab", lambda v: v["words"].append("zebra"))
    _edit(ckpt, "config", _set(vocab_size=21))
    _refused(ckpt, "field vocab_size: 21 disagrees with the weights (tensor "
                   "decoder.embedding.weight is (20, 8), the config implies (21, 8); the "
                   "weights fit vocab_size 20)")


@pytest.mark.parametrize("field, value, fits", [("hidden_dim", 32, 16), ("embed_dim", 12, 8),
                                                ("attention_dim", 5, 8)])
def test_a_size_that_disagrees_with_the_weights_names_the_field_and_the_size_they_fit(
        ckpt, field, value, fits):
    _edit(ckpt, "config", _set(**{field: value}))
    _refused(ckpt, f"field {field}: {value} disagrees with the weights (tensor decoder.")
    _refused(ckpt, f"; the weights fit {field} {fits})")


def test_an_absurd_size_costs_nothing_to_check(ckpt):
    _edit(ckpt, "config", _set(hidden_dim=10**7, vocab_size=20))
    _refused(ckpt, "field hidden_dim: must be an integer between 1 and 65536, got 10000000")
    _edit(ckpt, "config", _set(hidden_dim=65536, vocab_size=20))  # a 65536^2 LSTM: 69 GB
    _refused(ckpt, "field hidden_dim: 65536 disagrees with the weights")


def test_a_switched_option_that_adds_or_drops_tensors_is_named(ckpt):
    _edit(ckpt, "config", _set(gate=False))
    _refused(ckpt, "field gate: the weights have tensor decoder.f_beta.")


def test_odd_missing_and_non_finite_weights_are_named_directly():
    model = build_model(tiny_config())
    weights = dict(model.state_dict())
    check_weights(model.config, 20, weights, "m")
    weights["decoder.L_h.weight"] = torch.zeros(8, 16, 1)  # no setting of the config fits it
    with pytest.raises(ValueError, match=r"^m: field weights: tensor decoder.L_h.weight is "
                                         r"\(8, 16, 1\), the config implies \(8, 16\)$"):
        check_weights(model.config, 20, weights, "m")
    weights = dict(model.state_dict())
    weights["decoder.L_o.bias"] = torch.full((20,), math.nan)
    with pytest.raises(ValueError, match=r"^m: field weights: tensor decoder.L_o.bias holds nan"):
        check_weights(model.config, 20, weights, "m")
    del weights["decoder.L_o.bias"]
    with pytest.raises(ValueError, match="the config implies tensor decoder.L_o.bias, which the "
                                         "weights lack"):
        check_weights(model.config, 20, weights, "m")


@pytest.mark.parametrize("encoder", ["resnet50", "efficientnet_lite0"])
def test_pretrained_encoders_are_checked_without_downloading_their_weights(encoder):
    # (this machine has no internet: a download would fail as "cannot build the model")
    config = tiny_config(encoder=encoder, pretrained=True)
    with torch.device("meta"):  # a checkpoint's tensor names and shapes, no memory
        weights = build_model(config, pretrained=False).state_dict()
    decoder_only = {k: v for k, v in weights.items() if not k.startswith("encoder.")}
    with pytest.raises(ValueError, match="field encoder: the config implies tensor encoder."):
        check_weights(config, 20, decoder_only, "m")


# -- the training state -------------------------------------------------------------------

def _flat(node, dotted: str, value=None, pop: bool = False):
    """Set (or pop) ``dotted`` in a training state as the header stores it: every dict is
    {"__dict__": [[key, value], ...]} there (so int keys and tuples survive JSON)."""
    *parents, last = dotted.split(".")
    for key in parents:
        node = next(v for k, v in node["__dict__"] if k == key)
    entries = node["__dict__"]
    index = next(i for i, (k, _) in enumerate(entries) if k == last)
    if pop:
        entries.pop(index)
    else:
        entries[index] = [last, value]


@pytest.mark.parametrize("dotted, value, message", [
    ("loop.step", -1, "field train.loop.step: must be an integer >= 0, got -1"),
    ("loop.epoch", "1", 'field train.loop.epoch: must be an integer >= 0, got "1"'),
    ("loop.best_score", float("inf"), "field train.loop.best_score: must be a finite number, "
                                      "got Infinity"),
    ("loop.batch", None, "field train.loop.batch: missing"),
    ("use_features", "no", 'field train.use_features: must be true or false, got "no"'),
    ("train_config.lr", -1, "field train.train_config.lr: must be a finite number > 0, got -1"),
    ("train_config.batch_by", "word", "field train.train_config.batch_by: must be one of image, "
                                      'caption, got "word"'),
])
def test_an_edited_training_state_is_named_in_one_line(ckpt, dotted, value, message):
    _edit(ckpt, "train", lambda t: _flat(t, dotted, value, pop=value is None))
    _refused(ckpt, message)
    validate(ckpt, with_train=False)  # captioning needs no training state: still fine


def _loaded_train(ckpt) -> dict:
    return load_checkpoint(ckpt).train


@pytest.mark.parametrize("change, message", [
    (lambda t: t["optimizer"]["param_groups"][0].update(lr="fast"),
     'field train.optimizer.param_groups.0.lr: must be a finite number >= 0, got "fast"'),
    (lambda t: t["optimizer"]["param_groups"][1]["params"].append(0),
     "field train.optimizer.param_groups.1.params: must be a list of distinct parameter ids"),
    (lambda t: t["optimizer"]["param_groups"][0].update(betas=(0.9, 1.5)),
     "field train.optimizer.param_groups.0.betas: must be two numbers >= 0 and < 1"),
    (lambda t: t["optimizer"]["state"].update({999: {}}),
     "field train.optimizer.state.999: is not the state of a parameter of any group"),
    (lambda t: t["scheduler"].update(min_lrs=[0]),
     "field train.scheduler.min_lrs: must be 2 numbers >= 0 (one per parameter group)"),
    (lambda t: t["scheduler"].update(factor=1.5),
     "field train.scheduler.factor: must be a finite number > 0 and < 1, got 1.5"),
    (lambda t: t["rng"].update(python="[1, 2]"),
     "field train.rng.python: must be the JSON of Python's random.getstate()"),
    (lambda t: t["rng"].update(torch=torch.zeros(3)),
     "field train.rng.torch: must be a byte tensor of 5056 bytes"),
    (lambda t: t.pop("scheduler"), "field train.scheduler: missing"),
])
def test_the_optimizer_scheduler_and_rng_state_are_checked(ckpt, change, message):
    train = _loaded_train(ckpt)
    check_train_state(train, "c")
    change(train)
    with pytest.raises(ValueError) as info:
        check_train_state(train, "c")
    assert str(info.value).startswith(f"c: {message}"), str(info.value)


def test_a_run_saved_before_select_by_may_keep_best_bleu4(ckpt):
    train = _loaded_train(ckpt)
    train["loop"]["best_bleu4"] = train["loop"].pop("best_score")
    check_train_state(train, "c")


# -- integration: what load_checkpoint will call ------------------------------------------

def test_validate_parts_takes_what_load_checkpoint_has_already_read(ckpt):
    """Integration: ``load_checkpoint`` reads the header and tensors once, then calls
    ``validate_parts(path, metadata, tensors, with_train)`` before building anything;
    ``validate(path)`` is the same for a path."""
    metadata, tensors = _read(ckpt)
    validate_parts(ckpt, metadata, tensors)
    weights_only = {k: v for k, v in tensors.items() if k.startswith("model.")}
    validate_parts(ckpt, metadata, weights_only, with_train=False)
    metadata["config"] = "{not json"
    with pytest.raises(ValueError, match=r"field config: malformed JSON"):
        validate_parts(ckpt, metadata, tensors)


def test_a_file_that_is_not_a_checkpoint_is_named(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match=r"x.safetensors: not a captioner checkpoint"):
        validate(path)
    save_file({"x": torch.zeros(1)}, str(path), metadata={"format": "other"})
    with pytest.raises(ValueError, match=r"field format: must be 'captioner/1'"):
        validate(path)
