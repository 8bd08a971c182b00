"""Tokenizer and vocabulary: lower-cased, punctuation-free word tokens and their ids."""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from .fileio import atomic_write_text

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)
DEFAULT_MIN_COUNT = 5  # a word seen fewer times in train becomes <unk>


@functools.cache
def _tokenizer():
    # nltk's RegexpTokenizer needs no nltk data download, so tokenizing works offline; it is
    # imported on first use because importing nltk costs a second that `caption` never needs.
    # The pattern matches the Karpathy splits: lower-case, split on every non-alphanumeric run.
    from nltk.tokenize import RegexpTokenizer

    return RegexpTokenizer(r"[a-z0-9]+")


def tokenize(text: str) -> list[str]:
    """Split a caption into lower-cased alphanumeric tokens ("A dog's ball." -> a, dog, s, ball)."""
    return _tokenizer().tokenize(text.lower())


class Vocabulary:
    """Word <-> id mapping with the four special tokens at ids 0-3, and the words a caption may
    end on."""

    def __init__(self, words: Sequence[str], endings: Iterable[str] | None = None):
        if tuple(words[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"a vocabulary must start with {SPECIALS}")
        self.itos: list[str] = list(words)
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("vocabulary words must be unique")
        # None: a vocabulary from before these were recorded, any word may end a caption
        self.endings: frozenset[str] | None = None if endings is None else frozenset(endings)
        if self.endings is not None and not self.endings <= self.stoi.keys():
            raise ValueError("vocabulary endings must be vocabulary words")

    pad_id, start_id, end_id, unk_id = 0, 1, 2, 3

    def __len__(self) -> int:
        return len(self.itos)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.itos == other.itos

    @classmethod
    def build(cls, captions: Iterable[Sequence[str]], min_count: int = DEFAULT_MIN_COUNT,
              min_end_share: float = 0.01) -> "Vocabulary":
        """Build from tokenized captions, keeping words seen at least ``min_count`` times.

        Words are ordered by descending count, then alphabetically, so the result is
        deterministic. The endings are the kept words that end at least ``min_end_share`` of
        their occurrences: "dog", "grass", "water", but not "a", "of" or "red".
        """
        captions = [list(caption) for caption in captions]
        counts = Counter(tok for caption in captions for tok in caption)
        last = Counter(caption[-1] for caption in captions if caption)
        kept = sorted((w for w, c in counts.items() if c >= min_count and w not in SPECIALS),
                      key=lambda w: (-counts[w], w))
        return cls([*SPECIALS, *kept], [w for w in kept if last[w] >= min_end_share * counts[w]])

    def no_end_after(self) -> list[int] | None:
        """Ids after which decoding may not end a caption: ``<start>`` (an empty caption) and
        the words that are not endings. None when the vocabulary has no endings recorded."""
        if self.endings is None:
            return None
        return [self.start_id] + [i for i, w in enumerate(self.itos[len(SPECIALS):], len(SPECIALS))
                                  if w not in self.endings]

    def encode(self, tokens: Sequence[str], max_len: int | None = None) -> list[int]:
        """``<start> w1 .. wn <end>`` as ids, unknown words as ``<unk>``, at most max_len words."""
        if max_len is not None:
            tokens = tokens[:max_len]
        return [self.start_id, *(self.stoi.get(t, self.unk_id) for t in tokens), self.end_id]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Words of an id sequence: skips ``<start>``/``<pad>``, stops at ``<end>``."""
        words = []
        for i in ids:
            i = int(i)
            if i == self.end_id:
                break
            if i in (self.start_id, self.pad_id):
                continue
            words.append(self.itos[i])
        return words

    def to_json(self) -> str:
        data: dict = {"words": self.itos}
        if self.endings is not None:
            data["endings"] = sorted(self.endings, key=self.stoi.__getitem__)
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> "Vocabulary":
        data = json.loads(text)
        return cls(data["words"], data.get("endings"))

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "Vocabulary":
        try:
            return cls.from_json(Path(path).read_text())
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: not a captioner vocabulary ({exc})") from None
