"""Where the encoder runtimes run: `prepare --features` computes its features with them and
`caption` / `serve` (``Captioner.accelerate``) encode photos with them, giving what eager gives.

Each test names the runtime it needs and skips, naming the package, where it is not installed
(`scripts/setup.sh` installs it: the "fast" extra).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from captioner.checkpoint import save_checkpoint
from captioner.cli import main
from captioner.data.dataset import FEATURE_DTYPE
from captioner.data.prepare import FeatureSpec, prepare
from captioner.data.shapes import generate
from captioner.inference import Captioner
from captioner.models.model import build_model
from captioner.models.runtime import same_features
from captioner.vocab import Vocabulary

from conftest import tiny_config
from test_runtime import needs


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes-runtime")
    return root, generate(root, {"train": 12, "val": 4}, seed=1)


def _features(out, split: str, shape) -> np.ndarray:
    return np.fromfile(out / "features" / f"{split}.f16", dtype=FEATURE_DTYPE).reshape(shape)


@needs("onnxruntime")
def test_prepare_writes_eager_features_to_float16_precision_through_onnxruntime(
        shapes, tmp_path, capsys):
    root, records = shapes
    out = {}
    for name in ("eager", "onnxruntime"):
        out[name] = tmp_path / name
        prepare(records, out[name], "shapes", min_count=1,
                features=FeatureSpec("tiny", grid_size=4, runtime=name), progress=True)
        assert f"encoder runtime: {name}" in capsys.readouterr().err
    assert _same_features(_features(out["onnxruntime"], "train", (12, 16, 128)),
                                    _features(out["eager"], "train", (12, 16, 128)))


def _same_features(got: np.ndarray, want: np.ndarray) -> bool:
    """``same_features`` (max |difference| within half a float16 step of the largest feature)
    and under 1% of the stored values moved at all."""
    got, want = got.astype(np.float32), want.astype(np.float32)
    return (same_features(torch.from_numpy(got), torch.from_numpy(want))
            and (got != want).mean() < 0.01)


def test_prepare_refuses_an_unknown_runtime_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        main(["prepare", "shapes", "--out", str(tmp_path / "p"), "--features", "tiny",
              "--runtime", "tensorrt"])
    assert exit.value.code == 2
    assert "--runtime" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


@pytest.fixture(scope="module")
def frozen_checkpoint(shapes, tmp_path_factory):
    """An untrained tiny model whose encoder is frozen (the case the runtimes serve)."""
    root, records = shapes
    prepare(records, root, "shapes", min_count=1, progress=False)
    vocab = Vocabulary.load(root / "vocab.json")
    torch.manual_seed(3)
    model = build_model(tiny_config(vocab_size=len(vocab), hidden_dim=32, fine_tune_blocks=0))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    path = tmp_path_factory.mktemp("frozen") / "m.safetensors"
    save_checkpoint(path, model.config, vocab, model.state_dict())
    return path


@needs("onnxruntime")
def test_an_accelerated_captioner_captions_as_the_eager_one(shapes, frozen_checkpoint):
    root, records = shapes
    photos = [r.path for r in records]
    eager = Captioner.load(frozen_checkpoint, device="cpu")
    fast = Captioner.load(frozen_checkpoint, device="cpu")
    [runtime] = fast.accelerate("onnxruntime")
    assert runtime.name == "onnxruntime"
    images = torch.stack([eager.preprocess(p) for p in photos])
    with torch.inference_mode():
        got, want = fast.model.encode(images).numpy(), eager.model.encode(images).numpy()
    assert _same_features(got, want)
    assert ([c[0].text for c in fast.caption(photos, beam_size=3)]
            == [c[0].text for c in eager.caption(photos, beam_size=3)])


def test_a_trained_encoder_is_left_to_pytorch(shapes):
    root, _ = shapes
    vocab = Vocabulary.load(root / "vocab.json")
    model = build_model(tiny_config(vocab_size=len(vocab)))  # tiny trains by default
    cap = Captioner(model, vocab)
    assert cap.accelerate("auto") == []
    assert model.fast_encoder is None


@needs("onnxruntime")
def test_caption_names_its_runtime_for_a_folder_and_stays_eager_for_one_photo(
        shapes, frozen_checkpoint, capsys):
    root, records = shapes
    many = [str(r.path) for r in records[:5]]
    assert main(["caption", "--model", str(frozen_checkpoint), "--batch-size", "2", *many]) == 0
    err = capsys.readouterr().err
    assert "captioner caption: encoder runtime: onnxruntime" in err
    assert main(["caption", "--model", str(frozen_checkpoint), many[0]]) == 0
    assert "encoder runtime" not in capsys.readouterr().err
    assert main(["caption", "--model", str(frozen_checkpoint), "--runtime", "eager",
                 "--batch-size", "2", *many]) == 0
    assert "encoder runtime: eager" in capsys.readouterr().err
