"""Reaching Ray: the optional import, the engine's options, and a local instance or a cluster.

``ray_instance(options)`` is the one place a Ray instance is started or joined: without an
address a new local instance on this machine (so the same command runs on a laptop), with one
the cluster there (``ray start --head`` on its head node); an address nobody answers is one
line naming it, before Ray's own retries. An instance the caller already started (a notebook,
a test) is used as it is and left running.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ..errors import UserError
from ..fields import check, option

INSTALL = 'pip install -e ".[ray]"'  # from a checkout; pip install "captioner[ray]" otherwise
PROBE_SECONDS = 5.0


def require_ray():
    """The ``ray`` module with Ray Data, or a UserError saying which ``pip install`` to run."""
    try:
        import ray
        import ray.data  # noqa: F401  (ray without its data extra lacks pyarrow, pandas)
    except ImportError as exc:
        raise UserError(f"--engine ray needs Ray Data, which is not installed ({exc}); run "
                        f"{INSTALL} (the `ray` extra) and try again") from None
    return ray


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide the Ray engine runs (the flags of ``--engine ray``, declared once
    here)."""

    address: str | None = option(None, metavar="ADDR", help="with --engine ray: the cluster's "
                                 "head (HOST:PORT, ray://HOST:PORT or auto; default: a new "
                                 "local Ray instance on this machine)")
    num_workers: int | None = option(None, min=1, max=100_000, metavar="N", help="with --engine "
                                     "ray: model actors (default: one per CPU, or per GPU with "
                                     "--worker-gpus, of the instance)")
    cpus_per_worker: float = option(1.0, min=0, min_open=True, flag="",
                                    help="CPUs each model actor reserves")
    gpus_per_worker: float = option(0.0, min=0, max=64, flag="--worker-gpus", metavar="G",
                                    help="with --engine ray: GPUs each actor reserves (0: CPU "
                                         "only)")
    batch_size: int = option(16, min=1, flag="", help="images per model call (the command's "
                             "--batch-size)")
    local_cpus: int | None = option(None, min=1, flag="", help="CPUs of a new local instance "
                                    "(None: all of this machine's)")

    def __post_init__(self) -> None:
        check(self)

    def workers(self, resources: dict[str, float]) -> int:
        """The actor pool's size on a cluster with ``resources`` (``ray.cluster_resources()``);
        a UserError when not even one actor fits (it would wait forever)."""
        kind, per = ("GPU", self.gpus_per_worker) if self.gpus_per_worker else \
            ("CPU", self.cpus_per_worker)
        fit = int(resources.get(kind, 0) // per)
        if fit < 1:
            flag = "--worker-gpus" if kind == "GPU" else "CPUs per worker"
            raise UserError(f"{flag} {per:g}: the Ray instance has {resources.get(kind, 0):g} "
                            f"{kind}s, not enough for one model actor")
        return self.num_workers if self.num_workers is not None else fit


def check_reachable(address: str) -> None:
    """Refuse, in one line, a ``HOST:PORT`` (or ``ray://HOST:PORT``) where nothing listens,
    within ``PROBE_SECONDS``. "auto" and other forms are left to Ray."""
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_SECONDS):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else \
            (exc.strerror or str(exc)).lower()
        raise UserError(f"--address {address}: no Ray cluster answers there ({reason}); start "
                        "one with `ray start --head` on its head node, or leave --address out "
                        "to run on a local Ray instance on this machine") from None


@contextmanager
def ray_instance(options: RayOptions) -> Iterator:
    """Yield the ``ray`` module connected to the instance ``options`` name (see the module's
    docstring); one this call started is shut down on leaving, a caller's is left running."""
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    if options.address:
        check_reachable(options.address)
        kwargs = {"address": options.address}
    else:  # "local": always a new instance, never one `ray start` left on this machine
        kwargs = {"address": "local", "num_cpus": options.local_cpus}
    try:
        ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
                 **kwargs)
    except Exception as exc:  # whatever Ray raises, the user gets one line
        where = f"--address {options.address}" if options.address else "a local Ray instance"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{where}: Ray could not start or connect ({first})") from None
    quiet_ray_data(ray)
    try:
        yield ray
    finally:
        ray.shutdown()


def quiet_ray_data(ray) -> None:
    """Ray Data's progress bars and per-run INFO lines off: the engine prints its own."""
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
