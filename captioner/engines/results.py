"""Where the engine's results go: the JSON Lines ``ResultsFile`` of `caption --output`, or one
Parquet file with the same fields.

A Parquet file cannot be appended to once closed, so ``ParquetResults`` journals each batch to
``OUT.pending.jsonl`` (a ``ResultsFile``: appended, fsynced, torn last line cut) while the run
goes on, and ``close()`` writes OUT anew, atomically, as its old rows plus the journal's, each
image once, then deletes the journal. A killed run leaves OUT as it was and the journal behind;
the next run counts both as done and merges them when it ends.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..errors import UserError
from ..fileio import atomic_write
from ..folder import ResultsFile
from .ray_cluster import INSTALL

PENDING = ".pending.jsonl"
CHUNK = 10_000  # journal rows per Parquet write


def open_results(path: str | Path) -> ResultsFile | ParquetResults:
    """The results file ``path`` names: Parquet when it ends in ``.parquet``, else JSON
    Lines. Either has ``done`` (images already there), ``append(records)`` and ``close()``."""
    if str(path).lower().endswith(".parquet"):
        return ParquetResults(path)
    return ResultsFile(path)


def _arrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(f"--output *.parquet needs pyarrow; run {INSTALL} (the `ray` extra) "
                        "or write JSON Lines") from None
    return pa, pq


def schema():
    """The Parquet columns: a JSON line's fields (``ImageResult.record``), null where absent."""
    pa, _ = _arrow()
    caption = pa.struct([("caption", pa.string()), ("score", pa.float64())])
    return pa.schema([("image", pa.string()), ("captions", pa.list_(caption)),
                      ("error", pa.string())])


class ParquetResults:
    """A Parquet results file written through a JSON Lines journal (see the module)."""

    def __init__(self, path: str | Path):
        _arrow()
        self.path = Path(path)
        self.pending = ResultsFile(self.path.with_name(self.path.name + PENDING))
        self.done = self.pending.done  # one set: the journal's images and OUT's
        self.done.update(self._images())

    def _images(self) -> list[str]:
        if not self.path.exists():
            return []
        _, pq = _arrow()
        try:
            ours = pq.read_schema(self.path).equals(schema())
        except Exception:  # not Parquet at all
            ours = False
        if not ours:
            raise ValueError(f"{self.path}: not a captioner results file (Parquet with columns "
                             "image, captions, error); choose another --output")
        return pq.read_table(self.path, columns=["image"]).column("image").to_pylist()

    def append(self, records: Sequence[dict]) -> None:
        """Journal ``records``, durable before returning."""
        self.pending.append(records)

    def close(self) -> None:
        """Write OUT with the journal's rows added (each image once), then drop the journal."""
        if not self.pending.path.exists():
            return
        pa, pq = _arrow()
        cols = schema()
        seen: set[str] = set()

        def write(tmp: str) -> None:
            with pq.ParquetWriter(tmp, cols) as writer:
                if self.path.exists():
                    for batch in pq.ParquetFile(self.path).iter_batches(batch_size=CHUNK):
                        seen.update(batch.column("image").to_pylist())
                        writer.write_batch(batch)
                for rows in self._journal():
                    fresh = []
                    for r in rows:
                        if r["image"] not in seen:
                            seen.add(r["image"])
                            fresh.append({"image": r["image"], "captions": r.get("captions"),
                                          "error": r.get("error")})
                    if fresh:
                        writer.write_table(pa.Table.from_pylist(fresh, cols))

        atomic_write(self.path, write)
        self.pending.path.unlink()

    def _journal(self) -> Iterator[list[dict]]:
        rows = []
        with open(self.pending.path, encoding="ascii") as f:
            for line in f:
                if line.strip():
                    rows.append(json.loads(line))
                if len(rows) == CHUNK:
                    yield rows
                    rows = []
        if rows:
            yield rows
