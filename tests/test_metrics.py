"""Metrics: both BLEU implementations agree; COCO metrics; attention correctness."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from captioner.metrics import (AttentionCorrectnessEvaluator, Prediction, box_coverage,
                               coco_metrics, corpus_bleu, named_objects)

from conftest import SHARED

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


def test_meteor_runs_with_java_or_is_skipped_with_a_message(capsys, monkeypatch):
    import captioner.metrics as metrics

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
