"""A run folder has one owner: a lock file holding the owner's pid, and what belongs to a run.

``RunLock(folder)`` creates ``folder/.lock`` with ``O_CREAT | O_EXCL`` (atomic on local file
systems), so of two processes starting ``train --out runs/x`` at once exactly one wins and the
other stops with one line naming the folder and the pid that holds it. A lock left by a process
that died (killed, power loss) is detected and replaced, and that is said. Under torchrun only
rank 0 should take the lock (the other ranks never write the run folder).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

LOCK_NAME = ".lock"

#: a lock file that cannot be parsed is taken to be mid-write by its owner (created, content not
#: yet written) until it is this many seconds old; after that it is garbage and stale
UNREADABLE_GRACE_S = 5.0


class RunLockedError(UserError):
    """Another live process owns the run folder."""


@dataclass(frozen=True)
class LockInfo:
    """What a lock file says about its owner."""

    pid: int
    host: str
    started: str  # local time the lock was taken, ISO 8601 to the second


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _process_start(pid: int) -> float | None:
    """When process ``pid`` started (epoch seconds), where /proc says (Linux); else None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _owner_alive(pid: int, lock_written: float) -> bool:
    """Whether the process that wrote a lock at ``lock_written`` still runs. A pid that now
    belongs to a process started after the lock was written was reused (common after a
    container restart, where pids start again from 1): the owner is gone."""
    if not _pid_alive(pid):
        return False
    started = _process_start(pid)
    return started is None or started <= lock_written + 1.0  # btime has 1 s resolution


def _read_info(path: Path) -> LockInfo | None:
    """The lock's owner, or None when the file is empty, garbage or not a lock we wrote."""
    try:
        data = json.loads(path.read_text())
        info = LockInfo(data["pid"], data["host"], data["started"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if type(info.pid) is not int or info.pid <= 0 or not isinstance(info.host, str):
        return None
    return info


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return time.time()


def _say(message: str) -> None:
    print(message, file=sys.stderr)


class RunLock:
    """Exclusive ownership of a run folder for as long as the lock is held.

    Use as a context manager (``with RunLock(out): ...``) or call ``acquire()`` / ``release()``.
    ``acquire`` creates the folder if needed, then ``folder/.lock`` holding JSON
    ``{pid, host, started}``. When the file exists and its pid is alive on this host (or it is
    from another host, which cannot be checked), ``RunLockedError`` (a ``UserError``) is raised
    with one line naming the folder and the pid. When its pid is dead, or its content is garbage
    and older than ``UNREADABLE_GRACE_S``, the stale lock is replaced, ``on_stale`` is called with
    one line saying so (default: printed to stderr), and the line is kept in ``replaced``.
    ``release`` removes the file only if it is still the one this object wrote, so it never
    deletes another owner's lock; leaving the ``with`` block releases, also on exceptions.
    """

    def __init__(self, folder: str | Path, on_stale: Callable[[str], None] | None = _say):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.on_stale = on_stale
        self.replaced: str | None = None  # the line said about a replaced stale lock
        self._content: bytes | None = None  # what we wrote; None while not held

    @property
    def held(self) -> bool:
        return self._content is not None

    def acquire(self) -> "RunLock":
        """Take the lock or raise ``RunLockedError``; returns self."""
        if self.held:
            raise RunLockedError(f"{self.folder}: this process already holds {self.path}")
        self.folder.mkdir(parents=True, exist_ok=True)
        info = LockInfo(os.getpid(), socket.gethostname(), time.strftime("%Y-%m-%dT%H:%M:%S"))
        content = json.dumps(info.__dict__).encode() + b"\n"
        # Two rounds: the second follows the removal of a stale lock. A third process may win
        # the race in between; it then owns the folder and we are refused like anyone else.
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._break_if_stale()
                continue
            try:
                os.write(fd, content)
                os.fsync(fd)
            except BaseException:  # disk full: leave no empty lock behind to block others
                os.close(fd)
                self.path.unlink(missing_ok=True)
                raise
            os.close(fd)
            self._content = content
            return self
        raise self._locked(_read_info(self.path))

    def release(self) -> None:
        """Remove the lock file if this object holds it; calling it again does nothing."""
        if self._content is None:
            return
        try:
            # only our own file: a lock replaced by someone who judged ours stale is theirs now
            if self.path.read_bytes() == self._content:
                self.path.unlink()
        except FileNotFoundError:
            pass
        finally:
            self._content = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def _locked(self, info: LockInfo | None) -> RunLockedError:
        if info is None:
            return RunLockedError(f"{self.folder}: is being locked by another process right "
                                  f"now ({self.path}); try again in a few seconds")
        where = "" if info.host == socket.gethostname() else f" on host {info.host}"
        return RunLockedError(f"{self.folder}: in use by process {info.pid}{where} since "
                             f"{info.started} ({self.path}); wait for it to finish or stop it")

    def _break_if_stale(self) -> None:
        """Remove the existing lock file if its owner is gone; raise if it is alive."""
        info, written = _read_info(self.path), _mtime(self.path)
        if not self.path.exists():
            return  # released a moment ago: try again
        if info is None:
            if time.time() - written < UNREADABLE_GRACE_S:
                raise self._locked(None)  # probably created a moment ago, not yet written
            why = "unreadable"
        elif info.host != socket.gethostname() or _owner_alive(info.pid, written):
            raise self._locked(info)  # a pid on another machine cannot be checked from here
        else:
            why = f"process {info.pid} (since {info.started}) is gone"
        # Rename before deleting, so of two processes breaking the same stale lock only one
        # succeeds (the other gets FileNotFoundError and simply retries the create).
        grave = self.path.with_name(f"{LOCK_NAME}.stale.{os.getpid()}")
        try:
            os.rename(self.path, grave)
        except FileNotFoundError:
            return
        grave.unlink(missing_ok=True)
        self.replaced = f"{self.folder}: replaced a stale lock ({why})"
        if self.on_stale is not None:
            self.on_stale(self.replaced)


def run_files(folder: str | Path, lock: bool = True) -> list[Path]:
    """The files in ``folder`` that belong to a training run, sorted: checkpoints
    (``*.safetensors``), ``metrics.jsonl`` and the lock file at the top level, and TensorBoard
    event files (``events.out.tfevents.*``) anywhere below. ``lock=False`` leaves out the lock
    (for a caller that holds it). A missing folder has none."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob("*.safetensors") if p.is_file()]
    found += [p for p in folder.rglob("events.out.tfevents.*") if p.is_file()]
    names = ["metrics.jsonl"] + ([LOCK_NAME] if lock else [])
    found += [folder / n for n in names if (folder / n).is_file()]
    return sorted(set(found))


def refuse_existing_run(folder: str | Path) -> None:
    """Raise ``UserError`` (one line) when ``folder`` already holds files of a run, so a new
    ``train`` never mixes its checkpoints and metrics with an old run's. The lock file does not
    count: call this while holding the lock."""
    found = run_files(folder, lock=False)
    if found:
        shown = ", ".join(str(p.relative_to(folder)) for p in found[:3])
        more = f" and {len(found) - 3} more" if len(found) > 3 else ""
        raise UserError(f"{folder}: already holds a run ({shown}{more}); use --resume to "
                        "continue it or pick another --out")
