"""Extending captioner is one place: a decoding option is one field of ``DecodeOptions``, an
attention option one field of a kind's ``Options``, an attention kind one registered class.
Each test adds a toy one and drives it through the public entry points untouched: the command
line, the HTTP service, training, checkpoints."""

from __future__ import annotations

import dataclasses
import io
import json

import pytest
import torch
from PIL import Image

import captioner.decoding as decoding
from captioner.checkpoint import load_checkpoint
from captioner.cli import main
from captioner.decoding import DecodeOptions
from captioner.fields import option
from captioner.inference import Captioner
from captioner.models.attention import Attention, AttentionOutput, SoftAttention
from captioner.registry import ATTENTIONS, STRATEGIES
from captioner.search import Hypothesis

SMALL = ["--hidden-dim", "16", "--embed-dim", "8", "--attention-dim", "8", "--grid", "4",
         "--batch-size", "8", "--val-max-images", "2", "--no-progress", "--max-steps", "2"]


@pytest.fixture
def registered():
    """``registered(registry, name, entry)`` for one test; gone afterwards."""
    added = []

    def add(registry, name, entry):
        registry.names()  # the built-ins first
        added.append((registry, name))
        return registry.register(name, entry)

    yield add
    for registry, name in added:
        registry.unregister(name)


# -- a decoding option ----------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ToyDecodeOptions(DecodeOptions):
    """DecodeOptions with one field more: what adding a decoding option to it amounts to."""

    temperature: float = option(1.0, min=0.1, max=10, http=True, help="divides the logits")


@pytest.fixture
def temperature(monkeypatch, registered):
    """DecodeOptions with a ``temperature`` field, and a strategy that records it."""
    seen = []

    def toy(decoder, features, options):
        seen.append(options.temperature)
        p = features.shape[1]
        return [[Hypothesis([4], -1.0, -1.0, torch.full((1, p), 1 / p), True)]
                for _ in range(features.shape[0])]

    monkeypatch.setattr(decoding, "DecodeOptions", ToyDecodeOptions)
    registered(STRATEGIES, "toy", toy)
    return seen


@pytest.mark.slow
def test_a_new_decoding_option_is_one_field(temperature, shapes_dir, tmp_path, capsys):
    from captioner.data.dataset import PreparedData

    data = PreparedData(shapes_dir)
    run = tmp_path / "run"
    assert main(["train", "--data", str(shapes_dir), "--out", str(run), *SMALL]) == 0
    model = str(run / "best.safetensors")
    image = str(data.image_path(data.manifest("val")[0]))
    # the command line: a flag with the field's bounds and help
    assert main(["caption", "--model", model, "--strategy", "toy", "--temperature", "2.5",
                 image]) == 0
    assert temperature == [2.5]
    with pytest.raises(SystemExit) as exit_info:
        main(["caption", "--model", model, "--strategy", "toy", "--temperature", "99", image])
    assert exit_info.value.code == 2
    assert "argument --temperature: must be a finite number between 0.1 and 10, got 99" in \
        capsys.readouterr().err
    # HTTP: a query parameter with the same bounds
    from fastapi.testclient import TestClient

    from captioner.serve import create_app

    with TestClient(create_app(Captioner.load(model, device="cpu"))) as client:
        png = io.BytesIO()
        Image.open(image).save(png, "PNG")
        files = [("images", ("a.png", png.getvalue(), "image/png"))]
        ok = client.post("/v1/captions?strategy=toy&temperature=4", files=files)
        assert ok.status_code == 200 and ok.json()["options"]["temperature"] == 4
        bad = client.post("/v1/captions?strategy=toy&temperature=99", files=files)
        assert bad.status_code == 422 and "temperature" in bad.json()["error"]
    assert temperature == [2.5, 4.0]


# -- an attention option and an attention kind ---------------------------------------------

class SharpAttention(SoftAttention):
    """Soft attention with its weights raised to ``sharpness`` and renormalised."""

    @dataclasses.dataclass
    class Options:
        sharpness: float = option(1.0, min=0.5, max=8, help="power of the attention weights")

    def forward(self, features, projected, hidden, generator=None):
        alpha = self.weights(projected, hidden) ** self.options.sharpness
        alpha = alpha / alpha.sum(-1, keepdim=True)
        return AttentionOutput(self.context(alpha, features), alpha)


@pytest.mark.slow
def test_a_new_attention_option_is_one_field(registered, shapes_dir, tmp_path, capsys):
    registered(ATTENTIONS, "sharp", SharpAttention)
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    usage = " ".join(capsys.readouterr().out.split())
    assert "--sharp-sharpness SHARPNESS sharp attention: power of the attention weights " \
           "(default: 1.0)" in usage
    run = tmp_path / "run"
    common = ["train", "--data", str(shapes_dir), "--attention", "sharp"]
    with pytest.raises(SystemExit):
        main([*common, "--out", str(run), "--sharp-sharpness", "9", *SMALL])
    assert "argument --sharp-sharpness: must be a finite number between 0.5 and 8, got 9" in \
        capsys.readouterr().err and not run.exists()
    assert main([*common, "--out", str(run), "--sharp-sharpness", "3", *SMALL]) == 0
    ckpt = load_checkpoint(run / "last.safetensors")
    assert ckpt.config.attention_options == {"sharpness": 3.0}
    assert main(["train", "--out", str(run), "--resume", "--sharp-sharpness", "2"]) == 2
    assert "--sharp-sharpness 2.0 (run: 3.0)" in capsys.readouterr().err
    # a checkpoint edited out of the option's bounds is refused on load, naming it
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(run / "best.safetensors"), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    config = json.loads(meta["config"])
    config["attention_options"]["sharpness"] = 50
    save_file(tensors, str(tmp_path / "edited.safetensors"),
              metadata={**meta, "config": json.dumps(config)})
    with pytest.raises(ValueError, match="field attention_options.sharpness: must be a finite "
                                         "number between 0.5 and 8, got 50"):
        load_checkpoint(tmp_path / "edited.safetensors")


class Uniform(Attention):
    """Attention that looks everywhere alike: the plainest possible kind."""

    def forward(self, features, projected, hidden, generator=None):
        alpha = torch.full((len(hidden), features.shape[1]), 1 / features.shape[1])
        return AttentionOutput(self.context(alpha, features), alpha)


@pytest.mark.slow
def test_a_new_attention_kind_is_one_registered_class(registered, shapes_dir, tmp_path, capsys):
    registered(ATTENTIONS, "uniform", Uniform)
    run = tmp_path / "run"
    assert main(["train", "--data", str(shapes_dir), "--out", str(run), "--attention",
                 "uniform", *SMALL]) == 0
    cap = Captioner.load(run / "best.safetensors", device="cpu")
    assert cap.model.config.attention == "uniform"
    from captioner.data.dataset import PreparedData

    data = PreparedData(shapes_dir)
    best = cap.caption(data.image_path(data.manifest("val")[0]), beam_size=2)[0]
    assert torch.allclose(best.alpha, torch.full_like(best.alpha, 1 / 16))
    assert main(["attend", "--model", str(run / "best.safetensors"),
                 str(data.image_path(data.manifest("val")[0])), "-o",
                 str(tmp_path / "a.png")]) == 0
