"""What users run: caption, attend, evaluate; bad files; the default model location."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import tiny_config
from PIL import Image

from captioner.cli import main
from captioner.config import TrainConfig
from captioner.train import train


@pytest.fixture(scope="module")
def trained(shapes_dir, tmp_path_factory) -> Path:
    """A tiny model trained for a few steps on shapes: its best checkpoint."""
    run = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(data=str(shapes_dir), out=str(run), batch_size=8, max_steps=15,
                      progress=False, val_max_images=4)
    train(tiny_config(hidden_dim=32), cfg)
    return run / "best.safetensors"


@pytest.mark.slow
def test_caption_prints_one_line_per_image_and_survives_a_bad_file(trained, shapes_dir, tmp_path,
                                                                   capsys):
    good = sorted((shapes_dir / "images").glob("test_*.png"))[:2]
    bad = tmp_path / "broken.jpg"
    bad.write_text("not an image")
    code = main(["caption", "--model", str(trained), str(good[0]), str(bad), str(good[1])])
    out, err = capsys.readouterr()
    assert code == 1
    lines = out.strip().splitlines()
    assert [l.split("\t")[0] for l in lines] == [str(good[0]), str(good[1])]
    assert all(len(l.split("\t")[1].split()) >= 1 for l in lines)
    assert err.strip().splitlines() == [f"captioner caption: error: {bad}: not an image file "
                                        "Pillow can read"]


def test_caption_json_and_n_best(trained, shapes_dir, capsys):
    image = sorted((shapes_dir / "images").glob("test_*.png"))[0]
    assert main(["caption", "--model", str(trained), "--json", "--n-best", "3", "--beam-size", "4",
                 str(image)]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["image"] == str(image) and len(record["captions"]) == 3
    scores = [c["score"] for c in record["captions"]]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.slow
def test_attend_writes_a_png_with_one_panel_per_word(trained, shapes_dir, tmp_path, monkeypatch,
                                                     capsys):
    import captioner.visualize as vis

    panels = {}
    real = vis.attention_figure

    def spy(image, words, alphas, grid, out, **kw):
        panels["words"], panels["alphas"] = words, alphas
        return real(image, words, alphas, grid, out, **kw)

    monkeypatch.setattr(vis, "attention_figure", spy)
    image = sorted((shapes_dir / "images").glob("test_*.png"))[0]
    out = tmp_path / "att.png"
    assert main(["attend", "--model", str(trained), str(image), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"{out}: ")
    words = printed.strip().split(": ", 1)[1].split()
    assert panels["words"] == words and panels["alphas"].shape == (len(words), 16)
    with Image.open(out) as img:
        assert img.format == "PNG" and img.width > 300


def test_attention_figure_has_the_image_plus_one_titled_panel_per_word(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from captioner.visualize import attention_figure

    captured = {}
    real_close = plt.close

    def grab(fig):
        captured["titles"] = [ax.get_title() for ax in fig.axes if ax.images]
        real_close(fig)

    plt.close = grab
    try:
        n = attention_figure(Image.new("RGB", (50, 40)), ["a", "red", "circle"],
                             np.full((3, 16), 1 / 16), 4, tmp_path / "f.png", title="img")
    finally:
        plt.close = real_close
    assert n == 3 and captured["titles"] == ["img", "a", "red", "circle"]


def test_evaluate_writes_coco_results_and_metrics(trained, shapes_dir, tmp_path, capsys):
    results, metrics = tmp_path / "results.json", tmp_path / "metrics.json"
    assert main(["evaluate", "--model", str(trained), "--data", str(shapes_dir), "--split", "test",
                 "--beam-size", "2", "--results", str(results), "--metrics", str(metrics),
                 "--no-meteor"]) == 0
    res = json.loads(results.read_text())
    assert len(res) == 12 and set(res[0]) == {"image_id", "caption"}
    m = json.loads(metrics.read_text())
    for key in ("BLEU-1", "BLEU-4", "coco/CIDEr", "coco/ROUGE-L", "attention_correctness",
                "attention_correctness_uniform", "distinct_captions"):
        assert key in m, key
    assert "BLEU-4" in capsys.readouterr().out


def test_without_a_model_caption_says_how_to_get_one(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CAPTIONER_HOME", str(tmp_path))
    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(image)
    assert main(["caption", str(image)]) == 2
    err = capsys.readouterr().err
    assert "no model there; train one with `captioner demo`" in err and len(err.splitlines()) == 1


def test_caption_uses_the_demo_model_by_default(trained, tmp_path, monkeypatch, shapes_dir, capsys):
    import shutil

    monkeypatch.setenv("CAPTIONER_HOME", str(tmp_path))
    target = tmp_path / "demo" / "run" / "best.safetensors"
    target.parent.mkdir(parents=True)
    shutil.copy(trained, target)
    image = sorted((shapes_dir / "images").glob("test_*.png"))[0]
    assert main(["caption", str(image)]) == 0
    assert capsys.readouterr().out.startswith(str(image))


def test_every_subcommand_has_help(capsys):
    for cmd in ("prepare", "train", "evaluate", "caption", "attend", "demo"):
        with pytest.raises(SystemExit) as exit_info:
            main([cmd, "--help"])
        assert exit_info.value.code == 0
        assert "usage: captioner " + cmd in capsys.readouterr().out


def test_each_attention_option_flag_says_what_it_does(capsys):
    from dataclasses import fields

    from captioner.fields import spec_of
    from captioner.models.attention import ATTENTIONS

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    usage = " ".join(capsys.readouterr().out.split())  # argparse wraps the help text
    for kind, cls in ATTENTIONS.items():
        for f in fields(cls.Options):
            assert spec_of(f).help, f"{kind}'s option {f.name} has no help"
            described = " ".join(spec_of(f).help.split())
            assert f"{kind} attention: {described} (default: {f.default})" in usage


def test_figure_shows_the_region_the_encoder_saw():
    from captioner.config import Preprocess
    from captioner.visualize import model_view

    image = Image.new("RGB", (400, 300))
    assert model_view(image, Preprocess(224, 0)).size == (400, 300)  # squashed: whole frame
    crop = model_view(image, Preprocess(256, 224))  # shorter side 300 -> 256, centre 224
    assert crop.size == (262, 262) or crop.size == (263, 263)


@pytest.mark.slow
def test_demo_runs_end_to_end_on_a_tiny_budget(tmp_path, capsys):
    from captioner.demo import run_demo

    metrics = run_demo(home=tmp_path, minutes=0.05, attention="hard",
                       counts={"train": 16, "val": 4, "test": 4}, figures=2)
    out = capsys.readouterr().out
    assert "[4/4]" in out and "BLEU-4" in out
    assert {"BLEU-4", "coco/CIDEr", "attention_entropy"} <= set(metrics)
    assert len(list((tmp_path / "demo" / "figures-hard").glob("*.png"))) == 2
    assert (tmp_path / "demo" / "run-hard" / "best.safetensors").exists()
    assert not (tmp_path / "demo" / "run").exists()  # the default (soft) model is left alone
