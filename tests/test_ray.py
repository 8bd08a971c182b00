"""`caption --engine ray` and `prepare --engine ray` on a local Ray instance (2 CPUs, no
dashboard, started once for the module): the same captions and features as the one-machine
paths, resume after a killed run, a killed actor, bad images as error records."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed: pip install -e '.[ray]'")

from captioner.cli import main  # noqa: E402
from captioner.engines.ray_caption import caption_on_ray  # noqa: E402
from captioner.engines.ray_cluster import RayOptions, quiet_ray_data  # noqa: E402
from captioner.folder import expand_sources  # noqa: E402

from test_serve import random_checkpoint  # noqa: E402

pytestmark = [
    pytest.mark.slow,  # each Ray run starts its actors: a few seconds
    # Ray Data copying its own context touches its own deprecated fields: not ours to fix
    pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context"),
]


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One local instance for the module; the engine joins it instead of starting its own."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    quiet_ray_data(ray)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def checkpoint(shapes_dir, tmp_path_factory) -> Path:
    return random_checkpoint(shapes_dir, tmp_path_factory.mktemp("ray") / "m.safetensors")


@pytest.fixture
def photos(shapes_dir, tmp_path) -> Path:
    """Twelve shapes images (two in a subfolder) and a broken .jpg."""
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    for i, image in enumerate(sorted((shapes_dir / "images").glob("test_*.png"))):
        shutil.copy(image, root / ("sub" if i < 2 else "") / image.name)
    (root / "broken.jpg").write_text("not an image")
    return root


def _records(path: Path) -> dict[str, dict]:
    """A JSON Lines results file by image; fails on an image written twice."""
    records = [json.loads(line) for line in path.read_text().splitlines()]
    by_image = {r["image"]: r for r in records}
    assert len(by_image) == len(records), "an image was written twice"
    return by_image


def _same_results(got: dict[str, dict], want: dict[str, dict]) -> None:
    """The same images, captions and error lines; scores to 1e-3 (another batch around an
    image may round its score's last digit differently)."""
    assert sorted(got) == sorted(want)
    for image, w in want.items():
        g = got[image]
        assert g.keys() == w.keys(), image
        if "error" in w:
            assert g["error"] == w["error"]
            continue
        assert [c["caption"] for c in g["captions"]] == [c["caption"] for c in w["captions"]]
        assert [c["score"] for c in g["captions"]] == \
            pytest.approx([c["score"] for c in w["captions"]], abs=1e-3)


@pytest.fixture
def one_machine(photos, checkpoint, tmp_path):
    """`caption DIR --output` on this machine: the results the Ray engine must reproduce."""
    def run(*flags: str) -> dict[str, dict]:
        out = tmp_path / "local.jsonl"
        out.unlink(missing_ok=True)
        assert main(["caption", "--model", str(checkpoint), str(photos), "--output", str(out),
                     "--workers", "0", "--no-progress", *flags]) == 1  # the broken image
        return _records(out)
    return run


def test_ray_writes_the_captions_of_caption_dir_to_parquet_with_an_error_record_per_bad_image(
        photos, checkpoint, tmp_path, one_machine, capsys):
    import pyarrow.parquet as pq

    want = one_machine("--beam-size", "2", "--n-best", "2")
    out = tmp_path / "ray.parquet"
    code = main(["caption", "--model", str(checkpoint), str(photos), "--output", str(out),
                 "--engine", "ray", "--num-workers", "2", "--batch-size", "4", "--beam-size", "2",
                 "--n-best", "2", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 1  # as on one machine: an image failed
    assert captured.out.strip().endswith("ray.parquet: 12 images captioned, 1 failed, "
                                         "0 already there")
    assert "captioner caption: error: " in captured.err and "broken.jpg: not an image" in \
        captured.err
    rows = pq.read_table(out).to_pylist()
    got = {r["image"]: {k: v for k, v in r.items() if v is not None} for r in rows}
    assert len(got) == len(rows) == 13
    _same_results(got, want)
    assert not Path(str(out) + ".pending.jsonl").exists()  # merged into OUT, then removed


def test_a_killed_run_resumes_and_every_image_is_there_exactly_once(photos, checkpoint, tmp_path,
                                                                   one_machine, capsys):
    want = one_machine()
    out = tmp_path / "ray.jsonl"
    paths = expand_sources([str(photos / "**" / "*.*")])  # a glob SOURCE: the same 13 files
    assert sorted(paths) == sorted(want)
    batches = []

    def killed_after_the_first_batch(records, total):
        batches.append(records)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        caption_on_ray(paths, out, checkpoint, ray=RayOptions(num_workers=1, batch_size=3),
                       on_results=killed_after_the_first_batch)
    first = _records(out)
    assert 0 < len(first) < 13 and list(first.values()) == batches[0]
    with open(out, "a") as f:  # and a kill in the middle of writing a line
        f.write('{"image": "' + paths[-1])
    code = main(["caption", "--model", str(checkpoint), str(photos / "**" / "*.*"), "--output",
                 str(out), "--engine", "ray", "--num-workers", "2", "--batch-size", "3",
                 "--no-progress"])
    got = _records(out)  # the torn line is gone, every line parses, no image twice
    _same_results(got, want)
    failed_before = sum("error" in r for r in first.values())
    left = 13 - len(first)
    assert code == (0 if failed_before else 1)  # 1: the bad image failed in this run
    assert capsys.readouterr().out.strip().endswith(
        f"{left - 1 + failed_before} images captioned, {1 - failed_before} failed, "
        f"{len(first)} already there")


def _actor_processes(name: str) -> dict[int, str]:
    """This machine's Ray actor processes whose title names ``name``: pid -> title."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        except OSError:
            continue
        if title.startswith("ray::") and name in title:
            found[int(pid)] = title
    return found


def test_an_actor_killed_mid_job_is_replaced_and_nothing_is_lost_or_written_twice(
        photos, checkpoint, tmp_path, one_machine):
    want = one_machine()
    listed = tmp_path / "images.txt"  # a list-file SOURCE, one relative path a line
    listed.write_text("\n".join(os.path.relpath(p, tmp_path) for p in sorted(want)) + "\n")
    out = tmp_path / "ray.jsonl"
    killed = []

    def kill_a_busy_actor(records, total):
        if killed:
            return
        deadline = time.monotonic() + 10
        while not (busy := [pid for pid, title in _actor_processes("CaptionWorker").items()
                            if title.endswith(".submit")]):  # running a batch right now
            assert time.monotonic() < deadline, "no actor was running a batch to kill"
            time.sleep(0.005)
        pid = busy[0]
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    summary = caption_on_ray(expand_sources([listed]), out, checkpoint,
                             ray=RayOptions(num_workers=2, batch_size=1),
                             on_results=kill_a_busy_actor)
    assert killed and not os.path.exists(f"/proc/{killed[0]}")
    _same_results(_records(out), want)
    assert (summary.captioned, summary.failed, summary.already) == (12, 1, 0)


def test_prepare_on_ray_writes_the_folder_of_one_machine_prepare(tmp_path):
    """... also when it continues a prepare that one machine began and was interrupted."""
    from captioner.data.prepare import FeatureSpec, local_batches, prepare
    from captioner.data.shapes import generate
    from captioner.engines.ray_prepare import RayFeatures

    records = generate(tmp_path / "src", {"train": 24, "val": 6}, seed=5, progress=False)
    Path(records[4].path).write_text("broken")  # skipped by both engines alike
    spec = FeatureSpec("tiny", grid_size=4, batch_size=5)
    local, remote = tmp_path / "local", tmp_path / "ray"
    prepare(records, local, "shapes", min_count=1, features=spec, progress=False, workers=0)

    def interrupted_after_two_batches(*args):
        yield from list(local_batches(*args))[:2]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare(records, remote, "shapes", min_count=1, features=spec, progress=False,
                workers=0, engine=interrupted_after_two_batches)
    seen = []

    class Counted(RayFeatures):
        def __call__(self, records, *args):
            seen.append(len(records))
            return super().__call__(records, *args)

    report = prepare(records, remote, "shapes", min_count=1, features=spec, progress=False,
                     workers=0, engine=Counted(RayOptions(num_workers=2)))
    assert seen == [14, 6]  # train continued after its first 10 images, then val
    assert report.kept == {"train": 23, "val": 6} and len(report.skipped) == 1
    for split in ("train", "val"):
        a = np.fromfile(local / "features" / f"{split}.f16", np.float16).astype(np.float32)
        b = np.fromfile(remote / "features" / f"{split}.f16", np.float16).astype(np.float32)
        assert a.shape == b.shape and a.size > 0
        np.testing.assert_allclose(b, a, rtol=2e-3, atol=2e-3)
        manifest = json.loads((local / f"{split}.json").read_text())
        assert json.loads((remote / f"{split}.json").read_text()) == manifest
    assert (remote / "vocab.json").read_text() == (local / "vocab.json").read_text()
    meta = json.loads((local / "meta.json").read_text())
    assert json.loads((remote / "meta.json").read_text()) == meta  # the skipped line too
    assert (remote / "features" / "encoder.safetensors").read_bytes() == \
        (local / "features" / "encoder.safetensors").read_bytes()
    assert not list((remote / "features").glob("*.progress.json"))
