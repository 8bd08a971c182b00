"""Real training processes (issue 14): Ctrl-C (SIGINT) and SIGTERM mid-epoch save the run,
which then resumes to exactly the weights of an uninterrupted run; two trainings into one
--out: one is refused, the other's files are intact.

Every run here uses the default --save-every (200), so the only checkpoint before the end of
the first epoch is the one the signal makes. Subprocesses import the same ``captioner`` as
this process and run with OMP_NUM_THREADS=2 (exact resume holds at any one thread count).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import captioner
from captioner.checkpoint import load_checkpoint

from test_battery import Result, assert_one_line_error

ROOT = Path(captioner.__file__).resolve().parents[1]
STEPS = 70  # batch 1 on 60 train images: 60 steps an epoch, so the run crosses one epoch end
FLAGS = ["--embed-dim", "8", "--hidden-dim", "16", "--attention-dim", "8", "--grid", "4",
         "--dropout", "0.1", "--seed", "3", "--batch-size", "1", "--val-max-images", "4",
         "--max-steps", str(STEPS), "--no-progress"]
PER_EPOCH = 60


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}


def _train_cmd(data, out) -> list[str]:
    return [sys.executable, "-m", "captioner", "train", "--data", str(data), "--out", str(out),
            *FLAGS]


def _logged_steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def _wait_until_training(proc: subprocess.Popen, run: Path, timeout: float = 180) -> None:
    """Until the run has logged its first training line (step 10, of the first epoch)."""
    log = run / "metrics.jsonl"
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and log.read_text().endswith("\n"):
            return
        time.sleep(0.005)
    proc.kill()
    _, err = proc.communicate()
    pytest.fail(f"training did not start logging (exit {proc.returncode}): {err}")


def _reap(proc: subprocess.Popen) -> None:
    """Kill ``proc`` if it still runs, close its pipes and wait for it."""
    if proc.poll() is None:
        proc.kill()
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            try:
                pipe.close()
            except OSError:  # a broken pipe to a dead process
                pass
    proc.wait()


class Reference:
    """The uninterrupted run, started at once in the background and awaited when needed."""

    def __init__(self, data: Path, out: Path):
        self.out = out
        self.proc = subprocess.Popen(_train_cmd(data, out), env=_env(), text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.output: tuple[str, str] | None = None

    def finish(self) -> tuple[str, str]:
        if self.output is None:
            self.output = self.proc.communicate(timeout=600)
        return self.output

    def last(self):
        out, err = self.finish()
        assert self.proc.returncode == 0 and f"trained {STEPS} steps" in out, err
        return load_checkpoint(self.out / "last.safetensors")


@pytest.fixture(scope="module")
def reference(shapes_dir, tmp_path_factory):
    ref = Reference(shapes_dir, tmp_path_factory.mktemp("signals") / "reference")
    yield ref
    _reap(ref.proc)


def _assert_same_final_run(run: Path, reference: Reference) -> None:
    want, got = reference.last(), load_checkpoint(run / "last.safetensors")
    assert got.train["loop"]["step"] == want.train["loop"]["step"] == STEPS
    assert got.weights.keys() == want.weights.keys()
    for k in want.weights:
        assert torch.equal(got.weights[k], want.weights[k]), k
    assert _logged_steps(run) == _logged_steps(reference.out)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
@pytest.mark.slow
def test_a_signal_mid_epoch_saves_and_the_resumed_run_ends_as_an_uninterrupted_one(
        shapes_dir, tmp_path, reference, sig, code):
    """Ctrl-C at step ~10 used to print `interrupted`, exit 130 and save nothing (SIGTERM:
    killed outright), so --resume was impossible."""
    run = tmp_path / "run"
    proc = subprocess.Popen(_train_cmd(shapes_dir, run), env=_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_until_training(proc, run)
        saved_before = (run / "last.safetensors").exists()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=300)
    finally:
        _reap(proc)
    assert not saved_before, "a checkpoint was saved before the signal: not mid-epoch"
    assert proc.returncode == code, err
    assert "Traceback" not in err, err
    name = signal.Signals(sig).name
    stopped = [line for line in err.splitlines() if line.startswith("stopped by")]
    assert len(stopped) == 1, err
    match = re.fullmatch(rf"stopped by {name} at step (\d+); saved {re.escape(str(run))}"
                         r"/last\.safetensors; continue with .*--resume.*", stopped[0])
    assert match, stopped[0]
    ckpt = load_checkpoint(run / "last.safetensors")
    step = ckpt.train["loop"]["step"]
    assert step == int(match.group(1))
    assert 10 <= step < PER_EPOCH and ckpt.train["loop"]["epoch"] == 0, "not stopped mid-epoch"
    assert ckpt.train["loop"]["batch"] == step

    resumed = subprocess.run([sys.executable, "-m", "captioner", "train", "--out", str(run),
                              "--resume", "--no-progress"], env=_env(), capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"trained {STEPS} steps" in resumed.stdout
    _assert_same_final_run(run, reference)


@pytest.mark.slow
def test_two_trainings_into_one_out_one_is_refused_and_the_other_ends_intact(
        shapes_dir, tmp_path, reference):
    """Both used to exit 0 with an interleaved log and one run's checkpoints gone."""
    run = tmp_path / "run"
    # the second writer imports everything first, so it tries while the first one trains
    second_code = "\n".join([
        "import sys",
        "import captioner.commands, captioner.train",
        "from captioner.cli import main",
        "print('ready', flush=True)",
        "sys.stdin.readline()",
        f"sys.exit(main({_train_cmd(shapes_dir, run)[3:]!r}))"])
    second = subprocess.Popen([sys.executable, "-c", second_code], env=_env(), text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    first = subprocess.Popen(_train_cmd(shapes_dir, run), env=_env(), text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert second.stdout.readline().strip() == "ready", second.stderr.read()
        _wait_until_training(first, run)
        second.stdin.write("go\n")
        second.stdin.flush()
        out, err = second.communicate(timeout=300)
        first_still_training = first.poll() is None
        assert_one_line_error(Result(second.returncode, out, err), 2, str(run),
                              f"in use by process {first.pid}")
        assert out == ""
        assert first_still_training, "the first run ended before the second one tried"
        first_out, first_err = first.communicate(timeout=600)
    finally:
        for proc in (first, second):
            _reap(proc)
    assert first.returncode == 0 and f"trained {STEPS} steps" in first_out, first_err
    assert sorted(p.name for p in run.iterdir()) == ["best.safetensors", "last.safetensors",
                                                      "metrics.jsonl"]  # and no lock left
    _assert_same_final_run(run, reference)
