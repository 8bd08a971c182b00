"""Flag types: a bad value is one line after the usage line, naming the flag, the problem and
the value, with exit status 2 and no traceback."""

from __future__ import annotations

import argparse
import os

import pytest

from captioner import argtypes
from captioner.argtypes import (describe_bounds, existing_dir, existing_file, float_range,
                                int_range, output_dir, output_file)


def _error_line(capsys, flag: str, kind, value: str) -> str:
    """Parse ``flag value`` with a one-flag parser; return the line argparse printed."""
    parser = argparse.ArgumentParser(prog="captioner x")
    parser.add_argument(flag, type=kind)
    with pytest.raises(SystemExit) as exit_info:
        # --lr=-1e-3: as a separate word, "-1e-3" would be taken for a flag
        parser.parse_args([f"{flag}={value}"] if flag.startswith("--") else [flag, value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("usage:") and "Traceback" not in err
    return lines[1]


@pytest.mark.parametrize("flag, kind, value, message", [
    ("--beam-size", int_range(1, 64), "0", "must be an integer between 1 and 64, got 0"),
    ("--beam-size", int_range(1, 64), "65", "must be an integer between 1 and 64, got 65"),
    ("--batch-size", int_range(1), "0", "must be an integer >= 1, got 0"),
    ("--batch-size", int_range(1), "2.5", "must be an integer >= 1, got 2.5"),
    ("--epochs", int_range(1), "many", "must be an integer >= 1, got many"),
    ("--epochs", int_range(1), "", "must be an integer >= 1, got ''"),
    ("--lr", float_range(0, min_exclusive=True), "0", "must be a finite number > 0, got 0"),
    ("--lr", float_range(0, min_exclusive=True), "-1e-3", "must be a finite number > 0, got -1e-3"),
    ("--lr", float_range(0, min_exclusive=True), "nan", "must be a finite number > 0, got nan"),
    ("--lr", float_range(0, min_exclusive=True), "inf", "must be a finite number > 0, got inf"),
    ("--lr", float_range(0, min_exclusive=True), "fast", "must be a finite number > 0, got fast"),
    ("--dropout", float_range(0, 1, max_exclusive=True), "1",
     "must be a finite number >= 0 and < 1, got 1"),
    ("--penalty", float_range(finite=False), "nan", "must be a number, got nan"),
])
def test_a_number_out_of_bounds_is_one_line_naming_flag_problem_and_value(
        capsys, flag, kind, value, message):
    line = _error_line(capsys, flag, kind, value)
    assert line == f"captioner x: error: argument {flag}: {message}"


@pytest.mark.parametrize("kind, value, expected", [
    (int_range(1, 64), "1", 1), (int_range(1, 64), "64", 64), (int_range(1), " 7 ", 7),
    (int_range(), "-3", -3), (float_range(0, 1, max_exclusive=True), "0", 0.0),
    (float_range(0, min_exclusive=True), "4e-4", 4e-4), (float_range(0, 1), "1", 1.0),
    (float_range(finite=False), "-inf", float("-inf")),
])
def test_values_within_bounds_including_the_bounds_are_returned_converted(kind, value, expected):
    assert kind(value) == expected and type(kind(value)) is type(expected)


def test_bounds_read_as_words():
    assert describe_bounds(1) == ">= 1"
    assert describe_bounds(0, lo_open=True) == "> 0"
    assert describe_bounds(1, 64) == "between 1 and 64"
    assert describe_bounds(0, 1, hi_open=True) == ">= 0 and < 1"
    assert describe_bounds(hi=200) == "<= 200" and describe_bounds() == ""


def test_an_output_file_may_be_new_in_folders_yet_to_be_made(tmp_path):
    kind = output_file((".json",))
    assert kind(str(tmp_path / "a" / "b" / "results.json")) == str(tmp_path / "a/b/results.json")
    assert not (tmp_path / "a").exists()  # checked, not created
    existing = tmp_path / "metrics.JSON"
    existing.write_text("{}")
    assert kind(str(existing)) == str(existing)  # overwriting a file is fine; case-insensitive


def test_an_output_file_that_is_a_folder_is_refused(capsys, tmp_path):
    line = _error_line(capsys, "-o", output_file(), str(tmp_path))
    assert line.endswith(f"argument -o: is a folder, expected a file path: {tmp_path}")


def test_an_output_file_with_another_suffix_lists_the_allowed_ones(capsys, tmp_path):
    line = _error_line(capsys, "--results", output_file((".json", ".jsonl")),
                       str(tmp_path / "r.txt"))
    assert line.endswith(f"argument --results: must end with .json or .jsonl, got {tmp_path}/r.txt")


def test_an_output_file_under_a_file_is_refused(capsys, tmp_path):
    (tmp_path / "plain").write_text("")
    line = _error_line(capsys, "-o", output_file(), str(tmp_path / "plain" / "x.png"))
    assert line.endswith(f"cannot create {tmp_path}/plain/x.png: {tmp_path}/plain is a file, "
                         "not a folder")


def test_an_output_file_in_a_folder_we_cannot_write_is_refused(capsys, tmp_path, monkeypatch):
    # os.access says yes to root for any mode bits, so the refusal is simulated here and shown
    # for real in the next test where the suite runs as a normal user
    real = os.access
    monkeypatch.setattr(argtypes.os, "access",
                        lambda p, mode: False if str(p) == str(tmp_path) else real(p, mode))
    line = _error_line(capsys, "-o", output_file(), str(tmp_path / "new" / "x.png"))
    assert line.endswith(f"cannot write {tmp_path}/new/x.png: folder {tmp_path} is not writable")


def test_an_output_file_in_a_read_only_folder_is_refused(capsys, tmp_path):
    locked = tmp_path / "ro"
    locked.mkdir(mode=0o500)
    if os.access(locked, os.W_OK):
        locked.chmod(0o700)
        pytest.skip("this user writes anywhere (root with CAP_DAC_OVERRIDE)")
    try:
        line = _error_line(capsys, "-o", output_file(), str(locked / "x.png"))
    finally:
        locked.chmod(0o700)
    assert "is not writable" in line


def test_an_output_folder_may_exist_or_be_new_but_not_be_a_file(tmp_path):
    assert output_dir(str(tmp_path)) == str(tmp_path)
    assert output_dir(str(tmp_path / "runs" / "soft")) == str(tmp_path / "runs" / "soft")
    (tmp_path / "f").write_text("")
    with pytest.raises(argparse.ArgumentTypeError, match=f"is a file, expected a folder: "
                                                         f"{tmp_path}/f"):
        output_dir(str(tmp_path / "f"))


def test_existing_files_and_folders(capsys, tmp_path):
    (tmp_path / "m.safetensors").write_text("")
    assert existing_file(str(tmp_path / "m.safetensors")) == str(tmp_path / "m.safetensors")
    assert existing_dir(str(tmp_path)) == str(tmp_path)
    line = _error_line(capsys, "--model", existing_file, str(tmp_path / "nope.safetensors"))
    assert line.endswith(f"argument --model: no such file: {tmp_path}/nope.safetensors")
    line = _error_line(capsys, "--model", existing_file, str(tmp_path))
    assert line.endswith(f"is a folder, expected a file: {tmp_path}")
    line = _error_line(capsys, "--data", existing_dir, str(tmp_path / "m.safetensors"))
    assert line.endswith(f"argument --data: is a file, expected a folder: {tmp_path}/m.safetensors")
    line = _error_line(capsys, "--data", existing_dir, str(tmp_path / "missing"))
    assert line.endswith(f"argument --data: no such folder: {tmp_path}/missing")
