"""Uploaded image bytes -> the model's input tensor, with the same safety as ``load_image``
(``data/images.load_image_bytes``: empty, non-image, truncated and decompression-bomb uploads
are one-line ``ImageError``s naming the upload; nothing is written to disk)."""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor

import torch
from fastapi import UploadFile

from ..data.images import ImageError, load_image_bytes
from ..inference import Captioner
from .errors import RequestError


def upload_tensor(cap: Captioner, data: bytes, name: str) -> tuple[torch.Tensor, tuple[int, int]]:
    """An upload -> (the model's input (3, S, S), the image's (width, height))."""
    image = load_image_bytes(data, name)
    return cap.preprocess(image), image.size


class UploadReader:
    """Uploads -> ``upload_tensor``'s pair, decoded on a thread pool (never on the event loop):
    one over ``max_upload_mb`` is a 413 before it is read whole, one that is not a readable
    image a 400, each a ``RequestError`` naming the upload. ``close()`` stops the pool."""

    def __init__(self, cap: Captioner, max_upload_mb: float, workers: int = 0):
        self.cap, self.max_upload_mb = cap, max_upload_mb
        self.max_bytes = int(max_upload_mb * 1024 * 1024)
        self.pool = ThreadPoolExecutor(workers or min(4, os.cpu_count() or 1),
                                       thread_name_prefix="decode")

    async def read(self, upload: UploadFile, name: str) -> tuple[torch.Tensor, tuple[int, int]]:
        if upload.size is not None and upload.size > self.max_bytes:
            raise RequestError(413, f"{name}: {upload.size / 2**20:.1f} MB is over the "
                               f"{self.max_upload_mb:g} MB upload limit")
        data = await upload.read(self.max_bytes + 1)
        if len(data) > self.max_bytes:
            raise RequestError(413, f"{name}: over the {self.max_upload_mb:g} MB upload limit")
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self.pool, upload_tensor, self.cap, data, name)
        except ImageError as exc:
            raise RequestError(400, str(exc)) from None

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
