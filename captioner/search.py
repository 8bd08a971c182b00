"""What every decoding algorithm shares (``Hypothesis``, the inference mode, the word
constraints), greedy decoding and sampling, over the decoder's ``init``/``step``; beam search is
``beam_search.py``.

Every image of a batch (and each of its rows) advances as one tensor step; there is no Python
loop over images. ``decoder`` is anything with the Decoder's ``init``/``step`` and
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


def id_mask(vocab_size: int, ids: Sequence[int], device=None) -> torch.Tensor:
    """(V,) True for the word ``ids``."""
    mask = torch.zeros(vocab_size, dtype=torch.bool, device=device)
    mask[list(ids)] = True
    return mask


def banned_mask(vocab_size: int, allow_unk: bool = False, device=None) -> torch.Tensor:
    """(V,) True for the words decoding never emits: <pad>, <start> and, unless allowed, <unk>."""
    never = [Vocabulary.pad_id, Vocabulary.start_id] + ([] if allow_unk else [Vocabulary.unk_id])
    return id_mask(vocab_size, never, device)


def _word_masks(vocab_size: int, allow_unk: bool, no_end_after: Sequence[int] | None,
                device=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The decoding constraints as masks: ``banned_mask`` and, with ``no_end_after``, (V,) True
    for the words <end> may not follow."""
    blocked = id_mask(vocab_size, no_end_after, device) if no_end_after else None
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
