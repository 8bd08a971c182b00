"""Batched beam search and greedy decoding over the decoder's ``init``/``step``.

Every image of a batch and all its k beams advance as one tensor step; there is no Python loop
over images or beams. ``decoder`` is anything with the Decoder's ``init``/``step`` and
``vocab_size`` (an ``EnsembleDecoder`` too), ``features`` anything that indexes rows like a
(B, P, D) tensor (``MemberFeatures``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .models.decoder import Decoder
from .vocab import Vocabulary


@dataclass
class Hypothesis:
    """One decoded caption: word ids (without <start>/<end>), its log-probability (including
    <end> when it ended), the ranking score and the attention (len(tokens), P) of each word."""

    tokens: list[int]
    log_prob: float
    score: float
    alpha: torch.Tensor
    finished: bool


def inference(fn):
    """Run ``fn(decoder, ...)`` in eval mode under ``torch.inference_mode`` and restore the
    decoder's previous mode afterwards."""
    @functools.wraps(fn)
    def wrapper(decoder: Decoder, *args, **kwargs):
        was_training = decoder.training
        decoder.eval()
        try:
            with torch.inference_mode():
                return fn(decoder, *args, **kwargs)
        finally:
            decoder.train(was_training)
    return wrapper


def _id_mask(vocab_size: int, ids: Sequence[int], device=None) -> torch.Tensor:
    mask = torch.zeros(vocab_size, dtype=torch.bool, device=device)
    mask[list(ids)] = True
    return mask


def banned_mask(vocab_size: int, allow_unk: bool = False, device=None) -> torch.Tensor:
    """(V,) True for the words decoding never emits: <pad>, <start> and, unless allowed, <unk>."""
    never = [Vocabulary.pad_id, Vocabulary.start_id] + ([] if allow_unk else [Vocabulary.unk_id])
    return _id_mask(vocab_size, never, device)


def _word_masks(vocab_size: int, allow_unk: bool, no_end_after: Sequence[int] | None,
                device=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The decoding constraints as masks: ``banned_mask`` and, with ``no_end_after``, (V,) True
    for the words <end> may not follow."""
    blocked = _id_mask(vocab_size, no_end_after, device) if no_end_after else None
    return banned_mask(vocab_size, allow_unk, device), blocked


def _constrained(scores: torch.Tensor, words: torch.Tensor, banned: torch.Tensor,
                 blocked: torch.Tensor | None) -> torch.Tensor:
    """``scores`` (N, V) (logits or log-probabilities) with -inf for every ``banned`` word and
    for <end> right after a ``blocked`` previous word (``words`` (N,))."""
    scores = scores.masked_fill(banned, float("-inf"))
    if blocked is not None:
        end = Vocabulary.end_id
        scores[:, end] = scores[:, end].masked_fill(blocked[words], float("-inf"))
    return scores


def _next_word_log_probs(logits: torch.Tensor, words: torch.Tensor, t: int, max_len: int,
                         banned: torch.Tensor, blocked: torch.Tensor | None) -> torch.Tensor:
    """log p(next word) of each row with the decoding constraints applied (``_constrained``),
    and only <end> once max_len words are in."""
    logp = torch.log_softmax(logits.float(), -1)
    if t == max_len:  # no room for another word
        end = Vocabulary.end_id
        only_end = torch.full_like(logp, float("-inf"))
        only_end[:, end] = logp[:, end]
        return only_end
    return _constrained(logp, words, banned, blocked)


@inference
def beam_search(decoder: Decoder, features: torch.Tensor, beam_size: int = 5, max_len: int = 20,
                n_best: int = 1, length_penalty: float = 0.0, allow_unk: bool = False,
                no_end_after: Sequence[int] | None = None) -> list[list[Hypothesis]]:
    """Beam search for every image of ``features`` (B, P, D) at once.

    Returns, per image, up to ``n_best`` hypotheses best first, ranked by
    log_prob / length ** length_penalty (0: plain log-probability). Captions have at most
    ``max_len`` words: at that length ``<end>`` is the only choice left. ``<unk>`` is never
    generated unless ``allow_unk``. No caption ends right after a word of ``no_end_after``
    (``Vocabulary.no_end_after``: no "a man on a") unless max_len ends it. An image whose beams
    have all ended stops being computed.
    """
    b, p, _ = features.shape
    k = beam_size
    device = features.device
    projected, state = decoder.init(features)
    # the state has k rows per image (image-major); features and projected stay one per image
    state = state.select(torch.arange(b, device=device).repeat_interleave(k))
    vocab_size = decoder.vocab_size
    banned, blocked = _word_masks(vocab_size, allow_unk, no_end_after, device)
    end, pad = Vocabulary.end_id, Vocabulary.pad_id

    scores = torch.full((b, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start identical: only the first one is alive
    words = torch.full((b * k,), Vocabulary.start_id, dtype=torch.long, device=device)
    tokens = torch.zeros(b, k, 0, dtype=torch.long, device=device)
    alphas = torch.zeros(b, k, 0, p, device=device)
    finished = torch.zeros(b, k, dtype=torch.bool, device=device)
    offsets = (torch.arange(b, device=device) * k)[:, None]  # (B, 1)
    carry = torch.full((vocab_size,), float("-inf"), device=device)
    carry[pad] = 0.0  # a finished beam carries on unchanged through <pad> at no cost
    ids = list(range(b))  # which input image each remaining row block is
    results: list[list[Hypothesis]] = [[] for _ in range(b)]

    for t in range(max_len + 1):
        out = decoder.step(features, projected, state, words)
        logp = _next_word_log_probs(out.logits, words, t, max_len, banned, blocked)
        logp = logp.view(b, k, vocab_size)
        logp = torch.where(finished[..., None], carry, logp)
        candidates = (scores[..., None] + logp).view(b, k * vocab_size)
        scores, index = candidates.topk(k, dim=1)  # (B, k)
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
        # (B,) images whose beams have all ended (a -inf beam is dead: k exceeded the choices)
        done = (finished | torch.isneginf(scores)).all(1) | (t == max_len)
        if bool(done.any()):  # collect them and stop computing their rows
            for i in done.nonzero().flatten().tolist():
                results[ids[i]] = _hypotheses(tokens[i], alphas[i], scores[i], finished[i],
                                              n_best, length_penalty)
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


def _hypotheses(tokens, alphas, scores, finished, n_best, length_penalty) -> list[Hypothesis]:
    """One image's beams (k, T) -> its n best hypotheses, best first."""
    hyps = []
    for j in range(tokens.shape[0]):
        log_prob = float(scores[j])
        if log_prob == float("-inf"):
            continue  # a beam that never had a valid word (k larger than the choices)
        seq = tokens[j].tolist()
        n = seq.index(Vocabulary.end_id) if Vocabulary.end_id in seq else len(seq)
        length = n + 1 if bool(finished[j]) else n  # <end> counts as a predicted word
        score = log_prob / max(length, 1) ** length_penalty if length_penalty else log_prob
        hyps.append(Hypothesis(seq[:n], log_prob, score, alphas[j, :n].cpu(), bool(finished[j])))
    hyps.sort(key=lambda h: h.score, reverse=True)
    return hyps[:n_best]


@inference
def greedy(decoder: Decoder, features: torch.Tensor, max_len: int = 20, allow_unk: bool = False,
           no_end_after: Sequence[int] | None = None) -> list[Hypothesis]:
    """Pick the most likely word at every step, for all images of ``features`` at once (the
    same constraints as ``beam_search``)."""
    b = features.shape[0]
    device = features.device
    projected, state = decoder.init(features)
    vocab_size = decoder.vocab_size
    banned, blocked = _word_masks(vocab_size, allow_unk, no_end_after, device)
    words = torch.full((b,), Vocabulary.start_id, dtype=torch.long, device=device)
    log_prob = torch.zeros(b, device=device)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    steps, alphas = [], []
    for t in range(max_len + 1):
        out = decoder.step(features, projected, state, words)
        logp = _next_word_log_probs(out.logits, words, t, max_len, banned, blocked)
        words = logp.argmax(-1)  # <end> once max_len words are in
        log_prob += torch.where(done, 0.0, logp.gather(1, words[:, None]).squeeze(1))
        steps.append(torch.where(done, Vocabulary.pad_id, words))
        alphas.append(out.alpha)
        done |= words == Vocabulary.end_id
        state = out.state
        if bool(done.all()):
            break
    tokens = torch.stack(steps, 1)
    alpha = torch.stack(alphas, 1)
    results = []
    for i in range(b):
        seq = tokens[i].tolist()
        n = seq.index(Vocabulary.end_id)
        results.append(Hypothesis(seq[:n], float(log_prob[i]), float(log_prob[i]),
                                  alpha[i, :n].cpu(), True))
    return results


@dataclass
class Samples:
    """Captions drawn from the model, ``n`` per image, image-major (rows i*n .. i*n+n-1 are
    image i's)."""

    tokens: torch.Tensor  # (B*n, T) word ids; <end> then <pad> after a caption's last word
    lengths: torch.Tensor  # (B*n,) words, without <end>
    forced_end: torch.Tensor  # (B*n,) True where max_len ran out and <end> was not drawn
    log_prob: torch.Tensor  # (B*n,) log-probability of the drawn words (with a drawn <end>)
    alpha: torch.Tensor  # (B*n, T, P) attention at every step
    # (B*n,) log-probability of the attention's own draws (hard attention's locations under
    # ``Attention.choosing``); zero for a kind or mode that draws nothing
    choice_log_prob: torch.Tensor


@inference
def sample(decoder: Decoder, features: torch.Tensor, n: int = 5, max_len: int = 20,
           generator: torch.Generator | None = None, allow_unk: bool = False,
           no_end_after: Sequence[int] | None = None) -> Samples:
    """Draw ``n`` captions per image of ``features`` (B, P, D) from the model's own word
    distribution (eval mode, temperature 1; the words beam search never emits are banned, and
    <end> right after a word of ``no_end_after``, as there). The n rows of an image share its
    features, as beam search's beams do."""
    return draw(decoder, features, n, max_len, generator, allow_unk, no_end_after)


def draw(decoder: Decoder, features: torch.Tensor, n: int = 5, max_len: int = 20,
         generator: torch.Generator | None = None, allow_unk: bool = False,
         no_end_after: Sequence[int] | None = None) -> Samples:
    """``sample`` in whatever mode the caller set: under autograd its log-probabilities carry
    gradients (self-critical training over the attention's choices draws this way)."""
    b = features.shape[0]
    device = features.device
    projected, state = decoder.init(features, generator)
    state = state.select(torch.arange(b, device=device).repeat_interleave(n))
    banned, blocked = _word_masks(decoder.vocab_size, allow_unk, no_end_after, device)
    end, pad = Vocabulary.end_id, Vocabulary.pad_id
    words = torch.full((b * n,), Vocabulary.start_id, dtype=torch.long, device=device)
    done = torch.zeros(b * n, dtype=torch.bool, device=device)
    log_prob = torch.zeros(b * n, device=device)
    choice_log_prob = torch.zeros(b * n, device=device)
    steps, alphas = [], []
    for t in range(max_len):
        out = decoder.step(features, projected, state, words, generator)
        if "log_prob" in out.extras:  # the location this step read, drawn before its word
            choice_log_prob = choice_log_prob + torch.where(done, 0.0, out.extras["log_prob"])
        probs = torch.softmax(_constrained(out.logits.float(), words, banned, blocked), -1)
        words = torch.multinomial(probs.detach(), 1, generator=generator).squeeze(1)
        # the drawn words' log-probabilities only: no second pass over the vocabulary (SCST's
        # hot path draws B * n rows a step)
        drawn = probs.gather(1, words[:, None]).squeeze(1).log()
        log_prob = log_prob + torch.where(done, 0.0, drawn)
        steps.append(torch.where(done, pad, words))
        alphas.append(out.alpha)
        done = done | (words == end)
        state = out.state
        if bool(done.all()):
            break
    tokens = torch.stack(steps, 1)
    lengths = torch.where(done, (tokens == end).int().argmax(1), tokens.shape[1])
    if not bool(done.all()):  # room for the forced <end>
        tokens = torch.cat([tokens, torch.full_like(tokens[:, :1], pad)], 1)
    tokens[torch.arange(b * n, device=device), lengths] = end
    return Samples(tokens, lengths, ~done, log_prob, torch.stack(alphas, 1), choice_log_prob)
