"""Fast teacher forcing is the step-by-step decoder of the paper, to float rounding.

``Decoder.forward`` is arranged for speed: each step runs on the captions still going, what does
not depend on the recurrence (the embeddings' share of the LSTM's input gates, the deep output
layer and the word layer) is computed once for all words outside the time loop, the recurrent
weights' gradients are one product over all steps, the loss reads packed logits of the real
words, and the attention's scores and context have hand-written backwards that work in
cache-sized blocks. These tests pin that it stays the function ``step`` (what beam search and
sampling run) defines: the same logits, alphas, loss terms and gradients for every parameter
and the features, for soft and hard (expected context) attention, with and without the gate,
and with the tanh deep output; and that a checkpoint written before these changes loads and
gives the logits and captions it gave then.
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config

from captioner.checkpoint import load_model, save_checkpoint
from captioner.losses import caption_log_likelihood, reinforce
from captioner.models import build_model
from captioner.models.attention import Attention, SoftAttention
from captioner.models.decoder import Decoder, DecoderOutput
from captioner.objectives import caption_losses
from captioner.vocab import Vocabulary


def _captions(vocab=20, n=5, seed=0):
    """``n`` captions of 1-6 words (<start> w.. <end> <pad>..), lengths counting both ends."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([3, 8, 5, 8, 4, 6, 7][:n])
    caps = torch.zeros(n, int(lengths.max()), dtype=torch.long)
    for i, n_tokens in enumerate(lengths.tolist()):
        caps[i, 0], caps[i, n_tokens - 1] = 1, 2
        caps[i, 1: n_tokens - 1] = torch.randint(4, vocab, (n_tokens - 2,), generator=g)
    return caps, lengths


def stepped(decoder: Decoder, features, captions, lengths, generator=None) -> DecoderOutput:
    """The definition: every caption through every word with ``step``, padding included, the
    positions past a caption's end zeroed (``mask`` False there)."""
    projected, state = decoder.init(features, generator)
    t_max = int(lengths.max()) - 1
    mask = torch.arange(t_max)[None] < (lengths - 1)[:, None]  # (B, T)
    logits, alphas, extras = [], [], {}
    for t in range(t_max):
        out = decoder.step(features, projected, state, captions[:, t], generator)
        state = out.state
        logits.append(out.logits), alphas.append(out.alpha)
        for k, v in out.extras.items():
            extras.setdefault(k, []).append(v)
    return DecoderOutput(torch.stack(logits, 1) * mask[..., None], captions[:, 1: t_max + 1],
                         mask, torch.stack(alphas, 1) * mask[..., None],
                         {k: torch.stack(v, 1) * mask for k, v in extras.items()})


def _loss(out: DecoderOutput) -> torch.Tensor:
    """Every term training takes from a teacher-forced batch: cross-entropy, the doubly
    stochastic term, and (with extras) hard attention's REINFORCE and entropy terms."""
    terms = caption_losses(out, alpha_c=1.0, label_smoothing=0.1)
    if out.extras:
        ll = caption_log_likelihood(out.logits, out.targets, out.mask)
        terms.update(reinforce(ll, out.extras["log_prob"], out.extras["entropy"], out.mask,
                               torch.tensor(-3.0, dtype=ll.dtype), 0.1, 0.002))
    return sum(terms.values())


VARIANTS = {
    "soft": {},
    "soft without the gate": {"gate": False},
    "soft with the tanh deep output": {"deep_output": "tanh"},
    "hard, expected context": {"attention": "hard",
                               "attention_options": {"expected_prob": 1.0}},
}


@pytest.mark.parametrize("shared", [False, True], ids=["a caption per image",
                                                       "images with several captions"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_teacher_forcing_is_stepping_every_word_in_outputs_losses_and_gradients(variant,
                                                                               shared):
    options = dict(VARIANTS[variant])
    config = tiny_config(options.pop("attention", "soft"), feature_dim=12, **options)
    torch.manual_seed(0)
    decoder = Decoder(config).double().train()  # dropout 0: both passes see the same model
    caps, lengths = _captions()
    image_index = torch.tensor([0, 1, 0, 2, 1]) if shared else None
    features = torch.rand(3 if shared else 5, 16, 12, dtype=torch.double, requires_grad=True)
    params = [features, *decoder.parameters()]

    fast = decoder(features, caps, lengths, image_index=image_index)
    per_caption = features if image_index is None else features.index_select(0, image_index)
    slow = stepped(decoder, per_caption, caps, lengths)

    assert fast.packed is not None and slow.packed is None  # the loss reads different forms
    assert torch.equal(fast.mask, slow.mask) and torch.equal(fast.targets, slow.targets)
    torch.testing.assert_close(fast.logits, slow.logits, rtol=0, atol=1e-12)
    torch.testing.assert_close(fast.alpha, slow.alpha, rtol=0, atol=1e-12)
    assert fast.extras.keys() == slow.extras.keys() == ({"log_prob", "entropy"}
                                                        if "hard" in variant else set())
    for k in fast.extras:
        torch.testing.assert_close(fast.extras[k], slow.extras[k], rtol=0, atol=1e-12)
    fast_loss, slow_loss = _loss(fast), _loss(slow)
    torch.testing.assert_close(fast_loss, slow_loss, rtol=0, atol=1e-12)
    fast_grads = torch.autograd.grad(fast_loss, params, allow_unused=True)
    slow_grads = torch.autograd.grad(slow_loss, params, allow_unused=True)
    names = ["features", *(n for n, _ in decoder.named_parameters())]
    for name, a, b in zip(names, fast_grads, slow_grads):
        assert (a is None) == (b is None), name
        if a is not None:
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12, msg=name)
    assert fast_grads[0].abs().sum() > 0  # the features' gradient (a fine-tuned encoder's)

    with torch.no_grad():  # without gradients (a rerun, evaluation): the same outputs
        again = decoder(features, caps, lengths, image_index=image_index)
    torch.testing.assert_close(again.logits, fast.logits, rtol=0, atol=1e-12)
    torch.testing.assert_close(again.alpha, fast.alpha, rtol=0, atol=1e-12)


def test_a_graph_run_backward_again_gives_each_pass_its_own_gradients():
    """What a backward pass gathers across the steps (the recurrent weights' products, the
    features' and projections' rows) starts again in the next pass through the same graph,
    even after a pass that ran only part of it (``retain_graph``)."""
    torch.manual_seed(0)
    decoder = Decoder(tiny_config(feature_dim=12)).double().train()
    caps, lengths = _captions()
    features = torch.rand(5, 16, 12, dtype=torch.double, requires_grad=True)
    params = [features, *decoder.parameters()]
    loss = _loss(decoder(features, caps, lengths))
    torch.autograd.grad(loss, [decoder.attention.score.weight], retain_graph=True)  # a part
    again = torch.autograd.grad(loss, params)
    fresh = torch.autograd.grad(_loss(decoder(features, caps, lengths)), params)
    for a, b in zip(again, fresh):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_packed_logits_are_the_padded_logits_of_the_real_words():
    decoder = Decoder(tiny_config(feature_dim=12)).eval()
    caps, lengths = _captions()
    out = decoder(torch.rand(5, 16, 12), caps, lengths)
    p = out.packed
    assert len(p.logits) == int(out.mask.sum()) == int((lengths - 1).sum())
    assert out.mask[p.rows, p.steps].all()
    assert torch.equal(out.logits[p.rows, p.steps], p.logits)
    assert torch.equal(out.targets[p.rows, p.steps], p.targets)
    assert torch.all(out.logits[~out.mask] == 0)


@pytest.mark.parametrize("beams", [1, 3])
def test_scores_computed_in_cache_sized_blocks_train_as_the_papers_formula(beams, monkeypatch):
    """Training scores 2 images at a time (3 blocks, the last one short) into one reused
    buffer and computes the sigmoid again in the backward: every gradient is autograd's of
    the paper's w^T tanh(W_a a_i + W_h h) + c."""
    monkeypatch.setattr(Attention, "cpu_block_elements", 2 * beams * 7 * 4)
    torch.manual_seed(0)
    att = SoftAttention(6, 5, 4).double()
    feats = torch.randn(5, 7, 6, dtype=torch.double, requires_grad=True)
    hidden = torch.randn(5 * beams, 5, dtype=torch.double, requires_grad=True)
    upstream = torch.randn(5 * beams, 7, dtype=torch.double)
    inputs = [feats, hidden, *att.parameters()]

    def formula():
        h = att.hidden_proj(hidden).view(5, beams, 1, 4)
        scores = att.score(torch.tanh(att.project(feats)[:, None] + h)).view(5 * beams, 7)
        return torch.softmax(scores, -1)

    ours = att.weights(att.project(feats), hidden)
    torch.testing.assert_close(ours, formula(), rtol=0, atol=1e-12)
    for got, expected in zip(torch.autograd.grad((ours * upstream).sum(), inputs),
                             torch.autograd.grad((formula() * upstream).sum(), inputs)):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("beams", [1, 3])
def test_context_gradients_are_those_of_the_weighted_sum(beams):
    torch.manual_seed(0)
    alpha = torch.softmax(torch.randn(4 * beams, 7, dtype=torch.double), -1).requires_grad_()
    feats = torch.randn(4, 7, 6, dtype=torch.double, requires_grad=True)
    upstream = torch.randn(4 * beams, 6, dtype=torch.double)
    ours = Attention.context(alpha, feats)
    expected = (alpha.view(4, beams, 7, 1) * feats[:, None]).sum(2).view(4 * beams, 6)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-12)
    for got, want in zip(torch.autograd.grad((ours * upstream).sum(), [alpha, feats]),
                         torch.autograd.grad((expected * upstream).sum(), [alpha, feats])):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", ["soft", "hard"])
def test_teacher_forcing_trains_under_bfloat16_autocast(kind):
    """``--amp`` runs the decoder under autocast (bfloat16 on CUDA; here the CPU's): the
    hand-written backwards take the mixed dtypes, every parameter gets a gradient and the
    loss stays near float32's."""
    options = {"expected_prob": 0.0} if kind == "hard" else {}  # hard: sampled locations
    torch.manual_seed(0)
    decoder = Decoder(tiny_config(kind, feature_dim=12, attention_options=options)).train()
    caps, lengths = _captions()
    features = torch.rand(5, 16, 12)
    g = torch.Generator().manual_seed(0)
    plain = _loss(decoder(features, caps, lengths, g))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = decoder(features, caps, lengths, torch.Generator().manual_seed(0))
    assert out.packed.logits.dtype == torch.bfloat16 and out.logits.dtype == torch.float32
    loss = _loss(out)
    loss.backward()
    missing = [n for n, p in decoder.named_parameters() if p.grad is None or not p.grad.any()]
    assert missing == []
    assert abs(loss.item() - plain.item()) < 0.05 * abs(plain.item())


# --- a checkpoint written before the fast teacher forcing (commit 90bd0c3) -------------------

#: the decoder's tensors then (tiny_config(), soft attention): names and shapes
OLD_DECODER_TENSORS = {
    "attention.feature_proj.weight": (8, 128), "attention.feature_proj.bias": (8,),
    "attention.hidden_proj.weight": (8, 16), "attention.hidden_proj.bias": (8,),
    "attention.score.weight": (1, 8), "attention.score.bias": (1,),
    "embedding.weight": (20, 8), "init_h.0.weight": (16, 128), "init_h.0.bias": (16,),
    "init_c.0.weight": (16, 128), "init_c.0.bias": (16,), "f_beta.weight": (1, 16),
    "f_beta.bias": (1,), "lstm.weight_ih": (64, 136), "lstm.weight_hh": (64, 16),
    "lstm.bias_ih": (64,), "lstm.bias_hh": (64,), "L_h.weight": (8, 16), "L_h.bias": (8,),
    "L_z.weight": (8, 128), "L_z.bias": (8,), "L_o.weight": (20, 8), "L_o.bias": (20,),
}
#: what that code computed from the weights and inputs of ``_old_checkpoint`` (eval mode):
#: each caption's log-likelihood, caption 0's first 4 logits at its 4 words, caption 2's
#: alpha over the first 3 locations at its 4 positions, and greedy decoding with ``step``
OLD_LOG_LIKELIHOOD = [-12.020530700683594, -6.329507827758789, -13.923954010009766]
OLD_FIRST_LOGITS = [[-0.4327559173, -1.4732133150, -1.8569749593, -1.4044592380],
                    [0.5515800714, 0.1733257621, -0.2873120903, -0.6162443161],
                    [-0.0525402128, 0.0021014958, 0.0512169450, 0.0800829529],
                    [-0.6618808507, -0.4516122341, -0.0432124882, 0.3873243927]]
OLD_ALPHA = [[0.0737185403, 0.0669209882, 0.0590168163], [0.0686263740, 0.0658004507,
                                                           0.0606073774],
             [0.0716376602, 0.0662203654, 0.0597430653], [0.0, 0.0, 0.0]]
OLD_GREEDY = [[16, 16, 16], [14, 14, 14], [8, 17, 17], [14, 14, 14], [17, 17, 17],
              [14, 14, 14]]  # words at steps 1..6 of the 3 images


def _wave(shape, i):
    n = int(torch.tensor(shape).prod()) if shape else 1
    return (0.5 * torch.sin(0.7 * torch.arange(n, dtype=torch.float64) + i)).float().view(shape)


def _old_checkpoint(path):
    """A checkpoint with the old tensors' names and shapes, its decoder weights a fixed
    function of the name's rank (no RNG), written with ``save_checkpoint``."""
    model = build_model(tiny_config())
    weights = model.state_dict()
    decoder = {k[len("decoder."):]: v for k, v in weights.items() if k.startswith("decoder.")}
    assert {k: tuple(v.shape) for k, v in decoder.items()} == OLD_DECODER_TENSORS
    for i, name in enumerate(sorted(OLD_DECODER_TENSORS)):
        weights[f"decoder.{name}"] = _wave(OLD_DECODER_TENSORS[name], i)
    vocab = Vocabulary(["<pad>", "<start>", "<end>", "<unk>", *[f"w{i}" for i in range(16)]])
    save_checkpoint(path, model.config, vocab, weights)


def test_a_checkpoint_from_before_the_fast_path_loads_and_gives_the_same_logits(tmp_path):
    _old_checkpoint(tmp_path / "old.safetensors")
    model, _, _ = load_model(tmp_path / "old.safetensors")
    d = model.config.feature_dim
    feats = torch.cos(0.3 * torch.arange(3 * 16 * d, dtype=torch.float64)).float()
    feats = feats.view(3, 16, d) + 1
    caps = torch.tensor([[1, 5, 6, 7, 2, 0], [1, 8, 2, 0, 0, 0], [1, 9, 10, 2, 0, 0]])
    lengths = torch.tensor([5, 3, 4])
    with torch.no_grad():
        out = model(feats, caps, lengths, encoded=True)
        ll = caption_log_likelihood(out.logits, out.targets, out.mask)
        projected, state = model.decoder.init(feats)
        words, greedy = torch.ones(3, dtype=torch.long), []
        for _ in range(6):
            step = model.decoder.step(feats, projected, state, words)
            words, state = step.logits.argmax(-1), step.state
            greedy.append(words.tolist())
    torch.testing.assert_close(ll, torch.tensor(OLD_LOG_LIKELIHOOD), rtol=0, atol=1e-5)
    torch.testing.assert_close(out.logits[0, :, :4], torch.tensor(OLD_FIRST_LOGITS), rtol=0,
                               atol=1e-5)
    torch.testing.assert_close(out.alpha[2, :, :3], torch.tensor(OLD_ALPHA), rtol=0, atol=1e-6)
    assert greedy == OLD_GREEDY
