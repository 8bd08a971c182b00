"""Decode a prepared split with beam search and score it: the loop validation and
`captioner evaluate` share."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from .data.dataset import PreparedData, collate, collate_members
from .fileio import atomic_write_json
from .metrics import EvaluationOptions, Prediction, build_evaluators, coco_result
from .models.ensemble import Ensemble, members
from .models.model import CaptionModel
from .decoding import DecodeOptions, decode
from .vocab import Vocabulary


def split_loader(model: CaptionModel | Ensemble, data: PreparedData, split: str,
                 batch_size: int = 50, num_workers: int = 0, max_images: int = 0) -> DataLoader:
    """Batches of the split's images, as the model reads them (``PreparedData.dataset``; an
    ensemble's members each as they read them)."""
    if isinstance(model, Ensemble):
        dataset = data.member_datasets(split, [m.config for m in model.members])
        collate_fn = collate_members
    else:
        dataset, collate_fn = data.dataset(split, model.config), collate
    if max_images:
        dataset = torch.utils.data.Subset(dataset, range(min(max_images, len(dataset))))
    return DataLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                      collate_fn=collate_fn,
                      generator=torch.Generator())  # leaves the global RNG alone


def decode_split(model: CaptionModel | Ensemble, vocab: Vocabulary, data: PreparedData, split: str,
                 options: DecodeOptions = DecodeOptions(), max_images: int = 0,
                 batch_size: int = 50, progress: bool = False) -> list[Prediction]:
    """Caption every image of ``split`` as ``options`` say (ending only on the vocabulary's
    endings, when it has them); one Prediction per image, its best caption."""
    device = next(model.parameters()).device
    loader = split_loader(model, data, split, batch_size, max_images=max_images)
    entries = data.manifest(split)
    options = options.bind(model.config.max_len, vocab.no_end_after())
    predictions = []
    was_training = model.training
    model.eval()
    try:
        for batch in tqdm(loader, desc=f"decode {split}", disable=not progress, unit="batch"):
            with torch.inference_mode():
                features = model.features(_to(batch.inputs, device), batch.encoded)
            hyps = decode(model.decoder, features, options)
            for i, h in enumerate(hyps):
                best = h[0]
                predictions.append(Prediction(batch.image_ids[i], vocab.decode(best.tokens),
                                              batch.references[i], best.alpha,
                                              entries[batch.indices[i]]))
    finally:
        model.train(was_training)
    return predictions


def _to(inputs: torch.Tensor | tuple[torch.Tensor, ...], device) -> torch.Tensor | tuple:
    if isinstance(inputs, torch.Tensor):
        return inputs.to(device)
    return tuple(x.to(device) for x in inputs)


def score(predictions: list[Prediction], coco: bool = True, meteor: bool = True
          ) -> tuple[dict[str, float], list[dict]]:
    """All registered metrics of decoded captions (``metrics.EVALUATORS``), and the COCO
    results list. ``coco``: run pycocoevalcap's scorers (else CIDEr-D in process); ``meteor``:
    with them, METEOR too."""
    evaluators = build_evaluators(EvaluationOptions(coco=coco, meteor=meteor))
    evaluators.reset()
    evaluators.process(predictions)
    metrics = evaluators.evaluate()
    results = [coco_result(p) for p in predictions] if coco else [
        {"image_id": p.image_id, "caption": " ".join(p.words)} for p in predictions]
    return metrics, results


def evaluate_checkpoint(model: CaptionModel | Ensemble, vocab: Vocabulary, data: PreparedData,
                        split: str,
                        options: DecodeOptions = DecodeOptions(),
                        results_path: str | Path | None = None,
                        metrics_path: str | Path | None = None, max_images: int = 0,
                        coco: bool = True, meteor: bool = True, progress: bool = True
                        ) -> dict[str, float]:
    """Decode, score, and write the COCO results file and a metrics JSON (atomically)."""
    predictions = decode_split(model, vocab, data, split, options, max_images, progress=progress)
    metrics, results = score(predictions, coco=coco, meteor=meteor)
    metrics.update({"beam_size": float(options.beam_size),
                    "length_penalty": options.length_penalty,
                    "models": float(len(members(model)))})
    if results_path:
        atomic_write_json(results_path, results)
    if metrics_path:
        atomic_write_json(metrics_path, {"split": split, "strategy": options.strategy, **metrics})
    return metrics
