"""Batched beam search against exhaustive search, greedy, and one-at-a-time decoding."""

from __future__ import annotations

import itertools

import pytest
import torch

from captioner.models import build_model
from captioner.beam_search import beam_search
from captioner.search import Hypothesis, greedy, sample
from captioner.vocab import Vocabulary

from conftest import tiny_config

END, UNK = Vocabulary.end_id, Vocabulary.unk_id


def _model(vocab=7, attention="soft", seed=0, **kw):
    torch.manual_seed(seed)
    model = build_model(tiny_config(attention, vocab_size=vocab, **kw)).eval()
    with torch.no_grad():  # make some continuations clearly better than others
        model.decoder.L_o.weight.mul_(8)
    return model


def _score(model, feats, words):
    """log p(words + <end>) by stepping the decoder (the definition beam search optimises)."""
    dec = model.decoder
    with torch.no_grad():
        projected, state = dec.init(feats)
        prev, total = torch.tensor([Vocabulary.start_id]), 0.0
        for w in [*words, END]:
            out = dec.step(feats, projected, state, prev)
            total += float(torch.log_softmax(out.logits, -1)[0, w])
            state, prev = out.state, torch.tensor([w])
    return total


@pytest.mark.slow
def test_beam_search_finds_the_exhaustive_optimum_on_a_tiny_vocabulary():
    model = _model(vocab=7)
    max_len = 3
    for seed in range(3):
        feats = torch.randn(1, 16, model.config.feature_dim, generator=torch.Generator().manual_seed(seed))
        words = range(4, 7)  # real words (no <unk>)
        candidates = [list(s) for n in range(max_len + 1) for s in itertools.product(words, repeat=n)]
        best = max(candidates, key=lambda s: _score(model, feats, s))
        hyp = beam_search(model.decoder, feats, beam_size=len(candidates), max_len=max_len)[0][0]
        assert hyp.tokens == best
        assert hyp.log_prob == pytest.approx(_score(model, feats, best), abs=1e-4)


def test_n_best_are_distinct_and_sorted_with_correct_scores():
    model = _model(vocab=9)
    feats = torch.randn(2, 16, model.config.feature_dim)
    results = beam_search(model.decoder, feats, beam_size=6, max_len=4, n_best=4)
    for i, hyps in enumerate(results):
        assert len(hyps) == 4
        assert len({tuple(h.tokens) for h in hyps}) == 4
        assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
        for h in hyps:
            assert h.log_prob == pytest.approx(_score(model, feats[i: i + 1], h.tokens), abs=1e-4)
            assert h.alpha.shape == (len(h.tokens), 16)


@pytest.mark.parametrize("attention", ["soft", "hard"])
def test_beam_one_equals_greedy(attention):
    model = _model(vocab=20, attention=attention)
    feats = torch.randn(5, 16, model.config.feature_dim)
    beams = beam_search(model.decoder, feats, beam_size=1, max_len=8)
    greedies = greedy(model.decoder, feats, max_len=8)
    for b, g in zip(beams, greedies):
        assert b[0].tokens == g.tokens
        assert b[0].log_prob == pytest.approx(g.log_prob, abs=1e-4)
        assert torch.allclose(b[0].alpha, g.alpha, atol=1e-6)


def test_a_batch_gives_the_same_captions_as_one_image_at_a_time():
    model = _model(vocab=20)
    feats = torch.randn(6, 16, model.config.feature_dim)
    batched = beam_search(model.decoder, feats, beam_size=4, max_len=8, n_best=2)
    for i in range(6):
        alone = beam_search(model.decoder, feats[i: i + 1], beam_size=4, max_len=8, n_best=2)[0]
        assert [h.tokens for h in alone] == [h.tokens for h in batched[i]]
        assert [h.score for h in alone] == pytest.approx([h.score for h in batched[i]], abs=1e-4)


def test_beam_larger_than_the_vocabulary_returns_only_valid_captions():
    model = _model(vocab=6)  # 2 real words
    feats = torch.randn(2, 16, model.config.feature_dim)
    results = beam_search(model.decoder, feats, beam_size=50, max_len=2, n_best=50)
    for hyps in results:
        # sequences of 0..2 words over 2 words: 1 + 2 + 4 = 7 possible captions
        assert len(hyps) == 7
        assert all(t in (4, 5) for h in hyps for t in h.tokens)
        assert all(h.log_prob > float("-inf") for h in hyps)


def test_captions_stop_at_the_maximum_length():
    model = _model(vocab=20)
    with torch.no_grad():
        model.decoder.L_o.bias[END] = -50.0  # the model never wants to stop
    feats = torch.randn(3, 16, model.config.feature_dim)
    for hyps in beam_search(model.decoder, feats, beam_size=3, max_len=5, n_best=3):
        assert all(len(h.tokens) == 5 for h in hyps)
    assert all(len(h.tokens) == 5 for h in greedy(model.decoder, feats, max_len=5))


def test_unk_is_never_generated_unless_allowed():
    model = _model(vocab=20)
    with torch.no_grad():
        model.decoder.L_o.bias[UNK] = 50.0  # <unk> is by far the likeliest word
    feats = torch.randn(2, 16, model.config.feature_dim)
    hyps = [h for hs in beam_search(model.decoder, feats, beam_size=3, max_len=5, n_best=3) for h in hs]
    assert all(UNK not in h.tokens for h in hyps)
    assert all(UNK not in h.tokens for h in greedy(model.decoder, feats, max_len=5))
    allowed = beam_search(model.decoder, feats, beam_size=3, max_len=5, allow_unk=True)
    assert all(UNK in hs[0].tokens for hs in allowed)


def _early_ending_model():
    """A model that ends some captions after 2-3 words and runs others to max_len."""
    model = _model(vocab=12)
    with torch.no_grad():
        model.decoder.L_o.bias[END] += 3.0
    return model


def test_beams_ending_at_different_times_keep_their_own_scores():
    model = _early_ending_model()
    feats = torch.randn(4, 16, model.config.feature_dim, generator=torch.Generator().manual_seed(0))
    for i, hyps in enumerate(beam_search(model.decoder, feats, beam_size=5, max_len=6, n_best=5)):
        assert len(hyps) == 5
        assert len({len(h.tokens) for h in hyps}) > 1, "the test needs beams of mixed lengths"
        for h in hyps:  # a beam that ended early kept its score while the others went on
            assert h.finished
            assert h.log_prob == pytest.approx(_score(model, feats[i: i + 1], h.tokens), abs=1e-4)
            assert h.score == h.log_prob
        assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)


def test_a_beam_wider_than_all_captions_returns_every_length_ranked_by_log_prob():
    model = _model(vocab=7)  # 3 real words, captions of 0..3 words: 1 + 3 + 9 + 27 = 40
    feats = torch.randn(1, 16, model.config.feature_dim, generator=torch.Generator().manual_seed(1))
    candidates = [list(s) for n in range(4) for s in itertools.product(range(4, 7), repeat=n)]
    ranked = sorted(candidates, key=lambda s: _score(model, feats, s), reverse=True)
    hyps = beam_search(model.decoder, feats, beam_size=40, max_len=3, n_best=40)[0]
    assert [h.tokens for h in hyps] == ranked
    assert [h.log_prob for h in hyps] == pytest.approx([_score(model, feats, s) for s in ranked],
                                                       abs=1e-4)


def test_length_penalty_prefers_longer_captions():
    model = _early_ending_model()
    feats = torch.randn(6, 16, model.config.feature_dim, generator=torch.Generator().manual_seed(0))
    lp = 1.0
    plain = beam_search(model.decoder, feats, beam_size=5, max_len=6, n_best=5)
    normed = beam_search(model.decoder, feats, beam_size=5, max_len=6, n_best=5, length_penalty=lp)
    changed = 0
    for p, n in zip(plain, normed):
        # the penalty only reranks the same final beams: score = log p / (words + <end>) ** lp
        assert sorted(h.tokens for h in n) == sorted(h.tokens for h in p)
        for h in n:
            assert h.score == pytest.approx(h.log_prob / (len(h.tokens) + 1) ** lp, abs=1e-6)
        assert [h.score for h in n] == sorted((h.score for h in n), reverse=True)
        assert len(n[0].tokens) >= len(p[0].tokens)
        changed += len(n[0].tokens) > len(p[0].tokens)
    assert changed, "length_penalty=1 chose the same caption as no penalty on every image"


class _Recorder:
    """Wraps decoder.step to record the mode each step runs in."""

    def __init__(self, decoder):
        self.step, self.calls = decoder.step, []
        self.decoder = decoder

    def __call__(self, *args, **kwargs):
        out = self.step(*args, **kwargs)
        self.calls.append((torch.is_inference_mode_enabled(), torch.is_grad_enabled(),
                           out.logits.requires_grad, self.decoder.training))
        return out


@pytest.mark.parametrize("search", ["beam", "greedy", "sample"])
@pytest.mark.parametrize("training", [True, False])
def test_search_restores_the_training_flag_and_needs_no_grad(search, training, monkeypatch):
    model = _model(vocab=12).train(training)
    for p in model.parameters():
        assert p.requires_grad
    recorder = _Recorder(model.decoder)
    monkeypatch.setattr(model.decoder, "step", recorder)
    feats = torch.randn(2, 16, model.config.feature_dim, requires_grad=True)
    if search == "beam":
        alphas = [h.alpha for hs in beam_search(model.decoder, feats, beam_size=2, max_len=3)
                  for h in hs]
    elif search == "greedy":
        alphas = [h.alpha for h in greedy(model.decoder, feats, max_len=3)]
    else:
        alphas = [sample(model.decoder, feats, 2, max_len=3).alpha]
    assert recorder.calls
    # every step in eval mode under inference_mode: no autograd graph is built
    assert all(c == (True, False, False, False) for c in recorder.calls), recorder.calls
    assert not any(a.requires_grad for a in alphas)
    assert model.decoder.training is training  # the caller's mode is given back
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()


def test_no_caption_ends_right_after_a_blocked_word():
    model = _model(vocab=12)
    with torch.no_grad():
        model.decoder.L_o.bias[END] += 4.0  # some captions end early
    feats = torch.randn(6, 16, model.config.feature_dim, generator=torch.Generator().manual_seed(3))
    plain = beam_search(model.decoder, feats, beam_size=3, max_len=6, n_best=3)
    same = beam_search(model.decoder, feats, beam_size=3, max_len=6, n_best=3, no_end_after=[])
    assert [[(h.tokens, h.score) for h in hs] for hs in same] == \
        [[(h.tokens, h.score) for h in hs] for hs in plain]  # nothing blocked: unchanged
    # block the words the unconstrained captions end on before max_len, and an empty caption
    early = {h.tokens[-1] for hs in plain for h in hs if 0 < len(h.tokens) < 6}
    early |= {h.tokens[-1] for h in greedy(model.decoder, feats, max_len=6) if 0 < len(h.tokens) < 6}
    assert early, "the test needs captions that end early"
    blocked = sorted(early) + [Vocabulary.start_id]
    drawn = sample(model.decoder, feats, 20, max_len=6, generator=torch.Generator().manual_seed(0))
    assert any(0 < int(k) < 6 and int(t[k - 1]) in blocked
               for t, k in zip(drawn.tokens, drawn.lengths)), "sampling ends after them unblocked"
    drawn = sample(model.decoder, feats, 20, max_len=6, generator=torch.Generator().manual_seed(0),
                   no_end_after=blocked)
    sampled = [[Hypothesis(t[:k].tolist(), 0.0, 0.0, None, True)]
               for t, k in zip(drawn.tokens, drawn.lengths)]
    for hyps in (beam_search(model.decoder, feats, beam_size=3, max_len=6, n_best=3,
                             no_end_after=blocked),
                 [[h] for h in greedy(model.decoder, feats, max_len=6, no_end_after=blocked)],
                 sampled):
        for h in (h for hs in hyps for h in hs):
            assert h.tokens, "an empty caption was produced"
            assert h.tokens[-1] not in blocked or len(h.tokens) == 6  # only max_len may force it
