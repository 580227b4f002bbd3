"""DreamerV3 modules: categorical RSSM, two-hot code, heads and actors (values, gradients, resets,
shapes with several batch dims, TorchRL state dicts, bad input)."""
from __future__ import annotations

import doctest
import math
import pickle

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torchrl.data import Bounded, Unbounded
from torchrl.modules import DreamerV3DiscreteActor as TorchRLDiscreteActor
from torchrl.modules import DreamerV3ImageDecoder as TorchRLImageDecoder
from torchrl.modules import DreamerV3ImageEncoder as TorchRLImageEncoder
from torchrl.modules import DreamerV3MLP as TorchRLMLP
from torchrl.modules import SymExpTwoHot as TorchRLSymExpTwoHot
from torchrl.modules.models import model_based as trl

from torchrl_rssm.modules import (
    DreamerV3BoundedNormalActor,
    DreamerV3ContinuationHead,
    DreamerV3DiscreteActor,
    DreamerV3ImageDecoder,
    DreamerV3ImageEncoder,
    DreamerV3MLP,
    DreamerV3RewardHead,
    DreamerV3ValueHead,
    DreamerV3VectorEncoder,
    RSSMPosteriorV3,
    RSSMPriorV3,
    RSSMRolloutV3,
    SymExpTwoHot,
    heads_v3,
    layers_v3,
    rssm_v3,
    straight_through_categorical,
    symexp_bins,
    symlog,
    two_hot,
    two_hot_cross_entropy,
    two_hot_decode,
    two_hot_encode,
    unimix_probs,
)

C, K, D, H, A, E = 3, 4, 8, 16, 2, 6


def make_pair(recurrent_model="block_gru", unimix=0.0, cls=(RSSMPriorV3, RSSMPosteriorV3), seed=0):
    torch.manual_seed(seed)
    prior = cls[0](action_shape=(A,), hidden_dim=H, rnn_hidden_dim=D, num_categoricals=C, num_classes=K,
                   action_dim=A, recurrent_model=recurrent_model, num_blocks=2, unimix=unimix)
    post = cls[1](hidden_dim=H, num_categoricals=C, num_classes=K, rnn_hidden_dim=D, obs_embed_dim=E,
                  use_rms_norm=recurrent_model == "block_gru", unimix=unimix)
    return prior, post


def sequence(batch=(2, 3), T=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return TensorDict({
        "state": torch.zeros(*batch, T, C * K),
        "belief": torch.zeros(*batch, T, D),
        "action": torch.randn(*batch, T, A, generator=g),
        "is_init": torch.zeros(*batch, T, 1, dtype=torch.bool),
        ("next", "encoded_latents"): torch.randn(*batch, T, E, generator=g),
    }, list(batch) + [T])


# ---------------------------------------------------------------- categorical sampling
def test_unimix_probabilities_match_hand_computed_mixture():
    # softmax([log 3, 0]) = [0.75, 0.25]; mixed with 0.2 uniform over 2 classes: 0.8 * p + 0.1
    probs = unimix_probs(torch.tensor([math.log(3.0), 0.0]), 0.2)
    torch.testing.assert_close(probs, torch.tensor([0.7, 0.3]))
    # a class with vanishing logit keeps unimix / K
    probs = unimix_probs(torch.tensor([0.0, -1e9, -1e9, -1e9]), 0.01)
    assert probs[1:].min().item() == pytest.approx(0.01 / 4)
    assert probs.sum().item() == pytest.approx(1.0)


def test_straight_through_sample_is_one_hot_with_the_probabilities_gradient():
    torch.manual_seed(0)
    logits = torch.randn(5, C, K, requires_grad=True)
    weights = torch.randn(5, C, K)
    sample = straight_through_categorical(logits, 0.1)
    assert torch.equal(sample.detach().sum(-1), torch.ones(5, C))
    assert set(sample.detach().unique().tolist()) == {0.0, 1.0}
    (grad_sample,) = torch.autograd.grad((sample * weights).sum(), logits)
    (grad_probs,) = torch.autograd.grad((unimix_probs(logits, 0.1) * weights).sum(), logits)
    torch.testing.assert_close(grad_sample, grad_probs)
    assert grad_sample.abs().sum() > 0


def test_inverse_cdf_sampling_picks_the_class_whose_interval_holds_the_uniform():
    logits = torch.log(torch.tensor([[0.2, 0.3, 0.5]]))  # cumulative 0.2, 0.5, 1.0
    for u, index in [(0.1, 0), (0.3, 1), (0.49, 1), (0.9, 2)]:
        sample = straight_through_categorical(logits, uniform=torch.tensor([u]))
        assert sample.argmax(-1).item() == index


def test_prior_and_posterior_samples_follow_the_unimix_probabilities():
    _prior, post = make_pair(unimix=0.5)
    torch.manual_seed(0)
    belief, emb = torch.randn(4000, D), torch.randn(1, E).expand(4000, E)
    logits, state = post(belief[:1].expand(4000, D), emb)
    freq = state.detach().reshape(4000, C, K).mean(0)
    torch.testing.assert_close(freq, unimix_probs(logits[0].detach(), 0.5), atol=0.03, rtol=0)


# ---------------------------------------------------------------- two-hot
def test_two_hot_of_a_value_between_two_bins_is_hand_computed():
    bins = symexp_bins(255)
    # bins 127 and 128 are symexp(0) = 0 and symexp(40 / 254) = expm1(40 / 254)
    b_hi = math.expm1(40 / 254)
    assert bins[127].item() == 0.0 and bins[128].item() == pytest.approx(b_hi, rel=1e-6)
    code = two_hot_encode(torch.tensor([0.1]), bins)[0]
    expected = torch.zeros(255)
    expected[127], expected[128] = 1 - 0.1 / b_hi, 0.1 / b_hi
    torch.testing.assert_close(code, expected)
    # on a small support: 0.25 between 0 and 1 -> 0.75 / 0.25; outside saturates at the ends
    small = torch.tensor([-1.0, 0.0, 1.0])
    torch.testing.assert_close(two_hot_encode(torch.tensor([0.25, -7.0, 7.0]), small),
                               torch.tensor([[0.0, 0.75, 0.25], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))


@pytest.mark.parametrize("num_bins", [2, 5, 255, 256])
def test_zero_logits_decode_to_exactly_zero(num_bins):
    bins = symexp_bins(num_bins)
    assert torch.equal(bins, -bins.flip(0))
    assert torch.equal(two_hot_decode(torch.zeros(7, 3, num_bins), bins), torch.zeros(7, 3))
    assert torch.equal(SymExpTwoHot(num_bins)(torch.zeros(2, num_bins, dtype=torch.bfloat16)), torch.zeros(2, 1))


def test_two_hot_math_runs_in_float32_for_bfloat16_inputs():
    bins = symexp_bins(255)
    target = torch.tensor([123.456]).bfloat16()
    code = two_hot_encode(target, bins)
    assert code.dtype == torch.float32
    logits = (code + 1e-12).log().bfloat16()
    assert two_hot_decode(logits, bins).dtype == torch.float32
    assert two_hot_cross_entropy(logits, target, bins).dtype == torch.float32


def test_two_hot_cross_entropy_is_minimal_at_the_target_code():
    bins = symexp_bins(255)
    target = torch.tensor([3.0, -40.0])
    code = two_hot_encode(target, bins)
    exact = two_hot_cross_entropy((code + 1e-30).log(), target, bins)
    # the cross entropy of a code with itself is its entropy, below any other prediction's
    entropy = -(code * (code + 1e-30).log()).sum(-1)
    torch.testing.assert_close(exact, entropy, atol=1e-4, rtol=0)
    assert (two_hot_cross_entropy(torch.zeros(2, 255), target, bins) > exact).all()


def test_symexp_two_hot_matches_torchrl_on_odd_supports():
    ours, theirs = SymExpTwoHot(255), TorchRLSymExpTwoHot(255)
    torch.testing.assert_close(ours.bins, theirs.bins, rtol=1e-6, atol=0)
    logits = torch.randn(4, 6, 255)
    torch.testing.assert_close(ours(logits), theirs(logits), rtol=1e-5, atol=1e-5)
    target = torch.randn(4, 6) * 50
    torch.testing.assert_close(ours.loss(logits, target), theirs.loss(logits, target))
    ours.load_state_dict(theirs.state_dict())


# ---------------------------------------------------------------- TorchRL state dicts
@pytest.mark.parametrize("recurrent_model", ["gru", "block_gru"])
def test_torchrl_rssm_state_dicts_load_and_compute_the_same(recurrent_model):
    ours = make_pair(recurrent_model, unimix=0.01, seed=0)
    theirs = make_pair(recurrent_model, unimix=0.01, cls=(trl.RSSMPriorV3, trl.RSSMPosteriorV3), seed=1)
    for mine, foreign in zip(ours, theirs):
        mine.load_state_dict(foreign.state_dict())
        assert [n for n, _ in mine.named_parameters()] == [n for n, _ in foreign.named_parameters()]
    state, belief, action = torch.randn(5, C * K), torch.randn(5, D), torch.randn(5, A) * 3
    torch.manual_seed(3)
    expected = theirs[0](state, belief, action)
    torch.manual_seed(3)
    actual = ours[0](state, belief, action)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)
    emb = torch.randn(5, E)
    torch.manual_seed(4)
    expected = theirs[1](belief, emb)
    torch.manual_seed(4)
    actual = ours[1](belief, emb)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("recurrent_model", ["gru", "block_gru"])
def test_rollout_matches_torchrl_rollout_with_the_same_weights_and_seed(recurrent_model):
    ours = make_pair(recurrent_model, unimix=0.01, seed=0)
    theirs = make_pair(recurrent_model, unimix=0.01, cls=(trl.RSSMPriorV3, trl.RSSMPosteriorV3), seed=1)
    for mine, foreign in zip(ours, theirs):
        mine.load_state_dict(foreign.state_dict())

    def wrap(prior, post):
        return (TensorDictModule(prior, ["state", "belief", "action"],
                                 [("next", "prior_logits"), ("next", "state"), ("next", "belief")]),
                TensorDictModule(post, [("next", "belief"), ("next", "encoded_latents")],
                                 [("next", "posterior_logits"), ("next", "state")]))

    td = sequence(batch=(3,), T=6)
    td["is_init"][:, 0] = True
    td["is_init"][1, 3] = True
    torch.manual_seed(7)
    expected = trl.RSSMRolloutV3(*wrap(*theirs))(td.clone())
    torch.manual_seed(7)
    actual = RSSMRolloutV3(*wrap(*ours))(td.clone())
    for key in [("next", "prior_logits"), ("next", "posterior_logits"), ("next", "state"), ("next", "belief"),
                "state", "belief", "action"]:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-4, atol=1e-4)


def test_torchrl_network_state_dicts_load():
    pairs = [
        (DreamerV3MLP(6, 4, depth=2, num_cells=8), TorchRLMLP(6, 4, depth=2, num_cells=8), (torch.randn(3, 6),)),
        (DreamerV3ImageEncoder(depth=4, mults=(1, 2)), TorchRLImageEncoder(depth=4, mults=(1, 2)),
         (torch.rand(2, 3, 16, 16),)),
        (DreamerV3ImageDecoder(12, (3, 16, 16), depth=4, mults=(1, 2), num_blocks=2),
         TorchRLImageDecoder(12, (3, 16, 16), depth=4, mults=(1, 2), num_blocks=2), (torch.randn(2, 12),)),
    ]
    for mine, foreign, inputs in pairs:
        mine.load_state_dict(foreign.state_dict())
        torch.testing.assert_close(mine(*inputs), foreign(*inputs), rtol=1e-5, atol=1e-5)
    mine, foreign = DreamerV3DiscreteActor(12, 3, depth=2, num_cells=8), TorchRLDiscreteActor(12, 3, depth=2, num_cells=8)
    mine.load_state_dict(foreign.state_dict())
    td = TensorDict({"state": torch.randn(4, 8), "belief": torch.randn(4, 4)}, [4])
    torch.testing.assert_close(mine(td.clone())["logits"], foreign(td.clone())["logits"])


# ---------------------------------------------------------------- resets
@pytest.mark.parametrize("recurrent_model", ["gru", "block_gru"])
def test_is_init_zeroes_state_belief_and_previous_action(recurrent_model):
    prior, post = make_pair(recurrent_model)
    rollout = RSSMRolloutV3(prior, post)
    td = sequence()
    td["is_init"][..., 2, :] = True
    td["state"] = torch.randn_like(td["state"])
    td["belief"] = torch.randn_like(td["belief"])
    other = td.clone()
    other["action"][..., :3, :] = torch.randn_like(other["action"][..., :3, :])  # incl. the action at the reset
    other["next", "encoded_latents"][..., :2, :] = torch.randn_like(other["next", "encoded_latents"][..., :2, :])
    other["state"] = torch.randn_like(other["state"])
    other["belief"] = torch.randn_like(other["belief"])
    torch.manual_seed(0)
    out = rollout(td)
    torch.manual_seed(0)
    out_other = rollout(other)
    for key in [("next", "prior_logits"), ("next", "posterior_logits"), ("next", "state"), ("next", "belief")]:
        torch.testing.assert_close(out[key][:, :, 2:], out_other[key][:, :, 2:])  # batch (2, 3), then time
        assert not torch.allclose(out[key][:, :, :2], out_other[key][:, :, :2])
    # the inputs written back: zero at the reset row
    for key in ["state", "belief", "action"]:
        assert torch.equal(out[key][:, :, 2], torch.zeros_like(out[key][:, :, 2]))
    # the reset step is the transition from the zero latent with a zero action
    belief = prior.transition(torch.zeros(C * K), torch.zeros(D), torch.zeros(A))
    torch.testing.assert_close(out["next", "belief"][:, :, 2], belief.expand(2, 3, D))


# ---------------------------------------------------------------- shapes, any batch dims
@pytest.mark.parametrize("recurrent_model", ["gru", "block_gru"])
def test_shapes_with_two_and_three_batch_dims(recurrent_model):
    prior, post = make_pair(recurrent_model)
    for batch in [(2, 3), (2, 1, 3)]:
        logits, state, belief = prior(torch.zeros(*batch, C * K), torch.zeros(*batch, D), torch.randn(*batch, A))
        assert (logits.shape, state.shape, belief.shape) == ((*batch, C, K), (*batch, C * K), (*batch, D))
        logits, state = post(belief, torch.randn(*batch, E))
        assert (logits.shape, state.shape) == ((*batch, C, K), (*batch, C * K))
    rollout = RSSMRolloutV3(prior, post)
    out = rollout(sequence(batch=(2, 1, 3), T=4))
    assert out["next", "posterior_logits"].shape == (2, 1, 3, 4, C, K)
    assert out["next", "belief"].shape == (2, 1, 3, 4, D)
    imagined = rollout.imagine(rollout.initial([2, 3]), policy=lambda s, b: torch.tanh(b[..., :A]), horizon=5)
    assert imagined["state"].shape == (2, 3, 5, C * K) and imagined["action"].shape == (2, 3, 5, A)
    feat = (torch.randn(2, 3, 4, C * K), torch.randn(2, 3, 4, D))
    for head in (DreamerV3RewardHead(C * K + D, num_cells=8), DreamerV3ValueHead(C * K + D, num_cells=8)):
        logits, value = head(*feat)
        assert logits.shape == (2, 3, 4, 255) and value.shape == (2, 3, 4, 1)
        assert torch.equal(value, torch.zeros_like(value))  # zero-initialised output layer predicts exactly 0
    logits, cont = DreamerV3ContinuationHead(C * K + D, num_cells=8)(*feat)
    assert logits.shape == cont.shape == (2, 3, 4, 1)
    assert DreamerV3VectorEncoder(5, depth=2, num_cells=8)(torch.randn(2, 3, 4, 5)).shape == (2, 3, 4, 8)
    enc = DreamerV3ImageEncoder(depth=4, mults=(1, 2))
    assert enc(torch.randint(0, 256, (2, 3, 4, 3, 16, 16), dtype=torch.uint8)).shape == (2, 3, 4, 128)
    dec = DreamerV3ImageDecoder(C * K + D, (3, 16, 16), depth=4, mults=(1, 2), num_blocks=2)
    assert dec(*feat).shape == (2, 3, 4, 3, 16, 16)


def test_observe_equals_stepping_the_modules_one_step_at_a_time():
    prior, post = make_pair("block_gru", unimix=0.01)
    rollout = RSSMRolloutV3(prior, post)
    td = sequence(batch=(2,), T=4)
    td["is_init"][:, 2] = True
    uniform = torch.rand(4, 2, 2, C)
    out = rollout.observe(td["next", "encoded_latents"], td["action"], td["is_init"], uniform=uniform)
    state, belief = torch.zeros(2, C * K), torch.zeros(2, D)
    for t in range(4):
        keep = (~td["is_init"][:, t]).float()
        logits_p, _, belief = prior(state * keep, belief * keep, td["action"][:, t] * keep)
        logits_q, state = post(belief, td["next", "encoded_latents"][:, t], uniform=uniform[t, 1])
        torch.testing.assert_close(out["prior_logits"][:, t], logits_p)
        torch.testing.assert_close(out["posterior_logits"][:, t], logits_q)
        torch.testing.assert_close(out["state"][:, t], state)


def test_imagine_with_actions_equals_the_prior_stepped_and_passes_gradients():
    prior, post = make_pair("block_gru")
    rollout = RSSMRolloutV3(prior, post)
    start = {"state": torch.randn(3, C * K, requires_grad=True), "belief": torch.randn(3, D, requires_grad=True)}
    action = torch.randn(3, 5, A, requires_grad=True)
    uniform = torch.rand(3, 5, C)
    out = rollout.imagine(start, action=action, uniform=uniform)
    state, belief = start["state"], start["belief"]
    for t in range(5):
        logits, state, belief = prior(state, belief, action[:, t], uniform=uniform[:, t])
        torch.testing.assert_close(out["prior_logits"][:, t], logits)
        torch.testing.assert_close(out["belief"][:, t], belief)
    (out["belief"].square().sum() + (out["state"] * torch.randn_like(out["state"])).sum()).backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in (start["state"], start["belief"], action))


def test_symlog_vector_encoder_squashes_its_input():
    enc = DreamerV3VectorEncoder(3, depth=1, num_cells=4)
    x = torch.tensor([[1000.0, -5.0, 0.0]])
    torch.testing.assert_close(enc(x), enc.mlp(symlog(x)))
    torch.testing.assert_close(symlog(x), torch.tensor([[math.log(1001.0), -math.log(6.0), 0.0]]))


# ---------------------------------------------------------------- actors
def test_bounded_normal_actor_stays_in_the_spec_and_rsamples():
    spec = Bounded(low=torch.tensor([-1.0, 0.0]), high=torch.tensor([1.0, 4.0]), shape=(2,))
    actor = DreamerV3BoundedNormalActor(12, spec, depth=1, num_cells=8)
    td = TensorDict({"state": torch.randn(2, 50, 8), "belief": torch.randn(2, 50, 4)}, [2, 50])
    out = actor(td)
    action = out["action"]
    assert action.shape == (2, 50, 2)
    assert (action[..., 0] >= -1).all() and (action[..., 0] <= 1).all()
    assert (action[..., 1] >= 0).all() and (action[..., 1] <= 4).all()
    # the mean starts near the centre of the range (output layer scaled by 0.01), std within [0.1, 1] x radius
    torch.testing.assert_close(out["loc"], torch.tensor([0.0, 2.0]).expand(2, 50, 2), atol=0.1, rtol=0)
    radius = torch.tensor([1.0, 2.0])
    assert ((out["scale"] >= 0.1 * radius - 1e-6) & (out["scale"] <= radius + 1e-6)).all()
    dist = actor.get_dist(td)
    sample = dist.rsample()
    (sample.sum() + dist.entropy().sum()).backward()
    assert all(p.grad is not None for p in actor.parameters())


def test_discrete_actor_has_the_unimix_floor_and_straight_through_samples():
    actor = DreamerV3DiscreteActor(12, 4, depth=1, num_cells=8, unimix=0.2)
    td = TensorDict({"state": torch.randn(3, 5, 8), "belief": torch.randn(3, 5, 4)}, [3, 5])
    out = actor(td)
    assert ((out["action"].sum(-1)) == 1).all()
    assert (out["logits"].exp() >= 0.2 / 4 - 1e-7).all()
    sample = actor.get_dist(td).rsample()
    (sample * torch.arange(4.0)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in actor.parameters())


# ---------------------------------------------------------------- bad input
def test_bad_input_is_named():
    bins = symexp_bins(5)
    with pytest.raises(ValueError, match="logits must end with the number of bins"):
        two_hot_decode(torch.zeros(3, 4), bins)
    with pytest.raises(ValueError, match="logits must end with the number of bins"):
        SymExpTwoHot(5)(torch.zeros(3, 255))
    with pytest.raises(ValueError, match="target must have shape"):
        two_hot_cross_entropy(torch.zeros(3, 5), torch.zeros(4), bins)
    with pytest.raises(ValueError, match="num_bins must be an int of at least 2"):
        SymExpTwoHot(1)
    with pytest.raises(ValueError, match="num_bins must be an int of at least 2"):
        DreamerV3RewardHead(4, num_bins=0)
    with pytest.raises(ValueError, match="bins must be a one-dimensional tensor of at least 2"):
        two_hot_encode(torch.zeros(3), torch.zeros(1))
    with pytest.raises(ValueError, match="action_spec must have finite bounds"):
        DreamerV3BoundedNormalActor(4, Unbounded(shape=(2,)))
    with pytest.raises(ValueError, match="unimix must be in"):
        RSSMPriorV3(action_shape=(A,), action_dim=A, unimix=1.0)
    with pytest.raises(ValueError, match="block_gru.*action_dim"):
        RSSMPriorV3(action_shape=(A,), recurrent_model="block_gru")
    with pytest.raises(ValueError, match="rnn_hidden_dim .* divisible by num_blocks"):
        RSSMPriorV3(action_shape=(A,), action_dim=A, rnn_hidden_dim=10, recurrent_model="block_gru", num_blocks=3)
    prior, post = make_pair()
    with pytest.raises(ValueError, match="must add up to the first layer's in_features"):
        post(torch.zeros(2, D), torch.zeros(2, E + 1))
    with pytest.raises(ValueError, match="embedding and action must share"):
        RSSMRolloutV3(prior, post).observe(torch.zeros(2, 4, E), torch.zeros(2, 5, A))
    with pytest.raises(ValueError, match="exactly one of `action` or `policy`"):
        RSSMRolloutV3(prior, post).imagine({"state": torch.zeros(2, C * K), "belief": torch.zeros(2, D)})


@pytest.mark.parametrize("module", [two_hot, layers_v3, rssm_v3, heads_v3])
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, raise_on_error=False)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.slow
def test_compiled_step_core_gives_the_eager_rollout():
    prior, post = make_pair("block_gru", unimix=0.01)
    rollout = RSSMRolloutV3(prior, post)
    td = sequence(batch=(2,), T=3)
    td["is_init"][:, 1] = True
    uniform = torch.rand(3, 2, 2, C)
    eager = rollout.observe(td["next", "encoded_latents"], td["action"], td["is_init"], uniform=uniform)
    rollout.compile_rollout("step")
    compiled = rollout.observe(td["next", "encoded_latents"], td["action"], td["is_init"], uniform=uniform)
    for key in eager:
        torch.testing.assert_close(compiled[key], eager[key], rtol=1e-5, atol=1e-5)
    copy = pickle.loads(pickle.dumps(rollout))  # a compiled step does not pickle: the copy is eager
    assert copy._filter_step is rssm_v3.filter_step
    with pytest.raises(ValueError, match="unroll only applies when scope='scan'"):
        rollout.compile_rollout("step", unroll=2)


def test_torchrl_state_estimator_runs_on_our_prior_and_posterior():
    prior, post = make_pair("block_gru")
    estimator = trl.RSSMStateEstimatorV3(prior, post)
    td = TensorDict({"state": torch.randn(4, C * K), "belief": torch.randn(4, D), "previous_action": torch.randn(4, A),
                     "encoded_latents": torch.randn(4, E), "is_init": torch.tensor([True, False, True, False])}, [4])
    out = estimator(td.clone())
    # a reset row is the transition from the zero latent and zero action, then the posterior
    belief = prior.transition(torch.zeros(C * K), torch.zeros(D), torch.zeros(A))
    torch.testing.assert_close(out["belief"][0], belief)
    torch.testing.assert_close(out["belief"][1], prior.transition(td["state"][1], td["belief"][1],
                                                                  td["previous_action"][1]))
    assert torch.equal(out["state"].reshape(4, C, K).sum(-1), torch.ones(4, C))


def test_dense_and_blocked_block_gru_layouts_compute_the_same(monkeypatch):
    prior, _ = make_pair("block_gru")
    state, belief, action = torch.randn(2, 3, C * K), torch.randn(2, 3, D), torch.randn(2, 3, A)
    weights, act_in = prior.project_action(action)
    assert weights[0] == "dense"  # D = 8 is small
    dense = prior.transition_projected(state, belief, act_in, weights)
    monkeypatch.setattr(rssm_v3, "DENSE_MAX_BELIEF", 0)
    weights, act_in = prior.project_action(action)
    assert weights[0] == "block"
    torch.testing.assert_close(prior.transition_projected(state, belief, act_in, weights), dense)
    # and TorchRL's core on the same weights, for the blocked layout too
    theirs = trl.RSSMPriorV3(action_shape=(A,), hidden_dim=H, rnn_hidden_dim=D, num_categoricals=C, num_classes=K,
                             action_dim=A, recurrent_model="block_gru", num_blocks=2)
    theirs.load_state_dict(prior.state_dict())
    torch.testing.assert_close(prior.transition(state, belief, action), theirs._update_belief(state, belief, action))
