"""The COCO caption metrics as pycocoevalcap computes them: BLEU-1..4, METEOR, ROUGE-L, CIDEr."""

from __future__ import annotations

import contextlib
import io
import shutil
import sys
from collections.abc import Sequence

from ..registry import EVALUATORS
from .base import Evaluator, Prediction
from .registry import EvaluationOptions


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


def coco_result(prediction: Prediction) -> dict:
    """The prediction as a COCO results entry ``{"image_id", "caption"}`` (numeric ids as int)."""
    image_id = prediction.image_id
    return {"image_id": int(image_id) if image_id.isdigit() else image_id,
            "caption": " ".join(prediction.words)}


class CocoEvaluator(Evaluator):
    """pycocoevalcap metrics as ``coco/<name>``; also keeps the COCO results list."""

    def __init__(self, meteor: bool = True):
        self.meteor = meteor

    def reset(self) -> None:
        self.results: list[dict] = []
        self.refs: dict[str, list[str]] = {}

    def process(self, predictions: Sequence[Prediction]) -> None:
        for p in predictions:
            result = coco_result(p)
            self.results.append(result)
            self.refs[str(result["image_id"])] = [" ".join(r) for r in p.references]

    def evaluate(self) -> dict[str, float]:
        hyps = {str(r["image_id"]): r["caption"] for r in self.results}
        return {f"coco/{k}": v for k, v in coco_metrics(hyps, self.refs, self.meteor).items()}


@EVALUATORS.register("coco")
def _coco(options: EvaluationOptions) -> Evaluator | None:
    return CocoEvaluator(options.meteor) if options.coco else None
