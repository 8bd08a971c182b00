"""Engines that run `caption` and `prepare --features` beyond one process.

``local`` is the one-machine path (captioner/folder.py, captioner/data/prepare.py). ``ray``
runs the same decoding and the same model on Ray Data: images read and decoded in parallel
tasks, the model loaded once per actor of a pool, on a local Ray instance or a cluster. Ray is
an optional extra (``pip install -e ".[ray]"``); nothing here imports it at module level.
"""

from __future__ import annotations

ENGINES = ("local", "ray")
