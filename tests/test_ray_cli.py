"""The Ray engine's edges, without starting Ray: SOURCE lists and globs, the Parquet results
file, and the refusals (flags, a missing extra, an unreachable address, a bad checkpoint), each
one line before any worker starts."""

from __future__ import annotations

import json
import shutil
import socket
import sys
import time
from pathlib import Path

import pytest

from captioner.cli import main
from captioner.folder import expand_sources

from test_serve import random_checkpoint


@pytest.fixture(scope="module")
def checkpoint(shapes_dir, tmp_path_factory) -> Path:
    return random_checkpoint(shapes_dir, tmp_path_factory.mktemp("raycli") / "m.safetensors")


@pytest.fixture
def photos(shapes_dir, tmp_path) -> Path:
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    images = sorted((shapes_dir / "images").glob("test_*.png"))
    for name, image in zip(["a.png", "b.jpg", "sub/c.png"], images):
        shutil.copy(image, root / name)
    (root / "notes.txt").write_text("a.png\n")
    return root


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # free again once closed: nothing listens there


@pytest.fixture(autouse=True)
def _no_ray_running():
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()  # an instance another module left would be joined, not refused


# -- SOURCE: folders, list files, globs ---------------------------------------------------------

def test_a_list_file_names_images_relative_to_itself_skipping_blanks_and_comments(photos,
                                                                                 tmp_path):
    listed = tmp_path / "todo.lst"
    listed.write_text(f"# the day's photos\nphotos/b.jpg\n\n{photos / 'a.png'}\nphotos/sub\n")
    assert expand_sources([listed]) == [str(tmp_path / "photos/b.jpg"), str(photos / "a.png"),
                                        str(tmp_path / "photos/sub/c.png")]


def test_a_glob_keeps_matching_images_and_searches_matching_folders(photos):
    assert expand_sources([str(photos / "*")]) == [str(photos / "a.png"), str(photos / "b.jpg"),
                                                   str(photos / "sub/c.png")]  # not notes.txt
    assert expand_sources([str(photos / "**/*.png")]) == [str(photos / "a.png"),
                                                           str(photos / "sub/c.png")]


def test_an_empty_list_or_a_glob_matching_no_image_is_a_one_line_error(photos, tmp_path):
    (tmp_path / "empty.txt").write_text("# nothing yet\n\n")
    with pytest.raises(ValueError, match="empty.txt: an empty list of images"):
        expand_sources([tmp_path / "empty.txt"])
    with pytest.raises(ValueError, match=r"\*.gif: no image files match this pattern"):
        expand_sources([str(photos / "*.gif")])


# -- the Parquet results file -------------------------------------------------------------------

def test_parquet_results_journal_each_batch_and_merge_each_image_once(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    from captioner.engines.results import PENDING, open_results

    out = tmp_path / "r.parquet"
    a = {"image": "a.png", "captions": [{"caption": "a red circle", "score": -1.5}]}
    b = {"image": "b.png", "error": "b.png: not an image file Pillow can read"}
    c = {"image": "c.png", "captions": [{"caption": "two squares", "score": -2.25}]}
    first = open_results(out)
    first.append([a, b])  # then killed: OUT not written yet, its journal holds the batch
    journal = Path(str(out) + PENDING)
    assert not out.exists() and journal.exists()
    with open(journal, "a") as f:
        f.write('{"image": "c.p')  # torn mid-line
    second = open_results(out)
    assert second.done == {"a.png", "b.png"}
    second.append([c])
    second.close()
    assert not journal.exists()
    rows = pq.read_table(out).to_pylist()
    assert rows == [{**a, "error": None}, {**b, "captions": None}, {**c, "error": None}]
    # killed after OUT was replaced but before the journal went: each image still once
    journal.write_text(json.dumps(c) + "\n")
    third = open_results(out)
    assert third.done == {"a.png", "b.png", "c.png"}
    third.close()
    assert pq.read_table(out).to_pylist() == rows and not journal.exists()


def test_a_parquet_file_that_is_not_a_results_file_is_refused(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from captioner.engines.results import open_results

    out = tmp_path / "other.parquet"
    pq.write_table(pa.table({"image": ["a.png"], "label": [3]}), out)
    with pytest.raises(ValueError, match="other.parquet: not a captioner results file"):
        open_results(out)


# -- refusals, each one line before any work ----------------------------------------------------

@pytest.mark.parametrize("flags, message", [
    (["--address", "10.0.0.1:6379"], "--address: only with --engine ray"),
    (["--num-workers", "2"], "--num-workers: only with --engine ray"),
    (["--engine", "ray"], "--engine ray writes its results to a file: give --output"),
])
def test_engine_flags_are_refused_where_they_mean_nothing(photos, checkpoint, flags, message,
                                                          capsys):
    assert main(["caption", "--model", str(checkpoint), str(photos), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_prepare_on_ray_without_features_is_refused_before_any_work(tmp_path, capsys):
    out = tmp_path / "data"
    assert main(["prepare", "shapes", "--out", str(out), "--engine", "ray"]) == 2
    assert "--engine ray encodes features on Ray: give --features" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("command", ["caption", "prepare"])
def test_engine_ray_without_the_extra_says_which_pip_install_to_run(photos, checkpoint, tmp_path,
                                                                    monkeypatch, capsys, command):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    argv = (["caption", "--model", str(checkpoint), str(photos), "--output",
             str(tmp_path / "r.jsonl")] if command == "caption" else
            ["prepare", "shapes", "--out", str(tmp_path / "data"), "--features", "tiny"])
    assert main([*argv, "--engine", "ray"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"captioner {command}: error: --engine ray needs Ray Data")
    assert 'pip install -e ".[ray]"' in err
    assert not (tmp_path / "r.jsonl").exists() and not (tmp_path / "data").exists()


def test_an_unreachable_address_is_one_line_naming_it(photos, checkpoint, tmp_path, capsys):
    pytest.importorskip("ray")
    address = f"127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    assert main(["caption", "--model", str(checkpoint), str(photos), "--output",
                 str(tmp_path / "r.jsonl"), "--engine", "ray", "--address", address]) == 2
    assert time.monotonic() - started < 30  # not Ray's minute of retries
    err = capsys.readouterr().err.strip()
    assert err == (f"captioner caption: error: --address {address}: no Ray cluster answers "
                   "there (connection refused); start one with `ray start --head` on its head "
                   "node, or leave --address out to run on a local Ray instance on this machine")
    assert not (tmp_path / "r.jsonl").exists()


def test_a_checkpoint_that_fails_validation_is_refused_before_ray_starts(photos, checkpoint,
                                                                        tmp_path, capsys):
    ray = pytest.importorskip("ray")
    bad = tmp_path / "bad.safetensors"
    data = bytearray(checkpoint.read_bytes())
    bad.write_bytes(bytes(data[: len(data) // 2]))  # truncated
    assert main(["caption", "--model", str(bad), str(photos), "--output",
                 str(tmp_path / "r.jsonl"), "--engine", "ray", "--address",
                 f"127.0.0.1:{_closed_port()}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.safetensors: not a captioner checkpoint" in err
    assert "--address" not in err and not ray.is_initialized()


def test_prepare_engine_ray_hands_its_flags_to_the_ray_encoder(tmp_path, monkeypatch):
    """The CLI's plumbing alone (test_ray.py runs RayFeatures on Ray): the options reach it and
    it encodes every split's features."""
    pytest.importorskip("ray")
    import captioner.engines.ray_prepare as ray_prepare
    from captioner.data.prepare import local_batches

    calls = []

    class FakeRayFeatures:
        def __init__(self, options):
            self.options = options

        def __call__(self, records, pre, encoder, batch_size, workers):
            calls.append((self.options, len(records), batch_size))
            return local_batches(records, pre, encoder, batch_size, 0)

    monkeypatch.setattr(ray_prepare, "RayFeatures", FakeRayFeatures)
    assert main(["prepare", "shapes", "--train", "6", "--val", "2", "--test", "0", "--out",
                 str(tmp_path / "data"), "--features", "tiny", "--grid", "4", "--batch-size",
                 "3", "--engine", "ray", "--num-workers", "3", "--worker-gpus", "0.5",
                 "--address", "head:6379", "--no-progress"]) == 0
    assert [(n, b) for _, n, b in calls] == [(6, 3), (2, 3)]
    options = calls[0][0]
    assert (options.address, options.num_workers, options.gpus_per_worker) == \
        ("head:6379", 3, 0.5)
    assert (tmp_path / "data" / "features" / "train.f16").exists()


def test_the_actor_pool_is_one_actor_per_cpu_or_gpu_and_refused_where_none_fits():
    from captioner.engines.ray_cluster import RayOptions
    from captioner.errors import UserError

    assert RayOptions().workers({"CPU": 8.0}) == 8
    assert RayOptions(gpus_per_worker=1).workers({"CPU": 32.0, "GPU": 4.0}) == 4
    assert RayOptions(gpus_per_worker=0.5).workers({"CPU": 32.0, "GPU": 4.0}) == 8
    assert RayOptions(num_workers=3).workers({"CPU": 8.0}) == 3
    with pytest.raises(UserError, match="--worker-gpus 1: the Ray instance has 0 GPUs"):
        RayOptions(gpus_per_worker=1).workers({"CPU": 8.0})
