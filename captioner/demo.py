"""`captioner demo`: the whole pipeline on the built-in shapes data in about five CPU minutes."""

from __future__ import annotations

import time
from pathlib import Path

from .config import ModelConfig, TrainConfig

# A small model that learns shapes captions on two CPU cores in minutes. The doubly stochastic
# term is off: it pushes each location towards a total attention of 1 over the caption, while a
# shapes caption is about 1-3 objects covering a tenth of the image (measured: with it on, the
# attention stays near uniform).
DEMO_MODEL = ModelConfig(vocab_size=0, encoder="tiny", grid_size=8, embed_dim=128, hidden_dim=256,
                         attention_dim=128, dropout=0.2, alpha_c=0.0)
DEMO_TRAIN = TrainConfig(epochs=100, batch_size=32, lr=2e-3, lr_patience=1, early_stop=4,
                         val_beam_size=1, save_every=100, seed=0)


def run_demo(home: str | Path | None = None, minutes: float = 5.0, attention: str = "soft",
             fresh: bool = False, counts: dict[str, int] | None = None, figures: int = 4) -> dict:
    """Prepare shapes, train, evaluate on test, caption and draw a few test images; print where
    everything is. Returns the test metrics."""
    from dataclasses import replace

    from .data.dataset import PreparedData
    from .data.prepare import prepare
    from .data.shapes import DEFAULT_COUNTS, generate
    from .decoding import DecodeOptions
    from .evaluate import evaluate_checkpoint
    from .inference import Captioner, captioner_home
    from .train import resume, train

    root = Path(home) if home else captioner_home()
    demo = root / "demo"
    # the soft model is the default one `caption` uses; other kinds get runs of their own
    suffix = "" if attention == "soft" else f"-{attention}"
    data_dir, run_dir, fig_dir = demo / "data", demo / f"run{suffix}", demo / f"figures{suffix}"
    t0 = time.perf_counter()
    print(f"[1/4] shapes data -> {data_dir}")
    if fresh or not (data_dir / "meta.json").exists():
        records = generate(data_dir, counts or DEFAULT_COUNTS, seed=0, progress=True)
        print("      " + prepare(records, data_dir, "shapes", min_count=1).summary())
    best = run_dir / "best.safetensors"
    if fresh and run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    if best.exists():
        print(f"[2/4] using the trained model {best} (--fresh retrains)")
    else:
        print(f"[2/4] training {attention} attention for up to {minutes:g} min -> {run_dir}")
        if (run_dir / "last.safetensors").exists():  # an interrupted demo goes on
            result = resume(run_dir, train={"max_minutes": minutes})
        else:
            cfg = replace(DEMO_TRAIN, data=str(data_dir), out=str(run_dir), max_minutes=minutes)
            result = train(replace(DEMO_MODEL, attention=attention), cfg)
        print(f"      {result.step} steps, {result.epochs_text}, best val "
              f"{result.select_by} {result.best_score:.3f}")
    print("[3/4] evaluating on the test split (beam 3)")
    cap = Captioner.load(best)
    data = PreparedData(data_dir)
    metrics = evaluate_checkpoint(cap.model, cap.vocab, data, "test", DecodeOptions(beam_size=3),
                                  results_path=demo / f"test_results{suffix}.json",
                                  metrics_path=demo / f"test_metrics{suffix}.json", progress=False)
    for k in ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "coco/CIDEr", "attention_correctness",
              "attention_correctness_uniform"):
        if k in metrics:
            print(f"      {k:<30} {metrics[k]:.3f}")
    print(f"[4/4] captions and attention figures -> {fig_dir}")
    _figures(cap, data, fig_dir, figures)
    print(f"done in {(time.perf_counter() - t0) / 60:.1f} min. Model: {best}\n"
          f"  captioner caption {data.image_path(data.manifest('test')[0])}\n"
          f"  captioner attend {data.image_path(data.manifest('test')[0])} -o attention.png")
    return metrics


def _figures(cap, data, fig_dir: Path, count: int) -> None:
    """The first ``count`` test images' captions and attention figures."""
    from .visualize import caption_figure

    for entry in data.manifest("test")[:count]:
        path = data.image_path(entry)
        out = fig_dir / f"{entry['image_id']}.png"
        c = caption_figure(cap, path, out, title=entry["image_id"])
        print(f"      {path.name}: {c.text}\n        truth: {entry['captions'][0]}\n"
              f"        figure: {out}")
