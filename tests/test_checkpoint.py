"""Checkpoints: self-describing, atomic, and never unpickled."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from captioner.checkpoint import load_checkpoint, load_model, save_checkpoint
from captioner.models import build_model
from captioner.vocab import Vocabulary

from conftest import tiny_config


def _vocab(n=20):
    return Vocabulary(["<pad>", "<start>", "<end>", "<unk>", *[f"w{i}" for i in range(n - 4)]])


def test_a_checkpoint_rebuilds_the_model_with_nothing_else(tmp_path):
    model = build_model(tiny_config("hard"))
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model.config, _vocab(), model.state_dict())
    loaded, vocab, ckpt = load_model(path)
    assert ckpt.config == model.config and vocab == _vocab()
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)


@pytest.mark.slow
def test_training_state_round_trips_with_int_keys_and_rng_tensors(tmp_path):
    model = build_model(tiny_config())
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(1, 3, 64, 64), torch.tensor([[1, 5, 2]]), torch.tensor([3])).logits.sum().backward()
    opt.step()
    train = {"optimizer": opt.state_dict(), "rng": {"torch": torch.get_rng_state()}, "loop": {"step": 7}}
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, model.config, _vocab(), model.state_dict(), train)
    back = load_checkpoint(path).train
    opt2 = torch.optim.Adam(model.parameters())
    opt2.load_state_dict(back["optimizer"])
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for pid, state in s1["state"].items():
        for key, value in state.items():
            assert torch.equal(value, s2["state"][pid][key])
    assert torch.equal(back["rng"]["torch"], train["rng"]["torch"]) and back["loop"]["step"] == 7


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_a_malicious_pickle_renamed_as_a_checkpoint_is_refused_without_running_it(tmp_path, how):
    marker = tmp_path / "pwned"
    path = tmp_path / "best.safetensors"
    if how == "pickle":
        path.write_bytes(pickle.dumps(_Evil(marker)))
    else:
        torch.save({"model": _Evil(marker)}, path)
    with pytest.raises(ValueError, match=r"best\.safetensors: not a captioner checkpoint"):
        load_model(path)
    assert not marker.exists()


def test_other_safetensors_files_and_truncated_checkpoints_are_refused(tmp_path):
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(other))
    with pytest.raises(ValueError, match="not a captioner checkpoint"):
        load_checkpoint(other)
    model = build_model(tiny_config())
    good = tmp_path / "good.safetensors"
    save_checkpoint(good, model.config, _vocab(), model.state_dict())
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="cut.safetensors: not a captioner checkpoint"):
        load_checkpoint(cut)


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    import captioner.checkpoint as ck

    model = build_model(tiny_config())
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, model.config, _vocab(), model.state_dict())
    before = path.read_bytes()

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(ck, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model.config, _vocab(), model.state_dict())
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.safetensors"]  # no temp file left


def test_weights_that_do_not_match_the_config_are_refused(tmp_path):
    model = build_model(tiny_config())
    path = tmp_path / "m.safetensors"
    weights = dict(model.state_dict())
    weights.pop("decoder.L_o.bias")
    save_checkpoint(path, model.config, _vocab(), weights)
    with pytest.raises(ValueError, match="field weights: the config implies tensor decoder.L_o.bias, "
                       "which the weights lack"):
        load_model(path)
