"""`prepare ... --features ENCODER --engine ray`: a split's images decoded and encoded on Ray.

``RayFeatures`` is an ``EncodeBatches`` for ``data.prepare.prepare``: the same rows and
``decode_images`` stage as captioning, then a pool of ``EncodeWorker`` actors holding the
driver's own encoder. Ray Data keeps the input order here (``preserve_order``), so the driver
receives the batches in the records' order and ``prepare`` writes the features memmap and its
resumable progress exactly as on one machine: the folder is the same, to float16 tolerance,
and a prepare interrupted on one engine continues on the other.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace

import numpy as np
import torch

from ..config import Preprocess
from ..data.records import ImageRecord
from ..models.runtime import EncoderRuntime
from .ray_cluster import RayOptions, ray_instance, require_ray
from .ray_stages import EncodeWorker, block_count, decode_images, image_rows


class RayFeatures:
    """Encode images with a pool of Ray actors (``options``: where, how many, GPUs). The Ray
    instance is started (or joined) by the first split and kept for the next ones until
    ``close()`` (or this process's exit, where Ray shuts itself down)."""

    def __init__(self, options: RayOptions | None = None):
        require_ray()  # a missing extra is said before any work
        self.options = options or RayOptions()
        self._session, self._rt = ExitStack(), None

    def close(self) -> None:
        """Leave the Ray instance (shut down if this object started it)."""
        self._session.close()
        self._rt = None

    def __call__(self, records: list[ImageRecord], pre: Preprocess | None,
                 encoder: EncoderRuntime | None, batch_size: int, workers: int
                 ) -> Iterator[tuple[list[int], torch.Tensor | None, list[str], int]]:
        """(good indices, their features (b, P, D), error lines, images) per output block, in
        the records' order. ``workers`` (DataLoader processes) has no meaning here: Ray sizes
        the decoding itself."""
        assert encoder is not None and pre is not None, "RayFeatures encodes features"
        opts = replace(self.options, batch_size=batch_size)
        weights = copy.deepcopy(encoder.encoder).cpu()  # the driver's may sit on its GPU
        if self._rt is None:
            self._rt = self._session.enter_context(ray_instance(self.options))
        rt = self._rt
        with _in_order(rt):
            rows = image_rows([r.path for r in records], {"index": list(range(len(records)))})
            blocks = block_count(len(rows), batch_size)
            ds = rt.data.from_items(rows, override_num_blocks=blocks)
            ds = ds.map_batches(decode_images, fn_kwargs={"preprocess": pre},
                                batch_size=batch_size, batch_format="numpy",
                                num_cpus=opts.cpus_per_worker)
            ds = ds.map_batches(EncodeWorker, fn_constructor_args=(weights, opts.gpus_per_worker,
                                                                   opts.cpus_per_worker,
                                                                   encoder.name),
                                compute=rt.data.ActorPoolStrategy(
                                    size=min(opts.workers(rt.cluster_resources()), blocks)),
                                batch_size=batch_size, batch_format="numpy",
                                num_cpus=opts.cpus_per_worker,
                                num_gpus=opts.gpus_per_worker or None)
            done = 0
            for block in ds.iter_batches(batch_size=None, batch_format="numpy"):
                index = block["index"]
                assert index.tolist() == list(range(done, done + len(index))), "out of order"
                good = np.array([e == "" for e in block["error"]], dtype=bool)
                yield (index[good].tolist(), torch.from_numpy(block["features"][good]),
                       [str(e) for e in block["error"][~good]], len(index))
                done += len(index)
            assert done == len(records), f"Ray returned {done} of {len(records)} images"


@contextmanager
def _in_order(rt):
    """Ray Data's output in its input's order while inside (the features are rows in order)."""
    options = rt.data.DataContext.get_current().execution_options
    before, options.preserve_order = options.preserve_order, True
    try:
        yield
    finally:
        options.preserve_order = before
