"""Batched beam search over the decoder's ``init``/``step``.

Every image of a batch and all its k beams advance as one tensor step; there is no Python loop
over images or beams, and nothing grows or is copied per step: back-pointers, words, scores and
attention are written into per-image buffers and read back once. ``decoder`` is anything with
the Decoder's ``init``/``step`` and ``vocab_size`` (an ``EnsembleDecoder`` too), ``features``
anything that indexes rows like a (B, P, D) tensor (``MemberFeatures``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .models.decoder import Decoder
from .search import Hypothesis, banned_mask, id_mask, inference
from .vocab import Vocabulary

#: on an accelerator beam search looks for ended images (a host sync) every this many steps;
#: an ended image left in the batch meanwhile only carries its finished beams unchanged
_ACCELERATOR_CHECK_EVERY = 4


def _check_every(device: torch.device) -> int:
    """Steps between beam search's looks for ended images: every step on the CPU, where reading
    a flag costs nothing and an ended image's rows are real work."""
    return 1 if device.type == "cpu" else _ACCELERATOR_CHECK_EVERY


def _word_ids(vocab_size: int, allow_unk: bool, no_end_after: Sequence[int] | None,
              device=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The decoding constraints for beam search: the ids of the ``banned_mask`` words (filled
    in place, three columns rather than a pass over the vocabulary) and ``no_end_after``'s mask."""
    banned = banned_mask(vocab_size, allow_unk, device).nonzero().squeeze(1)
    return banned, (id_mask(vocab_size, no_end_after, device) if no_end_after else None)


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

    The loop only steps and chooses: each step writes its choices (back-pointer, word, score,
    attention) into buffers preallocated per image, and the captions are read back once at the
    end (``_hypotheses``). Nothing grows; a step's one gather is the decoder state's rows; the
    first step runs one row per image (its k beams are equal); the host looks at the flags of
    ended images (``_check_every``) and only then are rows moved.
    """
    b, p = len(features), features.shape[1]
    if b == 0:
        return []
    k, steps = beam_size, max_len + 1
    device = features.device
    vocab_size = decoder.vocab_size
    width = min(k, vocab_size)  # a beam's k best words hold all it can add to the k best
    projected, state = decoder.init(features)  # one state row per image: its k beams are equal
    banned, blocked = _word_ids(vocab_size, allow_unk, no_end_after, device)
    end, pad = Vocabulary.end_id, Vocabulary.pad_id
    check_every = _check_every(device)

    # per image and step: (B, k, T) back-pointer (the beam a word extends), word, score
    # (only the steps up to an image's end are ever written, and read)
    parents = torch.empty(b, k, steps, dtype=torch.long, device=device)
    words_at = torch.empty(b, k, steps, dtype=torch.long, device=device)
    scores_at = torch.empty(b, k, steps, device=device)
    alphas_at = None  # (B, k, T, P) once the first step gives alpha's dtype
    last = torch.empty(b, dtype=torch.long, device=device)  # the step each image left at

    # the images still searched, in row order: their input index, scores (B', k), the words
    # their rows read and whether those ended their beam (finished beams carry on through <pad>)
    positions = torch.arange(b, device=device)
    ids = positions
    scores = torch.full((b, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start identical: only the first one is alive
    words = torch.full((b,), Vocabulary.start_id, dtype=torch.long, device=device)
    ended = torch.zeros(b, dtype=torch.bool, device=device)
    carry = torch.full((width,), float("-inf"), device=device)
    carry[0] = 0.0  # a finished beam's only continuation: <pad> at no cost
    logp_buffer = torch.empty(b * k, vocab_size, device=device)  # reused: no fresh pages a step
    owned = False  # whether features/projected are this search's own copies (rows may move)

    for t in range(steps):
        n = len(ids)
        rows = len(words) // n  # 1 at the first step, k after
        out = decoder.step(features, projected, state, words)
        logp = torch.log_softmax(out.logits.float(), -1, out=logp_buffer[: len(words)])
        if t == max_len:  # no room for another word: <end> is each beam's only choice
            top, top_words = logp[:, end: end + 1], torch.full_like(words[:, None], end)
        else:
            logp.index_fill_(1, banned, float("-inf"))
            if blocked is not None:
                logp[:, end].masked_fill_(blocked[words], float("-inf"))
            top, top_words = logp.topk(width, 1)  # (n * rows, width) each row's best words
        w = top.shape[1]
        top = torch.where(ended[:, None], carry[:w], top)
        top_words.masked_fill_(ended[:, None], pad)
        candidates = (scores[..., None] + top.view(n, rows, w)).view(n, -1)
        scores, pick = candidates.topk(k, 1)  # (n, k)
        if rows > 1:
            beam, word = pick // w, top_words.view(n, -1).gather(1, pick)
        else:  # the first step: the k beams are one row
            beam, word = torch.zeros_like(pick), top_words.gather(1, pick % w)
        alpha = out.alpha.view(n, rows, p)
        if alphas_at is None:
            alphas_at = torch.empty(b, k, steps, p, dtype=alpha.dtype, device=device)
        parents[:, :, t].index_copy_(0, ids, beam)
        words_at[:, :, t].index_copy_(0, ids, word)
        scores_at[:, :, t].index_copy_(0, ids, scores)
        alphas_at[:, :, t].index_copy_(0, ids, alpha.expand(n, k, p) if rows == 1 else alpha)
        ended = (word == end) | (word == pad)  # (n, k)
        # (n,) images whose beams have all ended (a -inf beam is dead: k exceeded the choices)
        done = (ended | torch.isneginf(scores)).all(1)
        order = None
        if t == max_len or (t + 1) % check_every == 0 and bool(done.any()):
            # an image that ended steps earlier (between looks) only carried its finished
            # beams on through <pad> at no cost since, in the same order: read back from here,
            # its hypotheses are those of the step it ended at
            gone = done.nonzero().squeeze(1)
            last[ids[gone]] = t
            if len(gone) == n or t == max_len:
                break
            # the open images stay a prefix of the rows: the ones beyond it move into the holes
            # the ended ones leave, so only as many images move as ended
            kept = n - len(gone)
            holes = gone[gone < kept]
            moved = (~done[kept:]).nonzero().squeeze(1) + kept
            order = positions[:kept].clone()
            order[holes] = moved
            features = _take(features, order, holes, moved, owned)
            projected = _take(projected, order, holes, moved, owned)
            owned = True
            ids, scores = ids[order], scores[order]
            beam, word, ended = beam[order], word[order], ended[order]
        # one select of every state row: the rows the new beams extend, of open images only
        image = order if order is not None else positions[:n]
        state = out.state.select((image[:, None] * rows + beam).view(-1))
        words, ended = word.view(-1), ended.view(-1)
    return _hypotheses(parents, words_at, scores_at, alphas_at, last, n_best, length_penalty)


def _take(x, order: torch.Tensor, holes: torch.Tensor, moved: torch.Tensor, owned: bool):
    """Rows ``order`` of ``x`` (the open images in their new order). Once ``x`` is the search's
    own copy (``owned``), in place: the rows ``moved`` go into ``holes`` and the answer is a view
    of the first ``len(order)`` rows, so no image that stays put is copied. Anything that is not a
    tensor but indexes rows like one (``MemberFeatures``) is indexed."""
    if not isinstance(x, torch.Tensor):
        return x[order]
    if not owned:  # never write into the caller's features
        return x.index_select(0, order)
    x.index_copy_(0, holes, x.index_select(0, moved))
    return x[: len(order)]


def _hypotheses(parents, words_at, scores_at, alphas_at, last, n_best, length_penalty
                ) -> list[list[Hypothesis]]:
    """Every image's n best hypotheses, best first, read back from the search's per-step
    buffers (B, k, T): each final beam's words follow its back-pointers from the step its image
    ended at (``last`` (B,)); the attention is gathered for the returned ones only."""
    end = Vocabulary.end_id
    parents_, words_, scores_ = parents.tolist(), words_at.tolist(), scores_at.tolist()
    results, picked = [], []  # picked: (hypothesis, image, alpha rows) of the returned ones
    for i, t_end in enumerate(last.tolist()):
        hyps = []
        for j in range(parents.shape[1]):
            log_prob = scores_[i][j][t_end]
            if log_prob == float("-inf"):
                continue  # a beam that never had a valid word (k larger than the choices)
            seq, rows, beam = [0] * (t_end + 1), [0] * (t_end + 1), j
            for t in range(t_end, -1, -1):
                seq[t] = words_[i][beam][t]
                beam = rows[t] = parents_[i][beam][t]  # the row that chose word t
            finished = end in seq
            n = seq.index(end) if finished else len(seq)
            length = n + 1 if finished else n  # <end> counts as a predicted word
            score = log_prob / max(length, 1) ** length_penalty if length_penalty else log_prob
            hyps.append((Hypothesis(seq[:n], log_prob, score, None, finished), rows[:n]))
        hyps.sort(key=lambda h: h[0].score, reverse=True)
        results.append([h for h, _ in hyps[:n_best]])
        picked += [(h, i, rows) for h, rows in hyps[:n_best]]
    # one gather for every returned caption's attention, split into views per caption
    image = [i for _, i, rows in picked for _ in rows]
    row = [r for _, _, rows in picked for r in rows]
    step = [t for _, _, rows in picked for t in range(len(rows))]
    alphas = alphas_at[image, row, step].cpu()  # (words, P)
    for (h, _, rows), alpha in zip(picked, alphas.split([len(r) for _, _, r in picked])):
        h.alpha = alpha
    return results
