"""Caption metrics: BLEU via nltk, the COCO caption metrics via pycocoevalcap, and attention
correctness (Liu et al. 2017) on the shapes data.

Evaluators accumulate, then compute (detectron2's ``DatasetEvaluator``): ``reset()``,
``process(predictions)``, ``evaluate()``, so one decoding loop feeds them all.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import sys
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from .data.shapes import COLORS, SHAPES, SIZES
from .rewards import CiderD


@dataclass
class Prediction:
    image_id: str
    words: list[str]
    references: list[list[str]]
    alpha: torch.Tensor | None = None  # (len(words), P)
    entry: dict | None = None  # the manifest entry (objects, boxes, size) when known


def corpus_bleu(hypotheses: list[list[str]], references: list[list[list[str]]]) -> dict[str, float]:
    """BLEU-1..4 over the corpus with nltk (all references per image, no smoothing)."""
    from nltk.translate.bleu_score import corpus_bleu as nltk_bleu

    weights = [(1.0,), (0.5, 0.5), (1 / 3, 1 / 3, 1 / 3), (0.25, 0.25, 0.25, 0.25)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nltk warns when a higher-order n-gram never matches
        scores = nltk_bleu(references, hypotheses, weights=weights)
    return {f"BLEU-{n}": float(s) for n, s in enumerate(scores, 1)}


def java_available() -> bool:
    """METEOR and the PTB tokenizer of pycocoevalcap run Java."""
    return shutil.which("java") is not None


def coco_metrics(hypotheses: dict[str, str], references: dict[str, list[str]],
                 meteor: bool = True) -> dict[str, float]:
    """BLEU-1..4, METEOR, ROUGE-L and CIDEr(-D) as the COCO caption evaluation computes them.

    With Java, captions go through the PTB tokenizer and METEOR runs; without Java, the
    (already lower-cased, tokenized) captions are scored as they are and METEOR is skipped with
    a message on stderr.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    gts = {k: list(v) for k, v in references.items()}
    res = {k: [hypotheses[k]] for k in references}
    has_java = java_available()
    if has_java:
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        tok = PTBTokenizer()
        gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in gts.items()})
        res = tok.tokenize({k: [{"caption": c} for c in v] for k, v in res.items()})
    scorers = [(Bleu(4), ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"]), (Rouge(), ["ROUGE-L"]),
               (Cider(), ["CIDEr"])]
    if meteor and has_java:
        from pycocoevalcap.meteor.meteor import Meteor

        scorers.append((Meteor(), ["METEOR"]))
    elif meteor:
        print("METEOR skipped: it needs Java (install a JRE, e.g. apt-get install default-jre)",
              file=sys.stderr)
    results = {}
    for scorer, names in scorers:
        with contextlib.redirect_stdout(io.StringIO()):  # the scorers print their progress
            score, _ = scorer.compute_score(gts, res)
        for name, value in zip(names, score if isinstance(score, list) else [score]):
            results[name] = float(value)
    return results


def box_coverage(box: list[float], image_size: tuple[int, int], grid: int) -> np.ndarray:
    """Fraction of each grid cell's area inside ``box`` [x0, y0, x1, y1]: (grid * grid,)."""
    w, h = image_size
    edges_x, edges_y = np.linspace(0, w, grid + 1), np.linspace(0, h, grid + 1)
    ox = np.clip(np.minimum(edges_x[1:], box[2]) - np.maximum(edges_x[:-1], box[0]), 0, None)
    oy = np.clip(np.minimum(edges_y[1:], box[3]) - np.maximum(edges_y[:-1], box[1]), 0, None)
    cover = np.outer(oy / np.diff(edges_y), ox / np.diff(edges_x))  # (rows, cols)
    return cover.reshape(-1)


def named_objects(words: list[str], objects: list[dict]) -> list[tuple[int, int]]:
    """(word position, object index) for each generated shape noun whose description (its shape
    and the colour/size words just before it) picks out exactly one object of the image."""
    pairs = []
    for j, word in enumerate(words):
        if word not in SHAPES:
            continue
        attrs, i = [], j - 1
        while i >= 0 and (words[i] in COLORS or words[i] in SIZES):
            attrs.append(words[i])
            i -= 1
        matches = [k for k, o in enumerate(objects) if o["shape"] == word
                   and all(a in (o["color"], o["size"]) for a in attrs)]
        if len(matches) == 1:
            pairs.append((j, matches[0]))
    return pairs


class _CorpusEvaluator:
    """Collects the decoded words and the references of each prediction."""

    def reset(self) -> None:
        self.hyps: list[list[str]] = []
        self.refs: list[list[list[str]]] = []

    def process(self, predictions: list[Prediction]) -> None:
        for p in predictions:
            self.hyps.append(p.words)
            self.refs.append(p.references)


class BleuEvaluator(_CorpusEvaluator):
    """Corpus BLEU-1..4 (nltk) over decoded captions."""

    def evaluate(self) -> dict[str, float]:
        return corpus_bleu(self.hyps, self.refs) if self.hyps else {}


class CiderDEvaluator(_CorpusEvaluator):
    """CIDEr-D in process (``rewards.CiderD``; document frequencies from these captions'
    references, as pycocoevalcap's), for when the pycocoevalcap scorers are not run."""

    def evaluate(self) -> dict[str, float]:
        if not self.hyps:
            return {}
        scores = CiderD(self.refs).scores(self.hyps, self.refs)
        return {"CIDEr-D": sum(scores) / len(scores)}


class CocoEvaluator:
    """pycocoevalcap metrics; also keeps the COCO results list [{"image_id", "caption"}]."""

    def __init__(self, meteor: bool = True):
        self.meteor = meteor

    def reset(self) -> None:
        self.results: list[dict] = []
        self.refs: dict[str, list[str]] = {}

    def process(self, predictions: list[Prediction]) -> None:
        for p in predictions:
            image_id = int(p.image_id) if p.image_id.isdigit() else p.image_id
            self.results.append({"image_id": image_id, "caption": " ".join(p.words)})
            self.refs[str(image_id)] = [" ".join(r) for r in p.references]

    def evaluate(self) -> dict[str, float]:
        hyps = {str(r["image_id"]): r["caption"] for r in self.results}
        return {f"coco/{k}": v for k, v in coco_metrics(hyps, self.refs, self.meteor).items()}


class AttentionCorrectnessEvaluator:
    """Liu et al. 2017: for every generated word naming an object, the share of its attention
    inside that object's box, averaged over words. ``uniform`` is the same for uniform
    attention (the box's share of the image), the chance level to compare against."""

    def reset(self) -> None:
        self.scores: list[float] = []
        self.chance: list[float] = []

    def process(self, predictions: list[Prediction]) -> None:
        for p in predictions:
            if p.entry is None or "objects" not in p.entry or p.alpha is None:
                continue
            grid = int(round(p.alpha.shape[-1] ** 0.5))
            size = tuple(p.entry.get("size") or (64, 64))
            for j, k in named_objects(p.words, p.entry["objects"]):
                cover = box_coverage(p.entry["objects"][k]["box"], size, grid)
                self.scores.append(float((p.alpha[j].float().numpy() * cover).sum()))
                self.chance.append(float(cover.mean()))

    def evaluate(self) -> dict[str, float]:
        if not self.scores:
            return {}
        return {"attention_correctness": float(np.mean(self.scores)),
                "attention_correctness_uniform": float(np.mean(self.chance)),
                "attention_words": float(len(self.scores))}


def attention_entropy(alphas: list[torch.Tensor]) -> dict[str, float]:
    """Mean entropy (nats) of the per-word attention distributions, against log(P) (uniform)."""
    rows = torch.cat([a.float() for a in alphas if len(a)], 0)
    if len(rows) == 0:
        return {}
    ent = -(rows * rows.clamp_min(1e-12).log()).sum(-1)
    return {"attention_entropy": float(ent.mean()),
            "attention_entropy_uniform": float(np.log(rows.shape[-1]))}
