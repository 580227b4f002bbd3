"""DreamerV3 losses: values against hand-computed cases, gradient routing, the paper's settings, bad input."""
from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import (
    NormalParamExtractor,
    ProbabilisticTensorDictModule,
    ProbabilisticTensorDictSequential,
    TensorDictSequential,
)
from tensordict.nn import TensorDictModule as Mod
from torch import nn
from torchrl.data import Bounded, Composite, Unbounded
from torchrl.envs.model_based.dreamer import DreamerEnv
from torchrl.modules import MLP, SymExpTwoHot, TanhNormal, WorldModelWrapper
from torchrl.objectives import DreamerV3ActorLoss as TorchRLActorLoss
from torchrl.objectives import DreamerV3ModelLoss as TorchRLModelLoss
from torchrl.objectives import SoftUpdate, ValueEstimators

from torchrl_rssm.modules import symexp_bins
from torchrl_rssm.objectives import (
    DreamerV3ActorLoss,
    DreamerV3ModelLoss,
    DreamerV3ValueLoss,
    categorical_kl_balanced,
    categorical_kl_terms,
    symexp,
    symlog,
    two_hot_cross_entropy,
    two_hot_decode,
    two_hot_encode,
)

S, D, A = 8, 6, 2  # state (2 categoricals x 4 classes), belief, action


# ------------------------------------------------------------------ functions
def test_symlog_symexp_values_and_inverse():
    x = torch.tensor([-(math.e - 1), 0.0, math.e ** 2 - 1])
    torch.testing.assert_close(symlog(x), torch.tensor([-1.0, 0.0, 2.0]))
    y = torch.tensor([-1e4, -3.0, 0.0, 0.25, 7e3])
    torch.testing.assert_close(symexp(symlog(y)), y, rtol=1e-5, atol=1e-5)


def test_two_hot_of_a_value_between_two_bins():
    bins = torch.tensor([-1.0, 0.0, 1.0, 3.0])
    # 2.0 is halfway from 1 to 3: half on each; 0.25 is a quarter of the way from 0 to 1
    encoded = two_hot_encode(torch.tensor([2.0, 0.25, 1.0, -5.0, 9.0]), bins)
    expected = torch.tensor([[0.0, 0.0, 0.5, 0.5],
                             [0.0, 0.75, 0.25, 0.0],
                             [0.0, 0.0, 1.0, 0.0],
                             [1.0, 0.0, 0.0, 0.0],   # below the support: the first bin
                             [0.0, 0.0, 0.0, 1.0]])  # above: the last
    torch.testing.assert_close(encoded, expected)


def test_two_hot_cross_entropy_reads_the_two_bins():
    bins = torch.tensor([-1.0, 0.0, 1.0, 3.0])
    logits = torch.tensor([[0.3, -1.0, 2.0, 0.5]])
    log_p = torch.log_softmax(logits, -1)[0]
    # target 2.0: weights 0.5 / 0.5 on bins 2 and 3
    expected = -(0.5 * log_p[2] + 0.5 * log_p[3])
    torch.testing.assert_close(two_hot_cross_entropy(logits, torch.tensor([2.0]), bins), expected.reshape(1))
    # a trailing singleton on the target is accepted, and equals the dense two-hot cross-entropy
    target = torch.tensor([[0.25]])
    dense = -(two_hot_encode(target.squeeze(-1), bins) * torch.log_softmax(logits, -1)).sum(-1)
    torch.testing.assert_close(two_hot_cross_entropy(logits, target, bins), dense)


@pytest.mark.parametrize("num_bins", [255, 254, 5])
def test_two_hot_decode_of_zero_logits_is_exactly_zero(num_bins):
    bins = symexp_bins(num_bins)
    assert torch.equal(bins, -bins.flip(0))
    assert torch.equal(two_hot_decode(torch.zeros(3, num_bins), bins), torch.zeros(3))


def test_two_hot_decode_expectation():
    bins = torch.tensor([-1.0, 0.0, 1.0, 3.0])
    logits = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.4]))
    torch.testing.assert_close(two_hot_decode(logits, bins), torch.tensor(-0.1 + 0.3 + 1.2))


def test_default_support_is_symexp_of_linear_grid():
    torch.testing.assert_close(symexp_bins(5), symexp(torch.linspace(-20, 20, 5)))
    assert symexp_bins(255)[127] == 0


def _post_prior():
    # categorical 1: posterior (0.75, 0.25); categorical 2: uniform; the prior is uniform in both
    post = torch.tensor([[[math.log(3.0), 0.0], [0.0, 0.0]]], requires_grad=True)
    prior = torch.zeros(1, 2, 2, requires_grad=True)
    return post, prior


def test_kl_with_unimix_and_free_bits_aggregated_over_categoricals():
    post, prior = _post_prior()
    # unimix 0.01 over 2 classes: (0.99 * 0.75 + 0.005, 0.99 * 0.25 + 0.005) = (0.7475, 0.2525)
    kl_1 = 0.7475 * math.log(0.7475 / 0.5) + 0.2525 * math.log(0.2525 / 0.5)  # 0.1281; categorical 2: 0
    dyn, rep = categorical_kl_terms(post, prior, free_nats=0.0, unimix=0.01)
    assert dyn.item() == pytest.approx(kl_1, abs=1e-6) and rep.item() == pytest.approx(kl_1, abs=1e-6)
    # free bits 0.1 on the SUM (0.128 > 0.1): no clamp, the gradient flows
    dyn, rep = categorical_kl_terms(post, prior, free_nats=0.1, unimix=0.01)
    assert dyn.item() == pytest.approx(kl_1, abs=1e-6)
    dyn.backward()
    assert prior.grad.abs().sum() > 0 and post.grad is None  # the dynamics term trains the prior only
    # 1 nat on the sum: clamped, no gradient
    post, prior = _post_prior()
    dyn, rep = categorical_kl_terms(post, prior, free_nats=1.0, unimix=0.01)
    assert dyn.item() == 1.0 and rep.item() == 1.0
    (dyn + rep).backward()
    assert prior.grad.abs().sum() == 0 and post.grad.abs().sum() == 0


def test_balanced_kl_keeps_torchrl_per_categorical_clamp():
    post, prior = _post_prior()
    kl_1 = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)  # 0.1308, no unimix here
    # each categorical clamped to 0.1 first: (0.1308 + 0.1) / 2, not max(0.1, 0.1308 / 2) nor the sum
    kl = categorical_kl_balanced(post, prior, alpha=0.8, free_bits=0.1)
    assert kl.item() == pytest.approx((kl_1 + 0.1) / 2, abs=1e-5)
    # the same pair in the paper's mode: the sum 0.1308 is above the floor
    assert categorical_kl_terms(post, prior, free_nats=0.1, unimix=0.0)[0].item() == pytest.approx(kl_1, abs=1e-6)


# ------------------------------------------------------------------ world-model loss
class _WorldModel(nn.Module):
    """prior_logits from the prior's own layer, posterior_logits from the posterior's own layer."""

    def __init__(self, bins=255):
        super().__init__()
        self.prior = nn.Linear(3, S)
        self.posterior = nn.Linear(3, S)
        self.reco = nn.Linear(3, 3)
        self.reward = nn.Linear(3, bins)
        self.cont = nn.Linear(3, 1)

    def forward(self, obs):
        shape = obs.shape[:-1]
        return (self.prior(obs).view(*shape, 2, 4), self.posterior(obs).view(*shape, 2, 4), self.reco(obs),
                self.reward(obs), self.cont(obs))


def _model_loss(cls=DreamerV3ModelLoss, paper=True, **kw):
    net = _WorldModel()
    wm = Mod(net, in_keys=[("next", "observation")],
             out_keys=[("next", "prior_logits"), ("next", "posterior_logits"), ("next", "reco_observation"),
                       ("next", "reward_logits"), ("next", "continue_pred")])
    loss = cls.from_paper(wm, **kw) if paper else cls(wm, **kw)
    loss.set_keys(pixels="observation", reco_pixels="reco_observation")
    return loss, net


def _wm_batch(B=3, T=4, terminated=None, done=None):
    torch.manual_seed(1)
    nxt = {"observation": torch.randn(B, T, 3), "reward": torch.randn(B, T, 1)}
    if terminated is not None:
        nxt["terminated"] = terminated
    if done is not None:
        nxt["done"] = done
    return TensorDict({"next": nxt}, [B, T])


def test_paper_preset_settings():
    loss, _ = _model_loss()
    assert (loss.kl_mode, loss.lambda_dynamic, loss.lambda_representation, loss.unimix, loss.free_bits) == (
        "separate", 0.5, 0.1, 0.01, 1.0)
    assert loss.lambda_continue == 1.0 and loss.continue_target_scale == pytest.approx(0.997, abs=1e-4)
    assert loss.reward_two_hot and loss.num_reward_bins == 255
    # TorchRL's defaults are kept on the plain constructor
    plain, _ = _model_loss(paper=False)
    assert (plain.kl_mode, plain.unimix, plain.lambda_continue) == ("balanced", 0.0, 0.0)


def test_model_loss_kl_terms_match_hand_computed_weights():
    loss, _net = _model_loss(lambda_continue=0.0)
    td = _wm_batch()
    losses, out = loss(td)
    dyn, rep = categorical_kl_terms(out["next", "posterior_logits"], out["next", "prior_logits"], 1.0, 0.01)
    torch.testing.assert_close(losses["loss_model_dynamic"], 0.5 * dyn.reshape(1))
    torch.testing.assert_close(losses["loss_model_representation"], 0.1 * rep.reshape(1))
    assert td["next", "reward"].shape == (3, 4, 1)  # the input batch keeps its reward


def test_dynamics_kl_reaches_only_the_prior_and_representation_only_the_posterior():
    loss, net = _model_loss(lambda_continue=0.0, free_bits=0.0)
    losses, _ = loss(_wm_batch())
    losses["loss_model_dynamic"].sum().backward(retain_graph=True)
    assert net.prior.weight.grad.abs().sum() > 0 and net.posterior.weight.grad is None
    net.zero_grad(set_to_none=True)
    losses["loss_model_representation"].sum().backward()
    assert net.posterior.weight.grad.abs().sum() > 0 and net.prior.weight.grad is None


def test_continuation_is_learnt_from_terminated_not_done():
    B, T = 1, 2
    terminated = torch.tensor([[[False], [False]]])
    done = torch.tensor([[[False], [True]]])  # a time limit at step 2, not a death
    loss, net = _model_loss(lambda_continue=1.0, continue_target_scale=1.0)
    with torch.no_grad():
        net.cont.weight.zero_()
        net.cont.bias.fill_(2.0)  # every continuation logit is 2
    losses, _ = loss(_wm_batch(B, T, terminated=terminated, done=done))
    # target 1 at both steps: BCE(2, 1) = log(1 + e^-2)
    assert losses["loss_model_continue"].item() == pytest.approx(math.log1p(math.exp(-2.0)), abs=1e-6)
    # a real termination at step 2: mean of BCE(2, 1) and BCE(2, 0) = log(1 + e^2)
    losses, _ = loss(_wm_batch(B, T, terminated=done.clone(), done=done))
    expected = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(2.0))) / 2
    assert losses["loss_model_continue"].item() == pytest.approx(expected, abs=1e-6)


def test_continuation_without_terminated_is_an_error_not_done():
    loss, _ = _model_loss(lambda_continue=1.0)
    batch = _wm_batch(done=torch.zeros(3, 4, 1, dtype=torch.bool))
    with pytest.raises(KeyError, match="terminated"):
        loss(batch)
    # TorchRL falls back to done there (the difference named in the docstring)
    theirs, _ = _model_loss(TorchRLModelLoss, paper=False, lambda_continue=1.0, kl_mode="separate")
    assert "loss_model_continue" in theirs(batch)[0]


def test_model_loss_reward_logits_with_wrong_bins_is_named():
    loss, _ = _model_loss(lambda_continue=0.0, num_reward_bins=17)
    with pytest.raises(ValueError, match="num_reward_bins=17"):
        loss(_wm_batch())


# ------------------------------------------------------------------ actor loss
class _Const(nn.Module):
    def __init__(self, value):
        super().__init__()
        self.value = value
        self.anchor = nn.Parameter(torch.ones(()))  # a parameter, to check that it gets no gradient

    def forward(self, state, belief):
        return state[..., :1] * 0 + self.value * self.anchor


class _Prior(nn.Module):
    def __init__(self):
        super().__init__()
        self.cell = nn.GRUCell(S + A, D)
        self.head = nn.Linear(D, S)

    def forward(self, state, belief, action):
        belief = self.cell(torch.cat([state, action], -1), belief)
        logits = self.head(belief).view(*belief.shape[:-1], 2, 4)
        return logits, torch.softmax(logits, -1).flatten(-2), belief


def _env(reward_module=None, seed=0):
    torch.manual_seed(seed)
    prior = _Prior()
    transition = Mod(prior, in_keys=["state", "belief", "action"], out_keys=["_", "state", "belief"])
    reward_net = reward_module if reward_module is not None else MLP(in_features=S + D, out_features=1,
                                                                        num_cells=8, depth=1)
    reward = Mod(reward_net if reward_module is not None else _Cat(reward_net), in_keys=["state", "belief"],
                 out_keys=["reward"])
    env = DreamerEnv(WorldModelWrapper(transition, reward), prior_shape=(S,), belief_shape=(D,))
    env.observation_spec = Composite(state=Unbounded(S), belief=Unbounded(D))  # TorchRL's rollout needs specs
    env.state_spec = env.observation_spec.clone()
    env.action_spec = Bounded(-1, 1, (A,))
    env.reward_spec = Unbounded((1,))
    return env, prior


class _Cat(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, state, belief):
        return self.net(torch.cat([state, belief], -1))


def _actor(seed=1, log_prob=False):
    torch.manual_seed(seed)
    return ProbabilisticTensorDictSequential(
        Mod(_Cat(MLP(in_features=S + D, out_features=2 * A, num_cells=8, depth=1)), ["state", "belief"], ["params"]),
        Mod(NormalParamExtractor(), ["params"], ["loc", "scale"]),
        ProbabilisticTensorDictModule(in_keys=["loc", "scale"], out_keys=["action"], distribution_class=TanhNormal,
                                      return_log_prob=log_prob))


def _value(seed=2, bins=None):
    torch.manual_seed(seed)
    if bins is None:
        return Mod(_Cat(MLP(in_features=S + D, out_features=1, num_cells=8, depth=1)), ["state", "belief"],
                   ["state_value"])
    return TensorDictSequential(
        Mod(_Cat(MLP(in_features=S + D, out_features=bins, num_cells=8, depth=1)), ["state", "belief"],
            ["state_value_logits"]),
        Mod(SymExpTwoHot(bins), ["state_value_logits"], ["state_value"]))


def _starts(*batch):
    torch.manual_seed(3)
    return TensorDict({"state": torch.randn(*batch, S), "belief": torch.randn(*batch, D)}, list(batch))


def test_lambda_returns_with_continuation_weights_hand_computed():
    env, _ = _env(reward_module=_Const(1.0))
    cont = Mod(_Const(0.5), ["state", "belief"], ["continuation"])
    value = Mod(_Const(10.0), ["state", "belief"], ["state_value"])
    loss = DreamerV3ActorLoss(_actor(), value, env, continuation_model=cont, imagination_horizon=3,
                              entropy_bonus=0.0, return_normalization=False)
    loss.make_value_estimator(ValueEstimators.TDLambda, gamma=1.0, lmbda=0.5)
    _, fake = loss(_starts(2))
    # r = 1, v = 10, c = 0.5, gamma 1, lambda 0.5: R_2 = 1 + 0.5 * 10 = 6, R_1 = 1 + 0.5 * (5 + 3) = 5,
    # R_0 = 1 + 0.5 * (5 + 2.5) = 4.75; weights cumprod(c(s_0), c(s_1), c(s_2)) = 0.5, 0.25, 0.125
    torch.testing.assert_close(fake["lambda_target"][0, :, 0], torch.tensor([4.75, 5.0, 6.0]))
    torch.testing.assert_close(fake["discount_weight"][1, :, 0], torch.tensor([0.5, 0.25, 0.125]))
    # without a continuation model and gamma 0.5: R_t = 1 + 0.5 * (0.5 * 10 + 0.5 * R_{t+1}), R_3 = 10
    loss = DreamerV3ActorLoss(_actor(), value, env, imagination_horizon=3, return_normalization=False)
    loss.make_value_estimator(ValueEstimators.TDLambda, gamma=0.5, lmbda=0.5)
    _, fake = loss(_starts(2))
    r2 = 1 + 0.5 * 10
    r1 = 1 + 0.5 * (5 + 0.5 * r2)
    r0 = 1 + 0.5 * (5 + 0.5 * r1)
    torch.testing.assert_close(fake["lambda_target"][0, :, 0], torch.tensor([r0, r1, r2]))
    torch.testing.assert_close(fake["discount_weight"][0, :, 0], torch.tensor([1.0, 0.5, 0.25]))


def test_return_normalisation_over_all_b_t_h_returns():
    env, _ = _env()
    loss = DreamerV3ActorLoss(_actor(), _value(), env, imagination_horizon=4, return_normalization_rate=1.0)
    losses, fake = loss(_starts(3, 5))  # B x T = 3 x 5 start latents, H = 4
    returns = fake["lambda_target"]
    assert returns.shape == (3, 5, 4, 1)
    low, high = torch.quantile(returns.flatten(), torch.tensor([0.05, 0.95]))
    torch.testing.assert_close(loss.return_low, low)
    torch.testing.assert_close(loss.return_high, high)
    torch.testing.assert_close(losses["return_scale"], (high - low).clamp_min(1.0))
    # the EMA: rate 0.01 moves 1% of the way from the stored statistics; the floor of 1 holds
    loss.retnorm.rate = 0.01
    before_low, before_high = loss.return_low.clone(), loss.return_high.clone()
    losses, fake = loss(_starts(3, 5))
    low2, high2 = torch.quantile(fake["lambda_target"].flatten(), torch.tensor([0.05, 0.95]))
    torch.testing.assert_close(loss.return_low, before_low + 0.01 * (low2 - before_low))
    torch.testing.assert_close(loss.return_high, before_high + 0.01 * (high2 - before_high))
    assert losses["return_scale"] >= 1.0
    # the statistics checkpoint
    state = loss.state_dict()
    assert {"retnorm.low", "retnorm.high"} <= set(state)
    other = DreamerV3ActorLoss(_actor(), _value(), env, imagination_horizon=4)
    other.load_state_dict(state)
    torch.testing.assert_close(other.return_high, loss.return_high)


def test_return_scale_divides_the_reparameterised_objective():
    env, _ = _env()
    loss = DreamerV3ActorLoss(_actor(), _value(), env, imagination_horizon=3, entropy_bonus=0.0,
                              discount_loss=False).eval()
    loss.return_low.fill_(-2.0)
    loss.return_high.fill_(8.0)
    torch.manual_seed(5)
    losses, fake = loss(_starts(4))
    torch.testing.assert_close(losses["loss_actor"], -(fake["lambda_target"] / 10.0).mean())


def _all_grads_none(module):
    return all(p.grad is None for p in module.parameters())


@pytest.mark.parametrize("use_reinforce", [False, True])
def test_actor_loss_reaches_only_the_actor(use_reinforce):
    env, _prior = _env()
    actor, value = _actor(log_prob=True), _value()
    cont = Mod(_Const(0.9), ["state", "belief"], ["continuation"])
    loss = DreamerV3ActorLoss.from_paper(actor, value, env, continuation_model=cont, imagination_horizon=3,
                                         use_reinforce=use_reinforce)
    losses, fake = loss(_starts(4))
    losses["loss_actor"].backward()
    assert sum(p.grad.abs().sum() for p in actor.parameters() if p.grad is not None) > 0
    assert _all_grads_none(env) and _all_grads_none(value) and _all_grads_none(cont)
    assert all(p.requires_grad for p in (*env.parameters(), *value.parameters(), *cont.parameters()))
    assert not fake["discount_weight"].requires_grad and not fake["lambda_target"].requires_grad
    assert "action_log_prob" in fake


def test_value_loss_reaches_only_the_critic():
    env, _ = _env()
    actor, value = _actor(), _value(bins=255)
    actor_loss = DreamerV3ActorLoss.from_paper(actor, value, env, imagination_horizon=3)
    value_loss = DreamerV3ValueLoss.from_paper(value, actor_loss=actor_loss)
    SoftUpdate(value_loss, tau=0.02)
    _, fake = actor_loss(_starts(4))
    losses, _ = value_loss(fake)
    losses["loss_value"].backward()
    assert sum(p.grad.abs().sum() for p in value.parameters() if p.grad is not None) > 0
    assert _all_grads_none(actor) and _all_grads_none(env)
    assert all(p.grad is None for p in value_loss.target_value_model_params.values(True, True))


def test_imagination_matches_torchrl_with_a_continuation_model():
    """Same networks, same seed: TorchRL's env.rollout and our tensor loop give the same returns and loss."""
    env, _ = _env()
    actor, value = _actor(), _value()
    cont = Mod(_Cat(nn.Sequential(nn.Linear(S + D, 1), nn.Sigmoid())), ["state", "belief"], ["continuation"])
    kw = {"continuation_model": cont, "imagination_horizon": 4, "entropy_bonus": 0.0}
    ours, theirs = DreamerV3ActorLoss(actor, value, env, **kw), TorchRLActorLoss(actor, value, env, **kw)
    for loss in (ours, theirs):
        loss.make_value_estimator(ValueEstimators.TDLambda, gamma=0.99, lmbda=0.95)
    starts = _starts(5)
    torch.manual_seed(7)
    lo, fo = ours(starts)
    torch.manual_seed(7)
    lt, ft = theirs(starts)
    for key in ("lambda_target", "discount_weight", "action", ("next", "state"), ("next", "reward")):
        torch.testing.assert_close(fo[key], ft[key])
    torch.testing.assert_close(lo["loss_actor"], lt["loss_actor"])
    torch.testing.assert_close(lo["return_high"], lt["return_high"])


def test_actor_loss_bad_input_named():
    env, _ = _env()
    loss = DreamerV3ActorLoss(_actor(), _value(), env, imagination_horizon=2)
    with pytest.raises(KeyError, match="start latents"):
        loss(TensorDict({"observation": torch.randn(3, 4)}, [3]))
    with pytest.raises(ValueError, match="imagination_horizon"):
        DreamerV3ActorLoss(_actor(), _value(), env, imagination_horizon=0)
    with pytest.raises(TypeError, match="world_model"):
        DreamerV3ActorLoss(_actor(), _value(), object())


# ------------------------------------------------------------------ value loss
def test_slow_critic_ema_and_regulariser():
    value = _value(bins=255)
    loss = DreamerV3ValueLoss.from_paper(value)
    updater = SoftUpdate(loss, tau=0.02)
    # the slow critic's head predicts 0 (zero output layer: uniform logits decode to exactly 0)
    slow_last = [p for p in loss.target_value_model_params.values(True, True)]
    with torch.no_grad():
        for p in slow_last[-2:]:
            p.zero_()
    td = TensorDict({"state": torch.randn(4, 3, S), "belief": torch.randn(4, 3, D),
                     "lambda_target": torch.full((4, 3, 1), 2.0), "discount_weight": torch.ones(4, 3, 1)}, [4, 3])
    losses, _ = loss(td)
    logits = value(td.select("state", "belief").clone())["state_value_logits"]
    bins = loss.value_bins
    expected_slow = two_hot_cross_entropy(logits, torch.zeros(4, 3), bins).mean()
    expected = (two_hot_cross_entropy(logits, torch.full((4, 3), 2.0), bins)).mean() + expected_slow
    torch.testing.assert_close(losses["value_slow_loss"], expected_slow)
    torch.testing.assert_close(losses["loss_value"], expected)
    # the EMA: slow <- 0.98 slow + 0.02 online
    online = next(iter(loss.value_model_params.values(True, True)))
    slow = next(iter(loss.target_value_model_params.values(True, True)))
    before = slow.clone()
    updater.step()
    torch.testing.assert_close(slow, 0.98 * before + 0.02 * online.detach())
    # checkpointed
    assert any(key.startswith("target_value_model_params") for key in loss.state_dict())


def test_replay_value_target_hand_computed():
    value = Mod(nn.Linear(S, 1), ["state"], ["state_value"])
    loss = DreamerV3ValueLoss(value, reduction="none")
    with torch.no_grad():
        value.module.weight.zero_()
        value.module.bias.fill_(5.0)  # v = 5 everywhere
    replay = TensorDict({
        "state": torch.randn(1, 4, S), "bootstrap": torch.tensor([[10.0, 20.0, 30.0, 40.0]]),
        "next": {"reward": torch.tensor([[[0.0], [1.0], [2.0], [3.0]]]),
                 "done": torch.zeros(1, 4, 1, dtype=torch.bool), "terminated": torch.zeros(1, 4, 1, dtype=torch.bool)},
    }, [1, 4])
    out = loss.replay_value_loss(replay, horizon=2.0, lmbda=0.5)["loss_replay_value"]
    # gamma 0.5: R_2 = 3 + 0.5 * 40 = 23, R_1 = 2 + 0.5 * (15 + 11.5) = 15.25, R_0 = 1 + 0.5 * (10 + 7.625) = 9.8125
    targets = torch.tensor([[9.8125, 15.25, 23.0]])
    torch.testing.assert_close(out, (symlog(torch.tensor(5.0)) - symlog(targets)).square())


def test_value_loss_bad_input_named():
    with pytest.raises(ValueError, match="num_bins"):
        DreamerV3ValueLoss(_value(), num_value_bins=1)
    with pytest.raises(ValueError, match="symlog_mse"):
        DreamerV3ValueLoss(_value(), value_loss="mse")
    loss = DreamerV3ValueLoss(_value(bins=17), value_loss="two_hot")
    td = TensorDict({"state": torch.randn(4, S), "belief": torch.randn(4, D), "lambda_target": torch.randn(4, 1)}, [4])
    with pytest.raises(ValueError, match="num_value_bins=255"):
        loss(td)


def test_functions_bad_input_named():
    with pytest.raises(ValueError, match="num_bins"):
        symexp_bins(1)
    with pytest.raises(ValueError, match="bins"):
        two_hot_encode(torch.zeros(3), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="logits"):
        two_hot_decode(torch.zeros(2, 4), torch.tensor([-1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="target"):
        two_hot_cross_entropy(torch.zeros(2, 3), torch.zeros(3), torch.tensor([-1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="num_categoricals, num_classes"):
        categorical_kl_terms(torch.zeros(2, 3, 4), torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="unimix"):
        categorical_kl_terms(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), unimix=1.0)


class _OpaqueModule(Mod):
    """A TensorDictModule with its own forward: the loss must call it through a tensordict."""

    def forward(self, tensordict, *args, **kwargs):
        return super().forward(tensordict, *args, **kwargs)


def test_modules_that_are_not_tensor_programs_run_through_tensordicts():
    env, prior = _env()
    actor, value = _actor(), _value()
    fast = DreamerV3ActorLoss(actor, value, env, imagination_horizon=3, entropy_bonus=0.0)
    opaque_transition = _OpaqueModule(prior, in_keys=["state", "belief", "action"], out_keys=["_", "state", "belief"])
    slow_env = DreamerEnv(WorldModelWrapper(opaque_transition, env.world_model[1]), prior_shape=(S,),
                          belief_shape=(D,))
    slow = DreamerV3ActorLoss(actor, value, slow_env, imagination_horizon=3, entropy_bonus=0.0)
    assert fast._parts["transition_program"] is not None and slow._parts["transition_program"] is None
    starts = _starts(4)
    torch.manual_seed(11)
    fast_losses, fast_fake = fast(starts)
    torch.manual_seed(11)
    slow_losses, slow_fake = slow(starts)
    torch.testing.assert_close(fast_fake["lambda_target"], slow_fake["lambda_target"])
    torch.testing.assert_close(fast_losses["loss_actor"], slow_losses["loss_actor"])


def test_lambda_target_without_continuation_runs_over_time_unlike_torchrl():
    env, _ = _env()
    r, v = torch.ones(1, 3, 1), torch.full((1, 3, 1), 10.0)
    ours = DreamerV3ActorLoss(_actor(), _value(), env, imagination_horizon=3)
    theirs = TorchRLActorLoss(_actor(), _value(), env, imagination_horizon=3)
    for loss in (ours, theirs):
        loss.make_value_estimator(ValueEstimators.TDLambda, gamma=0.5, lmbda=0.5)
    # R_2 = 1 + 0.5 * 10 = 6, R_1 = 1 + 0.5 * (0.5 * 10 + 0.5 * 6) = 5, R_0 = 1 + 0.5 * (5 + 2.5) = 4.75
    assert ours.lambda_target(r, v).flatten().tolist() == [4.75, 5.0, 6.0]
    # TorchRL's estimator reads the trailing (feature) axis as time here: one-step targets r + gamma v
    assert theirs.lambda_target(r, v).flatten().tolist() == [6.0, 6.0, 6.0]
    # with a continuation of 1 both agree
    assert theirs.lambda_target(r, v, torch.ones_like(r)).flatten().tolist() == [4.75, 5.0, 6.0]


class _Posterior(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(D + 3, S)

    def forward(self, belief, obs):
        logits = self.head(torch.cat([belief, obs], -1)).unflatten(-1, (2, 4))
        return logits, torch.softmax(logits, -1).flatten(-2)


class _PriorAnyBatch(nn.Module):
    def __init__(self):
        super().__init__()
        self.cell, self.head = nn.Linear(S + D + A, D), nn.Linear(D, S)

    def forward(self, state, belief, action):
        belief = torch.tanh(self.cell(torch.cat([state, belief, action], -1)))
        logits = self.head(belief).unflatten(-1, (2, 4))
        return logits, torch.softmax(logits, -1).flatten(-2), belief


def _whole(module_cls, model_cls, actor_cls, value_cls, seed=0, **kw):
    torch.manual_seed(seed)
    prior, posterior, reward_net = _PriorAnyBatch(), _Posterior(), _Cat(MLP(in_features=S + D, out_features=1,
                                                                              num_cells=8, depth=1))
    nxt = [("next", "state"), ("next", "belief")]
    wm = TensorDictSequential(
        Mod(prior, ["state", "belief", "action"], [("next", "prior_logits"), "_", ("next", "belief")]),
        Mod(posterior, [("next", "belief"), ("next", "observation")], [("next", "posterior_logits"), ("next", "state")]),
        Mod(_Cat(MLP(in_features=S + D, out_features=3, num_cells=8, depth=1)), nxt, [("next", "reco_pixels")]),
        Mod(reward_net, nxt, [("next", "reward")]))
    env = DreamerEnv(WorldModelWrapper(Mod(prior, ["state", "belief", "action"], ["_", "state", "belief"]),
                                       Mod(reward_net, ["state", "belief"], ["reward"])), (S,), (D,))
    env.observation_spec = Composite(state=Unbounded(S), belief=Unbounded(D))
    env.state_spec = env.observation_spec.clone()
    env.action_spec = Bounded(-1, 1, (A,))
    env.reward_spec = Unbounded((1,))
    actor, value = _actor(seed + 1), _value(seed + 2)
    cont = Mod(_Cat(nn.Sequential(nn.Linear(S + D, 1), nn.Sigmoid())), ["state", "belief"], ["continuation"])
    model_loss = model_cls(wm, reward_two_hot=False, detach_output=False, kl_mode="separate")
    model_loss.set_keys(pixels="observation")
    actor_loss = actor_cls(actor, value, env, continuation_model=cont, imagination_horizon=3)
    actor_loss.make_value_estimator(ValueEstimators.TDLambda, gamma=1.0, lmbda=0.95)
    loss = module_cls(model_loss, actor_loss, value_cls(value, actor_loss=actor_loss), **kw)
    return loss, posterior


def _sample():
    torch.manual_seed(9)
    return TensorDict({"state": torch.zeros(2, 4, S), "belief": torch.zeros(2, 4, D), "action": torch.zeros(2, 4, A),
                       "next": {"observation": torch.randn(2, 4, 3), "reward": torch.randn(2, 4, 1),
                                "done": torch.zeros(2, 4, 1, dtype=torch.bool),
                                "terminated": torch.zeros(2, 4, 1, dtype=torch.bool)}}, [2, 4])


def test_whole_objective_matches_torchrl_and_replay_value_trains_the_representation():
    from torchrl.objectives import DreamerV3Loss as TorchRLLoss
    from torchrl.objectives import DreamerV3ValueLoss as TorchRLValueLoss

    from torchrl_rssm.objectives import DreamerV3Loss

    ours, posterior = _whole(DreamerV3Loss, DreamerV3ModelLoss, DreamerV3ActorLoss, DreamerV3ValueLoss)
    theirs, _ = _whole(TorchRLLoss, TorchRLModelLoss, TorchRLActorLoss, TorchRLValueLoss)
    torch.manual_seed(4)
    mine = ours(_sample())
    torch.manual_seed(4)
    ref = theirs(_sample())
    keys = sorted(k for k in ref.keys() if k.startswith("loss_"))  # noqa: SIM118 (a TensorDict)
    assert keys == sorted(k for k in mine.keys() if k.startswith("loss_"))  # noqa: SIM118
    for key in keys:
        torch.testing.assert_close(mine[key], ref[key])
    assert mine["loss_replay_value"] > 0
    mine["loss_replay_value"].backward()
    assert posterior.head.weight.grad.abs().sum() > 0  # the replay value reaches the representation
    with pytest.raises(ValueError, match="detach_output=False"):
        DreamerV3Loss(DreamerV3ModelLoss(ours.model_loss.world_model), ours.actor_loss, ours.value_loss)


def test_imagination_with_our_v3_prior_matches_torchrl_with_its_prior():
    """Our loss over our RSSMPriorV3 against TorchRL's loss over TorchRL's, same weights and seed."""
    from torchrl.modules import RSSMPriorV3 as TorchRLPriorV3

    from torchrl_rssm.modules import RSSMPriorV3

    def env_with(prior_cls, weights=None):
        torch.manual_seed(0)
        prior = prior_cls(action_shape=(A,), hidden_dim=16, rnn_hidden_dim=D, num_categoricals=2, num_classes=4,
                          action_dim=A, recurrent_model="block_gru", num_blocks=2, unimix=0.01)
        if weights is not None:
            prior.load_state_dict(weights)
        env, _ = _env()
        env.world_model.module[0].module = prior
        return env, prior

    theirs_env, their_prior = env_with(TorchRLPriorV3)
    ours_env, _ = env_with(RSSMPriorV3, their_prior.state_dict())
    actor, value = _actor(), _value()
    cont = Mod(_Cat(nn.Sequential(nn.Linear(S + D, 1), nn.Sigmoid())), ["state", "belief"], ["continuation"])
    kw = {"continuation_model": cont, "imagination_horizon": 4, "entropy_bonus": 0.0}
    ours = DreamerV3ActorLoss(actor, value, ours_env, **kw)
    theirs = TorchRLActorLoss(actor, value, theirs_env, **kw)
    for loss in (ours, theirs):
        loss.make_value_estimator(ValueEstimators.TDLambda, gamma=1.0, lmbda=0.95)
    starts = _starts(5)
    torch.manual_seed(3)
    lo, fo = ours(starts)
    torch.manual_seed(3)
    lt, ft = theirs(starts)
    for key in (("next", "state"), ("next", "belief"), "lambda_target", "discount_weight"):
        torch.testing.assert_close(fo[key], ft[key])
    torch.testing.assert_close(lo["loss_actor"], lt["loss_actor"])


@pytest.mark.parametrize("discrete", [False, True])
@pytest.mark.parametrize("use_reinforce", [False, True])
def test_paper_losses_on_this_package_v3_heads_and_actors(discrete, use_reinforce):
    from torchrl_rssm.modules import (
        DreamerV3BoundedNormalActor,
        DreamerV3ContinuationHead,
        DreamerV3DiscreteActor,
        DreamerV3RewardHead,
        DreamerV3ValueHead,
        RSSMPriorV3,
    )

    torch.manual_seed(0)
    prior = RSSMPriorV3(action_shape=(A,), hidden_dim=16, rnn_hidden_dim=D, num_categoricals=2, num_classes=4,
                        action_dim=A, unimix=0.01)
    reward = Mod(DreamerV3RewardHead(S + D, depth=1, num_cells=16), ["state", "belief"], ["reward_logits", "reward"])
    env = DreamerEnv(WorldModelWrapper(Mod(prior, ["state", "belief", "action"], ["_", "state", "belief"]), reward),
                     prior_shape=(S,), belief_shape=(D,))
    actor = (DreamerV3DiscreteActor(S + D, A, depth=1, num_cells=16) if discrete
             else DreamerV3BoundedNormalActor(S + D, Bounded(-1.0, 1.0, (A,)), depth=1, num_cells=16))
    value = Mod(DreamerV3ValueHead(S + D, depth=1, num_cells=16), ["state", "belief"],
                ["state_value_logits", "state_value"])
    cont = Mod(DreamerV3ContinuationHead(S + D, num_cells=16), ["state", "belief"], ["continue_pred", "continuation"])
    actor_loss = DreamerV3ActorLoss.from_paper(actor, value, env, continuation_model=cont, imagination_horizon=3,
                                               use_reinforce=use_reinforce)
    value_loss = DreamerV3ValueLoss.from_paper(value, actor_loss=actor_loss)
    SoftUpdate(value_loss, tau=0.02)
    assert actor_loss._parts["actor_program"] is not None  # the actor runs on tensors
    losses, fake = actor_loss(_starts(3, 2))
    assert fake.batch_size == (3, 2, 3) and torch.isfinite(fake["lambda_target"]).all()
    losses["loss_actor"].backward()
    assert sum(p.grad.abs().sum() for p in actor.parameters() if p.grad is not None) > 0
    assert _all_grads_none(env) and _all_grads_none(value) and _all_grads_none(cont)
    value_loss(fake)[0]["loss_value"].backward()
    assert any(p.grad is not None for p in value.parameters())
