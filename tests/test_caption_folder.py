"""`captioner caption` on folders: recursive discovery, batched DataLoader decoding, a JSON Lines
results file that a killed run resumes without captioning anything twice."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from captioner.cli import main
from captioner.folder import ResultsFile, caption_batches, escape, find_images
from captioner.inference import Captioner

from test_serve import random_checkpoint


@pytest.fixture(scope="module")
def checkpoint(shapes_dir, tmp_path_factory) -> Path:
    return random_checkpoint(shapes_dir, tmp_path_factory.mktemp("folder") / "m.safetensors")


@pytest.fixture
def folder(shapes_dir, tmp_path) -> Path:
    """Six good images (one in a subfolder, one named .PNG), a broken .jpg, a text file."""
    root = tmp_path / "photos"
    (root / "sub" / "deeper").mkdir(parents=True)
    images = sorted((shapes_dir / "images").glob("test_*.png"))
    for i, name in enumerate(["a.png", "b.png", "c.PNG", "sub/d.png", "sub/deeper/e.png",
                              "z.png"]):
        shutil.copy(images[i], root / name)
    (root / "sub" / "broken.jpg").write_text("not an image")
    (root / "notes.txt").write_text("not listed")
    return root


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_folders_are_searched_recursively_for_image_extensions_sorted(folder):
    found = find_images([folder, folder / "a.png"])
    names = [str(Path(p).relative_to(folder)) for p in found]
    assert names == ["a.png", "b.png", "c.PNG", "sub/broken.jpg", "sub/d.png",
                     "sub/deeper/e.png", "z.png"]  # each once, notes.txt left out


def test_a_folder_without_images_is_a_one_line_error(tmp_path, checkpoint, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["caption", "--model", str(checkpoint), str(tmp_path / "empty")]) == 2
    assert "no image files in this folder" in capsys.readouterr().err


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.slow
def test_batches_give_the_python_apis_captions_and_an_error_per_bad_image(folder, checkpoint,
                                                                        workers):
    cap = Captioner.load(checkpoint, device="cpu")
    paths = find_images([folder])
    results = [r for batch in caption_batches(cap, paths, cap.options(beam_size=2), 3, workers)
               for r in batch]
    assert [r.path for r in results] == paths
    for r in results:
        if r.path.endswith("broken.jpg"):
            assert r.captions is None and "not an image file" in r.error
        else:
            want = cap.caption(r.path, beam_size=2)[0]
            assert r.error is None and r.captions[0].text == want.text
            assert r.captions[0].score == pytest.approx(want.score, abs=1e-4)


@pytest.mark.slow
def test_a_killed_run_resumes_and_every_image_is_there_exactly_once(folder, checkpoint, tmp_path,
                                                                   monkeypatch, capsys):
    out = tmp_path / "results.jsonl"
    args = ["caption", "--model", str(checkpoint), str(folder), "--output", str(out),
            "--batch-size", "2", "--workers", "0", "--no-progress"]
    real, calls = Captioner.caption_tensors, []

    def killed_on_the_third_batch(self, images, options=None):
        calls.append(len(images))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, images, options)

    monkeypatch.setattr(Captioner, "caption_tensors", killed_on_the_third_batch)
    assert main(args) == 130
    first = _lines(out)
    assert len(first) == 4  # two whole batches written, the third never started
    with open(out, "a") as f:  # and a kill in the middle of writing a line
        f.write('{"image": "' + str(folder / "z.png"))
    monkeypatch.setattr(Captioner, "caption_tensors", real)
    capsys.readouterr()
    code = main(args)
    captured = capsys.readouterr()
    records = _lines(out)  # the partial line is gone: every line parses
    assert sorted(r["image"] for r in records) == sorted(find_images([folder]))
    assert records[:4] == first
    bad = [r for r in records if "error" in r]
    assert len(bad) == 1 and bad[0]["image"].endswith("broken.jpg")
    assert bad[0] in first and code == 0  # its error line was written by the first run
    assert captured.out.strip() == f"{out}: 3 images captioned, 0 failed, 4 already there"
    # a third run has nothing left to do
    assert main(args) == 0 and _lines(out) == records
    assert "0 images captioned, 0 failed, 7 already there" in capsys.readouterr().out


def test_a_results_file_with_a_foreign_line_is_refused_not_overwritten(tmp_path):
    out = tmp_path / "r.jsonl"
    out.write_text('{"image": "a.png", "captions": []}\nhello\n')
    with pytest.raises(ValueError, match="r.jsonl line 2: not a results line"):
        ResultsFile(out)
    assert out.read_text().endswith("hello\n")


def test_tabs_and_newlines_in_file_names_stay_on_one_line(shapes_dir, tmp_path, checkpoint,
                                                          capsys):
    odd = tmp_path / "tab\there\nnewline.png"
    shutil.copy(sorted((shapes_dir / "images").glob("test_*.png"))[0], odd)
    assert main(["caption", "--model", str(checkpoint), str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].split("\t")[0] == escape(str(odd))
    assert escape(str(odd)).endswith("tab\\there\\nnewline.png")
