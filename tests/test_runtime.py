"""Encoder runtimes (`accelerate`): the eager features, faster, with eager as the fallback.

Runtime-specific tests skip (with the package to install) where onnxruntime / openvino / onnx
are absent; the fallback tests simulate a missing package and always run.
"""

from __future__ import annotations

import sys

import pytest
import torch

from captioner.models import runtime as rt
from captioner.models.encoder import Encoder, get_backbone
from captioner.models.runtime import (
    AUTO_ORDER,
    RUNTIMES,
    Runtime,
    RuntimeUnavailable,
    accelerate,
    same_features,
)

PACKAGES = ("onnxruntime", "openvino", "onnx")


def needs(name: str):
    """Skip unless runtime ``name`` can be imported here."""
    missing = RUNTIMES[name].missing()
    return pytest.mark.skipif(bool(missing), reason=f"{name} needs pip install {' '.join(missing)}")


RUNTIME_PARAMS = [pytest.param(name, marks=needs(name)) for name in RUNTIMES]


@pytest.fixture
def no_packages(monkeypatch):
    """As if onnxruntime, openvino and onnx were not installed: importing them fails."""
    for name in PACKAGES:
        monkeypatch.setitem(sys.modules, name, None)


@pytest.fixture(scope="module")
def tiny() -> Encoder:
    torch.manual_seed(0)
    return Encoder(get_backbone("tiny"), 4).eval()  # 64 px -> 8x8 map -> 4x4 grid, D = 128


@pytest.fixture(scope="module")
def lite0() -> Encoder:
    return Encoder(get_backbone("efficientnet_lite0"), 3).eval()  # 96 px -> 3x3 grid, D = 1280


def eager(encoder: Encoder, images: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return encoder(images)


def images(n: int, size: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", RUNTIME_PARAMS)
def test_each_runtime_gives_the_eager_features_of_the_tiny_encoder(name, tiny, tmp_path):
    fast = accelerate(tiny, 64, name, cache_dir=tmp_path)
    x = images(5, 64)
    features = fast(x)
    assert fast.name == name and features.shape == (5, 16, 128)
    assert features.dtype == torch.float32
    assert same_features(features, eager(tiny, x))


@pytest.mark.parametrize("name", RUNTIME_PARAMS)
def test_each_runtime_gives_the_eager_features_of_efficientnet_lite0(name, lite0, tmp_path):
    fast = accelerate(lite0, 96, name, cache_dir=tmp_path)
    x = images(4, 96)
    features = fast(x)
    assert features.shape == (4, 9, 1280)
    assert same_features(features, eager(lite0, x))


@pytest.mark.parametrize("name", RUNTIME_PARAMS)
def test_any_batch_size_works_including_a_smaller_last_batch(name, tiny, tmp_path):
    fast = accelerate(tiny, 64, name, cache_dir=tmp_path)
    x = images(11, 64)
    parts = [fast(x[:8]), fast(x[8:]), fast(x[10:]), fast(x[:0])]
    assert [p.shape[0] for p in parts] == [8, 3, 1, 0]
    assert same_features(torch.cat(parts[:2]), eager(tiny, x))
    assert same_features(parts[2], eager(tiny, x[10:]))


def test_eager_is_the_encoder_forward_bit_for_bit(tiny):
    x = images(3, 64)
    assert torch.equal(accelerate(tiny, 64, "eager")(x), eager(tiny, x))


def test_auto_picks_the_first_available_runtime_of_auto_order(tiny, tmp_path):
    expected = next(n for n in AUTO_ORDER if not RUNTIMES[n].missing())
    assert accelerate(tiny, 64, "auto", cache_dir=tmp_path).name == expected


def test_auto_without_the_packages_falls_back_to_eager_with_a_one_line_note(
        tiny, no_packages, capsys):
    fast = accelerate(tiny, 64, "auto")
    x = images(2, 64)
    assert fast.name == "eager"
    assert torch.equal(fast(x), eager(tiny, x))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("note: ")
    assert "pip install onnxruntime onnx" in err


@pytest.mark.parametrize("name", ["onnxruntime", "openvino"])
def test_asking_for_a_missing_runtime_is_a_one_line_error_naming_the_package(
        name, tiny, no_packages):
    with pytest.raises(RuntimeUnavailable) as info:
        accelerate(tiny, 64, name)
    message = str(info.value)
    assert "\n" not in message and f"pip install {name} onnx" in message


def test_auto_skips_a_runtime_whose_features_differ_and_says_so(tiny, monkeypatch, capsys):
    """A toy runtime 1% off eager: 'auto' notices (the check on random images) and moves on;
    asked for by name, it is an error rather than wrong features."""
    off = Runtime((), lambda blocks, size, threads, cache: lambda x: blocks(x) * 1.01)
    monkeypatch.setitem(RUNTIMES, "off", off)
    monkeypatch.setattr(rt, "AUTO_ORDER", ("off", "eager"))
    assert accelerate(tiny, 64, "auto").name == "eager"
    assert "off failed (its features differ from eager's)" in capsys.readouterr().err
    with pytest.raises(RuntimeError, match="other features than eager"):
        accelerate(tiny, 64, "off")


def test_auto_survives_a_runtime_that_fails_to_convert(tiny, monkeypatch, capsys):
    def broken(blocks, size, threads, cache):
        raise RuntimeError("exporter says no")

    monkeypatch.setitem(RUNTIMES, "broken", Runtime((), broken))
    monkeypatch.setattr(rt, "AUTO_ORDER", ("broken", "eager"))
    assert accelerate(tiny, 64, "auto").name == "eager"
    assert "broken failed (RuntimeError: exporter says no)" in capsys.readouterr().err


def test_float16_rounding_counts_as_the_same_features_and_bfloat16_does_not():
    reference = torch.rand(64, 49, 256) * 6  # like ReLU6 features
    assert same_features(reference.half().float(), reference)
    assert not same_features(reference.bfloat16().float(), reference)
    assert not same_features(reference[:1], reference)


def test_wrong_image_size_unknown_runtime_and_training_mode_are_refused(tiny):
    with pytest.raises(ValueError, match=r"\(B, 3, 64, 64\)"):
        accelerate(tiny, 64, "eager")(images(1, 32))
    with pytest.raises(ValueError, match="known: auto, eager"):
        accelerate(tiny, 64, "tensorrt")
    with pytest.raises(ValueError, match="eval mode"):
        accelerate(tiny.train(), 64)
    tiny.eval()


@needs("onnxruntime")
def test_the_onnx_export_is_cached_and_follows_the_weights(tmp_path, monkeypatch):
    torch.manual_seed(0)
    encoder = Encoder(get_backbone("tiny"), 4).eval()
    accelerate(encoder, 64, "onnxruntime", cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.onnx"))) == 1

    def no_export(*args):
        raise AssertionError("exported again")

    real_export = rt._export
    monkeypatch.setattr(rt, "_export", no_export)
    accelerate(encoder, 64, "onnxruntime", cache_dir=tmp_path)  # from the cache
    monkeypatch.setattr(rt, "_export", real_export)
    with torch.no_grad():
        encoder.blocks[0][0].weight.mul_(2)
    fast = accelerate(encoder, 64, "onnxruntime", cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.onnx"))) == 2
    x = images(2, 64)
    assert same_features(fast(x), eager(encoder, x))


@needs("onnxruntime")
def test_the_cache_keeps_only_the_most_recent_exports(tmp_path, monkeypatch):
    monkeypatch.setattr(rt, "CACHE_KEEP", 1)
    torch.manual_seed(0)
    encoder = Encoder(get_backbone("tiny"), 4).eval()
    accelerate(encoder, 64, "onnxruntime", cache_dir=tmp_path)
    first = list(tmp_path.glob("*.onnx"))
    accelerate(encoder, 32, "onnxruntime", cache_dir=tmp_path)  # another input size
    kept = list(tmp_path.glob("*.onnx"))
    assert len(kept) == 1 and kept != first
