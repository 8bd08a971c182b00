"""Checkpoint averaging: the mean of one configuration's weights, as a model of its own."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config

from captioner.average import average_checkpoints
from captioner.checkpoint import load_checkpoint, load_model, save_checkpoint
from captioner.cli import main
from captioner.models import build_model
from captioner.beam_search import beam_search
from captioner.vocab import Vocabulary


def _vocab(n=20, word="w"):
    return Vocabulary(["<pad>", "<start>", "<end>", "<unk>", *[f"{word}{i}" for i in range(n - 4)]])


def _save(path, config=None, vocab=None, seed=0):
    torch.manual_seed(seed)
    model = build_model(config or tiny_config("hard"))
    model.decoder.attention.baseline.fill_(seed)  # a buffer averages like a weight
    save_checkpoint(path, model.config, vocab or _vocab(), model.state_dict())
    return model.state_dict()


@pytest.mark.slow
def test_the_average_holds_each_weights_mean_and_decodes(tmp_path):
    paths = [tmp_path / f"e{i}.safetensors" for i in range(3)]
    states = [_save(p, seed=i) for i, p in enumerate(paths)]
    out = tmp_path / "avg.safetensors"
    assert main(["average", *map(str, paths), "-o", str(out)]) == 0
    model, vocab, ckpt = load_model(out)
    assert ckpt.train is None and vocab == _vocab()
    for key, value in model.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(value, sum(s[key] for s in states) / 3, atol=1e-7), key
    assert model.decoder.attention.baseline == 1.0  # (0 + 1 + 2) / 3
    feats = torch.randn(2, 16, model.config.feature_dim)
    assert len(beam_search(model.decoder, feats, beam_size=2, max_len=5)) == 2


def test_a_checkpoint_averaged_with_itself_is_that_checkpoint(tmp_path):
    path = tmp_path / "a.safetensors"
    _save(path)
    averaged = average_checkpoints([path, path])
    for key, value in load_checkpoint(path, with_train=False).weights.items():
        assert torch.equal(averaged.weights[key], value), key


def test_checkpoints_of_another_configuration_or_vocabulary_are_refused(tmp_path, capsys):
    a, b, c = (tmp_path / f"{n}.safetensors" for n in "abc")
    _save(a)
    _save(b, tiny_config("hard", hidden_dim=32))
    _save(c, vocab=_vocab(word="v"))
    with pytest.raises(ValueError, match=f"{b}: hidden_dim is 32 where {a} has 16"):
        average_checkpoints([a, b])
    with pytest.raises(ValueError, match=f"{c}: a different vocabulary than {a}"):
        average_checkpoints([a, c])
    assert main(["average", str(a), str(b), "-o", str(tmp_path / "out.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("captioner average: error:") and "\n" not in err
    assert not (tmp_path / "out.safetensors").exists()


def test_one_checkpoint_or_writing_over_an_input_is_refused_before_any_work(tmp_path, capsys):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    _save(a)
    _save(b, seed=1)
    before = a.read_bytes()
    assert main(["average", str(a), "-o", str(tmp_path / "out.safetensors")]) == 2
    assert "two checkpoints or more, got 1" in capsys.readouterr().err
    assert main(["average", str(a), str(b), "-o", str(a)]) == 2
    assert f"--out {a} is one of the checkpoints to average" in capsys.readouterr().err
    assert a.read_bytes() == before


@pytest.mark.slow
def test_run_averages_the_epochs_up_to_or_just_past_its_best(shapes_features_dir, tmp_path,
                                                               monkeypatch, capsys):
    """Best by the run's own --select-by (CIDEr-D here, whose best is the 4th epoch where
    BLEU-4's is the 5th): `--up-to-best 3` averages epochs 2-4, `--past-best 1` 3-5, more than
    there are takes what there is; a run without --keep-epochs, --past-best on a run whose best
    is its last epoch (the set would be --past-best 0's), or both CKPTs and --run, are refused in
    one line."""
    import captioner.train as tr
    from captioner.config import TrainConfig
    from captioner.train import train

    cider = {1: 0.1, 2: 0.3, 3: 0.2, 4: 0.5, 5: 0.4}
    monkeypatch.setattr(tr.Trainer, "validate", lambda self: {
        "CIDEr-D": cider[self.state["epoch"]], "BLEU-4": 0.1 * self.state["epoch"]})

    def run(name, keep):
        cfg = TrainConfig(data=str(shapes_features_dir), out=str(tmp_path / name), epochs=5,
                          batch_size=8, select_by="CIDEr-D", keep_epochs=keep, progress=False)
        train(tiny_config(encoder=None, grid_size=4), cfg)
        return tmp_path / name

    kept = run("kept", keep=True)
    out = tmp_path / "avg.safetensors"
    assert main(["average", "--run", str(kept), "--up-to-best", "3", "-o", str(out)]) == 0
    assert "epoch2.safetensors, epoch3.safetensors, epoch4.safetensors" in capsys.readouterr().out
    want = average_checkpoints([kept / f"epoch{e}.safetensors" for e in (2, 3, 4)])
    got = load_checkpoint(out)
    assert all(torch.equal(got.weights[k], v) for k, v in want.weights.items())
    assert main(["average", "--run", str(kept), "--up-to-best", "9", "-o", str(out)]) == 0
    assert "averaging epoch1.safetensors, epoch2" in capsys.readouterr().out
    # one past the best: centred on it; past the run's end: it ends at the last epoch
    assert main(["average", "--run", str(kept), "--past-best", "1", "-o", str(out)]) == 0
    assert "epoch3.safetensors, epoch4.safetensors, epoch5.safetensors" in capsys.readouterr().out
    assert main(["average", "--run", str(kept), "--past-best", "3", "--up-to-best", "2",
                 "-o", str(out)]) == 0
    assert "averaging epoch4.safetensors, epoch5.safetensors of" in capsys.readouterr().out

    plain = run("plain", keep=False)
    assert main(["average", "--run", str(plain), "-o", str(tmp_path / "p.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert "epoch2.safetensors, epoch3.safetensors, epoch4.safetensors missing" in err
    assert "--keep-epochs" in err and "\n" not in err
    cider.update({4: 0.3, 5: 0.6})  # best at the end: nothing past it
    rising = run("rising", keep=True)
    assert main(["average", "--run", str(rising), "--past-best", "1",
                 "-o", str(tmp_path / "r.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert "best epoch (CIDEr-D) is its last (epoch 5)" in err and "--past-best 1" in err
    assert "\n" not in err and not (tmp_path / "r.safetensors").exists()
    assert main(["average", "--run", str(rising), "-o", str(tmp_path / "r.safetensors")]) == 0
    both = ["average", str(out), "--run", str(kept), "-o", str(tmp_path / "b.safetensors")]
    assert main(both) == 2
    assert "not both" in capsys.readouterr().err
    assert not (tmp_path / "p.safetensors").exists()
