"""The decoding API: DecodeOptions checked when built, ``decode`` dispatching by strategy name,
and a strategy registered by a test running through evaluate and Captioner untouched."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_config

from captioner.data.dataset import PreparedData
from captioner.decoding import MAX_BEAM, STRATEGIES, DecodeOptions, decode
from captioner.evaluate import decode_split, evaluate_checkpoint
from captioner.inference import Captioner
from captioner.losses import caption_log_likelihood
from captioner.models import build_model
from captioner.beam_search import beam_search
from captioner.search import Hypothesis, banned_mask, greedy
from captioner.vocab import Vocabulary

END = Vocabulary.end_id
FIRST_WORD = 4  # the first word after <pad> <start> <end> <unk>


def _model(vocab=12, seed=0, end_bias=0.0, **kw):
    torch.manual_seed(seed)
    model = build_model(tiny_config(vocab_size=vocab, **kw)).eval()
    with torch.no_grad():  # some continuations clearly better than others
        model.decoder.L_o.weight.mul_(4)
        model.decoder.L_o.bias[END] += end_bias
    return model


def _feats(model, b=3, seed=0):
    return torch.randn(b, 16, model.config.feature_dim, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("fields, option", [
    (dict(beam_size=0), "beam_size"),
    (dict(beam_size=-1), "beam_size"),
    (dict(beam_size=MAX_BEAM + 1), "beam_size"),
    (dict(beam_size=2.0), "beam_size"),
    (dict(n_best=0), "n_best"),
    (dict(beam_size=3, n_best=4), "n_best"),
    (dict(length_penalty=float("nan")), "length_penalty"),
    (dict(length_penalty=-0.5), "length_penalty"),
    (dict(length_penalty=float("inf")), "length_penalty"),
    (dict(max_len=-1), "max_len"),
    (dict(strategy="nucleus"), "strategy"),
])
def test_bad_decode_options_raise_one_line_naming_the_option(fields, option):
    with pytest.raises(ValueError) as err:
        DecodeOptions(**fields)
    message = str(err.value)
    assert option in message and "\n" not in message, message


def test_the_unknown_strategy_error_lists_the_known_ones():
    with pytest.raises(ValueError, match="beam, greedy, sample"):
        DecodeOptions(strategy="nucleus")


def test_more_samples_than_the_beam_is_fine_for_sampling():
    assert DecodeOptions(strategy="sample", beam_size=1, n_best=5).n_best == 5
    assert DecodeOptions(beam_size=MAX_BEAM, n_best=MAX_BEAM).n_best == MAX_BEAM


def test_bind_fills_in_the_models_length_and_endings_unless_given():
    assert DecodeOptions().bind(8, [5, 6]) == DecodeOptions(max_len=8, no_end_after=(5, 6))
    assert DecodeOptions(max_len=3, no_end_after=()).bind(8, [5]) == \
        DecodeOptions(max_len=3, no_end_after=())


def _same(a: list[list[Hypothesis]], b: list[list[Hypothesis]]):
    assert [[h.tokens for h in hs] for hs in a] == [[h.tokens for h in hs] for hs in b]
    for ha, hb in zip((h for hs in a for h in hs), (h for hs in b for h in hs)):
        assert (ha.log_prob, ha.score, ha.finished) == (hb.log_prob, hb.score, hb.finished)
        assert torch.equal(ha.alpha, hb.alpha)


@pytest.mark.slow
def test_decode_beam_equals_beam_search():
    model = _model(end_bias=3.0)
    feats = _feats(model)
    options = DecodeOptions(beam_size=4, n_best=3, length_penalty=0.7).bind(6, [4, 5])
    expected = beam_search(model.decoder, feats, beam_size=4, max_len=6, n_best=3,
                           length_penalty=0.7, no_end_after=[4, 5])
    _same(decode(model.decoder, feats, options), expected)


@pytest.mark.slow
def test_decode_greedy_equals_greedy():
    model = _model(end_bias=3.0)
    feats = _feats(model)
    options = DecodeOptions(strategy="greedy", beam_size=4).bind(6, [4, 5])
    expected = greedy(model.decoder, feats, max_len=6, no_end_after=[4, 5])
    _same(decode(model.decoder, feats, options), [[h] for h in expected])


def _teacher_forced(model, feats, hyps):
    """log p of each hypothesis under teacher forcing, with the words sampling never draws
    banned (and <end> only where it was drawn, not forced by max_len)."""
    flat = [(i, h) for i, hs in enumerate(hyps) for h in hs]
    width = max(len(h.tokens) for _, h in flat) + 2
    captions = torch.full((len(flat), width), Vocabulary.pad_id)
    for row, (_, h) in enumerate(flat):
        captions[row, : len(h.tokens) + 2] = torch.tensor([Vocabulary.start_id, *h.tokens, END])
    lengths = torch.tensor([len(h.tokens) + 2 for _, h in flat])
    with torch.no_grad():
        out = model.decoder(feats, captions, lengths, image_index=torch.tensor([i for i, _ in flat]))
    mask = out.mask.clone()
    for row, (_, h) in enumerate(flat):
        mask[row, len(h.tokens)] &= h.finished  # the <end> step counts only when drawn
    banned = banned_mask(model.config.vocab_size)
    return caption_log_likelihood(out.logits, out.targets, mask, banned).tolist()


def test_decode_sample_is_reproducible_by_seed_and_scores_by_teacher_forcing():
    model = _model(end_bias=1.0)
    feats = _feats(model)
    options = DecodeOptions(strategy="sample", n_best=5, seed=3).bind(4, [])
    drawn = decode(model.decoder, feats, options)
    assert len(drawn) == 3 and all(len(hs) == 5 for hs in drawn)
    again = decode(model.decoder, feats, options)
    _same(drawn, again)
    other = decode(model.decoder, feats, DecodeOptions(strategy="sample", n_best=5, seed=4).bind(4, []))
    assert [[h.tokens for h in hs] for hs in other] != [[h.tokens for h in hs] for hs in drawn]
    hyps = [h for hs in drawn for h in hs]
    assert {h.finished for h in hyps} == {True, False}, "the test needs drawn and forced <end>s"
    assert all(len(h.tokens) <= 4 and (h.finished or len(h.tokens) == 4) for h in hyps)
    assert [h.log_prob for h in hyps] == pytest.approx(_teacher_forced(model, feats, drawn), abs=1e-4)
    for hs in drawn:
        assert all(h.score == h.log_prob for h in hs)
        assert [h.score for h in hs] == sorted((h.score for h in hs), reverse=True)


def test_decode_sample_ranks_by_the_length_penalty():
    model = _model(end_bias=1.0)
    feats = _feats(model)
    lp = 0.8
    drawn = decode(model.decoder, feats, DecodeOptions(strategy="sample", n_best=5, seed=3,
                                                       length_penalty=lp).bind(4, []))
    for hs in drawn:
        for h in hs:
            length = len(h.tokens) + h.finished  # a drawn <end> counts as a word
            assert h.score == pytest.approx(h.log_prob / max(length, 1) ** lp, abs=1e-6)
        assert [h.score for h in hs] == sorted((h.score for h in hs), reverse=True)


# --- a strategy registered by a test runs through the public entry points untouched ---

@pytest.fixture
def toy_strategy():
    """Registers "toy" (every image: the one-word caption FIRST_WORD) for one test, recording
    what each call received; the registry is as before afterwards."""
    calls = []

    @STRATEGIES.register("toy")
    def toy(decoder, features, options):
        calls.append((features.shape, options))
        p = features.shape[1]
        return [[Hypothesis([FIRST_WORD], -1.5, -1.5, torch.full((1, p), 1 / p), True)]
                for _ in range(features.shape[0])]

    try:
        yield calls
    finally:
        STRATEGIES.unregister("toy")
    assert "toy" not in STRATEGIES
    with pytest.raises(ValueError, match="strategy"):
        DecodeOptions(strategy="toy")


def _data_and_model(shapes_dir):
    data = PreparedData(shapes_dir)
    model = build_model(tiny_config(vocab_size=len(data.vocab), max_len=data.max_len)).eval()
    return data, model


def test_a_registered_strategy_runs_through_decode_split_and_evaluate(toy_strategy, shapes_dir,
                                                                     tmp_path):
    data, model = _data_and_model(shapes_dir)
    word = data.vocab.decode([FIRST_WORD])
    options = DecodeOptions(strategy="toy", n_best=2, seed=7)
    predictions = decode_split(model, data.vocab, data, "val", options, batch_size=5)
    assert [p.words for p in predictions] == [word] * 12
    assert [p.image_id for p in predictions] == [e["image_id"] for e in data.manifest("val")]
    assert [shape[0] for shape, _ in toy_strategy] == [5, 5, 2]
    bound = options.bind(model.config.max_len, data.vocab.no_end_after() or ())
    assert all(shape[1:] == (16, model.config.feature_dim) and got == bound
               for shape, got in toy_strategy)

    metrics = evaluate_checkpoint(model, data.vocab, data, "val", options,
                                  results_path=tmp_path / "results.json",
                                  metrics_path=tmp_path / "metrics.json", coco=False,
                                  meteor=False, progress=False)
    assert metrics["images"] == 12 and metrics["distinct_captions"] == 1
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["caption"] for r in results] == [" ".join(word)] * 12
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert (written["split"], written["strategy"]) == ("val", "toy")


def test_a_registered_strategy_runs_through_captioner_caption(toy_strategy, shapes_dir):
    data, model = _data_and_model(shapes_dir)
    cap = Captioner(model, data.vocab)
    paths = [data.image_path(e) for e in data.manifest("val")[:3]]
    word = data.vocab.decode([FIRST_WORD])
    captions = cap.caption(paths, DecodeOptions(strategy="toy", seed=7))
    assert [[c.words for c in cs] for cs in captions] == [[word]] * 3
    assert all(c.text == " ".join(word) and c.log_prob == -1.5 and c.alpha.shape == (1, 16)
               for cs in captions for c in cs)
    single = cap.caption(paths[0], strategy="toy")  # options by field name, one image
    assert [c.words for c in single] == [word]
    assert [got.strategy for _, got in toy_strategy] == ["toy", "toy"]
    assert toy_strategy[0][1].seed == 7 and toy_strategy[0][1].max_len == model.config.max_len


def test_a_vocabulary_without_recorded_endings_blocks_no_ending(shapes_dir):
    """Vocabularies saved before endings were recorded still caption (and block nothing)."""
    data, model = _data_and_model(shapes_dir)
    old = Vocabulary(data.vocab.itos)  # no endings
    assert old.no_end_after() is None and data.vocab.no_end_after()
    path = data.image_path(data.manifest("val")[0])
    plain = Captioner(model, old).caption(path, beam_size=2, n_best=2)
    unblocked = Captioner(model, data.vocab).caption(path, beam_size=2, n_best=2, no_end_after=())
    assert [(c.words, c.score) for c in plain] == [(c.words, c.score) for c in unblocked]
    bound = DecodeOptions().bind(model.config.max_len, old.no_end_after())
    assert bound.no_end_after == ()
