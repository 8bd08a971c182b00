"""Each value is declared once: a field's bounds, choices, help and default reach its flag, its
HTTP parameter, its dataclass check and the checkpoint check, and every flag is refused before
any work or honoured."""

from __future__ import annotations

import dataclasses
import math

import pytest

from captioner.cli import build_parser, main
from captioner.config import ModelConfig, Preprocess, ServeOptions, TrainConfig
from captioner.data.prepare import FeatureSpec
from captioner.decoding import DecodeOptions
from captioner.fields import FieldError, build, spec_of
from captioner.registry import ATTENTIONS

#: every declared dataclass, and the command whose flags it makes (None: no flags)
DECLARED = [(ModelConfig, "train", ""), (TrainConfig, "train", ""),
            (DecodeOptions, "caption", ""), (ServeOptions, "serve", ""),
            (FeatureSpec, "prepare shapes", ""), (Preprocess, None, "")]
DECLARED += [(cls.Options, "train", f"{kind}-") for kind, cls in ATTENTIONS.items()]


def _outside(f, s):
    """A value just outside the field's bounds, or None when it has none."""
    integer = f.type in (int, "int", "int | None")
    if s.min is not None:
        return (int(s.min) - (0 if s.min_open else 1)) if integer else \
            (s.min if s.min_open else s.min - 0.5)
    if s.max is not None:
        return (int(s.max) + (0 if s.max_open else 1)) if integer else s.max + 0.5
    return None


def _fields(bounded: bool = False):
    """Every declared field (``bounded``: those with bounds or choices) as test parameters."""
    return [pytest.param(cls, command, prefix, f, id=f"{cls.__qualname__}.{f.name}")
            for cls, command, prefix in DECLARED for f in dataclasses.fields(cls)
            if not bounded or _outside(f, spec_of(f)) is not None
            or spec_of(f).choices is not None]


def _help(command: str) -> str:
    with pytest.raises(SystemExit):
        build_parser().parse_args([*command.split(), "--help"])


def _flag(cls, prefix, f) -> str | None:
    from captioner.fields import flag_name

    return None if spec_of(f).flag == "" else flag_name(f, prefix)


@pytest.mark.parametrize("cls, command, prefix, f", _fields())
def test_every_field_says_what_it_is(cls, command, prefix, f, capsys):
    s = spec_of(f)
    assert s.help, f"{cls.__qualname__}.{f.name} declares no help"
    flag = _flag(cls, prefix, f)
    if command is None or flag is None:
        return
    _help(command)
    usage = "".join(capsys.readouterr().out.split())  # argparse wraps lines, even at hyphens
    assert flag in usage, f"{flag} missing from `captioner {command} --help`"
    assert "".join(s.help.split()) in usage
    if f.default not in (None, "", dataclasses.MISSING) and not isinstance(f.default, bool):
        assert f"(default:{f.default})" in usage


@pytest.mark.parametrize("cls, command, prefix, f", _fields(bounded=True))
def test_a_value_outside_a_fields_bounds_is_refused_everywhere(cls, command, prefix, f, capsys):
    """By the dataclass (a FieldError naming the field), by its flag (argparse's one line,
    status 2, before any work) and by the checkpoint check (``build`` from JSON)."""
    bad = _outside(f, spec_of(f))
    bad = "nope" if bad is None else bad
    base = {"encoder": "tiny"} if cls is FeatureSpec else {}
    with pytest.raises(FieldError) as err:
        build(cls, {**base, f.name: bad})
    assert err.value.field == f.name
    flag = _flag(cls, prefix, f)
    if command is None or flag is None:
        return
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*command.split(), "--out", "/tmp/x", flag, str(bad)]
                                  if command != "caption" else [command, flag, str(bad), "x.png"])
    assert exit_info.value.code == 2
    assert f"argument {flag}" in capsys.readouterr().err


def test_hard_expected_prob_5_is_refused_before_any_work(shapes_dir, tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--data", str(shapes_dir), "--out", str(out), "--attention", "hard",
              "--hard-expected-prob", "5"])
    assert exit_info.value.code == 2
    assert "argument --hard-expected-prob: must be a finite number between 0 and 1, got 5" in \
        capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(FieldError, match="attention_options.expected_prob: must be"):
        ModelConfig(attention="hard", attention_options={"expected_prob": 5})


def test_an_attention_option_of_another_kind_is_refused(shapes_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", str(shapes_dir), "--out", str(out),
                 "--hard-entropy", "0.1"]) == 2  # the default kind is soft
    assert "argument --hard-entropy: is an option of hard attention, and the model's is soft" \
        in capsys.readouterr().err
    assert not out.exists()


def test_feature_flags_without_features_are_refused(tmp_path, capsys):
    assert main(["prepare", "shapes", "--out", str(tmp_path / "d"), "--grid", "4"]) == 2
    assert "--grid sets up the features: it needs --features ENCODER" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_cross_field_checks_are_one_line_naming_the_flag(capsys):
    assert main(["caption", "--beam-size", "2", "--n-best", "3", "x.png"]) == 2
    assert "argument --n-best: must be at most beam_size (2), got 3" in capsys.readouterr().err


def test_the_beam_size_is_bounded_by_one_declaration():
    """The CLI, the checkpoint's val_beam_size and DecodeOptions share one upper bound; the
    service narrows it with its own declared setting."""
    high = spec_of(next(f for f in dataclasses.fields(DecodeOptions) if f.name == "beam_size"))
    for cls, name in ((TrainConfig, "val_beam_size"), (DecodeOptions, "n_best"),
                      (ServeOptions, "max_beam_size")):
        other = spec_of(next(f for f in dataclasses.fields(cls) if f.name == name))
        assert other.max == high.max
    with pytest.raises(FieldError, match="val_beam_size"):
        TrainConfig(val_beam_size=int(high.max) + 1)


def test_non_finite_numbers_are_refused():
    for bad in (math.nan, math.inf):
        with pytest.raises(FieldError, match="lr: must be a finite number"):
            TrainConfig(lr=bad)
    with pytest.raises(FieldError, match="beam_size: must be an integer"):
        DecodeOptions(beam_size=True)  # a bool is not an integer


@pytest.mark.slow
def test_resume_honours_every_value_a_resume_may_change(shapes_dir, tmp_path, monkeypatch):
    """``--resume --num-workers N`` was accepted and ignored: now every field declared
    ``resume=True`` given on --resume is the resumed run's."""
    import captioner.loop as loop
    from captioner.checkpoint import load_checkpoint

    loaders = []
    real = loop.DataLoader
    monkeypatch.setattr(loop, "DataLoader", lambda *a, **kw: loaders.append(kw) or real(*a, **kw))
    out = tmp_path / "run"
    small = ["--hidden-dim", "16", "--embed-dim", "8", "--attention-dim", "8", "--grid", "4",
             "--batch-size", "8", "--val-max-images", "2", "--no-progress"]
    assert main(["train", "--data", str(shapes_dir), "--out", str(out), *small,
                 "--max-steps", "2"]) == 0
    assert [kw["num_workers"] for kw in loaders] == [0]
    resumable = {f.name for f in dataclasses.fields(TrainConfig) if spec_of(f).resume}
    assert resumable == {"data", "out", "epochs", "max_steps", "max_minutes", "num_workers",
                         "progress"}
    assert main(["train", "--out", str(out), "--resume", "--num-workers", "1", "--max-steps", "3",
                 "--epochs", "9", "--max-minutes", "30", "--data", str(shapes_dir)]) == 0
    assert loaders[-1]["num_workers"] == 1
    saved = load_checkpoint(out / "last.safetensors").train["train_config"]
    assert (saved["num_workers"], saved["max_steps"], saved["epochs"], saved["max_minutes"],
            saved["progress"]) == (1, 3, 9, 30.0, True)


@pytest.mark.slow
def test_init_keeps_what_its_weights_fix_and_takes_the_rest(shapes_dir, tmp_path, capsys):
    from captioner.checkpoint import load_checkpoint

    first = tmp_path / "first"
    small = ["--hidden-dim", "16", "--embed-dim", "8", "--attention-dim", "8", "--grid", "4",
             "--batch-size", "8", "--val-max-images", "2", "--no-progress", "--max-steps", "1"]
    assert main(["train", "--data", str(shapes_dir), "--out", str(first), "--attention", "hard",
                 *small]) == 0
    init = ["train", "--data", str(shapes_dir), "--init", str(first / "last.safetensors")]
    assert main([*init, "--out", str(tmp_path / "bad"), "--hidden-dim", "32",
                 "--attention", "soft", "--max-steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "--hidden-dim 32 (run: 16)" in err and "--attention soft (run: hard)" in err
    assert not (tmp_path / "bad").exists()
    second = tmp_path / "second"
    assert main([*init, "--out", str(second), "--dropout", "0.1", "--hard-entropy", "0.05",
                 "--alpha-c", "0.5", "--hidden-dim", "16", "--max-steps", "1",
                 "--no-progress"]) == 0
    config = load_checkpoint(second / "last.safetensors").config
    assert (config.dropout, config.alpha_c, config.attention_options["entropy"],
            config.hidden_dim) == (0.1, 0.5, 0.05, 16)
