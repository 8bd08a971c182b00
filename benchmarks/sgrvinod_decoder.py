"""The reference decoder: sgrvinod's "PyTorch Tutorial to Image Captioning", rewritten here.

Source: github.com/sgrvinod/a-PyTorch-Tutorial-to-Image-Captioning, ``models.py``
(``Attention``, ``DecoderWithAttention``) and ``train.py`` (``train``), at commit 01f749f. This is
a re-implementation of what that code computes, in our words and at our sizes, kept to its
algorithm so its speed is the tutorial's:

* the attention MLP e = w^T relu(W_a a_i + W_h h) and alpha = softmax(e); ``W_a a_i`` (its
  ``encoder_att``) is recomputed at every word, inside the time loop;
* the gate is a vector, sigmoid(f_beta(h)) of the context's size (the paper's is a scalar);
* z = sum_i alpha_i a_i as ``(features * alpha[..., None]).sum(1)``;
* ``LSTMCell(cat([E y_{t-1}, gate * z]), (h, c))`` on the captions still going (sorted by
  length, a shrinking batch);
* scores = fc(dropout(h)) at every word (no deep output layer), written into padded
  (B, T, V) and (B, T, P) buffers;
* the loss: cross-entropy over the packed (``pack_padded_sequence``) scores and targets plus
  alpha_c * ((1 - sum_t alpha_t)^2).mean(); ``clip_gradient`` clamps every gradient element to
  [-5, 5]; Adam.

Used by ``decoder_vs_reference.py``; never by the library or the tests.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence


class ReferenceAttention(nn.Module):
    """The tutorial's attention network: relu MLP scores, softmax, weighted sum."""

    def __init__(self, feature_dim: int, hidden_dim: int, attention_dim: int):
        super().__init__()
        self.encoder_att = nn.Linear(feature_dim, attention_dim)
        self.decoder_att = nn.Linear(hidden_dim, attention_dim)
        self.full_att = nn.Linear(attention_dim, 1)

    def forward(self, features: torch.Tensor, hidden: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        projected = self.encoder_att(features)  # (b, P, A), at every call
        e = self.full_att(torch.relu(projected + self.decoder_att(hidden)[:, None])).squeeze(2)
        alpha = torch.softmax(e, dim=1)  # (b, P)
        return (features * alpha[..., None]).sum(1), alpha  # (b, D), (b, P)


class ReferenceDecoder(nn.Module):
    """The tutorial's ``DecoderWithAttention`` (one LSTM layer)."""

    def __init__(self, feature_dim: int, embed_dim: int, hidden_dim: int, attention_dim: int,
                 vocab_size: int, dropout: float = 0.5):
        super().__init__()
        self.vocab_size = vocab_size
        self.attention = ReferenceAttention(feature_dim, hidden_dim, attention_dim)
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.dropout = nn.Dropout(dropout)
        self.decode_step = nn.LSTMCell(embed_dim + feature_dim, hidden_dim)
        self.init_h = nn.Linear(feature_dim, hidden_dim)
        self.init_c = nn.Linear(feature_dim, hidden_dim)
        self.f_beta = nn.Linear(hidden_dim, feature_dim)  # a gate per feature channel
        self.fc = nn.Linear(hidden_dim, vocab_size)
        # the tutorial's init_weights
        self.embedding.weight.data.uniform_(-0.1, 0.1)
        self.fc.bias.data.fill_(0)
        self.fc.weight.data.uniform_(-0.1, 0.1)

    def forward(self, features: torch.Tensor, captions: torch.Tensor, lengths: torch.Tensor):
        """``features`` (B, P, D), ``captions`` (B, L) = <start> w.. <end> <pad>.., ``lengths``
        (B,) counting <start> and <end> -> scores (B, T, V), sorted captions, decode lengths,
        alphas (B, T, P), sort order."""
        b, p = features.shape[:2]
        lengths, order = lengths.sort(dim=0, descending=True)
        features, captions = features[order], captions[order]
        embeddings = self.embedding(captions)  # (B, L, M)
        mean = features.mean(dim=1)
        h, c = self.init_h(mean), self.init_c(mean)
        decode_lengths = (lengths - 1).tolist()
        t_max = max(decode_lengths)
        predictions = torch.zeros(b, t_max, self.vocab_size, device=features.device)
        alphas = torch.zeros(b, t_max, p, device=features.device)
        for t in range(t_max):
            bt = sum(n > t for n in decode_lengths)
            z, alpha = self.attention(features[:bt], h[:bt])
            z = torch.sigmoid(self.f_beta(h[:bt])) * z
            h, c = self.decode_step(torch.cat([embeddings[:bt, t], z], dim=1), (h[:bt], c[:bt]))
            predictions[:bt, t] = self.fc(self.dropout(h))
            alphas[:bt, t] = alpha
        return predictions, captions, decode_lengths, alphas, order


def reference_train_step(decoder: ReferenceDecoder, optimizer: torch.optim.Optimizer,
                         features: torch.Tensor, captions: torch.Tensor, lengths: torch.Tensor,
                         alpha_c: float = 1.0, grad_clip: float = 5.0) -> float:
    """One step of the tutorial's ``train``: forward, packed cross-entropy + the doubly
    stochastic term, backward, every gradient element clamped to [-grad_clip, grad_clip],
    optimizer step. Returns the loss."""
    scores, sorted_captions, decode_lengths, alphas, _ = decoder(features, captions, lengths)
    targets = sorted_captions[:, 1:]
    scores = pack_padded_sequence(scores, decode_lengths, batch_first=True).data
    targets = pack_padded_sequence(targets, decode_lengths, batch_first=True).data
    loss = F.cross_entropy(scores, targets)
    loss = loss + alpha_c * ((1.0 - alphas.sum(dim=1)) ** 2).mean()
    optimizer.zero_grad()
    loss.backward()
    for group in optimizer.param_groups:  # the tutorial's utils.clip_gradient
        for param in group["params"]:
            if param.grad is not None:
                param.grad.data.clamp_(-grad_clip, grad_clip)
    optimizer.step()
    return float(loss.detach())
