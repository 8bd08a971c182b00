"""Multi-node training as scripts/train_multinode.sh runs it: two torchrun launches with
``--nnodes 2`` (c10d rendezvous on 127.0.0.1, one gloo process each) stand for two machines.
They train one run together; a node killed mid-run is continued by running the same command
on both nodes again, to the weights of a run that was never interrupted."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from captioner.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "train_multinode.sh"
# dropout and hard attention's draws: each rank's random states are saved and restored, so
# the resumed run is bit for bit the uninterrupted one
FLAGS = ["--embed-dim", "8", "--hidden-dim", "16", "--attention-dim", "8", "--grid", "4",
         "--no-progress", "--val-max-images", "4", "--seed", "3", "--batch-size", "4",
         "--dropout", "0.3", "--attention", "hard", "--max-steps", "48", "--epochs", "50",
         "--early-stop", "50",
         "--save-every", "4"]

pytestmark = pytest.mark.slow  # two torchrun launches per run: ~15 s each on 2 cores


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _nodes(data: Path, out: Path, port: int) -> list[subprocess.Popen]:
    """The script started as on two machines: each its own torchrun agent and process group
    (what killing a machine kills), sharing the rendezvous on 127.0.0.1:``port``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "NNODES": "2",
           "HEAD": "127.0.0.1", "PORT": str(port), "NPROC": "1", "PYTHON": sys.executable,
           "RDZV_ID": f"test-{port}"}
    return [subprocess.Popen(["bash", str(SCRIPT), "--data", str(data), "--out", str(out),
                              *FLAGS], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True) for _ in range(2)]


def _finish(nodes: list[subprocess.Popen], timeout: float = 120
            ) -> list[tuple[int, str, str]]:
    results = []
    for node in nodes:
        try:
            out, err = node.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for n in nodes:
                if n.poll() is None:
                    _kill_machine(n.pid)
            raise
        results.append((node.returncode, out, err))
    return results


def _kill_machine(root: int) -> None:
    """SIGKILL ``root`` and every process under it at once, as when a machine dies (torchrun's
    workers run in sessions of their own: killing the agent's group would leave them)."""
    children: dict[int, list[int]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(pid))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    assert len(tree) >= 2, "the node had no worker process yet"
    for pid in tree:
        os.kill(pid, signal.SIGKILL)


def _step(out: Path) -> int:
    try:
        return load_checkpoint(out / "last.safetensors").train["loop"]["step"]
    except (ValueError, FileNotFoundError):
        return -1


@pytest.fixture(scope="module")
def uninterrupted(shapes_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("multinode") / "run"
    results = _finish(_nodes(shapes_dir, out, _free_port()))
    for code, _, err in results:
        assert code == 0, err[-3000:]
    reports = "".join(o for _, o, _ in results)
    assert reports.count("trained 48 steps") == 1  # rank 0, on one of the nodes, reports
    return out


def test_two_nodes_train_one_run_to_one_consistent_checkpoint(uninterrupted):
    last, best = (load_checkpoint(uninterrupted / f"{n}.safetensors") for n in ("last", "best"))
    assert last.train["loop"]["step"] == 48
    assert last.train["train_config"]["batch_size"] == 4  # per process: 8 images a step
    # 60 images / (2 nodes x 4) = 8 steps an epoch: step 48 is the 8th batch of epoch 5
    assert (last.train["loop"]["epoch"], last.train["loop"]["batch"]) == (5, 8)
    assert best.config == last.config and set(best.weights) == set(last.weights)
    assert not list(uninterrupted.glob("*.tmp")) and not list(uninterrupted.glob(".*.tmp"))


def test_a_killed_node_is_resumed_by_the_same_command_to_the_uninterrupted_weights(
        shapes_dir, tmp_path, uninterrupted):
    out = tmp_path / "run"
    nodes = _nodes(shapes_dir, out, _free_port())
    deadline = time.monotonic() + 180
    while _step(out) < 12:
        assert time.monotonic() < deadline and all(n.poll() is None for n in nodes), \
            "the run ended before a node could be killed"
        time.sleep(0.02)
    _kill_machine(nodes[1].pid)  # the machine is gone: its torchrun agent and its worker
    survivor = _finish(nodes)[0]
    assert survivor[0] != 0, "the other node went on alone"
    assert 12 <= _step(out) < 48  # killed mid-run
    resumed = _finish(_nodes(shapes_dir, out, _free_port()))
    for code, _, err in resumed:
        assert code == 0, err[-3000:]
        assert "resuming that run" in err
    a, b = load_checkpoint(uninterrupted / "last.safetensors"), load_checkpoint(
        out / "last.safetensors")
    assert b.train["loop"]["step"] == 48
    for k in a.weights:
        assert torch.equal(a.weights[k], b.weights[k]), k
