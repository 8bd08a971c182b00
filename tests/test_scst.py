"""Self-critical training: the CIDEr-D reward, sampling, the policy-gradient loss, the loop."""

from __future__ import annotations

import random

import pytest
import torch
from conftest import tiny_config

from captioner.config import TrainConfig
from captioner.data.dataset import PreparedData, collate
from captioner.fields import FieldError
from captioner.losses import caption_log_likelihood, self_critical
from captioner.metrics import CiderD
from captioner.models import build_model
from captioner.plan import new_run
from captioner.search import banned_mask, sample
from captioner.train import Trainer
from captioner.vocab import Vocabulary

END, PAD = Vocabulary.end_id, Vocabulary.pad_id


def _corpus(shapes_dir, n=None):
    entries = PreparedData(shapes_dir).manifest("train")[:n]
    return [[c.split() for c in e["captions"]] for e in entries]


def test_cider_d_equals_pycocoevalcaps_when_the_corpus_is_the_scored_set(shapes_dir):
    from pycocoevalcap.cider.cider import Cider

    refs = _corpus(shapes_dir)
    rng = random.Random(0)
    # candidates of every kind: a reference, another image's, truncated, shuffled, empty
    cands = [rng.choice(r) for r in refs[:10]] + [rng.choice(r) for r in refs[:-21:-1]]
    cands += [r[0][:2] for r in refs[30:40]] + [rng.sample(r[0], len(r[0])) for r in refs[40:59]]
    cands += [[]]
    ours = CiderD(refs).scores(cands, refs)
    _, theirs = Cider().compute_score({i: [" ".join(c) for c in r] for i, r in enumerate(refs)},
                                      {i: [" ".join(c)] for i, c in enumerate(cands)})
    assert len(ours) == len(refs) and max(ours) > 1.0
    assert ours == pytest.approx(theirs.tolist(), abs=1e-9)


def test_cider_d_document_frequencies_come_from_the_corpus_not_the_batch(shapes_dir):
    from pycocoevalcap.cider.cider import Cider

    refs = _corpus(shapes_dir)
    cider = CiderD(refs)
    cands, batch = [refs[0][0], refs[1][0]], refs[:2]
    within_corpus = cider.scores(cands, batch)
    # pycocoevalcap takes document frequencies from every image it scores (its references
    # only): scoring the whole corpus gives the batch's scores with the corpus's frequencies
    _, whole = Cider().compute_score({i: [" ".join(c) for c in r] for i, r in enumerate(refs)},
                                     {i: [" ".join(r[-1])] for i, r in enumerate(refs)}
                                     | {i: [" ".join(c)] for i, c in enumerate(cands)})
    assert within_corpus == pytest.approx(whole[:2].tolist(), abs=1e-9)
    _, batch_only = Cider().compute_score({i: [" ".join(c) for c in r] for i, r in enumerate(batch)},
                                          {i: [" ".join(c)] for i, c in enumerate(cands)})
    assert within_corpus != pytest.approx(batch_only.tolist(), abs=1e-3)
    assert cider.score(refs[0][0], refs[0]) > cider.score(refs[1][0], refs[0])
    with pytest.raises(ValueError, match="non-empty"):
        CiderD([])


def _model(vocab=7, seed=0, **kw):
    torch.manual_seed(seed)
    model = build_model(tiny_config(vocab_size=vocab, **kw)).eval()
    with torch.no_grad():
        model.decoder.L_o.weight.mul_(3)
    return model


def test_samples_follow_the_models_word_distribution():
    model = _model()
    feats = torch.randn(1, 16, model.config.feature_dim)
    n = 6000
    drawn = sample(model.decoder, feats, n, max_len=4, generator=torch.Generator().manual_seed(1))
    dec = model.decoder
    with torch.no_grad():
        projected, state = dec.init(feats)
        out = dec.step(feats, projected, state, torch.tensor([Vocabulary.start_id]))
    banned = banned_mask(7)
    probs = torch.softmax(out.logits[0].masked_fill(banned, float("-inf")), -1)
    first = torch.bincount(drawn.tokens[:, 0], minlength=7).float() / n
    assert first[banned].sum() == 0
    assert first.tolist() == pytest.approx(probs.tolist(), abs=0.02)


def test_samples_are_image_major_end_once_and_reproducible():
    model = _model(max_len=5)
    feats = torch.randn(3, 16, model.config.feature_dim)
    a = sample(model.decoder, feats, 4, max_len=5, generator=torch.Generator().manual_seed(2))
    b = sample(model.decoder, feats, 4, max_len=5, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a.tokens, b.tokens) and a.tokens.shape[0] == 12
    assert not (a.tokens == Vocabulary.start_id).any() and not (a.tokens == Vocabulary.unk_id).any()
    for row, k, forced in zip(a.tokens.tolist(), a.lengths.tolist(), a.forced_end.tolist()):
        assert row[k] == END and END not in row[:k] and set(row[k + 1:]) <= {PAD}
        assert PAD not in row[:k]
        assert (k == 5) if forced else (k <= 5)
    # image i's samples depend on image i only: the same image alone draws the same way
    solo = sample(model.decoder, feats[:1].expand(3, -1, -1).contiguous(), 4, max_len=5,
                  generator=torch.Generator().manual_seed(2))
    assert torch.equal(solo.lengths[:4], a.lengths[:4])
    width = int(a.lengths[:4].max()) + 1
    assert torch.equal(solo.tokens[:4, :width], a.tokens[:4, :width])


def test_the_teacher_forced_log_prob_of_a_sample_is_the_one_it_was_drawn_with():
    model = _model()
    feats = torch.randn(2, 16, model.config.feature_dim)
    drawn = sample(model.decoder, feats, 3, max_len=6, generator=torch.Generator().manual_seed(0))
    start = torch.full_like(drawn.tokens[:, :1], Vocabulary.start_id)
    with torch.no_grad():
        out = model.decoder(feats, torch.cat([start, drawn.tokens], 1), drawn.lengths + 2,
                            image_index=torch.arange(2).repeat_interleave(3))
        got = caption_log_likelihood(out.logits, out.targets, out.mask, banned_mask(7))
    dec, banned = model.decoder, banned_mask(7)
    for i in range(6):  # step the decoder along sample i and add up the sampling log-probs
        with torch.no_grad():
            f = feats[i // 3: i // 3 + 1]
            projected, state = dec.init(f)
            prev, total = torch.tensor([Vocabulary.start_id]), 0.0
            for w in drawn.tokens[i, : int(drawn.lengths[i]) + 1].tolist():
                o = dec.step(f, projected, state, prev)
                total += float(torch.log_softmax(o.logits[0].masked_fill(banned, float("-inf")),
                                                 -1)[w])
                state, prev = o.state, torch.tensor([w])
        assert float(got[i]) == pytest.approx(total, abs=1e-4)


def test_self_critical_raises_captions_that_beat_their_siblings():
    log_prob = torch.zeros(6, requires_grad=True)
    rewards = torch.tensor([[1.0, 0.0, 0.5], [2.0, 2.0, 2.0]])
    self_critical(log_prob, rewards, torch.tensor(3)).backward()
    # d loss / d log p = -(r - mean of the others) / words
    assert log_prob.grad.tolist() == pytest.approx([-0.25, 0.25, 0.0, 0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="at least 2"):
        self_critical(log_prob, rewards[:, :1], torch.tensor(3))


@pytest.mark.slow
def test_scst_steps_raise_the_reward_of_a_batch(shapes_features_dir, tmp_path):
    cfg = TrainConfig(data=str(shapes_features_dir), out=str(tmp_path / "run"), objective="scst",
                      lr=1e-2, batch_size=8, progress=False)
    trainer = Trainer(new_run(tiny_config(), cfg))
    batch = collate([trainer.dataset[i] for i in range(8)])
    rewards = [trainer.train_step(batch)["reward"] for _ in range(40)]
    first, last = sum(rewards[:10]) / 10, sum(rewards[-10:]) / 10
    assert last > 1.4 * first, (first, last)
    assert trainer.model.training  # sampling ran in eval mode and gave the mode back


@pytest.mark.slow
def test_scst_runs_from_the_command_line_and_bad_settings_are_refused(shapes_features_dir,
                                                                     tmp_path):
    from captioner.cli import main

    assert main(["train", "--data", str(shapes_features_dir), "--out", str(tmp_path / "xe"),
                 "--max-steps", "2", "--batch-size", "4", "--no-progress", "--hidden-dim", "16",
                 "--embed-dim", "8", "--attention-dim", "8"]) == 0
    assert main(["train", "--data", str(shapes_features_dir), "--out", str(tmp_path / "scst"),
                 "--init", str(tmp_path / "xe" / "last.safetensors"), "--objective", "scst",
                 "--max-steps", "2", "--batch-size", "4", "--no-progress"]) == 0
    lines = (tmp_path / "scst" / "metrics.jsonl").read_text()
    assert '"val/BLEU-4"' in lines
    for bad, match in ((dict(objective="rl"), "objective: must be one of xe, scst"),
                       (dict(objective="scst", batch_by="caption"),
                        "batch_by: --objective scst needs image batches"),
                       (dict(objective="scst", scst_samples=1),
                        "scst_samples: must be an integer between 2 and 100, got 1")):
        with pytest.raises(FieldError, match=match):
            TrainConfig(data=str(shapes_features_dir), out=str(tmp_path / "bad"), **bad)
    flags = ["train", "--data", str(shapes_features_dir), "--out", str(tmp_path / "bad")]
    assert main([*flags, "--objective", "scst", "--batch-by", "caption"]) == 2
    assert not (tmp_path / "bad").exists()  # refused before any work


def test_hard_attention_draws_its_locations_only_when_choosing():
    """Under ``choosing`` an eval-mode hard attention samples a location per word and the
    samples carry the drawn locations' log-probabilities; otherwise it draws nothing."""
    from captioner.search import draw

    model = _model(attention="hard")
    feats = torch.randn(2, 16, model.config.feature_dim)
    plain = sample(model.decoder, feats, 3, max_len=6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(plain.choice_log_prob, torch.zeros(6))
    seen = []
    real = model.decoder.attention.forward

    def spy(*args, **kw):
        out = real(*args, **kw)
        seen.append(out.extras["log_prob"].detach())
        return out

    model.decoder.attention.forward = spy
    with model.decoder.attention.choosing():
        drawn = draw(model.decoder, feats, 3, max_len=6, generator=torch.Generator().manual_seed(0))
    assert model.decoder.attention.forced is None  # the mode ends with the block
    steps = torch.stack(seen, 1)  # (6, T) location log-probabilities, step by step
    t = torch.arange(steps.shape[1])[None]
    going = t <= drawn.lengths[:, None]  # the steps that drew a word or <end>
    going &= ~(drawn.forced_end[:, None] & (t == drawn.lengths[:, None]))
    assert torch.allclose(drawn.choice_log_prob, (steps * going).sum(1))
    assert bool((drawn.choice_log_prob < 0).all())
    assert drawn.log_prob.requires_grad and drawn.choice_log_prob.requires_grad
    with pytest.raises(ValueError, match="no random choices"):
        with _model().decoder.attention.choosing():
            pass


@pytest.mark.slow
def test_scst_over_choices_rewards_words_and_locations(shapes_features_dir, tmp_path):
    """--scst-choices: the loss is the self-critical loss of each caption's word plus location
    log-probability, from the same draws; without it hard attention's locations get no
    REINFORCE gradient at all from the loss."""
    from captioner.search import draw

    cfg = TrainConfig(data=str(shapes_features_dir), out=str(tmp_path / "run"), objective="scst",
                      batch_size=4, progress=False, scst_choices=True)
    trainer = Trainer(new_run(tiny_config("hard"), cfg))
    batch = collate([trainer.dataset[i] for i in range(4)])
    objective, model = trainer.objective, trainer.model
    state = trainer.generator.get_state()
    terms = objective.loss(batch)
    assert model.training and terms["choice_log_prob"] < 0
    trainer.generator.set_state(state)  # the same draws again, by hand
    model.eval()
    with model.decoder.attention.choosing():
        drawn = draw(model.decoder, batch.inputs, 5, model.config.max_len, trainer.generator)
    model.train()
    rewards = objective._rewards(drawn, batch)
    words = drawn.lengths + (~drawn.forced_end).long()
    want = self_critical(drawn.log_prob + drawn.choice_log_prob, rewards, words.sum())
    assert float(terms["scst"].detach()) == pytest.approx(float(want.detach()), rel=1e-5)
    assert float(terms["scst"].detach()) != pytest.approx(
        float(self_critical(drawn.log_prob, rewards, words.sum()).detach()), rel=1e-3)

    bad_cfg = TrainConfig(data=str(shapes_features_dir), out=str(tmp_path / "bad"),
                          objective="scst", scst_choices=True)
    with pytest.raises(ValueError, match="draws nothing to train"):
        Trainer(new_run(tiny_config("soft"), bad_cfg))
    with pytest.raises(FieldError, match="scst_choices: needs --objective scst"):
        TrainConfig(objective="xe", scst_choices=True)
