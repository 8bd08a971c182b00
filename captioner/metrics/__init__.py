"""Caption metrics as evaluators (reset / process / evaluate) registered by name.

``build_evaluators(options)`` gives the composite of every registered evaluator; a new metric is
one module that registers itself with ``register_evaluator`` (see ``registry.py``). The modules:
``bleu`` (nltk), ``coco`` (pycocoevalcap), ``cider`` (CIDEr-D with corpus document frequencies,
also the SCST reward), ``attention`` (entropy), ``captions`` (counts). Attention correctness
needs the shapes grammar and lives beside it, in ``captioner.data.shapes_eval``.
"""

from .base import CorpusEvaluator, DatasetEvaluators, Evaluator, Prediction
from .registry import (EVALUATORS, EvaluationOptions, build_evaluators, evaluator_names,
                       register_evaluator)
from .bleu import BleuEvaluator, corpus_bleu
from .coco import CocoEvaluator, coco_metrics, coco_result, java_available
from .cider import CiderD, CiderDEvaluator
from .attention import AttentionEntropyEvaluator, attention_entropy
from .captions import DistinctCaptionsEvaluator, ImagesEvaluator, VocabularyUsedEvaluator

__all__ = ["EVALUATORS", "AttentionEntropyEvaluator", "BleuEvaluator", "CiderD",
           "CiderDEvaluator", "CocoEvaluator", "CorpusEvaluator", "DatasetEvaluators",
           "DistinctCaptionsEvaluator", "EvaluationOptions", "Evaluator", "ImagesEvaluator",
           "Prediction", "VocabularyUsedEvaluator", "attention_entropy", "build_evaluators",
           "coco_metrics", "coco_result", "corpus_bleu", "evaluator_names", "java_available",
           "register_evaluator"]
