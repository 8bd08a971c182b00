"""Signals save: the first Ctrl-C (SIGINT) or SIGTERM asks the training loop to stop.

Inside ``with GracefulStop() as stop:`` the first signal only sets ``stop.requested``; the loop
checks it after each step, writes its checkpoint (atomically, see ``fileio.atomic_write``) and
exits with ``stop.exit_code`` (130 for SIGINT, 143 for SIGTERM: 128 + the signal number, what
a shell reports for a process killed by it). A second signal raises ``KeyboardInterrupt`` at
once; since every checkpoint write is a temp file renamed into place, the previous checkpoint
stays whole either way.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType
from typing import Any

DEFAULT_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class GracefulStop:
    """Turn the first of ``signals`` into a flag while the block runs; a second one raises
    ``KeyboardInterrupt``.

    ``requested`` is the name of the first signal ("SIGINT", "SIGTERM") or None, ``signum`` its
    number and ``exit_code`` 128 + that number (130, 143) or None. With ``announce`` the first
    signal writes one line to stderr at once (with ``os.write``: printing from a handler could
    re-enter a stream the loop is writing, e.g. tqdm's bar, and raise). Previous handlers are
    restored on exit. Python delivers signals to the main thread only, so in any other thread
    this installs nothing and ``active`` is False (the flag then never gets set).
    """

    def __init__(self, signals: tuple[int, ...] = DEFAULT_SIGNALS, announce: bool = True):
        self.signals = tuple(signal.Signals(s) for s in signals)
        self.announce = announce
        self.signum: int | None = None
        self.active = False
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> str | None:
        return signal.Signals(self.signum).name if self.signum is not None else None

    @property
    def exit_code(self) -> int | None:
        return 128 + self.signum if self.signum is not None else None

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        self.active = True
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            # None: the handler was not set from Python; the default is the best guess
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()
        self.active = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt(signal.Signals(signum).name)
        self.signum = signum
        if self.announce:
            name = signal.Signals(signum).name
            os.write(2, f"\n{name}: finishing the current step, then saving and stopping "
                        "(press Ctrl-C again to stop at once)\n".encode())
