"""Batched beam search against a per-image beam loop.

Ours: ``captioner.search.beam_search`` over all images at once (every image and its k beams
advance as one tensor step). Per-image loop: the same ``beam_search`` called on one image at a
time (batch size 1), which is what a search without batching across images costs. Same decoder,
same features, same run; the script checks that both return the same captions.

The decoder is untrained (random weights, seeded). Untrained logits are near uniform, so beams
would almost never pick ``<end>`` and every caption would run to ``max_len``. To get realistic
caption lengths, the decoder used here adds a bias to the ``<end>`` logit that ramps with the
step: ``slope * (t - target)``, where each image's target length (6-18 words, mean ~11) is read
from its own features, so it is the same for an image whatever batch it is decoded in. That is
O(B*k) work per step, negligible next to the step itself. Mean caption lengths of both paths are
reported.

Target: batched >= 5x the per-image loop in images/s.

Run by hand (never by CI; nothing here asserts a timing):

    .venv/bin/python benchmarks/beam_search.py
    .venv/bin/python benchmarks/beam_search.py --grid 7 --images 200 --beam 3
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch

from captioner.config import ModelConfig
from captioner.models.decoder import Decoder
from captioner.search import beam_search
from captioner.vocab import Vocabulary
from _common import print_verdict  # noqa: E402  (benchmarks/ is on sys.path)

TARGET = 5.0


class EndRampDecoder(Decoder):
    """An untrained decoder whose ``<end>`` logit gets ``slope * (t - target_i)`` at step t,
    target_i = clamp(round(11 + 3 * features_i[0, 0]), 6, 18) (features are standard normal).
    It also counts the rows (image x beam) every ``step`` call computes."""

    slope = 4.0
    row_steps = 0

    def init(self, features, generator=None):
        self._t = 0
        return super().init(features, generator)

    def step(self, features, projected, state, words, generator=None):
        out = super().step(features, projected, state, words, generator)
        if self.slope:
            target = (11 + 3 * features[:, 0, 0]).round().clamp(6, 18)  # per image
            target = target.repeat_interleave(len(words) // len(features))  # per beam row
            out.logits[:, Vocabulary.end_id] += self.slope * (self._t - target)
        self._t += 1
        self.row_steps += len(words)
        return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--grid", type=int, default=14, help="feature grid side: 14 (P=196) or 7 (P=49)")
    p.add_argument("--feature-dim", type=int, default=512)
    p.add_argument("--vocab", type=int, default=3000)
    p.add_argument("--max-len", type=int, default=20)
    p.add_argument("--batch", type=int, default=0,
                   help="images per batched beam_search call (0: all at once)")
    p.add_argument("--no-end-bias", action="store_true",
                   help="plain untrained decoder (captions mostly run to max_len)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--repeat", type=int, default=3,
                   help="time each path this many times and report the median")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    args = p.parse_args()
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    config = ModelConfig(vocab_size=args.vocab, grid_size=args.grid, feature_dim=args.feature_dim)
    device = torch.device(args.device)
    decoder = EndRampDecoder(config).eval().to(device)
    if args.no_end_bias:
        decoder.slope = 0.0
    gen = torch.Generator().manual_seed(args.seed)
    features = torch.randn(args.images, args.grid ** 2, args.feature_dim, generator=gen).to(device)
    batch = args.batch or args.images

    def batched():
        out = []
        for i in range(0, args.images, batch):
            out += beam_search(decoder, features[i: i + batch], args.beam, args.max_len)
        return out

    def per_image():
        return [beam_search(decoder, features[i: i + 1], args.beam, args.max_len)[0]
                for i in range(args.images)]

    beam_search(decoder, features[:2], args.beam, args.max_len)  # warm-up
    timings, cpu, results, row_steps = {}, {}, {}, {}
    for name, fn in (("batched beam_search", batched), ("per-image loop (batch 1)", per_image)):
        walls, cpus = [], []
        for _ in range(args.repeat):
            decoder.row_steps = 0
            t0, c0 = time.perf_counter(), time.process_time()
            results[name] = fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
        timings[name], cpu[name] = statistics.median(walls), statistics.median(cpus)
        print(f"{name}: wall s per run {', '.join(f'{w:.2f}' for w in walls)}")
        row_steps[name] = decoder.row_steps

    ours, loop = results.values()
    tokens_ours = [h[0].tokens for h in ours]
    tokens_loop = [h[0].tokens for h in loop]
    same = sum(a == b for a, b in zip(tokens_ours, tokens_loop))
    first = min(5, args.images)
    assert tokens_ours[:first] == tokens_loop[:first], "batched and per-image captions differ"
    ratio = (args.images / timings["batched beam_search"]) / \
        (args.images / timings["per-image loop (batch 1)"])

    print("beam search: batched vs per-image loop")
    print(f"config: images={args.images} beam={args.beam} P={args.grid ** 2} "
          f"({args.grid}x{args.grid}) D={args.feature_dim} hidden={config.hidden_dim} "
          f"embed={config.embed_dim} attention={config.attention_dim} vocab={args.vocab} "
          f"max_len={args.max_len} batched call size={batch}; median of {args.repeat} runs; "
          "untrained decoder, "
          f"{'no <end> bias' if args.no_end_bias else f'<end> ramp slope {decoder.slope}'}"
          f"; device={torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}"
          f" threads={args.threads} cores={os.cpu_count()} torch={torch.__version__} "
          f"python={platform.python_version()}")
    print(f"captions identical: {same}/{args.images} (first {first} asserted)")
    print(f"{'path':<28}{'wall s':>8}{'images/s':>10}{'cpu s':>8}{'mean words':>12}{'ended':>7}"
          f"{'row-steps':>11}")
    for name, hyps in results.items():
        lengths = [len(h[0].tokens) for h in hyps]
        ended = sum(h[0].finished for h in hyps)
        print(f"{name:<28}{timings[name]:>8.2f}{args.images / timings[name]:>10.1f}"
              f"{cpu[name]:>8.2f}{sum(lengths) / len(lengths):>12.1f}{ended:>7}"
              f"{row_steps[name]:>11}")
    print("row-steps: image x beam rows summed over decoder.step calls (the decoder's work); "
          "cpu s: this process's CPU time (all threads)")
    cpu_ratio = cpu["per-image loop (batch 1)"] / cpu["batched beam_search"]
    print(f"ratio by wall time {ratio:.2f}x, by CPU time {cpu_ratio:.2f}x (with other processes on "
          "the cores, CPU time is the steadier of the two at --threads 1)")
    print_verdict(ratio >= TARGET, f"batched is {ratio:.2f}x the per-image loop "
                  f"(target >= {TARGET}x)", load_before)
    return 0


if __name__ == "__main__":
    sys.exit(main())
