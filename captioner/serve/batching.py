"""Dynamic batching: concurrent requests' images gathered into one ``caption_tensors`` call.

The event loop never runs the model. ``submit`` puts an image on a queue and awaits a future;
one worker thread takes the first waiting image, gathers more until ``max_batch`` images or
``max_wait_ms`` have passed, captions each group of identical decoding options in one batch and
resolves the futures (the pattern of model servers' batch aggregation, e.g. TorchServe's).
While the model runs, new requests queue up, so under load batches fill without waiting. Images
announced with ``expect`` (still being decoded) make a batch wait for them, up to
``max_hold_ms``, instead of leaving without them.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..decoding import DecodeOptions
from ..inference import Caption

CaptionFn = Callable[[torch.Tensor, DecodeOptions], list[list[Caption]]]


@dataclass
class _Item:
    image: torch.Tensor  # (3, S, S)
    options: DecodeOptions
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


class Batcher:
    """One worker thread in front of ``caption_fn`` (``Captioner.caption_tensors``)."""

    def __init__(self, caption_fn: CaptionFn, max_batch: int = 16, max_wait_ms: float = 5.0,
                 max_hold_ms: float = 50.0):
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError(f"max_batch must be >= 1 and max_wait_ms >= 0, got {max_batch}, "
                             f"{max_wait_ms}")
        self.caption_fn, self.max_batch, self.max_wait = caption_fn, max_batch, max_wait_ms / 1000
        self.max_hold = max(max_hold_ms, max_wait_ms) / 1000
        self._incoming = 0  # images announced by expect() and not submitted yet
        self._lock = threading.Lock()
        self.batch_sizes: Counter[int] = Counter()  # how many batches of each size ran
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the worker thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="caption-batcher", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Finish the queued work, then stop the worker."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def expect(self, count: int = 1) -> None:
        """Announce ``count`` images that will be submitted soon (or withdrawn with
        ``expect(-count)``), so a batch being gathered waits for them."""
        with self._lock:
            self._incoming += count

    async def submit(self, image: torch.Tensor, options: DecodeOptions,
                     expected: bool = False) -> list[Caption]:
        """Caption one preprocessed image (3, S, S) with ``options``: its n-best list.
        ``expected``: this image was announced with ``expect``."""
        if self._thread is None:
            raise RuntimeError("Batcher.start() was not called")
        if expected:
            self.expect(-1)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put(_Item(image, options, future, loop))
        return await future

    def _gather(self, first: _Item) -> tuple[list[_Item], bool]:
        start = time.monotonic()
        batch = [first]
        while len(batch) < self.max_batch:
            try:  # whatever queued while the model ran is taken at once
                item = self._queue.get_nowait()
            except queue.Empty:
                # announced images are worth waiting for a little longer
                wait = self.max_hold if self._incoming > 0 else self.max_wait
                remaining = start + wait - time.monotonic()
                if remaining <= 0:
                    break
                try:  # woken by an item, or after a short nap to re-check the announcements
                    item = self._queue.get(timeout=min(remaining, self.max_wait or remaining))
                except queue.Empty:
                    continue
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            batch, stopping = self._gather(first)
            groups: dict[DecodeOptions, list[_Item]] = {}
            for item in batch:
                groups.setdefault(item.options, []).append(item)
            for options, items in groups.items():
                self.batch_sizes[len(items)] += 1
                try:
                    results = self.caption_fn(torch.stack([i.image for i in items]), options)
                    outcomes = [(r, None) for r in results]
                except Exception as exc:  # reported to each waiting request, the worker lives on
                    outcomes = [(None, exc)] * len(items)
                for item, (result, exc) in zip(items, outcomes):
                    try:
                        item.loop.call_soon_threadsafe(_resolve, item.future, result, exc)
                    except RuntimeError:  # that request's event loop is closed
                        pass


def _resolve(future: asyncio.Future, result, exc: Exception | None) -> None:
    if future.cancelled():  # the client went away
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
