"""A run folder has one owner: the lock file, stale locks, and which files make a run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from captioner.errors import UserError
from captioner.runlock import (LOCK_NAME, UNREADABLE_GRACE_S, RunLock, RunLockedError,
                               refuse_existing_run, run_files)


PACKAGE = Path(__file__).resolve().parents[1] / "captioner"


def _try_lock_in_another_process(folder) -> subprocess.CompletedProcess:
    # A bare package module skips captioner/__init__.py, whose torch import would cost seconds.
    code = textwrap.dedent(f"""
        import sys, types
        sys.modules["captioner"] = types.ModuleType("captioner")
        sys.modules["captioner"].__path__ = [{str(PACKAGE)!r}]
        from captioner.errors import UserError
        from captioner.runlock import RunLock
        try:
            with RunLock({str(folder)!r}):
                print("acquired")
        except UserError as exc:
            print(exc)
            sys.exit(3)
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: its pid names no process now
    return child.pid


def _write_lock(folder, pid, age_s=0.0, host=None):
    path = folder / LOCK_NAME
    path.write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(),
                                "started": "2024-01-01T00:00:00"}))
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def test_the_lock_file_holds_the_owners_pid_and_host_and_goes_away_on_exit(tmp_path):
    with RunLock(tmp_path / "run") as lock:
        data = json.loads((tmp_path / "run" / LOCK_NAME).read_text())
        assert data["pid"] == os.getpid() and data["host"] == socket.gethostname()
        assert data["started"] and lock.held
    assert not (tmp_path / "run" / LOCK_NAME).exists() and not lock.held


def test_a_second_process_is_refused_with_one_line_naming_the_folder_and_the_pid(tmp_path):
    with RunLock(tmp_path):
        other = _try_lock_in_another_process(tmp_path)
    assert other.returncode == 3, other.stderr
    line = other.stdout.strip()
    assert "\n" not in line and str(tmp_path) in line and f"process {os.getpid()}" in line
    assert "Traceback" not in other.stderr


def test_the_lock_is_free_again_for_another_process_after_release(tmp_path):
    with RunLock(tmp_path):
        pass
    other = _try_lock_in_another_process(tmp_path)
    assert other.returncode == 0 and other.stdout.strip() == "acquired"


def test_a_second_lock_in_the_same_process_is_refused_too(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(RunLockedError, match=f"process {os.getpid()}"):
            RunLock(tmp_path).acquire()
        assert (tmp_path / LOCK_NAME).exists()  # the refused one did not remove ours


def test_the_lock_is_released_when_the_block_raises(tmp_path):
    with pytest.raises(ZeroDivisionError):
        with RunLock(tmp_path):
            1 / 0
    assert not (tmp_path / LOCK_NAME).exists()


def test_explicit_acquire_and_release_and_release_twice_is_harmless(tmp_path):
    lock = RunLock(tmp_path).acquire()
    assert (tmp_path / LOCK_NAME).exists()
    lock.release()
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_lock_left_by_a_dead_process_is_replaced_and_that_is_said(tmp_path):
    dead = _dead_pid()
    _write_lock(tmp_path, dead)
    said = []
    with RunLock(tmp_path, on_stale=said.append) as lock:
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert said == [lock.replaced] and f"process {dead}" in said[0] and "stale" in said[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no renamed leftovers


def test_a_lock_whose_pid_now_belongs_to_a_newer_process_is_stale(tmp_path):
    # after a container restart pids start again, and our own pid may be the one in the lock
    _write_lock(tmp_path, os.getpid(), age_s=3600)
    said = []
    with RunLock(tmp_path, on_stale=said.append):
        pass
    assert len(said) == 1


def test_a_live_owners_lock_is_not_replaced(tmp_path):
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.05)  # the lock is written after its owner started
        path = _write_lock(tmp_path, owner.pid)
        with pytest.raises(RunLockedError, match=f"in use by process {owner.pid}"):
            RunLock(tmp_path).acquire()
        assert json.loads(path.read_text())["pid"] == owner.pid
    finally:
        owner.kill()
        owner.wait()


def test_garbage_in_a_lock_is_stale_only_once_it_is_a_few_seconds_old(tmp_path):
    path = tmp_path / LOCK_NAME
    path.write_text("")  # what another process's lock looks like before it writes its pid
    with pytest.raises(RunLockedError, match="try again"):
        RunLock(tmp_path).acquire()
    then = time.time() - UNREADABLE_GRACE_S - 1
    os.utime(path, (then, then))
    said = []
    with RunLock(tmp_path, on_stale=said.append):
        pass
    assert len(said) == 1 and "unreadable" in said[0]


def test_a_lock_from_another_host_is_never_judged_stale(tmp_path):
    _write_lock(tmp_path, _dead_pid(), host="elsewhere.example", age_s=3600)
    with pytest.raises(RunLockedError, match="on host elsewhere.example"):
        RunLock(tmp_path).acquire()


def test_release_leaves_a_lock_that_someone_else_has_taken_over(tmp_path):
    lock = RunLock(tmp_path).acquire()
    _write_lock(tmp_path, 12345)  # someone judged ours stale and replaced it
    lock.release()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == 12345


def test_run_files_are_checkpoints_metrics_events_anywhere_and_the_lock(tmp_path):
    for name in ["last.safetensors", "best.safetensors", "metrics.jsonl", LOCK_NAME,
                 "tb/sub/events.out.tfevents.1.host", "notes.txt", "sub/x.json"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    names = [str(p.relative_to(tmp_path)) for p in run_files(tmp_path)]
    assert names == sorted([LOCK_NAME, "best.safetensors", "last.safetensors", "metrics.jsonl",
                            "tb/sub/events.out.tfevents.1.host"])
    assert LOCK_NAME not in [p.name for p in run_files(tmp_path, lock=False)]
    assert run_files(tmp_path / "missing") == []


def test_a_fresh_run_is_refused_where_a_run_already_is_with_one_line(tmp_path):
    refuse_existing_run(tmp_path)  # empty: fine
    (tmp_path / "notes.txt").write_text("")
    refuse_existing_run(tmp_path)  # files of no run: fine
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(UserError, match=r"already holds a run \(metrics.jsonl\); use --resume"):
        refuse_existing_run(tmp_path)


def test_the_lock_we_hold_does_not_make_a_folder_a_run(tmp_path):
    with RunLock(tmp_path):
        refuse_existing_run(tmp_path)
