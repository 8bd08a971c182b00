"""`caption SOURCE --output OUT --engine ray`: the one-machine folder captioning on Ray Data.

The driver (this process) validates the checkpoint, lists the images, leaves out those OUT
already holds, and starts or joins Ray only if work is left. Rows flow through
``decode_images`` (parallel tasks; fused into the actors when both reserve the same resources,
as on a CPU-only machine) into a pool of ``CaptionWorker`` actors, and the finished records
stream back to the driver, which appends them to OUT batch by batch. The driver is the only
writer: an image is written once even if Ray re-runs a task (an actor killed mid-batch is
restarted and its batch retried), and a run that ends with an image missing fails loudly.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..decoding import DecodeOptions
from ..inference import Captioner, ModelPaths, default_model_path
from .ray_cluster import RayOptions, ray_instance, require_ray
from .ray_stages import CaptionWorker, block_count, decode_images, image_rows
from .results import open_results


@dataclass
class CaptionSummary:
    """What one run did: images captioned, images that failed (an error record each), and
    images OUT already held."""

    captioned: int = 0
    failed: int = 0
    already: int = 0


def model_files(model: ModelPaths) -> list[str]:
    """The checkpoint paths ``Captioner.load`` reads, absolute (actors may run elsewhere)."""
    if model is None or isinstance(model, (str, Path)):
        model = [model or default_model_path()]
    return [str(Path(p).resolve()) for p in model]


def caption_on_ray(paths: Sequence[str], output: str | Path, model: ModelPaths = None,
                   options: DecodeOptions | None = None, ray: RayOptions | None = None,
                   on_results: Callable[[list[dict], int], None] | None = None
                   ) -> CaptionSummary:
    """Caption the images ``paths`` (``folder.expand_sources``) into ``output`` (JSON Lines,
    or Parquet when it ends in ``.parquet``) with ``model`` on Ray, skipping the images
    ``output`` already holds. The checkpoint is loaded here first, so a bad one is refused
    before Ray starts. ``on_results(records, todo)`` sees each batch of records once it is
    durable, and how many images this run captions in all."""
    require_ray()  # a missing extra is said first, before any work
    files = model_files(model)
    checked = Captioner.load(files, device="cpu")  # raises on a bad or missing checkpoint
    preprocess = checked.model.config.preprocess
    del checked
    options, ray = options or DecodeOptions(), ray or RayOptions()
    results = open_results(output)
    todo = [p for p in paths if p not in results.done]
    summary = CaptionSummary(already=len(paths) - len(todo))
    if todo:
        with ray_instance(ray) as rt:
            for records in _records(rt, todo, files, preprocess, options, ray):
                fresh = list({r["image"]: r for r in records
                              if r["image"] not in results.done}.values())
                results.append(fresh)
                failed = sum("error" in r for r in fresh)
                summary.failed += failed
                summary.captioned += len(fresh) - failed
                if on_results and fresh:
                    on_results(fresh, len(todo))
        missing = [p for p in todo if p not in results.done]
        if missing:  # Ray lost rows: never report a run as done that is not
            raise RuntimeError(f"{output}: the Ray run ended with {len(missing)} of {len(todo)} "
                               f"images missing (first: {missing[0]}); run it again to add them")
    results.close()
    return summary


def _records(rt, todo, files, preprocess, options, ray: RayOptions):
    """Each output block's records (dicts), in the order Ray finishes them."""
    blocks = block_count(len(todo), ray.batch_size)
    workers = min(ray.workers(rt.cluster_resources()), blocks)  # no actor without work
    ds = rt.data.from_items(image_rows(todo), override_num_blocks=blocks)
    ds = ds.map_batches(decode_images, fn_kwargs={"preprocess": preprocess},
                        batch_size=ray.batch_size, batch_format="numpy",
                        num_cpus=ray.cpus_per_worker)
    ds = ds.map_batches(CaptionWorker, fn_constructor_args=(files, options, ray.gpus_per_worker,
                                                            ray.cpus_per_worker),
                        compute=rt.data.ActorPoolStrategy(size=workers),
                        batch_size=ray.batch_size, batch_format="numpy",
                        num_cpus=ray.cpus_per_worker, num_gpus=ray.gpus_per_worker or None)
    for block in ds.iter_batches(batch_size=None, batch_format="numpy"):
        yield [json.loads(line) for line in block["record"]]
