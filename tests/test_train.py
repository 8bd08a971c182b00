"""Training: overfitting, exact resume after SIGKILL, DDP on gloo, faults refused clearly."""

from __future__ import annotations

import gc
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import weakref
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from conftest import tiny_config

from captioner.checkpoint import load_checkpoint
from captioner.config import TrainConfig
from captioner.data.dataset import PreparedData, collate
from captioner.distributed import leave_group
from captioner.errors import UserError
from captioner.fields import FieldError
from captioner.models import build_model
from captioner.objectives import caption_losses
from captioner.objectives.reinforce import choice_terms
from captioner.train import TrainingError, TrainResult, epoch_batches, resume, train

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--embed-dim", "8", "--hidden-dim", "16", "--attention-dim", "8", "--dropout", "0.1",
         "--grid", "4", "--no-progress", "--val-max-images", "4", "--seed", "3"]


def _env():
    # two threads, as on a 2-core machine by default: the guarantee is "bit-exact at one
    # thread count", and more than one thread is where a kernel's add order can vary
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}


@pytest.mark.parametrize("attention", ["soft", "hard"])
@pytest.mark.slow
def test_overfits_a_handful_of_shapes_images(shapes_dir, attention):
    data = PreparedData(shapes_dir)
    config = tiny_config(attention, vocab_size=len(data.vocab), hidden_dim=64, embed_dim=32,
                         attention_dim=32, max_len=data.max_len, alpha_c=0.0)
    model = build_model(config).train()
    batch = collate([data.dataset("train", model.config)[i] for i in range(6)])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(120):
        out = model(batch.inputs, batch.captions, batch.lengths, batch.image_index, g)
        terms = {**caption_losses(out, model.config.alpha_c),
                 **choice_terms(model.decoder.attention, out, rerun=None)}
        opt.zero_grad()
        sum(terms.values()).backward()
        opt.step()
        losses.append(terms["ce"].item())
    assert losses[-1] < 0.25 * losses[0], losses[::20]


def test_epoch_order_is_a_fixed_permutation_split_over_ranks():
    a = epoch_batches(10, 3, seed=1, epoch=0)
    assert a == epoch_batches(10, 3, seed=1, epoch=0)
    assert sorted(i for b in a for i in b) == list(range(10))
    assert a != epoch_batches(10, 3, seed=1, epoch=1)
    r0, r1 = epoch_batches(9, 2, 1, 0, rank=0, world=2), epoch_batches(9, 2, 1, 0, rank=1, world=2)
    seen = [i for b in r0 + r1 for i in b]
    assert sum(len(b) for b in r0) == sum(len(b) for b in r1) and set(seen) == set(range(9))


def _train_cmd(data, out, *extra):
    return [sys.executable, "-m", "captioner", "train", "--data", str(data), "--out", str(out),
            *SMALL, *extra]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_gives_the_same_final_weights(shapes_dir, tmp_path):
    flags = ["--batch-size", "4", "--max-steps", "90", "--save-every", "4", "--epochs", "50",
             "--attention", "hard"]
    full = tmp_path / "full"
    subprocess.run(_train_cmd(shapes_dir, full, *flags), check=True, env=_env(),
                   capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(shapes_dir, killed, *flags), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = killed / "last.safetensors"
    deadline = time.time() + 120
    while time.time() < deadline:
        if last.exists() and load_checkpoint(last).train["loop"]["step"] >= 20:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "training finished before it could be killed"
    assert 20 <= load_checkpoint(last).train["loop"]["step"] < 90  # killed mid-run
    subprocess.run([sys.executable, "-m", "captioner", "train", "--out", str(killed), "--resume",
                    "--no-progress"], check=True, env=_env(), capture_output=True)
    a, b = load_checkpoint(full / "last.safetensors"), load_checkpoint(last)
    assert a.train["loop"]["step"] == b.train["loop"]["step"] == 90
    for k in a.weights:
        assert torch.equal(a.weights[k], b.weights[k]), k


@pytest.mark.slow
def test_two_process_gloo_ddp_trains(shapes_dir, tmp_path):
    out = tmp_path / "ddp"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "captioner", "train",
           "--data", str(shapes_dir), "--out", str(out), *SMALL, "--batch-size", "4",
           "--max-steps", "6", "--save-every", "3"]
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    # the ranks' own output, before torchrun's report of which one failed
    assert res.returncode == 0, res.stderr.partition("failed (exitcode")[0][-3000:]
    ckpt = load_checkpoint(out / "last.safetensors")
    assert ckpt.train["loop"]["step"] == 6
    assert (out / "best.safetensors").exists()
    assert "trained 6 steps" in res.stdout and res.stdout.count("trained") == 1  # rank 0 reports


def _fake_clock(monkeypatch, step_seconds) -> dict:
    """Training's clock made to move only while a step runs, ``step_seconds(step)`` for each
    (the step count before it); returns the clock, ``{"t": seconds}``, to move by hand."""
    import captioner.loop as loop
    import captioner.trainer as trainer

    clock = {"t": 0.0}
    step = trainer.Trainer.train_step

    def timed_step(self, batch):
        clock["t"] += step_seconds(self.state["step"])
        return step(self, batch)

    monkeypatch.setattr(trainer.Trainer, "train_step", timed_step)
    for module in (loop, trainer):
        monkeypatch.setattr(module, "time", SimpleNamespace(perf_counter=lambda: clock["t"]))
    return clock


@pytest.mark.slow
def test_the_logged_speed_is_over_the_steps_since_the_previous_record(shapes_dir, tmp_path,
                                                                       monkeypatch):
    _fake_clock(monkeypatch, lambda step: 1.0 if step < 10 else 0.1)  # steps 1-10 1 s, then 0.1
    run = tmp_path / "run"
    train(tiny_config(), _config(shapes_dir, run, batch_size=2, max_steps=20))  # 30 a epoch
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    first, second = [r["captions_per_s"] for r in records if "captions_per_s" in r]
    assert second == pytest.approx(10 * first)  # an epoch's running mean would say 1.8x


@pytest.mark.slow
def test_a_resumed_run_adds_its_wall_time_to_the_time_it_had(shapes_dir, tmp_path, monkeypatch):
    clock = _fake_clock(monkeypatch, lambda step: 3.0)
    run = tmp_path / "run"
    first = train(tiny_config(), _config(shapes_dir, run, batch_size=2, max_steps=20))
    assert first.minutes == pytest.approx(1.0)  # 20 steps of 3 s
    clock["t"] += 1000.0  # the time between the two processes is not the run's
    second = resume(run, train={"max_steps": 40})
    assert second.minutes == pytest.approx(2.0) and "2.0 min" in second.time_text
    assert load_checkpoint(run / "last.safetensors").train["seconds"] == pytest.approx(120.0)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["minutes"] for r in records if "minutes" in r] == [1.0, 1.5, 2.0]  # 30 steps a
    # epoch: mid-epoch stop at 20, the epoch's end at 30, the stop at 40


def test_leaving_the_group_first_frees_a_ddp_wrapper_only_garbage_holds():
    # a DDP wrapper kept by a reference cycle (as torch's import frames keep a trainer's) must
    # not outlive the group: freed at the interpreter's exit, its gloo threads can abort it
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    collecting = gc.isenabled()
    gc.disable()
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0,
                                world_size=1)
        wrapper = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 2))
        cycle = [wrapper]
        cycle.append(cycle)
        alive = weakref.ref(wrapper)
        del wrapper, cycle
        leave_group(wait=True)
        assert alive() is None and not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        if collecting:
            gc.enable()


def _config(data, out, **kw):
    return TrainConfig(data=str(data), out=str(out), progress=False, val_max_images=4, **kw)


@pytest.mark.slow
def test_a_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(
        shapes_dir, tmp_path, monkeypatch):
    import captioner.objectives.likelihood as likelihood

    calls = {"n": 0}

    def poisoned(out, alpha_c=0.0, label_smoothing=0.0):
        terms = caption_losses(out, alpha_c, label_smoothing)
        calls["n"] += 1
        if calls["n"] == 5:
            terms["ce"] = terms["ce"] * float("nan")
        return terms

    monkeypatch.setattr(likelihood, "caption_losses", poisoned)
    run = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"loss became nan at step 4.*last\.safetensors"):
        train(tiny_config(), _config(shapes_dir, run, batch_size=4, max_steps=20, save_every=2))
    good = load_checkpoint(run / "last.safetensors")
    assert good.train["loop"]["step"] == 4
    assert all(torch.isfinite(v).all() for v in good.weights.values() if v.is_floating_point())


@pytest.mark.slow
def test_resume_on_data_with_another_vocabulary_is_refused(shapes_dir, tmp_path):
    from captioner.data.prepare import prepare
    from captioner.data.shapes import generate

    run = tmp_path / "run"
    train(tiny_config(), _config(shapes_dir, run, batch_size=4, max_steps=2, save_every=1))
    other = tmp_path / "other"
    prepare(generate(other, {"train": 3}, seed=9), other, "shapes", min_count=1, progress=False)
    with pytest.raises(TrainingError, match="different vocabulary"):
        resume(run, train={"data": str(other)})
    with pytest.raises(UserError, match="already holds a run .*; use --resume"):
        train(tiny_config(), _config(shapes_dir, run))


@pytest.mark.slow
def test_training_on_precomputed_features_uses_the_encoder_that_made_them(
        shapes_features_dir, tmp_path):
    from safetensors.torch import load_file

    from captioner.checkpoint import load_model

    run = tmp_path / "run"
    result = train(tiny_config(encoder=None, grid_size=None),
                   _config(shapes_features_dir, run, batch_size=4, max_steps=3))
    assert result.step == 3
    model, _, ckpt = load_model(run / "last.safetensors")
    assert ckpt.config.fine_tune_blocks == 0 and ckpt.config.grid_size == 4
    made = load_file(str(shapes_features_dir / "features" / "encoder.safetensors"))
    for k, v in made.items():
        assert torch.equal(model.encoder.state_dict()[k], v)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert any('"val/BLEU-4"' in line for line in lines)


@pytest.mark.slow
def test_logdir_gets_tensorboard_scalars_and_the_run_gets_metrics_jsonl(shapes_dir, tmp_path):
    run, logs = tmp_path / "run", tmp_path / "tb"
    train(tiny_config(), _config(shapes_dir, run, batch_size=4, max_steps=10, logdir=str(logs)))
    assert list(logs.glob("events.out.tfevents.*"))
    import json

    records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["step"] == 10 and "train/ce" in records[0]
    assert "val/BLEU-4" in records[-1] and records[-1]["val/CIDEr-D"] >= 0


@pytest.mark.slow
def test_init_starts_from_a_checkpoints_weights_with_a_fresh_optimizer(shapes_dir, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    train(tiny_config(), _config(shapes_dir, first, batch_size=4, max_steps=3))
    start = load_checkpoint(first / "last.safetensors")
    init = str(first / "last.safetensors")
    # the model comes from the checkpoint: what its weights fix may not be given otherwise
    with pytest.raises(ValueError, match=r"--init .* keeps the architecture of its model, but "
                                         r"--hidden-dim 32 \(run: 16\)"):
        train({"hidden_dim": 32}, _config(shapes_dir, second, init=init))
    assert not second.exists() or not list(second.glob("*.safetensors"))
    # what they do not fix may change: the dropout of the new run
    result = train({"dropout": 0.25, "hidden_dim": 16},
                   _config(shapes_dir, second, batch_size=4, max_steps=1, init=init))
    assert result.step == 1  # a new run: its own step count and optimizer
    after = load_checkpoint(second / "last.safetensors")
    assert after.config == replace(start.config, dropout=0.25)
    assert after.train["train_config"]["init"].endswith("last.safetensors")
    params = [k for k, v in start.weights.items() if v.is_floating_point() and "running" not in k]
    moved = [k for k in params if not torch.equal(start.weights[k], after.weights[k])]
    # one Adam step (lr 4e-4) from the saved weights: parameters moved, and only that far
    assert moved and all((start.weights[k] - after.weights[k]).abs().max() < 1e-3 for k in params)


@pytest.mark.slow
def test_init_from_a_checkpoint_with_another_vocabulary_is_refused(shapes_dir, tmp_path):
    from captioner.data.prepare import prepare
    from captioner.data.shapes import generate

    train(tiny_config(), _config(shapes_dir, tmp_path / "a", batch_size=4, max_steps=1))
    other = tmp_path / "other"
    prepare(generate(other, {"train": 3}, seed=9), other, "shapes", min_count=1, progress=False)
    with pytest.raises(TrainingError, match="different vocabulary"):
        train({}, _config(other, tmp_path / "b", init=str(tmp_path / "a" / "last.safetensors")))


@pytest.mark.slow
def test_batches_by_caption_hold_one_caption_per_item(shapes_dir, tmp_path):
    from captioner.data.dataset import CaptionPairs

    data = PreparedData(shapes_dir)
    images = data.dataset("train", build_model(tiny_config()).config)
    pairs = CaptionPairs(images)
    assert len(pairs) == sum(len(e["captions"]) for e in images.entries)
    k = len(images.entries[0]["captions"])
    assert [pairs[j].captions[0] for j in range(k)] == images[0].captions
    batch = collate([pairs[j] for j in range(3)])
    assert len(batch.captions) == 3 and batch.image_index.tolist() == [0, 1, 2]
    result = train(tiny_config(), _config(shapes_dir, tmp_path / "run", batch_size=8,
                                          max_steps=2, batch_by="caption"))
    assert result.step == 2
    with pytest.raises(FieldError, match="batch_by: must be one of image, caption"):
        train(tiny_config(), _config(shapes_dir, tmp_path / "bad", batch_by="word"))


def test_label_smoothing_raises_the_loss_of_a_confident_correct_prediction():
    from captioner.losses import cross_entropy

    logits = torch.full((1, 2, 5), -10.0)
    logits[0, 0, 1] = logits[0, 1, 2] = 10.0
    targets, mask = torch.tensor([[1, 2]]), torch.tensor([[True, True]])
    plain, smooth = cross_entropy(logits, targets, mask), cross_entropy(logits, targets, mask, 0.1)
    assert plain < 1e-6 and smooth > 1.0


@pytest.mark.parametrize("select_by, best_epoch", [("BLEU-4", 1), ("CIDEr-D", 2)])
@pytest.mark.slow
def test_select_by_keeps_the_epoch_with_the_best_score_of_that_metric(
        shapes_dir, tmp_path, monkeypatch, select_by, best_epoch):
    import captioner.train as tr

    scores = iter([{"BLEU-4": 0.5, "CIDEr-D": 0.1}, {"BLEU-4": 0.2, "CIDEr-D": 0.9},
                   {"BLEU-4": 0.4, "CIDEr-D": 0.3}])
    seen = []  # the decoder's weights at each validation

    def scripted(self):
        seen.append({k: v.clone() for k, v in self.model.decoder.state_dict().items()})
        return next(scores)

    monkeypatch.setattr(tr.Trainer, "validate", scripted)
    run = tmp_path / "run"
    result = train(tiny_config(), _config(shapes_dir, run, batch_size=8, epochs=3,
                                          select_by=select_by))
    assert result.select_by == select_by and len(seen) == 3
    assert result.best_score == {"BLEU-4": 0.5, "CIDEr-D": 0.9}[select_by]
    best = load_checkpoint(run / "best.safetensors").weights
    for k, v in seen[best_epoch - 1].items():
        assert torch.equal(best[f"decoder.{k}"], v)
    assert any(not torch.equal(best[f"decoder.{k}"], v) for k, v in seen[2].items())


@pytest.mark.slow
def test_keep_epochs_keeps_each_epochs_weights_beside_last_and_best(shapes_dir, tmp_path,
                                                                   monkeypatch):
    import captioner.train as tr

    seen = []  # the decoder's weights at each epoch's validation

    def scripted(self):
        seen.append({k: v.clone() for k, v in self.model.decoder.state_dict().items()})
        return {"BLEU-4": 0.1, "CIDEr-D": 0.1}

    monkeypatch.setattr(tr.Trainer, "validate", scripted)
    kept, plain = tmp_path / "kept", tmp_path / "plain"
    train(tiny_config(), _config(shapes_dir, kept, batch_size=8, epochs=2, keep_epochs=True))
    for epoch, weights in enumerate(seen, 1):
        ckpt = load_checkpoint(kept / f"epoch{epoch}.safetensors")
        assert ckpt.train is None  # weights only: `last` is the one that resumes
        assert all(torch.equal(ckpt.weights[f"decoder.{k}"], v) for k, v in weights.items())
    assert not torch.equal(seen[0]["lstm.weight_hh"], seen[1]["lstm.weight_hh"])
    train(tiny_config(), _config(shapes_dir, plain, batch_size=8, epochs=2))
    assert not list(plain.glob("epoch*"))


def test_an_unknown_select_by_metric_is_refused(shapes_dir, tmp_path):
    with pytest.raises(FieldError, match="select_by: must be one of BLEU-4, CIDEr-D"):
        train(tiny_config(), _config(shapes_dir, tmp_path / "run", select_by="bleu"))


@pytest.mark.slow
def test_a_mid_epoch_step_limit_then_resume_goes_on_as_if_it_had_not_stopped(shapes_dir,
                                                                             tmp_path,
                                                                             monkeypatch):
    """A stop scores its weights (here better than any epoch end: best.safetensors keeps them),
    but early stopping and the lr decay count epoch ends only, so the run stopped at step 8 and
    resumed ends in the state and with the weights of the run that did not stop there."""
    import captioner.train as tr

    def scripted(self):  # mid-epoch 0.9; epoch ends 0.5, 0.4, 0.3: worse each time
        st = self.state
        return {"BLEU-4": 0.9 if st["batch"] else 0.6 - 0.1 * st["epoch"]}

    monkeypatch.setattr(tr.Trainer, "validate", scripted)

    def run(out, steps, again=False):
        cfg = _config(shapes_dir, tmp_path / out, batch_size=4, max_steps=steps, seed=3,
                      epochs=4, early_stop=50, lr_patience=0)
        if again:
            resume(cfg.out, train={"max_steps": steps})
        else:
            train(tiny_config(dropout=0.0), cfg)
        return load_checkpoint(tmp_path / out / "last.safetensors")

    whole = run("whole", 40)
    run("parts", 8)
    parts = run("parts", 40, again=True)
    assert parts.train["loop"] == whole.train["loop"]  # both stopped at 40 in mid-epoch: 0.9
    assert whole.train["loop"]["bad_epochs"] == 1 and whole.train["loop"]["epoch_best"] == 0.5
    assert parts.train["scheduler"] == whole.train["scheduler"]
    assert all(torch.equal(whole.weights[k], parts.weights[k]) for k in whole.weights)


@pytest.mark.slow
def test_resume_takes_epochs_and_max_steps_as_given_and_logs_a_mid_epoch_stop_as_such(
        shapes_features_dir, tmp_path, capsys):
    """A smaller --epochs ends the run sooner and --max-steps 0 lifts the step limit (the
    saved values used to win: max(given, saved) epochs, `or` for steps); the val row of a
    stop mid-epoch says how far into the epoch it was, so no two rows claim one epoch."""
    import json

    from captioner.cli import main

    run = tmp_path / "run"
    common = ["--out", str(run), *SMALL, "--batch-size", "4"]  # 40 images: 10 steps an epoch
    assert main(["train", "--data", str(shapes_features_dir), *common, "--epochs", "6",
                 "--max-steps", "15"]) == 0
    assert re.search(r"trained 15 steps \(1\.5 epochs in [\d.]+ min, stopped by max_steps\)",
                     capsys.readouterr().out)
    assert main(["train", *common, "--resume", "--epochs", "2", "--max-steps", "0"]) == 0
    assert re.search(r"trained 20 steps \(2 epochs in [\d.]+ min, stopped by epochs\)",
                     capsys.readouterr().out)
    assert TrainResult(10, 1, 0.5, "BLEU-4", run, "epochs").epochs_text == "1 epoch"
    saved = load_checkpoint(run / "last.safetensors").train["train_config"]
    assert (saved["epochs"], saved["max_steps"]) == (2, 0)
    assert main(["train", *common, "--resume", "--epochs", "1"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if "val/BLEU-4" in r] == [1, 1.5, 2]
    assert [r["epoch"] for r in records if "train/ce" in r] == [1, 2]  # steps 10 and 20
