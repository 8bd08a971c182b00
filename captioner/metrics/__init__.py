"""Caption metrics as evaluators (reset / process / evaluate) registered by name.

``build_evaluators(options)`` gives the composite of every registered evaluator; a new metric is
one module that registers itself with ``@EVALUATORS.register`` (see ``registry.py``). The modules:
``bleu`` (nltk), ``coco`` (pycocoevalcap), ``cider`` (CIDEr-D with corpus document frequencies,
also the SCST reward), ``attention`` (entropy), ``captions`` (counts). Attention correctness
needs the shapes grammar and lives beside it, in ``captioner.data.shapes_eval``.
"""

from ..registry import EVALUATORS
from .attention import AttentionEntropyEvaluator, attention_entropy
from .base import CorpusEvaluator, DatasetEvaluators, Evaluator, Prediction
from .bleu import BleuEvaluator, corpus_bleu
from .captions import DistinctCaptionsEvaluator, ImagesEvaluator, VocabularyUsedEvaluator
from .cider import CiderD, CiderDEvaluator
from .coco import CocoEvaluator, coco_metrics, coco_result, java_available
from .registry import EvaluationOptions, build_evaluators

__all__ = ["EVALUATORS", "AttentionEntropyEvaluator", "BleuEvaluator", "CiderD",
           "CiderDEvaluator", "CocoEvaluator", "CorpusEvaluator", "DatasetEvaluators",
           "DistinctCaptionsEvaluator", "EvaluationOptions", "Evaluator", "ImagesEvaluator",
           "Prediction", "VocabularyUsedEvaluator", "attention_entropy", "build_evaluators",
           "coco_metrics", "coco_result", "corpus_bleu", "java_available"]
