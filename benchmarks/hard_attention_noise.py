"""How noisy is hard attention's REINFORCE estimator, and what would a better baseline buy?

Hard attention (section 4.1) trains its attention with the score-function estimator
``lambda_r (log p(y | s, a) - b) d log p(s | a) / dW``: the reward of a sampled sequence of
locations is the whole caption's log-likelihood, and ``b`` is one moving-average number for
every caption. This script takes a trained hard-attention checkpoint and one batch of its
prepared data, draws ``--draws`` location sequences for the same captions (dropout off, so
only the locations vary), and reports

* how the caption log-likelihood spreads across captions (what a single scalar baseline leaves
  in every advantage) against how it spreads across location draws of one caption (the part
  that says anything about the locations);
* for each baseline, the REINFORCE gradient of the attention's parameters over the draws: the
  norm of its mean, the root of its total variance, and their ratio squared (the signal-to-noise
  ratio of one draw). Baselines: the checkpoint's moving average (what training uses), the
  batch's mean, each caption's log-likelihood under the expected context (one extra
  deterministic pass: what ``--hard-baseline expected`` trains with), and each caption's mean
  over the other draws (leave-one-out, as self-critical training does).

Run by hand on a trained model (never by CI):

    .venv/bin/python benchmarks/hard_attention_noise.py --model runs/hard/best.safetensors \\
        --data data/flickr8k
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from torch import nn

from captioner.checkpoint import load_model
from captioner.data.dataset import PreparedData, collate
from captioner.losses import caption_log_likelihood


def _gradient(surrogate: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    grads = torch.autograd.grad(surrogate, params, retain_graph=True)
    return torch.cat([g.flatten() for g in grads])


def _noise(grads: list[torch.Tensor]) -> tuple[float, float, float]:
    """|mean|, sqrt(total variance) and their squared ratio over the draws' gradients."""
    g = torch.stack(grads)
    mean = g.mean(0)
    var = ((g - mean) ** 2).sum(1).mean() * len(g) / (len(g) - 1)
    return float(mean.norm()), float(var.sqrt()), float(mean.norm() ** 2 / var)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a hard-attention checkpoint")
    p.add_argument("--data", required=True, help="the prepared folder it was trained on")
    p.add_argument("--split", default="train")
    p.add_argument("--images", type=int, default=32, help="images in the batch (each with all "
                   "its captions)")
    p.add_argument("--draws", type=int, default=8, help="location sequences drawn per caption")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, _, _ = load_model(args.model)
    if model.config.attention != "hard":
        raise SystemExit(f"{args.model}: {model.config.attention} attention; this measures hard")
    data = PreparedData(args.data)
    dataset = data.dataset(args.split, model.config)
    batch = collate([dataset[i] for i in range(args.images)])
    with torch.no_grad():
        features = model.features(batch.inputs, batch.encoded)
    model.train()
    for m in model.modules():  # only the locations vary between draws
        if isinstance(m, nn.Dropout):
            m.eval()
    attention = model.decoder.attention
    params = [q for q in attention.parameters() if q.requires_grad]
    generator = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()

    def forward(expected: bool):
        attention.options.expected_prob = 1.0 if expected else 0.0  # the per-batch coin
        out = model.decoder(features, batch.captions, batch.lengths, generator, batch.image_index)
        ll = caption_log_likelihood(out.logits, out.targets, out.mask)  # (N,)
        return ll, (out.extras["log_prob"] * out.mask).sum(1), out.mask.sum()

    with torch.no_grad():
        expected_ll, _, _ = forward(expected=True)
    draws = [forward(expected=False) for _ in range(args.draws)]
    lls = torch.stack([ll.detach() for ll, _, _ in draws])  # (K, N)
    n_words = draws[0][2]
    baselines = {
        "moving average (training's)": lambda k: attention.baseline.expand_as(lls[k]),
        "batch mean": lambda k: lls[k].mean().expand_as(lls[k]),
        "caption, expected context": lambda k: expected_ll,
        "caption, other draws": lambda k: (lls.sum(0) - lls[k]) / (len(lls) - 1),
    }
    rows = []
    for name, baseline in baselines.items():
        grads = [_gradient(-((ll.detach() - baseline(k)) * log_p_s).sum() / n_words, params)
                 for k, (ll, log_p_s, _) in enumerate(draws)]
        rows.append((name, *_noise(grads)))
    seconds = time.perf_counter() - start

    print(f"model {args.model}: {model.config.encoder} {model.config.grid_size}x"
          f"{model.config.grid_size}, {args.images} images = {len(batch.captions)} captions of "
          f"{args.split}, {args.draws} location draws each; {platform.processor() or 'cpu'}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {seconds:.0f} s")
    print(f"caption log-likelihood: mean {float(lls.mean()):.2f}; std across captions "
          f"{float(lls.mean(0).std()):.2f}; std across draws of one caption "
          f"{float(lls.std(0).mean()):.2f}; expected context {float(expected_ll.mean()):.2f}; "
          f"training's baseline {float(attention.baseline):.2f}")
    print(f"{'baseline':<30} {'|mean grad|':>12} {'sqrt(var)':>12} {'SNR of one draw':>16}")
    for name, mean, std, snr in rows:
        print(f"{name:<30} {mean:>12.4g} {std:>12.4g} {snr:>16.4g}")


if __name__ == "__main__":
    main()
