"""Signals save: the first SIGINT/SIGTERM is a request to stop, the second stops at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from captioner.fileio import atomic_write, atomic_write_text
from captioner.interrupt import GracefulStop


def _send(sig: int) -> None:
    # raise_signal sends to this thread and runs the Python handler before returning; a
    # process-wide os.kill may land on another thread (torch's) and be handled a moment later
    signal.raise_signal(sig)


def test_a_first_sigint_sets_the_flag_and_raises_nothing():
    with GracefulStop(announce=False) as stop:
        assert stop.active and stop.requested is None and stop.exit_code is None
        _send(signal.SIGINT)
        assert stop.requested == "SIGINT" and stop.signum == signal.SIGINT
        assert stop.exit_code == 130


def test_a_first_sigterm_gives_exit_code_143():
    with GracefulStop(announce=False) as stop:
        _send(signal.SIGTERM)
    assert stop.requested == "SIGTERM" and stop.exit_code == 143


def test_a_second_signal_raises_keyboard_interrupt_at_once():
    with pytest.raises(KeyboardInterrupt):
        with GracefulStop(announce=False) as stop:
            _send(signal.SIGTERM)
            _send(signal.SIGINT)
            pytest.fail("the second signal did not interrupt")
    assert stop.requested == "SIGTERM"  # the first request is kept


def test_previous_handlers_are_restored_afterwards_also_after_an_exception():
    calls = []
    before_term = signal.signal(signal.SIGTERM, lambda s, f: calls.append(s))
    try:
        before_int = signal.getsignal(signal.SIGINT)
        with pytest.raises(ZeroDivisionError):
            with GracefulStop(announce=False):
                1 / 0
        assert signal.getsignal(signal.SIGINT) is before_int
        _send(signal.SIGTERM)
        assert calls == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, before_term)


def test_after_the_block_ctrl_c_is_a_keyboard_interrupt_again():
    # Python's own Ctrl-C handler, as in a terminal (a job started in the background with `&`
    # inherits SIGINT ignored, and Python then keeps it ignored)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with GracefulStop(announce=False):
            pass
        with pytest.raises(KeyboardInterrupt):
            _send(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, before)


def test_the_first_signal_is_announced_in_one_line_on_stderr(capfd):
    with GracefulStop() as stop:
        _send(signal.SIGINT)
    err = capfd.readouterr().err.strip()
    assert stop.requested and err.count("\n") == 0 and err.startswith("SIGINT: finishing")


def test_outside_the_main_thread_it_installs_nothing():
    seen = {}

    def worker():
        with GracefulStop(announce=False) as stop:
            seen["active"] = stop.active
            seen["handler"] = signal.getsignal(signal.SIGINT)

    before = signal.getsignal(signal.SIGINT)
    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == {"active": False, "handler": before}


def test_a_loop_finishes_its_step_saves_and_exits_with_the_code(tmp_path):
    checkpoint = tmp_path / "last.txt"
    steps = []
    with GracefulStop(announce=False) as stop:
        for step in range(10):
            steps.append(step)  # the step in flight when the signal came still completes
            if step == 3:
                _send(signal.SIGTERM)
            if stop.requested:
                atomic_write_text(checkpoint, f"step {step}")
                break
    assert steps == [0, 1, 2, 3] and checkpoint.read_text() == "step 3" and stop.exit_code == 143


def test_a_second_ctrl_c_during_a_save_leaves_the_previous_checkpoint_whole(tmp_path):
    checkpoint = tmp_path / "last.txt"
    checkpoint.write_text("the previous checkpoint")

    def write(tmp):
        with open(tmp, "w") as f:
            f.write("half of a new")
            _send(signal.SIGINT)  # the impatient second Ctrl-C
            f.write(" checkpoint")

    with pytest.raises(KeyboardInterrupt):
        with GracefulStop(announce=False):
            _send(signal.SIGINT)
            atomic_write(checkpoint, write)
    assert checkpoint.read_text() == "the previous checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["last.txt"]  # no temp file left


def test_kill_from_outside_finishes_the_step_saves_and_exits_143(tmp_path):
    """The real thing: another process sends SIGTERM (as a scheduler or `kill` does)."""
    package = Path(__file__).resolve().parents[1] / "captioner"
    code = textwrap.dedent(f"""
        import sys, time, types
        sys.modules["captioner"] = types.ModuleType("captioner")  # skip __init__'s torch import
        sys.modules["captioner"].__path__ = [{str(package)!r}]
        from captioner.fileio import atomic_write_text
        from captioner.interrupt import GracefulStop
        with GracefulStop() as stop:
            print("ready", flush=True)
            for step in range(100000):
                time.sleep(0.01)  # a training step
                if stop.requested:
                    atomic_write_text({str(tmp_path / "last.txt")!r}, f"step {{step}}")
                    sys.exit(stop.exit_code)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    os.kill(child.pid, signal.SIGTERM)
    assert child.wait(timeout=30) == 143
    assert (tmp_path / "last.txt").read_text().startswith("step ")
    assert child.stderr.read().strip().startswith("SIGTERM: finishing the current step")
