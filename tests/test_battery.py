"""Acceptance battery of issue 14: every case of the issue through the CLI, asserting the right
answer: one line on stderr naming the problem, the right exit code, no traceback, and for the
cases that used to lose work, the earlier files byte-identical afterwards.

Cases run in-process (``captioner.cli.main``) where they can, in a subprocess where the old
behaviour was a hang. Signals and two concurrent trainings are in ``test_signals.py``.
The package under test is whichever ``captioner`` is imported (the subprocesses get the same
one), so the battery also runs against an older tree: ``PYTHONPATH=OLD python -m pytest ...``
from outside the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

import captioner
from captioner.checkpoint import load_checkpoint
from captioner.cli import main

ROOT = Path(captioner.__file__).resolve().parents[1]  # the tree whose package is under test
TINY = ["--embed-dim", "8", "--hidden-dim", "16", "--attention-dim", "8", "--grid", "4",
        "--batch-size", "4", "--val-max-images", "4", "--no-progress"]
#: "captioner train: error: ...", "captioner prepare shapes: error: ..."
ERROR_LINE = re.compile(r"^captioner( [\w-]+)+: error: \S")


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys):
    """Run ``captioner ARGS`` in this process: its exit status (an argparse exit included),
    stdout and stderr. An exception that escapes ``main`` is what a user would see: a
    traceback on stderr and status 1."""

    def run(*argv) -> Result:
        capsys.readouterr()
        tb = ""
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except Exception:  # noqa: BLE001 - the old behaviour under test
            code, tb = 1, traceback.format_exc()
        out, err = capsys.readouterr()
        return Result(code, out, err + tb)

    return run


def assert_one_line_error(result: Result, code: int, *needles: str) -> str:
    """``result`` exited with ``code``, printed no traceback, and its stderr is one error line
    (``captioner CMD: error: ...``; argparse's usage lines above it do not count) holding
    every needle. Returns that line."""
    assert "Traceback" not in result.err, result.err
    assert result.code == code, f"exit {result.code}, expected {code}; stderr: {result.err!r}"
    lines = [line for line in result.err.splitlines() if line.strip()
             and not line.startswith("usage:") and not line.startswith(" ")]
    assert len(lines) == 1, f"expected one error line, got: {result.err!r}"
    assert ERROR_LINE.match(lines[0]), lines[0]
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (hidden ones too) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}


# -- shared: one tiny finished run, its best checkpoint, an image ---------------------------

@pytest.fixture(scope="module")
def run_dir(shapes_dir, tmp_path_factory) -> Path:
    """A finished tiny run (8 steps, --max-steps) trained through the CLI: last.safetensors,
    best.safetensors, metrics.jsonl. Tests that change it work on a copy (``run_copy``)."""
    run = tmp_path_factory.mktemp("battery") / "run"
    code = main(["train", "--data", str(shapes_dir), "--out", str(run), *TINY, "--max-steps", "8",
                 "--save-every", "4"])
    assert code == 0 and (run / "last.safetensors").is_file() and \
        (run / "best.safetensors").is_file()
    return run


@pytest.fixture
def run_copy(run_dir, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    return copy


@pytest.fixture(scope="module")
def model(run_dir) -> Path:
    """The run's best checkpoint with captions cut to 3 words: an 8-step model never ends
    its captions, and 20-word captions make each attention figure take seconds."""
    return edit_checkpoint(run_dir / "best.safetensors", run_dir.parent / "short.safetensors",
                           config=lambda c: c.update(max_len=3))


@pytest.fixture(scope="module")
def image(shapes_dir) -> Path:
    return sorted((shapes_dir / "images").glob("test_*.png"))[0]


def _train(shapes_dir, out, *extra):
    return ["train", "--data", shapes_dir, "--out", out, *TINY, "--max-steps", "3", *extra]


# -- work lost or mixed up ----------------------------------------------------------------

@pytest.mark.parametrize("held", ["best+metrics", "metrics", "tensorboard"])
@pytest.mark.slow
def test_train_refuses_an_out_that_holds_another_runs_files_and_leaves_them_untouched(
        cli, shapes_dir, model, tmp_path, held):
    """The issue: best.safetensors and a 7-line metrics.jsonl, no last.safetensors; a new
    train replaced best with a 3-step model of another size and cut the log to 1 line."""
    out = tmp_path / "out"
    out.mkdir()
    if held == "best+metrics":
        shutil.copy(model, out / "best.safetensors")
    if held in ("best+metrics", "metrics"):
        (out / "metrics.jsonl").write_text("".join(json.dumps({"step": 10 * i, "lr": 4e-4}) + "\n"
                                                   for i in range(1, 8)))
    if held == "tensorboard":
        (out / "tb").mkdir()
        (out / "tb" / "events.out.tfevents.1700000000.host.1.0").write_bytes(b"\0" * 40)
    before = snapshot(out)
    result = cli(*_train(shapes_dir, out, "--hidden-dim", "24"))
    assert_one_line_error(result, 2, str(out), "already holds a run", "--resume")
    assert snapshot(out) == before


def _prepare_shapes(out, *extra):
    return ["prepare", "shapes", "--train", "3", "--val", "1", "--test", "0", "--out", out,
            "--no-progress", *extra]


def test_prepare_refuses_an_existing_prepared_folder_and_leaves_it_untouched(cli, tmp_path):
    out = tmp_path / "prepared"
    assert cli(*_prepare_shapes(out)).code == 0
    before = snapshot(out)
    result = cli(*_prepare_shapes(out, "--seed", "1"))
    assert_one_line_error(result, 2, str(out), "already holds a prepared dataset", "--overwrite")
    assert snapshot(out) == before


def test_prepare_overwrite_replaces_a_prepared_folder_but_never_other_files(cli, tmp_path):
    out = tmp_path / "prepared"
    assert cli(*_prepare_shapes(out)).code == 0
    first = snapshot(out)
    assert cli(*_prepare_shapes(out, "--seed", "1", "--overwrite")).code == 0
    second = snapshot(out)
    assert "meta.json" in second and second != first
    other = tmp_path / "notes"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    result = cli(*_prepare_shapes(other, "--overwrite"))
    assert_one_line_error(result, 2, str(other), "holds other files")
    assert snapshot(other) == {"notes.txt": b"mine"}


def test_train_val_beam_size_0_is_refused_before_training(cli, shapes_dir, tmp_path):
    """It trained, then crashed at the first validation with a traceback, saving nothing."""
    out = tmp_path / "out"
    result = cli(*_train(shapes_dir, out, "--val-beam-size", "0"))
    assert_one_line_error(result, 2, "argument --val-beam-size", "got 0")
    assert not out.exists()


def test_evaluate_results_that_is_a_folder_is_refused_before_decoding(cli, model, shapes_dir,
                                                                      tmp_path):
    """It decoded the whole split, then crashed writing the results, printing no metrics."""
    result = cli("evaluate", "--model", model, "--data", shapes_dir, "--no-meteor",
                 "--results", tmp_path)
    assert_one_line_error(result, 2, "argument --results", "is a folder", str(tmp_path))
    assert result.out == ""


# -- wrong results without a word ---------------------------------------------------------

@pytest.mark.slow
def test_resuming_a_finished_run_does_nothing_and_a_larger_max_steps_extends_it(cli, run_copy):
    """It added one step at every resume ("trained 9 steps", "trained 10 steps", ...)."""
    before = snapshot(run_copy)
    for _ in range(2):
        result = cli("train", "--out", run_copy, "--resume", "--no-progress")
        assert result.code == 0 and result.err == "", result.err
        assert "nothing to do" in result.out and "finished" in result.out, result.out
        assert snapshot(run_copy) == before
    # allowed to change: --max-steps; a flag given with the run's own value is no conflict
    result = cli("train", "--out", run_copy, "--resume", "--no-progress", "--max-steps", "12",
                 "--batch-size", "4")
    assert result.code == 0, result.err
    assert "trained 12 steps" in result.out
    assert load_checkpoint(run_copy / "last.safetensors").train["loop"]["step"] == 12


def test_resume_with_flags_unlike_the_saved_run_is_refused_listing_each(cli, run_copy):
    """--lr 0.5 --batch-size 16 --attention hard --hidden-dim 999 were ignored silently."""
    before = snapshot(run_copy)
    result = cli("train", "--out", run_copy, "--resume", "--no-progress", "--max-steps", "12",
                 "--lr", "0.5", "--batch-size", "16", "--attention", "hard",
                 "--hidden-dim", "999")
    assert_one_line_error(result, 2, str(run_copy), "--lr 0.5", "--batch-size 16",
                          "--attention hard", "--hidden-dim 999")
    assert snapshot(run_copy) == before


@pytest.mark.parametrize("flag, value", [
    ("--batch-size", "-4"),  # exit 0, trained 0 steps, wrote best.safetensors
    ("--batch-size", "0"),  # traceback
    ("--lr", "nan"),  # exit 0 with NaN weights
    ("--epochs", "0"),  # "best val BLEU-4 -1.0000"
    ("--grid", "-2"),  # traceback
])
def test_train_numeric_flag_out_of_bounds_is_refused_by_argparse(cli, shapes_dir, tmp_path,
                                                                 flag, value):
    out = tmp_path / "out"
    result = cli(*_train(shapes_dir, out, flag, value))
    assert_one_line_error(result, 2, f"argument {flag}", f"got {value}")
    assert not out.exists()


@pytest.mark.parametrize("flag, value", [("--grid", "-2"), ("--batch-size", "0")])
def test_prepare_numeric_flag_out_of_bounds_is_refused_by_argparse(cli, tmp_path, flag, value):
    out = tmp_path / "prepared"
    result = cli(*_prepare_shapes(out, "--features", "tiny", flag, value))
    assert_one_line_error(result, 2, f"argument {flag}", f"got {value}")
    assert not out.exists()


@pytest.mark.parametrize("flag, value", [("--beam-size", "0"), ("--beam-size", "-1"),
                                         ("--n-best", "0")])
def test_caption_decoding_flag_out_of_bounds_is_refused_by_argparse(cli, model, image, flag,
                                                                    value):
    result = cli("caption", "--model", model, image, flag, value)
    assert_one_line_error(result, 2, f"argument {flag}: must be an integer between 1 and ",
                          f"got {value}")
    assert result.out == ""


@pytest.mark.parametrize("flag, value", [("--beam-size", "0"), ("--beam-size", "-1"),
                                         ("--max-images", "-1")])
def test_evaluate_flag_out_of_bounds_is_refused_by_argparse(cli, model, shapes_dir, flag, value):
    result = cli("evaluate", "--model", model, "--data", shapes_dir, "--no-meteor", flag, value)
    assert_one_line_error(result, 2, f"argument {flag}: must be an integer ", f"got {value}")
    assert result.out == ""


MAGIC = {".jpg": b"\xff\xd8\xff", ".pdf": b"%PDF", ".svg": b"<svg"}


@pytest.mark.parametrize("suffix", sorted(MAGIC))
@pytest.mark.slow
def test_attend_writes_the_format_its_suffix_names(cli, model, image, tmp_path, suffix):
    """``-o out.jpg`` wrote PNG bytes under a .jpg name."""
    out = tmp_path / f"figure{suffix}"
    result = cli("attend", "--model", model, image, "-o", out)
    assert result.code == 0, result.err
    head = out.read_bytes()[:400]
    assert head.startswith(MAGIC[suffix]) if suffix != ".svg" else MAGIC[suffix] in head, head[:16]


def test_attend_to_a_suffix_it_cannot_write_is_refused_listing_the_formats(cli, model, image,
                                                                          tmp_path):
    out = tmp_path / "figure.gif"
    result = cli("attend", "--model", model, image, "-o", out)
    assert_one_line_error(result, 2, "-o", ".png", ".jpg", ".pdf", ".svg")
    assert not out.exists()


# -- tracebacks instead of one line -------------------------------------------------------

def test_attend_o_pointing_at_a_folder_is_refused(cli, model, image, tmp_path):
    result = cli("attend", "--model", model, image, "-o", tmp_path)
    assert_one_line_error(result, 2, "-o", "is a folder", str(tmp_path))


@pytest.mark.parametrize("command", ["train", "prepare"])
def test_out_that_is_an_existing_file_is_refused_and_kept(cli, shapes_dir, tmp_path, command):
    target = tmp_path / "taken"
    target.write_text("not a folder")
    argv = _train(shapes_dir, target) if command == "train" else _prepare_shapes(target)
    assert_one_line_error(cli(*argv), 2, "argument --out", "is a file", str(target))
    assert target.read_text() == "not a folder"


def edit_checkpoint(src: Path, dst: Path, config=None, vocab=None, train=None,
                    tensors=None) -> Path:
    """Copy checkpoint ``src`` to ``dst`` with its JSON header parts and tensors changed in
    place by the given functions (each takes the parsed part and mutates it)."""
    with safe_open(str(src), framework="pt") as f:
        meta, weights = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    for name, edit in (("config", config), ("vocab", vocab), ("train", train)):
        if edit is not None:
            part = json.loads(meta[name])
            edit(part)
            meta[name] = json.dumps(part)
    if tensors is not None:
        tensors(weights)
    save_file(weights, str(dst), metadata=meta)
    return dst


def _nan_weight(weights):
    key = next(k for k, v in weights.items() if k.startswith("model.decoder.")
               and v.is_floating_point())
    weights[key] = torch.full_like(weights[key], float("nan"))


CONFIG_EDITS = {  # name: (edits, the field the error must name)
    "vocab_size": (dict(config=lambda c: c.update(vocab_size=c["vocab_size"] + 2)),
                   "field vocab_size"),
    "hidden_dim": (dict(config=lambda c: c.update(hidden_dim=24)), "field hidden_dim"),
    "grid_size": (dict(config=lambda c: c.update(grid_size=-3)), "field grid_size"),
    "longer word list": (dict(vocab=lambda v: v["words"].extend(["zebra", "yak"])),
                         "field vocab"),
    "string for a number": (dict(config=lambda c: c.update(embed_dim="8")), "field embed_dim"),
    "nan weights": (dict(tensors=_nan_weight), "field weights"),  # caption printed garbage
}


@pytest.mark.parametrize("case", sorted(CONFIG_EDITS))
def test_caption_with_a_checkpoint_that_disagrees_with_itself_names_the_field(
        cli, model, image, tmp_path, case):
    edits, needle = CONFIG_EDITS[case]
    bad = edit_checkpoint(model, tmp_path / "bad.safetensors", **edits)
    result = cli("caption", "--model", bad, image)
    assert_one_line_error(result, 2, str(bad), needle)
    assert result.out == ""


@pytest.mark.slow
def test_caption_with_max_len_edited_to_1e9_is_refused_instead_of_hanging(model, image,
                                                                         tmp_path):
    bad = edit_checkpoint(model, tmp_path / "long.safetensors",
                          config=lambda c: c.update(max_len=10 ** 9))
    try:
        proc = subprocess.run([sys.executable, "-m", "captioner", "caption", "--model", str(bad),
                               str(image)], env=_env(), capture_output=True, text=True,
                              timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("caption hung on a checkpoint with max_len 1e9")
    assert_one_line_error(Result(proc.returncode, proc.stdout, proc.stderr), 2, str(bad),
                          "field max_len")


def _set_flat(flat, path: tuple[str, ...], value) -> None:
    """Set ``path`` in a checkpoint's flattened train JSON (dicts are {"__dict__": pairs})."""
    node = flat
    for key in path[:-1]:
        node = next(v for k, v in node["__dict__"] if k == key)
    pair = next(p for p in node["__dict__"] if p[0] == path[-1])
    pair[1] = value


@pytest.mark.parametrize("path, value", [(("loop", "step"), -5),
                                         (("train_config", "batch_size"), "four")])
def test_resume_of_an_edited_training_state_names_the_field(cli, run_copy, path, value):
    last = run_copy / "last.safetensors"
    edit_checkpoint(last, last, train=lambda t: _set_flat(t, path, value))
    before = snapshot(run_copy)
    result = cli("train", "--out", run_copy, "--resume", "--no-progress", "--max-steps", "12")
    assert_one_line_error(result, 2, str(last), "field train." + ".".join(path))
    assert snapshot(run_copy) == before


# -- rough edges --------------------------------------------------------------------------

def _subparser(name: str) -> argparse.ArgumentParser:
    from captioner.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def _undocumented(parser: argparse.ArgumentParser, only: set[str] | None = None) -> list[str]:
    """The flags of ``parser`` (or those in ``only``) without help, or whose default (when
    it has a meaningful one) the help does not show."""
    missing = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction)) or \
                not action.option_strings or (only and not only & set(action.option_strings)):
            continue
        flag = action.option_strings[-1]
        if not action.help or action.help == argparse.SUPPRESS:
            missing.append(f"{flag}: no help")
        elif action.default not in (None, False, "", argparse.SUPPRESS) and \
                "default" not in action.help:
            missing.append(f"{flag}: default {action.default!r} not shown")
    return missing


def test_every_train_flag_has_help_that_shows_its_default():
    assert _undocumented(_subparser("train")) == []


@pytest.mark.parametrize("command", ["caption", "evaluate", "attend"])
def test_beam_size_and_n_best_have_help_that_shows_their_default(command):
    parser = _subparser(command)
    flags = {o for a in parser._actions for o in a.option_strings}
    assert "--beam-size" in flags and ("--n-best" in flags or command != "caption")
    assert _undocumented(parser, {"--beam-size", "--n-best"}) == []


def test_an_unknown_attention_is_refused_by_argparse(cli, shapes_dir, tmp_path):
    out = tmp_path / "out"
    result = cli(*_train(shapes_dir, out, "--attention", "sofft"))
    assert_one_line_error(result, 2, "argument --attention", "invalid choice", "sofft", "soft",
                          "hard")
    assert not out.exists()


def test_version_prints_the_program_and_its_version(cli):
    result = cli("--version")
    assert result.code == 0, result.err
    assert re.fullmatch(r"captioner \d+\.\d+\.\d+\S*\n", result.out), result.out


def test_caption_of_a_folder_captions_the_images_in_it(cli, model, shapes_dir, tmp_path):
    """It said "no such image file"."""
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    images = sorted((shapes_dir / "images").glob("test_*.png"))[:2]
    shutil.copy(images[0], folder / "a.png")
    shutil.copy(images[1], folder / "sub" / "b.png")
    result = cli("caption", "--model", model, folder)
    assert result.code == 0 and result.err == "", result.err
    lines = result.out.splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(folder / "a.png"),
                                                      str(folder / "sub" / "b.png")]
    assert all(line.split("\t")[1].strip() for line in lines)


def test_attend_on_a_folder_says_it_is_a_folder(cli, model, tmp_path):
    result = cli("attend", "--model", model, tmp_path, "-o", tmp_path / "figure.png")
    line = assert_one_line_error(result, 1, str(tmp_path), "folder")
    assert "no such image file" not in line


def test_prepare_karpathy_with_a_missing_images_folder_names_it_and_leaves_no_out(cli,
                                                                                 tmp_path):
    """It reported 50 skipped images and left an empty --out."""
    split = tmp_path / "dataset_x.json"
    split.write_text(json.dumps({"images": [
        {"filepath": "", "filename": f"{i}.jpg", "split": "train", "imgid": i,
         "sentences": [{"tokens": ["a", "dog"], "raw": "A dog."}]} for i in range(50)]}))
    missing, out = tmp_path / "no_images", tmp_path / "prepared"
    result = cli("prepare", "karpathy", "--json", split, "--images", missing, "--out", out,
                 "--no-progress")
    assert_one_line_error(result, 2, "argument --images", str(missing))
    assert not out.exists()


def test_caption_and_attend_exit_with_the_same_code_for_the_same_bad_image(cli, model,
                                                                          tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_text("not an image")
    caption = cli("caption", "--model", model, bad)
    attend = cli("attend", "--model", model, bad, "-o", tmp_path / "figure.png")
    assert_one_line_error(caption, 1, str(bad), "not an image")
    assert_one_line_error(attend, 1, str(bad), "not an image")
    assert not (tmp_path / "figure.png").exists()


@pytest.mark.slow
def test_file_names_with_a_tab_or_newline_keep_one_line_per_image(cli, model, image, tmp_path):
    names = ["tab\there.png", "new\nline.png"]
    for name in names:
        shutil.copy(image, tmp_path / name)
    bad = tmp_path / "bad\nname.jpg"
    bad.write_text("not an image")
    result = cli("caption", "--model", model, *(tmp_path / n for n in names), bad)
    assert result.code == 1
    lines = result.out.splitlines()
    assert [line.split("\t")[0] for line in lines] == [
        str(tmp_path / "tab\\there.png"), str(tmp_path / "new\\nline.png")]
    assert all(len(line.split("\t")) == 2 and line.split("\t")[1] for line in lines)
    assert_one_line_error(Result(result.code, "", result.err), 1, "bad\\nname.jpg")


@pytest.mark.slow
def test_attend_on_a_cjk_file_name_prints_no_glyph_warnings(cli, model, image, tmp_path, caplog):
    cjk = tmp_path / "图像.png"
    shutil.copy(image, cjk)
    out = tmp_path / "figure.png"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = cli("attend", "--model", model, cjk, "-o", out)
    assert result.code == 0, result.err
    glyphs = [str(w.message) for w in caught if "glyph" in str(w.message).lower()]
    assert glyphs == [] and "glyph" not in (result.err + caplog.text).lower()
    with Image.open(out) as figure:
        assert figure.format == "PNG"
