"""Tokenizer and Vocabulary: specials, thresholds, encode/decode, JSON round trip."""

import json

import pytest

from captioner.vocab import END, PAD, SPECIALS, START, UNK, Vocabulary, tokenize

CAPTIONS = [
    ["a", "dog", "runs"],
    ["a", "dog", "sits"],
    ["a", "cat", "sits"],
    ["the", "dog"],
]


def test_specials_have_ids_zero_to_three():
    vocab = Vocabulary.build(CAPTIONS, min_count=1)
    assert vocab.itos[:4] == [PAD, START, END, UNK] == list(SPECIALS)
    assert (vocab.pad_id, vocab.start_id, vocab.end_id, vocab.unk_id) == (0, 1, 2, 3)
    assert [vocab.stoi[w] for w in SPECIALS] == [0, 1, 2, 3]


def test_min_count_keeps_only_words_seen_often_enough():
    vocab = Vocabulary.build(CAPTIONS, min_count=2)
    assert set(vocab.itos[4:]) == {"a", "dog", "sits"}
    assert len(Vocabulary.build(CAPTIONS, min_count=1)) == 4 + 6
    assert len(Vocabulary.build(CAPTIONS, min_count=99)) == 4


def test_words_are_ordered_by_count_then_alphabetically_whatever_the_input_order():
    vocab = Vocabulary.build(CAPTIONS, min_count=1)
    assert vocab.itos[4:] == ["a", "dog", "sits", "cat", "runs", "the"]
    assert Vocabulary.build(list(reversed(CAPTIONS)), min_count=1) == vocab


def test_special_words_in_captions_are_not_added_twice():
    vocab = Vocabulary.build([["<unk>", "dog", "<pad>"]], min_count=1)
    assert vocab.itos == [*SPECIALS, "dog"]


def test_encode_wraps_in_start_end_and_maps_unknown_words_to_unk():
    vocab = Vocabulary.build(CAPTIONS, min_count=2)
    ids = vocab.encode(["a", "zebra", "sits"])
    assert ids == [vocab.start_id, vocab.stoi["a"], vocab.unk_id, vocab.stoi["sits"], vocab.end_id]


def test_encode_truncates_to_max_len_words_keeping_start_and_end():
    vocab = Vocabulary.build(CAPTIONS, min_count=1)
    ids = vocab.encode(["a", "dog", "sits", "a", "cat"], max_len=3)
    assert len(ids) == 3 + 2
    assert ids[0] == vocab.start_id and ids[-1] == vocab.end_id
    assert vocab.decode(ids) == ["a", "dog", "sits"]
    assert vocab.encode(["a", "dog"], max_len=10) == vocab.encode(["a", "dog"])


def test_decode_inverts_encode_for_known_words():
    vocab = Vocabulary.build(CAPTIONS, min_count=1)
    for caption in CAPTIONS:
        assert vocab.decode(vocab.encode(caption)) == caption


def test_decode_skips_pad_and_start_stops_at_end_and_accepts_tensors():
    import torch

    vocab = Vocabulary.build(CAPTIONS, min_count=1)
    dog, cat = vocab.stoi["dog"], vocab.stoi["cat"]
    ids = torch.tensor([vocab.start_id, dog, vocab.pad_id, vocab.unk_id, vocab.end_id, cat, 0])
    assert vocab.decode(ids) == ["dog", UNK]


def test_save_and_load_round_trip_through_json(tmp_path):
    vocab = Vocabulary.build(CAPTIONS, min_count=1)
    path = tmp_path / "vocab.json"
    vocab.save(path)
    assert json.loads(path.read_text())["words"] == vocab.itos
    loaded = Vocabulary.load(path)
    assert loaded == vocab and loaded.stoi == vocab.stoi
    assert Vocabulary.from_json(vocab.to_json()) == vocab
    assert [p.name for p in tmp_path.iterdir()] == ["vocab.json"]  # no temporary file left


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"words": ["a", "b"]}', ""])
def test_loading_a_file_that_is_not_a_vocabulary_raises_one_line_naming_it(tmp_path, content):
    path = tmp_path / "vocab.json"
    path.write_text(content)
    with pytest.raises(ValueError) as err:
        Vocabulary.load(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_loading_a_missing_vocabulary_raises_value_error_naming_it(tmp_path):
    with pytest.raises(ValueError, match="missing.json"):
        Vocabulary.load(tmp_path / "missing.json")


def test_a_word_list_without_the_specials_first_or_with_duplicates_is_refused():
    with pytest.raises(ValueError):
        Vocabulary(["a", "b"])
    with pytest.raises(ValueError):
        Vocabulary([*SPECIALS, "a", "a"])


def test_tokenizer_lower_cases_and_drops_punctuation():
    assert tokenize("A dog's ball.") == ["a", "dog", "s", "ball"]
    assert tokenize("  Two CATS, on a T-shirt!! (really?) 3 ") == [
        "two", "cats", "on", "a", "t", "shirt", "really", "3"]
    assert tokenize("...") == []


def test_tokenizer_needs_no_nltk_data(monkeypatch):
    import nltk

    def refuse(*args, **kwargs):
        raise AssertionError("tokenize must not load or download nltk data")

    monkeypatch.setattr(nltk, "download", refuse)
    monkeypatch.setattr(nltk.data, "load", refuse)
    monkeypatch.setattr(nltk.data, "find", refuse)
    monkeypatch.setattr(nltk.data, "path", [])
    assert tokenize("A man rides a horse.") == ["a", "man", "rides", "a", "horse"]


def test_endings_are_the_words_that_end_captions():
    # "dog" ends 1 of its 3 uses, "sits" 2 of 2, "runs" 1 of 1; "a" and "the" never end one
    vocab = Vocabulary.build(CAPTIONS, min_count=1)
    assert vocab.endings == {"dog", "sits", "runs"}
    blocked = {vocab.itos[i] for i in vocab.no_end_after()}
    assert blocked == {START, "a", "cat", "the"}
    strict = Vocabulary.build(CAPTIONS, min_count=1, min_end_share=0.5)
    assert strict.endings == {"sits", "runs"}  # "dog" ends only a third of its uses


def test_endings_survive_the_json_round_trip_and_old_files_have_none(tmp_path):
    vocab = Vocabulary.build(CAPTIONS, min_count=1)
    again = Vocabulary.from_json(vocab.to_json())
    assert again.endings == vocab.endings and again.no_end_after() == vocab.no_end_after()
    old = Vocabulary.from_json(json.dumps({"words": vocab.itos}))  # written before endings
    assert old == vocab and old.endings is None and old.no_end_after() is None
    with pytest.raises(ValueError, match="endings"):
        Vocabulary([*SPECIALS, "dog"], endings=["cat"])
