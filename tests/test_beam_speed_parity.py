"""The preallocated beam search (back-pointers in per-step buffers, captions read back once,
open images compacted in place) gives exactly the captions of the beam search it replaced, kept
here frozen as ``reference_beam_search``: same words, same finished flags, log-probabilities,
scores and attention to float tolerance (the first step now runs one row per image instead of
k equal ones, so matrix products see other row counts and may round differently in the last
bit), for every decoding option, ensembles, hard attention, and beams wider than the
vocabulary."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import pytest
import torch

import captioner.beam_search as search
from captioner.models import build_model
from captioner.models.ensemble import Ensemble, MemberFeatures
from captioner.beam_search import beam_search
from captioner.search import Hypothesis, inference
from captioner.vocab import Vocabulary

from conftest import tiny_config


# --- the beam search as it was before (commit 90bd0c3), frozen: the reference ----------------

def _reference_masks(vocab_size, allow_unk, no_end_after, device):
    never = [Vocabulary.pad_id, Vocabulary.start_id] + ([] if allow_unk else [Vocabulary.unk_id])
    banned = torch.zeros(vocab_size, dtype=torch.bool, device=device)
    banned[never] = True
    blocked = None
    if no_end_after:
        blocked = torch.zeros(vocab_size, dtype=torch.bool, device=device)
        blocked[list(no_end_after)] = True
    return banned, blocked


def _reference_log_probs(logits, words, t, max_len, banned, blocked):
    logp = torch.log_softmax(logits.float(), -1)
    end = Vocabulary.end_id
    if t == max_len:
        only_end = torch.full_like(logp, float("-inf"))
        only_end[:, end] = logp[:, end]
        return only_end
    logp = logp.masked_fill(banned, float("-inf"))
    if blocked is not None:
        logp[:, end] = logp[:, end].masked_fill(blocked[words], float("-inf"))
    return logp


@inference
def reference_beam_search(decoder, features, beam_size=5, max_len=20, n_best=1,
                          length_penalty=0.0, allow_unk=False,
                          no_end_after: Sequence[int] | None = None):
    b, p, _ = features.shape
    k = beam_size
    device = features.device
    projected, state = decoder.init(features)
    state = state.select(torch.arange(b, device=device).repeat_interleave(k))
    vocab_size = decoder.vocab_size
    banned, blocked = _reference_masks(vocab_size, allow_unk, no_end_after, device)
    end, pad = Vocabulary.end_id, Vocabulary.pad_id
    scores = torch.full((b, k), float("-inf"), device=device)
    scores[:, 0] = 0.0
    words = torch.full((b * k,), Vocabulary.start_id, dtype=torch.long, device=device)
    tokens = torch.zeros(b, k, 0, dtype=torch.long, device=device)
    alphas = torch.zeros(b, k, 0, p, device=device)
    finished = torch.zeros(b, k, dtype=torch.bool, device=device)
    offsets = (torch.arange(b, device=device) * k)[:, None]
    carry = torch.full((vocab_size,), float("-inf"), device=device)
    carry[pad] = 0.0
    ids = list(range(b))
    results = [[] for _ in range(b)]
    for t in range(max_len + 1):
        out = decoder.step(features, projected, state, words)
        logp = _reference_log_probs(out.logits, words, t, max_len, banned, blocked)
        logp = logp.view(b, k, vocab_size)
        logp = torch.where(finished[..., None], carry, logp)
        candidates = (scores[..., None] + logp).view(b, k * vocab_size)
        scores, index = candidates.topk(k, dim=1)
        beam, word = index // vocab_size, index % vocab_size
        rows = (offsets + beam).view(-1)
        tokens = torch.cat([tokens.gather(1, beam[..., None].expand(-1, -1, tokens.shape[2])),
                            word[..., None]], 2)
        step_alpha = out.alpha.view(b, k, p).gather(1, beam[..., None].expand(-1, -1, p))
        alphas = torch.cat([alphas.gather(1, beam[..., None, None].expand(-1, -1, *alphas.shape[2:])),
                            step_alpha[:, :, None]], 2)
        finished = finished.gather(1, beam) | (word == end)
        state = out.state.select(rows)
        words = word.view(-1)
        done = (finished | torch.isneginf(scores)).all(1) | (t == max_len)
        if bool(done.any()):
            for i in done.nonzero().flatten().tolist():
                results[ids[i]] = _reference_hypotheses(tokens[i], alphas[i], scores[i],
                                                        finished[i], n_best, length_penalty)
            keep = (~done).nonzero().flatten()
            if len(keep) == 0:
                break
            ids = [ids[i] for i in keep.tolist()]
            tokens, alphas, scores, finished = tokens[keep], alphas[keep], scores[keep], finished[keep]
            keep_rows = (keep[:, None] * k + torch.arange(k, device=device)).view(-1)
            features, projected = features[keep], projected[keep]
            state, words = state.select(keep_rows), words[keep_rows]
            b = len(keep)
            offsets = (torch.arange(b, device=device) * k)[:, None]
    return results


def _reference_hypotheses(tokens, alphas, scores, finished, n_best, length_penalty):
    hyps = []
    for j in range(tokens.shape[0]):
        log_prob = float(scores[j])
        if log_prob == float("-inf"):
            continue
        seq = tokens[j].tolist()
        n = seq.index(Vocabulary.end_id) if Vocabulary.end_id in seq else len(seq)
        length = n + 1 if bool(finished[j]) else n
        score = log_prob / max(length, 1) ** length_penalty if length_penalty else log_prob
        hyps.append(Hypothesis(seq[:n], log_prob, score, alphas[j, :n].cpu(), bool(finished[j])))
    hyps.sort(key=lambda h: h.score, reverse=True)
    return hyps[:n_best]


# --- the comparisons --------------------------------------------------------------------------

END = Vocabulary.end_id


def _model(seed=0, vocab=40, end_bias=0.0, **kw):
    """An untrained tiny model with wide weights (captions vary) and an <end> bias: captions
    end after a few words or run to max_len, so images end at different steps."""
    torch.manual_seed(seed)
    model = build_model(tiny_config(vocab_size=vocab, **kw)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.4)
        model.decoder.L_o.bias[END] += end_bias
    return model


def _feats(model, b=12, seed=0):
    return torch.randn(b, model.config.grid_size ** 2, model.config.feature_dim,
                       generator=torch.Generator().manual_seed(seed))


def _assert_same(new, old):
    assert [[h.tokens for h in hs] for hs in new] == [[h.tokens for h in hs] for hs in old]
    for a, b in zip((h for hs in new for h in hs), (h for hs in old for h in hs)):
        assert a.finished == b.finished
        assert a.log_prob == pytest.approx(b.log_prob, rel=1e-6, abs=1e-5)
        assert a.score == pytest.approx(b.score, rel=1e-6, abs=1e-5)
        assert a.alpha.shape == b.alpha.shape
        assert torch.allclose(a.alpha, b.alpha, atol=1e-6)


def _ending_steps(hyps):
    return {len(hs[0].tokens) for hs in hyps}


CASES = [  # (beam_size, n_best, length_penalty, max_len, no_end_after, allow_unk)
    (1, 1, 0.0, 8, None, False),
    (3, 1, 0.0, 8, None, False),
    (5, 5, 0.0, 6, None, False),
    (4, 2, 0.7, 8, [4, 5, 6], False),
    (5, 3, 1.0, 10, [4], True),
    (8, 8, 0.5, 3, None, False),
    (2, 2, 0.0, 1, None, False),
]


@pytest.mark.parametrize("beam_size,n_best,length_penalty,max_len,no_end_after,allow_unk", CASES)
@pytest.mark.parametrize("end_bias", [0.0, 2.5])
def test_same_captions_scores_and_attention_as_the_reference(
        beam_size, n_best, length_penalty, max_len, no_end_after, allow_unk, end_bias):
    model = _model(end_bias=end_bias)
    feats = _feats(model)
    kw = dict(beam_size=beam_size, max_len=max_len, n_best=n_best, length_penalty=length_penalty,
              allow_unk=allow_unk, no_end_after=no_end_after)
    new = beam_search(model.decoder, feats, **kw)
    _assert_same(new, reference_beam_search(model.decoder, feats, **kw))
    assert all(len(hs) == min(n_best, beam_size) for hs in new)


def test_images_ending_at_many_different_steps_keep_their_own_captions():
    """Many images, ending from the first word to max_len: the open ones move into the rows the
    ended ones leave, several times, and every image still gets its own captions."""
    model = _model(seed=1, end_bias=2.0)
    feats = _feats(model, b=40, seed=1)
    new = beam_search(model.decoder, feats, beam_size=3, max_len=12, n_best=3)
    assert len(_ending_steps(new)) >= 5, "the test needs images ending at many steps"
    _assert_same(new, reference_beam_search(model.decoder, feats, beam_size=3, max_len=12,
                                            n_best=3))
    for i in (0, 17, 39):  # and each as when searched alone
        alone = beam_search(model.decoder, feats[i: i + 1], beam_size=3, max_len=12, n_best=3)
        _assert_same(alone, new[i: i + 1])


def test_looking_for_ended_images_every_few_steps_changes_nothing(monkeypatch):
    """An accelerator looks for ended images only every few steps (a host sync); the images that
    ended meanwhile carry their beams unchanged and are read back from the step they ended."""
    model = _model(seed=2, end_bias=2.0)
    feats = _feats(model, b=20, seed=2)
    kw = dict(beam_size=4, max_len=9, n_best=4, length_penalty=0.5)
    every_step = beam_search(model.decoder, feats, **kw)
    for every in (2, 3, 100):
        monkeypatch.setattr(search, "_check_every", lambda device, every=every: every)
        _assert_same(beam_search(model.decoder, feats, **kw), every_step)
    _assert_same(every_step, reference_beam_search(model.decoder, feats, **kw))


def test_hard_attention_gives_the_reference_captions():
    model = _model(seed=3, end_bias=2.0, attention="hard")
    feats = _feats(model, seed=3)
    kw = dict(beam_size=4, max_len=8, n_best=2)
    _assert_same(beam_search(model.decoder, feats, **kw),
                 reference_beam_search(model.decoder, feats, **kw))


def test_beams_wider_than_the_vocabulary_give_the_reference_captions():
    model = _model(seed=4, vocab=7, end_bias=1.0)  # 3 real words
    feats = _feats(model, b=5, seed=4)
    kw = dict(beam_size=30, max_len=3, n_best=30)
    new = beam_search(model.decoder, feats, **kw)
    _assert_same(new, reference_beam_search(model.decoder, feats, **kw))
    assert all(len(hs) == 30 for hs in new)  # 40 captions of 0-3 words over 3 words


def test_an_ensemble_gives_the_reference_captions():
    a, b = _model(seed=1, end_bias=2.0), _model(seed=7, end_bias=1.5)
    ensemble = Ensemble([a, b])
    feats = MemberFeatures((_feats(a, seed=5), _feats(b, seed=6)))
    kw = dict(beam_size=4, max_len=8, n_best=3, length_penalty=0.5)
    new = beam_search(ensemble.decoder, feats, **kw)
    assert len(_ending_steps(new)) > 1
    _assert_same(new, reference_beam_search(ensemble.decoder, feats, **kw))
    # a tensor and a one-member ensemble take different compaction paths, same captions
    one = beam_search(Ensemble([copy.deepcopy(a)]).decoder, MemberFeatures((feats.parts[0],)), **kw)
    _assert_same(one, beam_search(a.decoder, feats.parts[0], **kw))


def test_the_callers_features_are_left_untouched():
    model = _model(seed=7, end_bias=2.0)
    feats = _feats(model, b=16, seed=7)
    before = feats.clone()
    hyps = beam_search(model.decoder, feats, beam_size=3, max_len=8)
    assert len(_ending_steps(hyps)) > 1, "the test needs images ending at different steps"
    assert torch.equal(feats, before)


def test_an_empty_batch_gives_no_captions():
    model = _model()
    assert beam_search(model.decoder, _feats(model, b=0)) == []
