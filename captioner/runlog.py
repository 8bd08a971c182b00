"""A run's log: ``metrics.jsonl`` (one JSON record per line) and, with a log folder,
TensorBoard scalars. Only rank 0 writes; a resumed run first drops the records written after
the checkpoint it resumes from."""

from __future__ import annotations

import json
from pathlib import Path

from .fileio import atomic_write_text


class RunLog:
    """``log(record)`` appends a record (its numbers also go to TensorBoard); ``close()``."""

    def __init__(self, run_dir: Path, logdir: str = "", rank: int = 0, resume_step: int = 0):
        self.path, self.active = Path(run_dir) / "metrics.jsonl", rank == 0
        self.writer = None
        if not self.active:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():  # records after the resumed checkpoint happen again
            keep = [line for line in self.path.read_text().splitlines() if line.strip()
                    and json.loads(line).get("step", 0) <= resume_step]
            atomic_write_text(self.path, "".join(line + "\n" for line in keep))
        if logdir:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(logdir)

    def log(self, record: dict) -> None:
        """Append ``record`` (it has a ``step``)."""
        if not self.active:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "epoch"):
                    self.writer.add_scalar(k, v, record["step"])

    def close(self) -> None:
        if self.writer:
            self.writer.close()
