"""Decoder training throughput: ours against sgrvinod's tutorial decoder, at the same sizes.

Ours: ``captioner.models.decoder.Decoder`` (soft attention, gate, deep output, dropout 0.5)
trained as ``captioner train`` trains it: teacher-forced forward, ``caption_losses``
(cross-entropy + the doubly stochastic term, alpha_c 1), backward, gradient norm clipped at 5,
Adam. Reference: ``sgrvinod_decoder.py`` (the tutorial's ``DecoderWithAttention`` and its
``train`` step: per-word feature projection, per-word output layer, shrinking batch, packed
cross-entropy + doubly stochastic term, gradients clamped at 5, Adam). Same batch, same sizes,
in one process: at each ``--threads`` count (``torch.set_num_threads``, one after the other),
the two train step by step in turn, so a busy neighbour slows both alike. Each step is timed by
wall clock and by this process's CPU time (all threads); the median over ``--iters`` is
reported.

Target: ours >= 3x the reference's captions/s at every thread count (wall-clock medians).

Run by hand (never by CI; nothing here asserts a timing):

    .venv/bin/python benchmarks/decoder_vs_reference.py                # threads 1 and 2
    .venv/bin/python benchmarks/decoder_vs_reference.py --threads 1 --iters 9

Exit status 1 when the verdict is MISS.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

import captioner
from captioner.config import ModelConfig
from captioner.models.decoder import Decoder
from captioner.objectives import caption_losses
from _common import print_verdict  # noqa: E402  (benchmarks/ is on sys.path)
from decoder_throughput import make_batch  # noqa: E402  (the same caption lengths)
from sgrvinod_decoder import ReferenceDecoder, reference_train_step  # noqa: E402

TARGET = 3.0


def ours_train_step(model: Decoder, optimizer, alpha_c: float, features, captions, lengths
                    ) -> float:
    """``captioner train``'s step for a soft-attention decoder on precomputed features: what
    ``Likelihood.loss`` does (``Objective._forward``: the decoder on the batch's captions with
    their image index, then its logits made float32) and the trainer's backward, clip and
    Adam step."""
    out = model(features, captions, lengths, image_index=torch.arange(len(captions)))
    out.logits = out.logits.float()
    total = sum(caption_losses(out, alpha_c).values())
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    optimizer.step()
    return float(total.detach())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=64, help="captions per batch")
    p.add_argument("--grid", type=int, default=14, help="feature grid side (P = grid^2)")
    p.add_argument("--feature-dim", type=int, default=512)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--embed", type=int, default=256)
    p.add_argument("--attention-dim", type=int, default=256)
    p.add_argument("--vocab", type=int, default=5000)
    p.add_argument("--min-words", type=int, default=6)
    p.add_argument("--max-words", type=int, default=22)
    p.add_argument("--iters", type=int, default=5, help="timed training steps per decoder")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", default="1,2", help="thread counts, comma-separated")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0

    torch.manual_seed(args.seed)
    config = ModelConfig(vocab_size=args.vocab, grid_size=args.grid, feature_dim=args.feature_dim,
                         embed_dim=args.embed, hidden_dim=args.hidden,
                         attention_dim=args.attention_dim, attention="soft", dropout=0.5)
    ours = Decoder(config).train()
    reference = ReferenceDecoder(args.feature_dim, args.embed, args.hidden, args.attention_dim,
                                 args.vocab, dropout=0.5).train()
    features, captions, lengths, words = make_batch(
        args.batch, args.grid ** 2, args.feature_dim, args.vocab, args.min_words, args.max_words,
        args.seed)
    steps = {
        "ours": lambda opt: ours_train_step(ours, opt, config.alpha_c, features, captions,
                                            lengths),
        "reference": lambda opt: reference_train_step(reference, opt, features, captions,
                                                      lengths),
    }
    optims = {"ours": torch.optim.Adam(ours.parameters(), lr=4e-4),
              "reference": torch.optim.Adam(reference.parameters(), lr=4e-4)}

    rows, ratios, losses = [], {}, {k: [] for k in steps}
    for n in threads:
        torch.set_num_threads(n)
        wall = {k: [] for k in steps}
        cpu = {k: [] for k in steps}
        for it in range(args.warmup + args.iters):
            for k, step in steps.items():
                t0, c0 = time.perf_counter(), time.process_time()
                losses[k].append(step(optims[k]))
                if it >= args.warmup:
                    wall[k].append(time.perf_counter() - t0)
                    cpu[k].append(time.process_time() - c0)
        med = {k: statistics.median(v) for k, v in wall.items()}
        med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
        ratios[n] = (med["reference"] / med["ours"], med_cpu["reference"] / med_cpu["ours"])
        for k in steps:
            rows.append((n, k, med[k], args.batch / med[k], med_cpu[k], wall[k]))
    for k, ls in losses.items():
        assert all(math.isfinite(x) for x in ls), f"{k}: loss not finite: {ls}"

    real_steps = int((words + 1).sum())
    print("decoder training throughput, ours against sgrvinod's tutorial decoder "
          "(forward + loss + backward + clip + Adam)")
    print(f"config: batch={args.batch} captions, P={args.grid ** 2} ({args.grid}x{args.grid}), "
          f"D={args.feature_dim}, hidden={args.hidden}, embed={args.embed}, "
          f"attention={args.attention_dim}, vocab={args.vocab}, soft attention, dropout 0.5, "
          f"alpha_c 1.0, Adam lr 4e-4, clip 5 (ours: norm; reference: each element); "
          f"threads={args.threads} in one process, cores={os.cpu_count()}; "
          f"warmup={args.warmup} iters={args.iters} (median); torch={torch.__version__} "
          f"python={platform.python_version()}; captioner from "
          f"{Path(captioner.__file__).resolve().parents[1]}")
    print(f"captions: words {words.min()}-{words.max()} mean {words.mean():.1f} (6 + Gamma(2, 2.5) "
          f"clipped to [{args.min_words}, {args.max_words}]); both compute {real_steps} "
          f"caption-steps; first loss ours {losses['ours'][0]:.3f}, "
          f"reference {losses['reference'][0]:.3f}")
    print(f"{'threads':>7}  {'decoder':<11}{'s/step':>9}{'captions/s':>12}{'cpu s/step':>12}"
          "   all steps (wall s)")
    for n, k, m, cps, c, ts in rows:
        print(f"{n:>7}  {k:<11}{m:>9.3f}{cps:>12.1f}{c:>12.3f}   "
              + ", ".join(f"{x:.3f}" for x in ts))
    for n, (by_wall, by_cpu) in ratios.items():
        print(f"threads {n}: ours is {by_wall:.2f}x the reference by wall time, "
              f"{by_cpu:.2f}x by CPU time")
    passed = all(r >= TARGET for r, _ in ratios.values())
    print_verdict(passed, ", ".join(f"{r:.2f}x at {n} thread{'s' if n > 1 else ''}"
                                    for n, (r, _) in ratios.items())
                  + f" (target >= {TARGET}x at each)", load_before)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
