"""Teacher-forced training throughput of the Decoder against a naive decoder.

Ours: ``captioner.models.decoder.Decoder.forward`` - projects the encoder features once per
image (``attention.project``) and runs each step only on the captions still going (sorted,
shrinking batch). Naive (defined here, same modules and weights): re-projects the features at
every step inside the time loop and runs every step on the full batch padded to the longest
caption, the padding masked out of the loss. Both train with the same loss
(``captioner.objectives.caption_losses``: cross-entropy + doubly stochastic term), backward,
gradient clipping at 5 (as ``captioner train``) and an Adam step, on the same batch in the same
run. Before timing, the script checks (assert) that both give the same loss and logits on that
batch in eval mode (dropout off), so the two compute the same function.

Target: ours >= 1.5x naive captions/s on CPU.

Run by hand (never by CI; nothing here asserts a timing):

    .venv/bin/python benchmarks/decoder_throughput.py
    .venv/bin/python benchmarks/decoder_throughput.py --batch 32 --iters 5 --grid 7

Exit status 1 when the verdict is MISS.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch

from captioner.config import ModelConfig
from captioner.objectives import caption_losses
from captioner.models.decoder import Decoder, DecoderOutput, DecoderState
from _common import print_verdict  # noqa: E402  (benchmarks/ is on sys.path)

TARGET = 1.5


class NaiveDecoder(Decoder):
    """The same decoder (same modules, same ``step``), decoded the textbook way: the feature
    projection W_a a_i is recomputed at every step and every step runs on the whole batch,
    padded to the longest caption."""

    def forward(self, features, captions, lengths, generator=None) -> DecoderOutput:
        steps = lengths.to(features.device) - 1
        b, t_max = len(captions), int(steps.max())
        self.attention.reset(b, generator)
        mean = features.mean(1)
        state = DecoderState(self.init_h(mean), self.init_c(mean))
        logits, alphas = [], []
        for t in range(t_max):
            projected = self.attention.project(features)  # every step, not once per image
            out = self.step(features, projected, state, captions[:, t], generator)
            logits.append(out.logits)
            alphas.append(out.alpha)
            state = out.state
        mask = torch.arange(t_max, device=steps.device)[None] < steps[:, None]
        # zero the padded positions like Decoder.forward does (the loss masks them anyway)
        alpha = torch.stack(alphas, 1) * mask[..., None]
        return DecoderOutput(torch.stack(logits, 1) * mask[..., None], captions[:, 1: t_max + 1],
                             mask, alpha)


def caption_lengths(n: int, rng: np.random.Generator, lo: int, hi: int) -> np.ndarray:
    """Words per caption, COCO/Flickr-like: 6 + Gamma(2, 2.5), rounded, clipped to [lo, hi]
    (mean ~11, right-skewed)."""
    return np.clip(np.rint(6 + rng.gamma(2.0, 2.5, n)), lo, hi).astype(np.int64)


def make_batch(n: int, p: int, d: int, vocab: int, lo: int, hi: int, seed: int):
    rng = np.random.default_rng(seed)
    words = caption_lengths(n, rng, lo, hi)
    lengths = torch.from_numpy(words + 2)  # <start> ... <end>
    captions = torch.zeros(n, int(lengths.max()), dtype=torch.long)
    for i, w in enumerate(words):
        captions[i, 0] = 1  # <start>
        captions[i, 1: w + 1] = torch.from_numpy(rng.integers(4, vocab, w))
        captions[i, w + 1] = 2  # <end>
    features = torch.from_numpy(rng.standard_normal((n, p, d), dtype=np.float32)).relu()
    return features, captions, lengths, words


def train_step(model, optimizer, config, features, captions, lengths) -> float:
    out = model(features, captions, lengths)
    total = sum(caption_losses(out, config.alpha_c).values())
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
    p.add_argument("--iters", type=int, default=3, help="timed training steps per decoder")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    config = ModelConfig(vocab_size=args.vocab, grid_size=args.grid, feature_dim=args.feature_dim,
                         embed_dim=args.embed, hidden_dim=args.hidden,
                         attention_dim=args.attention_dim)
    ours = Decoder(config)
    naive = NaiveDecoder(config)
    naive.load_state_dict(ours.state_dict())
    features, captions, lengths, words = make_batch(
        args.batch, args.grid ** 2, args.feature_dim, args.vocab, args.min_words, args.max_words,
        args.seed)

    # fairness check: same function of the same weights (eval mode: dropout off)
    ours.eval(), naive.eval()
    with torch.no_grad():
        a, b = ours(features, captions, lengths), naive(features, captions, lengths)
        loss_a, loss_b = caption_losses(a, config.alpha_c), caption_losses(b, config.alpha_c)
    torch.testing.assert_close(a.logits[a.mask], b.logits[b.mask], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(a.alpha, b.alpha, rtol=1e-4, atol=1e-5)
    for k in loss_a:
        torch.testing.assert_close(loss_a[k], loss_b[k], rtol=1e-5, atol=1e-5)
    ours.train(), naive.train()

    results = {}
    # alternate the decoders step by step, so a busy neighbour slows both alike
    models = {"ours (project once, shrinking batch)": ours,
              "naive (project every step, padded)": naive}
    optims = {k: torch.optim.Adam(m.parameters(), lr=4e-4) for k, m in models.items()}
    times = {k: [] for k in models}
    cpu = {k: [] for k in models}
    for it in range(args.warmup + args.iters):
        for k, m in models.items():
            t0, c0 = time.perf_counter(), time.process_time()
            train_step(m, optims[k], config, features, captions, lengths)
            if it >= args.warmup:
                times[k].append(time.perf_counter() - t0)
                cpu[k].append(time.process_time() - c0)
    for k, ts in times.items():
        med = statistics.median(ts)
        results[k] = (med, args.batch / med, ts, statistics.median(cpu[k]))
    (_, ours_cps, _, ours_cpu), (_, naive_cps, _, naive_cpu) = results.values()
    ratio = ours_cps / naive_cps

    t_max = int(words.max()) + 1
    real_steps = int((words + 1).sum())
    print("decoder teacher-forced training throughput (forward + backward + clip + Adam)")
    print(f"config: batch={args.batch} captions, P={args.grid ** 2} ({args.grid}x{args.grid}), "
          f"D={args.feature_dim}, hidden={args.hidden}, embed={args.embed}, "
          f"attention={args.attention_dim}, vocab={args.vocab}, soft attention, gate on, "
          f"dropout 0.5, alpha_c 1.0; threads={args.threads} cores={os.cpu_count()}; "
          f"warmup={args.warmup} iters={args.iters} (median), "
          f"torch={torch.__version__} python={platform.python_version()}")
    print(f"captions: words {words.min()}-{words.max()} mean {words.mean():.1f} (6 + Gamma(2, 2.5) "
          f"clipped to [{args.min_words}, {args.max_words}]); steps computed: "
          f"ours {real_steps} caption-steps, naive {args.batch * t_max} "
          f"({args.batch * t_max / real_steps:.2f}x)")
    print(f"eval-mode check: loss ours {float(sum(loss_a.values())):.6f} naive "
          f"{float(sum(loss_b.values())):.6f} (allclose: logits, alpha, every loss term)")
    print(f"{'decoder':<40}{'s/step':>9}{'captions/s':>12}{'cpu s/step':>12}   all steps (wall s)")
    for k, (med, cps, ts, c) in results.items():
        print(f"{k:<40}{med:>9.3f}{cps:>12.1f}{c:>12.3f}   " + ", ".join(f"{x:.3f}" for x in ts))
    print(f"ratio by wall time {ratio:.2f}x, by CPU time {naive_cpu / ours_cpu:.2f}x "
          "(cpu: this process's CPU time, all threads; steadier when other processes share "
          "the cores, at --threads 1)")
    print_verdict(ratio >= TARGET, f"ours is {ratio:.2f}x naive (target >= {TARGET}x)",
                  load_before)
    return 0 if ratio >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
