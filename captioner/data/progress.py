"""How far `prepare --features` got with one split, kept beside its features so that a killed
run continues where it stopped (and starts again when its input changed)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from ..config import Preprocess
from ..fileio import atomic_write_json
from .records import ImageRecord

PROGRESS = ".progress.json"


class SplitProgress:
    """How far a split's features got: images done, the bad ones among them (index and line;
    the rest are the memmap's rows, in order), for one input (the records' paths, the encoder,
    its seed, grid, width and preprocessing); ``finish()`` marks the split's features complete.
    ``encoder`` is anything with ``grid_size`` and ``feature_dim``."""

    def __init__(self, target: Path, records: list[ImageRecord], encoder_name: str, seed: int,
                 encoder, pre: Preprocess):
        self.path = target.with_name(target.name.split(".")[0] + PROGRESS)
        self.target = target
        about = json.dumps([[str(r.path) for r in records], encoder_name, seed,
                            encoder.grid_size, encoder.feature_dim, asdict(pre)])
        self.key = hashlib.sha256(about.encode()).hexdigest()
        try:
            saved = json.loads(self.path.read_text())
        except (OSError, ValueError):
            saved = {}
        if saved.get("key") != self.key:
            saved = {}
        self.done, self.bad = saved.get("done", 0), saved.get("bad", [])
        self.skipped, self.complete = saved.get("skipped", []), saved.get("complete", False)

    def kept(self) -> list[int]:
        bad = set(self.bad)
        return [i for i in range(self.done) if i not in bad]

    def finished(self) -> bool:
        return self.complete and self.target.exists()

    def resumable(self, tmp: Path, nbytes: int) -> bool:
        """Some images done, the split not finished, and its memmap whole (not yet cut)."""
        return (self.done > 0 and not self.complete and tmp.exists()
                and tmp.stat().st_size == nbytes)

    def reset(self) -> None:
        self.done, self.bad, self.skipped, self.complete = 0, [], [], False

    def save(self, done: int, bad: list[int], errors: list[str]) -> None:
        self.done, self.bad, self.skipped = done, self.bad + bad, self.skipped + errors
        self._write()

    def finish(self) -> None:
        self.complete = True
        self._write()

    def _write(self) -> None:
        atomic_write_json(self.path, {"key": self.key, "done": self.done, "bad": self.bad,
                                      "skipped": self.skipped, "complete": self.complete})
