"""Ensembles: several models decode as one with the average of their word log-probabilities.
An ensemble of one model is that model; two copies of one model caption as it does; members
read their own features or images; every command that takes --model takes several."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from captioner.checkpoint import save_checkpoint
from captioner.cli import main
from captioner.config import Preprocess, ServeOptions
from captioner.data.dataset import PreparedData
from captioner.decoding import DecodeOptions, decode
from captioner.evaluate import decode_split
from captioner.inference import Captioner, load_models
from captioner.models import build_model
from captioner.models.ensemble import Ensemble, MemberFeatures
from captioner.serve import create_app, describe_model
from captioner.vocab import Vocabulary

from conftest import tiny_config

OPTIONS = [DecodeOptions(beam_size=4, n_best=3, length_penalty=0.5),
           DecodeOptions(strategy="greedy"), DecodeOptions(strategy="sample", n_best=3, seed=5)]


def _model(seed: int, vocab: int = 14, **kw):
    """An untrained tiny model with weights drawn wide (std 0.3), so that its captions vary."""
    torch.manual_seed(seed)
    model = build_model(tiny_config(vocab_size=vocab, **kw)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


def _feats(b: int = 3, p: int = 16, d: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, p, d, generator=torch.Generator().manual_seed(seed))


def _caps(hyps):
    return [[h.tokens for h in per_image] for per_image in hyps]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: o.strategy)
def test_an_ensemble_of_one_model_decodes_exactly_as_that_model(options):
    model = _model(0)
    features = _feats(d=model.config.feature_dim)
    bound = options.bind(model.config.max_len)
    alone = decode(model.decoder, features, bound)
    ensemble = decode(Ensemble([model]).decoder, MemberFeatures((features,)), bound)
    assert _caps(ensemble) == _caps(alone)
    for mine, theirs in zip(sum(ensemble, []), sum(alone, [])):
        assert (mine.log_prob, mine.score, mine.finished) == (theirs.log_prob, theirs.score,
                                                               theirs.finished)
        assert torch.equal(mine.alpha, theirs.alpha)


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: o.strategy)
def test_two_copies_of_one_model_caption_as_that_model(options):
    model = _model(1)
    features = _feats(d=model.config.feature_dim, seed=1)
    bound = options.bind(model.config.max_len)
    alone = decode(model.decoder, features, bound)
    pair = Ensemble([model, copy.deepcopy(model)])
    both = decode(pair.decoder, MemberFeatures((features, features)), bound)
    assert _caps(both) == _caps(alone)
    for mine, theirs in zip(sum(both, []), sum(alone, [])):
        assert mine.log_prob == pytest.approx(theirs.log_prob, abs=1e-4)
        assert torch.allclose(mine.alpha, theirs.alpha, atol=1e-6)


def test_each_step_averages_the_members_log_probabilities_and_attention():
    a, b = _model(2), _model(3)
    ensemble = Ensemble([a, b])
    features = _feats(d=a.config.feature_dim, seed=2)
    words = torch.tensor([Vocabulary.start_id] * 3)
    with torch.no_grad():
        projected, state = ensemble.decoder.init(MemberFeatures((features, features)))
        out = ensemble.decoder.step(MemberFeatures((features, features)), projected, state, words)
        steps = [m.decoder.step(features, *m.decoder.init(features), words) for m in (a, b)]
    logp = [torch.log_softmax(s.logits, -1) for s in steps]
    assert torch.allclose(out.logits, torch.log_softmax((logp[0] + logp[1]) / 2, -1), atol=1e-6)
    assert torch.allclose(out.logits.exp().sum(-1), torch.ones(3))
    assert not torch.allclose(out.logits, logp[0], atol=1e-3)  # both members count
    assert torch.allclose(out.alpha, (steps[0].alpha + steps[1].alpha) / 2)
    assert torch.equal(out.state.parts[1].h, steps[1].state.h)


def test_members_with_different_grids_decode_and_report_the_first_members_attention():
    fine, coarse = _model(4), _model(5, grid_size=2)
    ensemble = Ensemble([fine, coarse])
    features = MemberFeatures((_feats(p=16, d=fine.config.feature_dim),
                               _feats(p=4, d=coarse.config.feature_dim)))
    hyps = decode(ensemble.decoder, features, DecodeOptions(beam_size=3, n_best=2).bind(8))
    assert len(hyps) == 3 and all(len(h) == 2 for h in hyps)
    assert all(h.alpha.shape == (len(h.tokens), 16) for per_image in hyps for h in per_image)


def _checkpoint(shapes_dir: Path, path: Path, seed: int, **kw) -> Path:
    vocab = Vocabulary.load(shapes_dir / "vocab.json")
    model = _model(seed, vocab=len(vocab), hidden_dim=32, **kw)
    save_checkpoint(path, model.config, vocab, model.state_dict())
    return path


@pytest.fixture(scope="module")
def checkpoints(shapes_dir, tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("ensemble")
    return [_checkpoint(shapes_dir, folder / f"m{seed}.safetensors", seed) for seed in (6, 7)]


def _evaluate(models, shapes_dir, out: Path) -> list[dict]:
    assert main(["evaluate", "--model", *map(str, models), "--data", str(shapes_dir),
                 "--split", "val", "--beam-size", "3", "--results", str(out / "r.json"),
                 "--metrics", str(out / "m.json"), "--no-meteor"]) == 0
    return json.loads((out / "r.json").read_text())


@pytest.mark.slow
def test_evaluate_takes_several_models(checkpoints, shapes_dir, tmp_path):
    a, b = checkpoints
    (tmp_path / "one").mkdir(), (tmp_path / "two").mkdir(), (tmp_path / "mixed").mkdir()
    alone = _evaluate([a], shapes_dir, tmp_path / "one")
    assert _evaluate([a, a], shapes_dir, tmp_path / "two") == alone
    mixed = _evaluate([a, b], shapes_dir, tmp_path / "mixed")
    assert [r["image_id"] for r in mixed] == [r["image_id"] for r in alone]
    assert [r["caption"] for r in mixed] != [r["caption"] for r in alone]
    assert json.loads((tmp_path / "mixed" / "m.json").read_text())["models"] == 2


@pytest.mark.slow
def test_caption_takes_several_models(checkpoints, shapes_dir, capsys):
    images = [str(p) for p in sorted((shapes_dir / "images").glob("test_*.png"))[:3]]
    a, b = map(str, checkpoints)
    assert main(["caption", *images, "--model", a]) == 0
    alone = capsys.readouterr().out
    assert main(["caption", *images, "--model", a, a]) == 0
    assert capsys.readouterr().out == alone
    assert main(["caption", *images, "--model", a, "--model", b]) == 0  # repeated flags add up
    mixed = capsys.readouterr().out
    ensemble = Captioner.load([a, b], device="cpu")
    assert mixed.splitlines() == [f"{p}\t{c[0].text}" for p, c in
                                  zip(images, ensemble.caption(images, beam_size=3))]


def test_a_member_with_another_vocabulary_is_refused_naming_its_file(checkpoints, tmp_path, capsys,
                                                                   shapes_dir):
    other = tmp_path / "other.safetensors"
    model = _model(8, vocab=9, hidden_dim=32)
    words = list(Vocabulary.load(shapes_dir / "vocab.json").itos[:4]) + [f"w{i}" for i in range(5)]
    save_checkpoint(other, model.config, Vocabulary(words), model.state_dict())
    image = str(sorted((shapes_dir / "images").glob("test_*.png"))[0])
    assert main(["caption", image, "--model", str(checkpoints[0]), str(other)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(other) in err and "vocabulary" in err
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_models([checkpoints[0], missing])


def test_captioning_images_needs_one_preprocessing(shapes_dir, tmp_path):
    a = _checkpoint(shapes_dir, tmp_path / "a.safetensors", 9)
    b = _checkpoint(shapes_dir, tmp_path / "b.safetensors", 10, preprocess=Preprocess(resize=48))
    with pytest.raises(ValueError, match="member 2 preprocesses images"):
        Captioner.load([a, b], device="cpu")


@pytest.mark.slow
def test_members_read_a_prepared_split_each_as_it_reads_it(shapes_features_dir, monkeypatch):
    """One member on the folder's features, one on its images: each gets its own input, and
    members that read alike share one reading."""
    data = PreparedData(shapes_features_dir)
    kw = dict(vocab=len(data.vocab), max_len=data.max_len, hidden_dim=32, **data.feature_config())
    on_features = _model(11, fine_tune_blocks=0, **kw)  # a frozen encoder reads features
    on_images = _model(12, fine_tune_blocks=-1, **kw)  # a trained encoder reads images
    assert data.serves_features(on_features.config)
    assert not data.serves_features(on_images.config)
    readings = data.member_datasets("val", [on_features.config, on_images.config,
                                            on_features.config])
    item = readings[0]
    assert [s.encoded for s in item] == [True, False, True] and item[0] is item[2]
    assert item[0].inputs.shape == (16, on_features.config.feature_dim)
    assert item[1].inputs.shape[0] == 3

    seen = []
    real = Ensemble.features

    def spy(self, inputs, encoded):
        seen.append(tuple(encoded))
        return real(self, inputs, encoded)

    monkeypatch.setattr(Ensemble, "features", spy)
    ensemble = Ensemble([on_features, on_images])
    predictions = decode_split(ensemble, data.vocab, data, "val", DecodeOptions(beam_size=2),
                               batch_size=4)
    assert [p.image_id for p in predictions] == [e["image_id"] for e in data.manifest("val")]
    assert seen == [(True, False)] * 3
    alone = decode_split(on_features, data.vocab, data, "val", DecodeOptions(beam_size=2))
    of_one = decode_split(Ensemble([on_features]), data.vocab, data, "val",
                          DecodeOptions(beam_size=2))
    assert [p.words for p in of_one] == [p.words for p in alone]


def test_the_service_serves_an_ensemble_and_lists_its_members(checkpoints, shapes_dir):
    cap = Captioner.load(checkpoints, device="cpu")
    info = describe_model(cap, checkpoints)
    assert [m["checkpoint"] for m in info["members"]] == [p.name for p in checkpoints]
    assert info["checkpoint"] == checkpoints[0].name
    image = sorted((shapes_dir / "images").glob("test_*.png"))[0]
    with TestClient(create_app(cap, info, ServeOptions(max_wait_ms=1))) as client:
        r = client.post("/v1/captions?beam_size=3",
                        files=[("images", (image.name, image.read_bytes(), "image/png"))])
        assert r.status_code == 200, r.text
        want = cap.caption(image, beam_size=3)[0].text
        assert r.json()["results"][0]["captions"][0]["text"] == want
        assert len(client.get("/v1/model").json()["members"]) == 2


@pytest.mark.slow
def test_images_may_follow_the_models_on_the_command_line(checkpoints, shapes_dir, tmp_path,
                                                          capsys):
    """--model takes .safetensors files; the first value that is not one begins the images."""
    images = [str(p) for p in sorted((shapes_dir / "images").glob("test_*.png"))[:2]]
    a, b = map(str, checkpoints)
    assert main(["caption", *images, "--model", a, b]) == 0
    after = capsys.readouterr().out
    assert main(["caption", "--model", a, b, *images]) == 0
    assert capsys.readouterr().out == after and len(after.splitlines()) == 2
    assert main(["attend", "--model", a, b, images[0], "-o", str(tmp_path / "f.png")]) == 0
    assert (tmp_path / "f.png").stat().st_size > 0
    with pytest.raises(SystemExit) as stop:
        main(["attend", "--model", a, *images, "-o", str(tmp_path / "g.png")])
    assert stop.value.code == 2 and "attend takes one IMAGE" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["caption", "--model", a, b])
    assert "required: IMAGE" in capsys.readouterr().err
