"""The model of Xu et al. 2015: shapes, attention contract, losses, gradients, registries."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config

from captioner.config import ModelConfig
from captioner.losses import caption_log_likelihood, cross_entropy, doubly_stochastic, reinforce
from captioner.models import ATTENTIONS, ENCODERS, build_model
from captioner.models.attention import Attention, AttentionOutput, SoftAttention
from captioner.models.encoder import get_backbone
from captioner.objectives import caption_losses
from captioner.objectives.reinforce import choice_terms

# Encoders whose forward runs here in seconds; the torchvision ones (ResNet-50/101/152, VGG-16)
# are checked for their blocks and feature size below, their forward is too slow for the suite.
FAST_ENCODERS = ["efficientnet_lite0", "efficientnet_lite0_s16", "efficientnet_lite1",
                 "efficientnet_lite2", "tiny"]


def _batch(vocab=20, n=4, max_len=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, max_len + 3, (n,), generator=g)  # incl. <start> and <end>
    caps = torch.zeros(n, int(lengths.max()), dtype=torch.long)
    for i, L in enumerate(lengths):
        caps[i, 0] = 1
        caps[i, 1: L - 1] = torch.randint(4, vocab, (int(L) - 2,), generator=g)
        caps[i, L - 1] = 2
    return caps, lengths


@pytest.mark.parametrize("attention", ATTENTIONS.names())
def test_output_shapes_and_alpha_sums_to_one(attention):
    model = build_model(tiny_config(attention)).train()
    images = torch.randn(4, 3, 64, 64)
    caps, lengths = _batch()
    out = model(images, caps, lengths, generator=torch.Generator().manual_seed(0))
    T = int(lengths.max()) - 1
    assert out.logits.shape == (4, T, 20)
    assert out.alpha.shape == (4, T, 16)
    assert out.mask.shape == out.targets.shape == (4, T)
    assert torch.equal(out.mask.sum(1), lengths - 1)
    sums = out.alpha.sum(-1)
    assert torch.allclose(sums[out.mask], torch.ones(int(out.mask.sum())), atol=1e-5)
    assert torch.all(sums[~out.mask] == 0)
    if attention == "hard":
        assert set(out.extras) == {"log_prob", "entropy"}


@pytest.mark.parametrize("name", FAST_ENCODERS)
def test_every_fast_encoder_gives_a_feature_grid(name):
    from captioner.models.encoder import Encoder

    backbone = get_backbone(name, pretrained=False)

    enc = Encoder(backbone, grid_size=3).eval()
    size = backbone.preprocess.input_size
    feats = enc(torch.randn(1, 3, size, size))
    assert feats.shape == (1, 9, backbone.feature_dim)
    assert torch.isfinite(feats).all()


def test_the_registry_is_fully_covered_by_these_tests():
    assert set(ENCODERS) == set(FAST_ENCODERS) | {"resnet50", "resnet101", "resnet152", "vgg16"}


@pytest.mark.parametrize("name", ["resnet50", "resnet101", "resnet152", "vgg16"])
@pytest.mark.slow
def test_torchvision_encoders_build_with_expected_dims(name):
    backbone = get_backbone(name, pretrained=False)
    assert backbone.feature_dim == (512 if name == "vgg16" else 2048)
    assert len(backbone.blocks) >= 5  # fine-tuning picks the last N of these


def test_missing_pretrained_weights_give_one_clear_error(monkeypatch, tmp_path):
    from captioner.models.encoder import EncoderWeightsError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # nothing cached; no internet here
    import torch.hub

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(EncoderWeightsError, match=r"resnet50.*put it at .*resnet50-.*\.pth"):
        get_backbone("resnet50", pretrained=True)


@pytest.mark.parametrize("attention", ATTENTIONS.names())
def test_gradients_reach_every_trainable_parameter(attention):
    options = {"expected_prob": 0.0} if attention == "hard" else {}  # hard: always sample
    model = build_model(tiny_config(attention, attention_options=options)).train()
    caps, lengths = _batch()
    out = model(torch.randn(4, 3, 64, 64), caps, lengths,
                generator=torch.Generator().manual_seed(0))
    terms = {**caption_losses(out, model.config.alpha_c),
             **choice_terms(model.decoder.attention, out, rerun=None)}
    assert (attention == "hard") == ("reinforce" in terms)
    sum(terms.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad
               and (p.grad is None or p.grad.abs().sum() == 0)]
    assert missing == []


def test_hard_attention_scores_get_gradient_only_through_reinforce():
    config = tiny_config("hard", alpha_c=0.0, attention_options={"expected_prob": 0.0, "entropy": 0.0})
    model = build_model(config).train()
    caps, lengths = _batch()
    out = model(torch.randn(4, 3, 64, 64), caps, lengths, generator=torch.Generator().manual_seed(1))
    ce = cross_entropy(out.logits, out.targets, out.mask)
    score = model.decoder.attention.score.weight
    grad_ce, = torch.autograd.grad(ce, score, retain_graph=True, allow_unused=True)
    assert grad_ce is None or grad_ce.abs().sum() == 0  # sampling is not differentiable
    ll = caption_log_likelihood(out.logits, out.targets, out.mask)
    terms = reinforce(ll, out.extras["log_prob"], out.extras["entropy"], out.mask,
                      torch.tensor(0.0), 0.1, 0.0)
    grad_r, = torch.autograd.grad(terms["reinforce"], score)
    assert grad_r.abs().sum() > 0


def test_hard_sampling_is_reproducible_under_a_seed():
    config = tiny_config("hard", attention_options={"expected_prob": 0.0})
    model = build_model(config).train()
    feats = torch.randn(4, 16, model.config.feature_dim)
    caps, lengths = _batch()

    def run(seed):
        out = model(feats, caps, lengths, generator=torch.Generator().manual_seed(seed), encoded=True)
        return out.extras["log_prob"]

    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))


def test_hard_attention_uses_expected_context_for_about_half_the_batches():
    config = tiny_config("hard")
    att = build_model(config).decoder.attention.train()
    g = torch.Generator().manual_seed(0)
    flips = []
    for _ in range(400):
        att.reset(4, g)
        flips.append(att.use_expected)
    assert 0.4 < sum(flips) / len(flips) < 0.6


@pytest.mark.parametrize("mode", ["expected", "argmax"])
def test_hard_attention_inference_is_deterministic(mode):
    model = build_model(tiny_config("hard", attention_options={"inference": mode})).eval()
    feats = torch.randn(2, 16, model.config.feature_dim)
    projected, state = model.decoder.init(feats)
    words = torch.ones(2, dtype=torch.long)
    a = model.decoder.step(feats, projected, state, words).logits
    b = model.decoder.step(feats, projected, state, words).logits
    assert torch.equal(a, b)


def test_padding_never_reaches_the_loss():
    model = build_model(tiny_config()).eval()
    feats = torch.randn(3, 16, model.config.feature_dim)
    caps, lengths = _batch(n=3)
    out1 = model(feats, caps, lengths, encoded=True)
    garbage = caps.clone()
    for i, L in enumerate(lengths):
        garbage[i, L:] = torch.randint(4, 20, (garbage.shape[1] - int(L),))
    wider = torch.cat([garbage, torch.randint(4, 20, (3, 4))], 1)  # more padding columns too
    out2 = model(feats, wider, lengths, encoded=True)
    for a, b in [(out1, out2)]:
        assert torch.allclose(cross_entropy(a.logits, a.targets, a.mask),
                              cross_entropy(b.logits, b.targets, b.mask))
        assert torch.allclose(doubly_stochastic(a.alpha, a.mask, 1.0),
                              doubly_stochastic(b.alpha, b.mask, 1.0))


def test_looping_step_gives_the_teacher_forced_logits():
    model = build_model(tiny_config()).eval()
    feats = torch.randn(3, 16, model.config.feature_dim)
    caps, lengths = _batch(n=3)
    out = model(feats, caps, lengths, encoded=True)
    projected, state = model.decoder.init(feats)
    for t in range(caps.shape[1] - 1):
        step = model.decoder.step(feats, projected, state, caps[:, t])
        state = step.state
        live = out.mask[:, t]
        assert torch.allclose(step.logits[live], out.logits[live, t], atol=1e-5)
        assert torch.allclose(step.alpha[live], out.alpha[live, t], atol=1e-6)


def test_teacher_forcing_gradients_are_those_of_stepping_the_whole_batch():
    """The shrinking batch (each step on the captions still going, their slices of the
    features and projections sharing one gradient buffer) trains exactly what stepping every
    caption through every word and masking the loss would."""
    torch.manual_seed(0)
    model = build_model(tiny_config()).eval()  # dropout off: both passes see the same model
    feats = torch.randn(3, 16, model.config.feature_dim, requires_grad=True)
    caps, lengths = _batch(n=3)
    upstream = torch.randn(3, caps.shape[1] - 1, model.config.vocab_size)
    params = [feats, *model.parameters()]

    out = model(feats, caps, lengths, encoded=True)
    ours = torch.autograd.grad((out.logits * upstream).sum(), params, allow_unused=True)

    projected, state = model.decoder.init(feats)
    total = 0
    for t in range(caps.shape[1] - 1):
        step = model.decoder.step(feats, projected, state, caps[:, t])
        state = step.state
        total = total + (step.logits * upstream[:, t] * out.mask[:, t, None]).sum()
    stepped = torch.autograd.grad(total, params, allow_unused=True)
    assert ours[0] is not None and ours[0].abs().sum() > 0
    for a, b in zip(ours, stepped):
        assert (a is None) == (b is None)
        assert a is None or torch.allclose(a, b, atol=1e-5)


def test_image_index_encodes_each_image_once_for_all_its_captions():
    model = build_model(tiny_config()).eval()
    images = torch.randn(2, 3, 64, 64)
    caps, lengths = _batch(n=4)
    index = torch.tensor([0, 0, 1, 1])
    shared = model(images, caps, lengths, index)
    repeated = model(images[index], caps, lengths)
    assert torch.allclose(shared.logits, repeated.logits, atol=1e-5)


def test_doubly_stochastic_is_zero_when_each_location_gets_total_attention_one():
    alpha = torch.eye(4)[None]  # 4 steps, 4 locations, each attended once
    mask = torch.ones(1, 4, dtype=torch.bool)
    assert doubly_stochastic(alpha, mask, 1.0) == 0
    half = torch.full((1, 2, 4), 0.25)  # two steps spread evenly: each location gets 0.5
    # lambda * sum_i (1 - 0.5)^2 over 4 locations, per word of the 2-word caption
    assert torch.isclose(doubly_stochastic(half, torch.ones(1, 2, dtype=torch.bool), 2.0),
                         torch.tensor(2.0 * 4 * 0.25 / 2))


def test_reinforce_advantage_sign_is_right_for_one_baseline_or_one_per_caption():
    ll = torch.tensor([-1.0, -3.0])
    mask = torch.ones(2, 1, dtype=torch.bool)
    for baseline, better in ((torch.tensor(-2.0), 0), (torch.tensor([-0.5, -3.5]), 1)):
        log_p_s = torch.tensor([[-0.5], [-0.5]], requires_grad=True)
        reinforce(ll, log_p_s, torch.zeros(2, 1), mask, baseline, 1.0, 0.0)["reinforce"].backward()
        # the better-than-its-baseline caption's sample is made more likely (negative gradient)
        assert log_p_s.grad[better, 0] < 0 < log_p_s.grad[1 - better, 0]


def _hard_terms(baseline: str, dropout: float = 0.0):
    """A hard model's teacher-forced batch with sampled locations; its loss terms with a rerun
    that replays the RNG, as the likelihood objective's does; what the rerun saw."""
    from captioner.objectives.base import replayed, rng_state

    model = build_model(tiny_config("hard", dropout=dropout, attention_options={
        "expected_prob": 0.0, "entropy": 0.0, "baseline": baseline})).train()
    feats = torch.randn(4, 16, model.config.feature_dim)
    caps, lengths = _batch()
    g = torch.Generator().manual_seed(1)
    rng = rng_state(torch.device("cpu"))
    out = model(feats, caps, lengths, generator=g, encoded=True)
    seen = []

    def rerun():
        with torch.no_grad(), replayed(rng, torch.device("cpu")):
            seen.append((model(feats, caps, lengths, generator=g, encoded=True), g.get_state()))
        return seen[-1][0]

    before = model.decoder.attention.baseline.clone()
    g_state = g.get_state()
    terms = choice_terms(model.decoder.attention, out, rerun)
    return model, out, terms, seen, before, g_state


def test_hard_moving_baseline_is_the_authors_moving_average_and_needs_no_rerun():
    model, out, terms, seen, before, _ = _hard_terms("moving")
    ll = caption_log_likelihood(out.logits, out.targets, out.mask)
    assert seen == []
    assert torch.isclose(model.decoder.attention.baseline, 0.9 * before + 0.1 * ll.mean())
    expected = reinforce(ll, out.extras["log_prob"], out.extras["entropy"], out.mask, before,
                         0.1, 0.0)
    assert torch.equal(terms["reinforce"], expected["reinforce"])


def test_hard_expected_baseline_is_each_captions_log_likelihood_with_the_expected_context():
    model, out, terms, seen, before, g_state = _hard_terms("expected", dropout=0.5)
    (reference, g_after), = seen
    assert torch.equal(g_after, g_state)  # the rerun drew no coin and no location
    assert not reference.extras["log_prob"].any()  # it used the expected context throughout
    assert model.decoder.attention.forced is None  # the mode ends with the rerun
    ll = caption_log_likelihood(out.logits, out.targets, out.mask)
    per_caption = caption_log_likelihood(reference.logits, reference.targets, reference.mask)
    assert per_caption.shape == (4,) and not torch.equal(per_caption, ll)
    expected = reinforce(ll, out.extras["log_prob"], out.extras["entropy"], out.mask,
                         per_caption, 0.1, 0.0)
    assert torch.allclose(terms["reinforce"], expected["reinforce"])
    moving = reinforce(ll, out.extras["log_prob"], out.extras["entropy"], out.mask, before,
                       0.1, 0.0)
    assert not torch.allclose(terms["reinforce"], moving["reinforce"])
    # the moving average still follows the batch (it is what a checkpoint saves and reports)
    assert torch.isclose(model.decoder.attention.baseline, 0.9 * before + 0.1 * ll.mean())


def test_hard_expected_baseline_reruns_nothing_on_an_expected_context_batch():
    model = build_model(tiny_config("hard", attention_options={
        "expected_prob": 1.0, "baseline": "expected"})).train()
    caps, lengths = _batch()
    out = model(torch.randn(4, 16, model.config.feature_dim), caps, lengths, encoded=True)
    terms = choice_terms(model.decoder.attention, out, rerun=lambda: pytest.fail("reran"))
    assert terms["reinforce"] == 0


def test_hard_attention_refuses_an_unknown_baseline():
    with pytest.raises(ValueError, match="attention_options.baseline: must be one of moving, "
                                         "expected, got \"median\""):
        tiny_config("hard", attention_options={"baseline": "median"})


def test_unknown_attention_and_encoder_names_list_the_known_ones():
    with pytest.raises(ValueError, match="attention: must be one of soft, hard, got \"nope\""):
        tiny_config("nope")
    with pytest.raises(ValueError, match=r"encoder: must be one of tiny, .*efficientnet_lite0"):
        tiny_config(encoder="nope")
    with pytest.raises(ValueError, match="unknown encoder 'nope'; known: tiny, resnet50"):
        get_backbone("nope")


def test_a_new_attention_kind_plugs_in_without_touching_the_decoder():
    class Uniform(Attention):
        def forward(self, features, projected, hidden, generator=None):
            alpha = torch.full(features.shape[:2], 1.0 / features.shape[1])
            return AttentionOutput(features.mean(1), alpha)

    ATTENTIONS.register("uniform", Uniform)
    try:
        model = build_model(tiny_config("uniform"))
    finally:
        ATTENTIONS.unregister("uniform")
    caps, lengths = _batch()
    out = model(torch.randn(4, 16, model.config.feature_dim), caps, lengths, encoded=True)
    assert torch.allclose(out.alpha[out.mask], torch.full((int(out.mask.sum()), 16), 1 / 16))


def test_frozen_encoder_keeps_its_weights_and_batchnorm_statistics():
    model = build_model(tiny_config(fine_tune_blocks=1)).train()
    enc = model.encoder
    assert enc.num_frozen == len(enc.blocks) - 1
    first_bn = enc.blocks[0][1]
    before = first_bn.running_mean.clone()
    model(torch.randn(2, 3, 64, 64), *_batch(n=2))
    assert torch.equal(first_bn.running_mean, before)
    assert not any(p.requires_grad for p in enc.blocks[0].parameters())
    assert all(p.requires_grad for p in enc.blocks[-1].parameters())


def test_config_round_trips_through_a_dict():
    config = build_model(tiny_config("hard")).config
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="bogus: unknown field of ModelConfig"):
        ModelConfig.from_dict({**config.to_dict(), "bogus": 1})


def test_soft_attention_is_a_convex_combination_of_features():
    att = SoftAttention(6, 5, 4)
    feats = torch.randn(2, 3, 6)
    out = att(feats, att.project(feats), torch.randn(2, 5))
    assert torch.allclose(out.context, (out.alpha[..., None] * feats).sum(1), atol=1e-6)


@pytest.mark.parametrize("mode", ["train", "inference", "inference in blocks"])
def test_attention_weights_are_the_papers_softmax_of_w_tanh(mode, monkeypatch):
    torch.manual_seed(0)
    att = SoftAttention(6, 5, 4)
    feats, hidden = torch.randn(5, 7, 6) * 3, torch.randn(5 * 3, 5) * 3  # 5 images, 3 beams
    projected = att.project(feats)
    h = att.hidden_proj(hidden).view(5, 3, 1, 4)
    expected = torch.softmax(att.score(torch.tanh(projected[:, None] + h)).view(15, 7), -1)
    if mode == "inference in blocks":  # 2 images per block: 3 blocks, the last one short
        monkeypatch.setattr(Attention, "cpu_block_elements", 2 * 3 * 7 * 4)
    with torch.inference_mode(mode != "train"):
        alpha = att.weights(projected, hidden)
    assert torch.allclose(alpha, expected, atol=1e-6)



@pytest.mark.parametrize("beams", [1, 3])
def test_training_gradients_of_the_attention_weights_are_those_of_the_papers_formula(beams):
    """Training scores attention with a hand-written backward; every gradient (the three
    layers' weights and biases, the hidden state, the features) is autograd's of w^T tanh."""
    torch.manual_seed(0)
    att = SoftAttention(6, 5, 4).double()
    feats = torch.randn(5, 7, 6, dtype=torch.double, requires_grad=True)
    hidden = torch.randn(5 * beams, 5, dtype=torch.double, requires_grad=True)
    upstream = torch.randn(5 * beams, 7, dtype=torch.double)  # any loss on alpha

    def gradients(alpha_of):
        inputs = [feats, hidden, *att.parameters()]
        return torch.autograd.grad((alpha_of() * upstream).sum(), inputs)

    def formula():
        h = att.hidden_proj(hidden).view(5, beams, 1, 4)
        return torch.softmax(att.score(torch.tanh(att.project(feats)[:, None] + h))
                             .view(5 * beams, 7), -1)

    ours = gradients(lambda: att.weights(att.project(feats), hidden))
    for got, expected in zip(ours, gradients(formula)):
        assert torch.allclose(got, expected, atol=1e-10)

@pytest.mark.parametrize("kind,inference", [("soft", "expected"), ("hard", "expected"),
                                            ("hard", "argmax")])
def test_beams_can_share_their_images_features_without_copies(kind, inference):
    from captioner.models.decoder import build_attention

    torch.manual_seed(0)
    options = {"inference": inference} if kind == "hard" else {}
    att = build_attention(tiny_config(kind, feature_dim=6, hidden_dim=5, attention_dim=4,
                                      attention_options=options)).eval()
    feats, hidden = torch.randn(3, 7, 6), torch.randn(3 * 4, 5)  # 3 images, 4 beams each
    projected = att.project(feats)
    shared = att(feats, projected, hidden)
    copied = att(feats.repeat_interleave(4, 0), projected.repeat_interleave(4, 0), hidden)
    assert torch.allclose(shared.alpha, copied.alpha, atol=1e-6)
    assert torch.allclose(shared.context, copied.context, atol=1e-6)


def test_deep_output_tanh_squashes_the_sum_before_the_word_layer():
    from captioner.models.decoder import Decoder

    torch.manual_seed(0)
    linear = Decoder(tiny_config(feature_dim=6)).eval()
    squashed = Decoder(tiny_config(feature_dim=6, deep_output="tanh")).eval()
    squashed.load_state_dict(linear.state_dict())  # same parameters: only the activation differs
    feats = torch.randn(2, 16, 6) * 10
    projected, state = linear.init(feats)
    words = torch.tensor([1, 1])
    a = linear.step(feats, projected, state, words)
    b = squashed.step(feats, projected, state, words)
    z = a.beta * linear.attention(feats, projected, state.h).context  # the gated context
    emb, hz = linear.embedding(words), linear.L_h(a.state.h) + linear.L_z(z)
    assert torch.allclose(a.logits, linear.L_o(emb + hz), atol=1e-5)
    assert torch.allclose(b.logits, linear.L_o(torch.tanh(emb + hz)), atol=1e-5)
    with pytest.raises(ValueError, match="deep_output"):
        Decoder(tiny_config(feature_dim=6, deep_output="relu"))



def test_the_likelihood_objectives_rerun_replays_the_batchs_dropout_masks(monkeypatch):
    from contextlib import nullcontext

    from captioner.config import TrainConfig
    from captioner.data.dataset import Batch
    from captioner.objectives import Likelihood, StepContext

    model = build_model(tiny_config("soft", dropout=0.5)).train()
    ctx = StepContext(model, model, torch.device("cpu"), torch.Generator().manual_seed(0),
                      nullcontext)
    caps, lengths = _batch()
    batch = Batch(torch.randn(4, 16, model.config.feature_dim), caps, lengths, torch.arange(4),
                  [], [], [], True)
    seen = {}

    def choice_terms(attention, out, rerun):
        rng = torch.get_rng_state()
        seen["out"], seen["again"] = out, rerun()
        seen["rng_kept"] = torch.equal(torch.get_rng_state(), rng)
        return {}

    monkeypatch.setattr("captioner.objectives.likelihood.choice_terms", choice_terms)
    Likelihood(ctx, TrainConfig(), None).loss(batch)
    assert torch.equal(seen["again"].logits, seen["out"].logits)  # the same dropout masks
    assert not seen["again"].logits.requires_grad and seen["out"].logits.requires_grad
    assert seen["rng_kept"]  # training's RNG goes on from where the batch left it
