"""Does the encoder runtime change a model's scores? Re-encodes one split of a prepared folder
with another runtime (default: eager PyTorch, the reference), into a temp copy of the folder,
and evaluates the same checkpoint on both: BLEU-4 and CIDEr side by side, with the features'
max abs difference. Target: |BLEU-4 difference| <= 0.2 (BLEU points).

    .venv/bin/python benchmarks/runtime_bleu.py --data DATA --model RUN/best.safetensors
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_verdict  # noqa: E402

from captioner.config import Preprocess  # noqa: E402
from captioner.data.dataset import FEATURE_DTYPE, PreparedData  # noqa: E402
from captioner.data.prepare import local_batches  # noqa: E402
from captioner.data.records import ImageRecord  # noqa: E402
from captioner.decoding import DecodeOptions  # noqa: E402
from captioner.evaluate import evaluate_checkpoint  # noqa: E402
from captioner.inference import load_models  # noqa: E402
from captioner.models.encoder import Encoder, get_backbone  # noqa: E402
from captioner.models.runtime import accelerate  # noqa: E402


def reencode(data: PreparedData, split: str, out: Path, runtime: str, batch: int) -> float:
    """Copy ``data`` to ``out`` with ``split``'s features computed again on ``runtime`` (the
    other splits' features linked); returns the seconds the encoding took."""
    out.mkdir()
    for name in ("meta.json", "vocab.json", *(f"{s}.json" for s in data.meta["splits"])):
        shutil.copy(data.root / name, out / name)
    (out / "features").mkdir()
    for path in (data.root / "features").iterdir():
        if path.name != f"{split}.f16":
            (out / "features" / path.name).symlink_to(path.resolve())
    feats = data.features
    pre = Preprocess.from_dict(feats["preprocess"])
    module = Encoder(get_backbone(feats["encoder"]), feats["grid_size"]).eval()
    encoder = accelerate(module, pre.input_size, runtime)
    print(encoder.describe())
    entries = data.manifest(split)
    records = [ImageRecord(str(e["image_id"]), data.image_path(e), split,
                           [c.split() for c in e["captions"]]) for e in entries]
    rows = []
    started = time.perf_counter()
    with torch.inference_mode():
        for good, found, errors, _ in local_batches(records, pre, encoder, batch, 2):
            assert not errors and len(good) == len(found), errors
            rows.append(found.numpy().astype(FEATURE_DTYPE))
    seconds = time.perf_counter() - started
    np.concatenate(rows).tofile(out / "features" / f"{split}.f16")
    return seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="prepared folder with features")
    ap.add_argument("--model", required=True, help="checkpoint trained on those features")
    ap.add_argument("--split", default="val")
    ap.add_argument("--runtime", default="eager", help="the runtime to encode with again")
    ap.add_argument("--beam-size", type=int, default=5)
    ap.add_argument("--length-penalty", type=float, default=0.5)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--target", type=float, default=0.2, help="largest |BLEU-4 difference|")
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    data = PreparedData(args.data)
    model, vocab = load_models(args.model, "cpu")
    options = DecodeOptions(beam_size=args.beam_size, length_penalty=args.length_penalty)
    with tempfile.TemporaryDirectory(prefix="runtime_bleu_") as tmp:
        other = Path(tmp) / "data"
        seconds = reencode(data, args.split, other, args.runtime, args.batch)
        mine = np.fromfile(data.root / "features" / f"{args.split}.f16", FEATURE_DTYPE)
        theirs = np.fromfile(other / "features" / f"{args.split}.f16", FEATURE_DTYPE)
        diff = np.abs(mine.astype(np.float32) - theirs.astype(np.float32))
        scores = {}
        for name, folder in (("prepared", data), (args.runtime, PreparedData(other))):
            m = evaluate_checkpoint(model, vocab, folder, args.split, options, meteor=False,
                                    progress=False)
            scores[name] = (100 * m["BLEU-4"], 100 * m["coco/CIDEr"])
    print(f"{args.split}: {len(data.manifest(args.split))} images re-encoded on "
          f"{args.runtime} in {seconds:.0f} s; features: max |diff| {diff.max():.3g} (largest "
          f"|feature| {np.abs(mine.astype(np.float32)).max():.3g}), "
          f"{(diff > 0).mean():.2%} of the float16 values differ")
    for name, (bleu, cider) in scores.items():
        print(f"{name:>12}: BLEU-4 {bleu:.2f}  CIDEr {cider:.2f}  (beam {args.beam_size}, lp "
              f"{args.length_penalty:g})")
    delta = scores[args.runtime][0] - scores["prepared"][0]
    return print_verdict(abs(delta) <= args.target,
                         f"BLEU-4 {delta:+.2f} from the prepared features to {args.runtime}'s "
                         f"(target within {args.target:g})", load_before)


if __name__ == "__main__":
    sys.exit(main())
