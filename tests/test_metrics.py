"""Metrics: both BLEU implementations agree; COCO metrics; attention correctness."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import SHARED

from captioner.data.shapes_eval import AttentionCorrectnessEvaluator, box_coverage, named_objects
from captioner.evaluate import score
from captioner.metrics import (
    CorpusEvaluator,
    DatasetEvaluators,
    EvaluationOptions,
    Evaluator,
    Prediction,
    build_evaluators,
    coco_metrics,
    corpus_bleu,
)
from captioner.registry import EVALUATORS

HYPS = [["a", "dog", "runs", "on", "the", "green", "grass"],
        ["two", "people", "ride", "bikes", "down", "a", "city", "street"],
        ["a", "child", "in", "a", "red", "shirt", "plays", "in", "the", "water"]]
REFS = [[["a", "dog", "runs", "across", "the", "green", "grass"],
         ["a", "brown", "dog", "is", "running", "on", "the", "grass"]],
        [["two", "people", "ride", "their", "bikes", "down", "a", "street"],
         ["two", "cyclists", "in", "a", "city", "street"]],
        [["a", "child", "in", "a", "red", "shirt", "plays", "in", "the", "water"],
         ["a", "young", "boy", "splashes", "in", "the", "water"]]]


def test_nltk_and_pycocoevalcap_bleu_agree_on_a_fixed_example():
    ours = corpus_bleu(HYPS, REFS)
    from pycocoevalcap.bleu.bleu import Bleu

    gts = {i: [" ".join(r) for r in refs] for i, refs in enumerate(REFS)}
    res = {i: [" ".join(h)] for i, h in enumerate(HYPS)}
    theirs, _ = Bleu(4).compute_score(gts, res, verbose=0)
    for n in range(4):
        assert ours[f"BLEU-{n + 1}"] == pytest.approx(theirs[n], abs=1e-6)
    assert 0.3 < ours["BLEU-4"] < 1.0  # a real, non-trivial value


def test_bleu_is_one_for_a_perfect_match_and_zero_without_overlap():
    assert corpus_bleu([["a", "b", "c", "d"]], [[["a", "b", "c", "d"]]])["BLEU-4"] == pytest.approx(1)
    assert corpus_bleu([["x", "y", "z", "w"]], [[["a", "b", "c", "d"]]])["BLEU-1"] == 0


def test_coco_metrics_score_a_fixed_example():
    hyps = {str(i): " ".join(h) for i, h in enumerate(HYPS)}
    refs = {str(i): [" ".join(r) for r in rs] for i, rs in enumerate(REFS)}
    m = coco_metrics(hyps, refs, meteor=False)
    assert set(m) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr"}
    assert m["BLEU-4"] == pytest.approx(corpus_bleu(HYPS, REFS)["BLEU-4"], abs=1e-6)
    worse = coco_metrics({k: "a cat" for k in hyps}, refs, meteor=False)
    assert worse["CIDEr"] < m["CIDEr"] and worse["ROUGE-L"] < m["ROUGE-L"]


@pytest.mark.slow
def test_meteor_runs_with_java_or_is_skipped_with_a_message(capsys, monkeypatch):
    import captioner.metrics.coco as metrics

    hyps = {"0": "a dog runs on the grass"}
    refs = {"0": ["a dog runs across the grass", "a brown dog on grass"]}
    monkeypatch.setattr(metrics, "java_available", lambda: False)
    m = coco_metrics(hyps, refs)
    assert "METEOR" not in m and "METEOR skipped: it needs Java" in capsys.readouterr().err
    monkeypatch.undo()
    if not metrics.java_available():
        pytest.skip("no Java on this machine: METEOR itself cannot run")
    assert 0 < coco_metrics(hyps, refs)["METEOR"] <= 1


@pytest.mark.skipif(not (SHARED / "data/coco/captions_val2017.json").exists(),
                    reason="../shared/data/coco/captions_val2017.json not present")
def test_real_coco_ground_truth_scores_a_held_out_human_caption():
    data = json.loads((SHARED / "data/coco/captions_val2017.json").read_text())
    by_image: dict[str, list[str]] = {}
    for a in data["annotations"]:
        by_image.setdefault(str(a["image_id"]), []).append(a["caption"])
    ids = sorted(by_image)[:200]
    hyps = {i: by_image[i][0] for i in ids}
    refs = {i: by_image[i][1:] for i in ids}
    m = coco_metrics(hyps, refs, meteor=False)
    # one human against the other four: the known human-agreement level on COCO
    assert 0.1 < m["BLEU-4"] < 0.4 and 0.5 < m["CIDEr"] < 1.3


def test_box_coverage_is_the_share_of_each_cell_inside_the_box():
    cover = box_coverage([0, 0, 32, 16], (64, 64), grid=2).reshape(2, 2)
    assert np.allclose(cover, [[0.5, 0.0], [0.0, 0.0]])
    assert box_coverage([0, 0, 64, 64], (64, 64), 4).sum() == pytest.approx(16)


def test_named_objects_resolves_shape_words_by_their_adjectives():
    objects = [{"shape": "circle", "color": "red", "size": "small"},
               {"shape": "circle", "color": "blue", "size": "large"},
               {"shape": "square", "color": "red", "size": "large"}]
    words = "a red circle to the left of a large blue circle and a circle and a square".split()
    assert named_objects(words, objects) == [(2, 0), (10, 1), (16, 2)]  # bare "circle" is ambiguous


def test_attention_correctness_rewards_looking_inside_the_box():
    entry = {"size": [64, 64], "objects": [{"shape": "square", "color": "red", "size": "large",
                                            "box": [0, 0, 32, 32]}]}
    inside = torch.zeros(3, 4)
    inside[:, 0] = 1.0  # every word attends to the top-left cell, where the square is
    ev = AttentionCorrectnessEvaluator()
    ev.reset()
    ev.process([Prediction("1", ["a", "red", "square"], [], inside, entry)])
    assert ev.evaluate()["attention_correctness"] == pytest.approx(1.0)
    assert ev.evaluate()["attention_correctness_uniform"] == pytest.approx(0.25)
    ev.reset()
    ev.process([Prediction("1", ["a", "red", "square"], [], torch.roll(inside, 3, 1), entry)])
    assert ev.evaluate()["attention_correctness"] == pytest.approx(0.0)


# --- evaluators: the registry, the composite, score() ---

def _predictions(boxes: bool = True) -> list[Prediction]:
    """Three predictions over HYPS/REFS with 4-cell attention; the first carries a shapes box."""
    entry = {"size": [64, 64], "objects": [{"shape": "square", "color": "red", "size": "large",
                                            "box": [0, 0, 32, 32]}]}
    preds = []
    for i, (h, r) in enumerate(zip(HYPS, REFS)):
        words = ["a", "red", "square"] + h if i == 0 else h
        alpha = torch.full((len(words), 4), 0.25)
        preds.append(Prediction(str(i), words, r, alpha, entry if boxes and i == 0 else None))
    return preds


class _Fixed(Evaluator):
    """Reports ``values`` whatever it is given."""

    def __init__(self, values: dict[str, float]):
        self.values = values

    def reset(self) -> None:
        pass

    def process(self, predictions) -> None:
        pass

    def evaluate(self) -> dict[str, float]:
        return dict(self.values)


def test_composite_refuses_two_evaluators_reporting_the_same_key():
    both = DatasetEvaluators({"first": _Fixed({"a": 1.0, "BLEU-4": 0.5}),
                              "second": _Fixed({"BLEU-4": 0.7})})
    with pytest.raises(ValueError, match=r"'BLEU-4'.*'first'.*'second'"):
        both.evaluate()
    merged = DatasetEvaluators([_Fixed({"a": 1.0}), _Fixed({"b": 2.0})]).evaluate()
    assert merged == {"a": 1.0, "b": 2.0}


@pytest.mark.parametrize("name", EVALUATORS.names())
def test_every_registered_evaluator_accumulates_batches_and_resets(name):
    ev = EVALUATORS.get(name)(EvaluationOptions(coco=name == "coco", meteor=False))
    assert ev is not None
    preds = _predictions()
    ev.reset()
    ev.process(preds)
    whole = ev.evaluate()
    assert whole and all(isinstance(v, float) for v in whole.values())
    ev.reset()
    ev.process(preds[:1])
    ev.process(preds[1:])
    assert ev.evaluate() == pytest.approx(whole)  # two batches give what one gives


def test_score_reports_the_keys_the_readme_and_scripts_read():
    bleu = [f"BLEU-{n}" for n in range(1, 5)]
    counts = ["attention_entropy", "attention_entropy_uniform", "distinct_captions",
              "vocabulary_used", "images"]
    correctness = ["attention_correctness", "attention_correctness_uniform", "attention_words"]
    metrics, results = score(_predictions(), coco=False)
    assert list(metrics) == bleu + correctness + ["CIDEr-D"] + counts
    assert metrics["images"] == 3 and metrics["distinct_captions"] == 3
    assert metrics["attention_correctness"] == pytest.approx(0.25)  # uniform over 4 cells
    assert results[0] == {"image_id": "0", "caption": " ".join(_predictions()[0].words)}
    metrics, results = score(_predictions(boxes=False), coco=True, meteor=False)
    coco = [f"coco/{k}" for k in ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr")]
    assert list(metrics) == bleu + coco + counts  # no boxes: no attention correctness
    assert results[0]["image_id"] == 0  # COCO ids are numbers


@pytest.fixture
def registered():
    """Registers evaluators for one test (``registered(name, factory)``); gone afterwards."""
    names = []

    def add(name, factory):
        EVALUATORS.names()  # the built-ins first
        names.append(name)
        return EVALUATORS.register(name, factory)

    yield add
    for name in names:
        EVALUATORS.unregister(name)


def test_a_new_metric_is_one_registered_evaluator(registered):
    @lambda factory: registered("mean_length", factory)
    def _mean_length(options):
        class MeanLength(CorpusEvaluator):
            def evaluate(self):
                return {"mean_length": sum(map(len, self.hyps)) / len(self.hyps)}
        return MeanLength()

    preds = _predictions(boxes=False)
    metrics, _ = score(preds, coco=False)
    assert metrics["mean_length"] == pytest.approx(sum(len(p.words) for p in preds) / 3)
    assert list(metrics)[-1] == "mean_length"  # after the built-ins


def test_a_registered_evaluator_that_reuses_a_key_fails_score(registered):
    registered("images_again", lambda options: _Fixed({"images": 1.0}))
    with pytest.raises(ValueError, match=r"'images'.*'images'.*'images_again'"):
        score(_predictions(), coco=False)


def test_unknown_or_twice_registered_evaluator_names_raise():
    with pytest.raises(ValueError, match="unknown evaluator 'nope'; known: bleu"):
        build_evaluators(names=["nope"])
    with pytest.raises(ValueError, match="'bleu' is already registered"):
        EVALUATORS.register("bleu")(lambda options: None)


@pytest.mark.slow
def test_metrics_never_import_the_shapes_grammar():
    code = ("import sys, captioner.metrics as m, captioner.metrics.registry, "
            "captioner.metrics.captions; assert 'captioner.data.shapes' not in sys.modules, "
            "'metrics imported the shapes data'")
    subprocess.run([sys.executable, "-c", code], check=True)
