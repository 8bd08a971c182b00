"""Decode a prepared split with beam search and score it: the loop validation and
`captioner evaluate` share."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from .data.prepared import PreparedData, collate
from .fileio import atomic_write_json
from .metrics import (AttentionCorrectnessEvaluator, BleuEvaluator, CiderDEvaluator, CocoEvaluator,
                      Prediction, attention_entropy)
from .models.captioner import CaptionModel
from .search import beam_search
from .vocab import Vocabulary


def split_loader(model: CaptionModel, data: PreparedData, split: str, batch_size: int = 50,
                 num_workers: int = 0, max_images: int = 0) -> DataLoader:
    """Batches of the split's images: precomputed features when they match the model's
    encoder, grid and preprocessing, else images preprocessed as the model's config says."""
    use_features = data.features_match(model.config) and not model.encoder.trainable
    dataset = data.dataset(split, None if use_features else model.config.preprocess)
    if max_images:
        dataset = torch.utils.data.Subset(dataset, range(min(max_images, len(dataset))))
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate,
                        generator=torch.Generator())  # leaves the global RNG alone
    loader.use_features = use_features  # type: ignore[attr-defined]
    return loader


def decode_split(model: CaptionModel, vocab: Vocabulary, data: PreparedData, split: str,
                 beam_size: int = 3, length_penalty: float = 0.0, max_images: int = 0,
                 batch_size: int = 50, progress: bool = False) -> list[Prediction]:
    """Caption every image of ``split`` with beam search (ending only on the vocabulary's
    endings, when it has them); one Prediction per image."""
    device = next(model.parameters()).device
    loader = split_loader(model, data, split, batch_size, max_images=max_images)
    entries = data.manifest(split)
    no_end_after = vocab.no_end_after()
    predictions = []
    was_training = model.training
    model.eval()
    try:
        for batch in tqdm(loader, desc=f"decode {split}", disable=not progress, unit="batch"):
            with torch.inference_mode():
                inputs = batch.inputs.to(device)
                features = inputs if loader.use_features else model.encode(inputs)
            hyps = beam_search(model.decoder, features, beam_size, model.config.max_len,
                               length_penalty=length_penalty, no_end_after=no_end_after)
            for i, h in enumerate(hyps):
                best = h[0]
                predictions.append(Prediction(batch.image_ids[i], vocab.decode(best.tokens),
                                              batch.references[i], best.alpha,
                                              entries[batch.indices[i]]))
    finally:
        model.train(was_training)
    return predictions


def score(predictions: list[Prediction], coco: bool = True, meteor: bool = True
          ) -> tuple[dict[str, float], list[dict]]:
    """All metrics for decoded captions, and the COCO results list."""
    coco_eval = CocoEvaluator(meteor) if coco else None
    # without pycocoevalcap's scorers, its CIDEr-D computed in process
    evaluators = [BleuEvaluator(), AttentionCorrectnessEvaluator(), coco_eval or CiderDEvaluator()]
    metrics: dict[str, float] = {}
    for ev in evaluators:
        ev.reset()
        ev.process(predictions)
        metrics.update(ev.evaluate())
    metrics.update(attention_entropy([p.alpha for p in predictions if p.alpha is not None]))
    captions = [" ".join(p.words) for p in predictions]
    metrics["distinct_captions"] = float(len(set(captions)))
    metrics["vocabulary_used"] = float(len({w for p in predictions for w in p.words}))
    metrics["images"] = float(len(predictions))
    results = coco_eval.results if coco_eval else [
        {"image_id": p.image_id, "caption": c} for p, c in zip(predictions, captions)]
    return metrics, results


def evaluate_checkpoint(model: CaptionModel, vocab: Vocabulary, data: PreparedData, split: str,
                        beam_size: int, results_path: str | Path | None = None,
                        metrics_path: str | Path | None = None, length_penalty: float = 0.0,
                        max_images: int = 0, coco: bool = True, meteor: bool = True,
                        progress: bool = True) -> dict[str, float]:
    """Decode, score, and write the COCO results file and a metrics JSON (atomically)."""
    predictions = decode_split(model, vocab, data, split, beam_size, length_penalty, max_images,
                               progress=progress)
    metrics, results = score(predictions, coco=coco, meteor=meteor)
    metrics.update({"beam_size": float(beam_size), "length_penalty": length_penalty})
    if results_path:
        atomic_write_json(results_path, results)
    if metrics_path:
        atomic_write_json(metrics_path, {"split": split, **metrics})
    return metrics
