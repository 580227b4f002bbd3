"""Dreamer: actor/value modules, lambda-returns, actor and value losses (ours and TorchRL's)."""
from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.data import Bounded, Categorical, Composite, OneHot, Unbounded
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules import IndependentNormal, ProbabilisticActor, SafeModule, SafeProbabilisticModule
from torchrl.modules import SafeProbabilisticTensorDictSequential, SafeSequential, TanhNormal, WorldModelWrapper
from torchrl.modules.models.model_based import DreamerActor as TorchRLDreamerActor
from torchrl.modules.models.model_based import RSSMPrior as TorchRLPrior
from torchrl.objectives import DreamerActorLoss as TorchRLActorLoss
from torchrl.objectives import DreamerValueLoss as TorchRLValueLoss
from torchrl.objectives.value.functional import vec_td_lambda_return_estimate

from torchrl_rssm.interop import to_dreamer_env
from torchrl_rssm.modules import (DreamerActor, ValueModel, make_dreamer_actor, make_value_model, make_world_model,
                                  tanh_normal_sampler)
from torchrl_rssm.objectives import DreamerActorLoss, DreamerValueLoss, NonFiniteInputError, lambda_return

S, D, A, HID = 6, 12, 2, 16
SPEC = Bounded(-1.0, 1.0, (A,))


def _parts(seed=0):
    torch.manual_seed(seed)
    wm = make_world_model(Composite(observation=Unbounded((5,))), SPEC, state_dim=S, belief_dim=D, hidden_dim=HID)
    actor = make_dreamer_actor(SPEC, S, D, num_cells=HID)
    value = make_value_model(S, D, hidden_dim=HID)
    return wm, actor, value


def _batch(B=3, T=4):
    return TensorDict({("next", "state"): torch.randn(B, T, S), ("next", "belief"): torch.randn(B, T, D)}, [B, T])


def _reference_lambda(reward, value, bootstrap, gamma, lmbda):
    """The paper's recursion, written as a plain backward loop over dim -2."""
    H = reward.shape[-2]
    out = [None] * H
    nxt = bootstrap
    for t in reversed(range(H)):
        nxt = reward[..., t, :] + gamma * ((1 - lmbda) * value[..., t, :] + lmbda * nxt)
        out[t] = nxt
    return torch.stack(out, -2)


def _constant_heads(wm, value, c, v0):
    """Makes the reward head output c and the value output v0 everywhere."""
    with torch.no_grad():
        for net, out in ((wm.reward_model.net, c), (value.module.net, v0)):
            net[-1].weight.zero_()
            net[-1].bias.fill_(out)


# ------------------------------------------------------------------ lambda-returns
@pytest.mark.parametrize("gamma,lmbda", [(0.99, 0.95), (0.9, 0.0), (0.8, 1.0)])
def test_lambda_return_matches_reference_loop_and_torchrl_functional(gamma, lmbda):
    torch.manual_seed(0)
    r, v = torch.randn(5, 7, 1), torch.randn(5, 7, 1)
    boot = torch.randn(5, 1)
    torch.testing.assert_close(lambda_return(r, v, boot, gamma, lmbda), _reference_lambda(r, v, boot, gamma, lmbda))
    # default bootstrap v(s_H) = value[..., -1, :]; TorchRL's functional estimator agrees
    ours = lambda_return(r, v, gamma=gamma, lmbda=lmbda)
    torch.testing.assert_close(ours, _reference_lambda(r, v, v[:, -1], gamma, lmbda))
    if lmbda == 0.0:
        return  # TorchRL's vectorised estimator fails at lmbda=0 (IndexError in its filter padding)
    zeros = torch.zeros_like(r, dtype=torch.bool)
    trl = vec_td_lambda_return_estimate(gamma, lmbda, v, r, zeros, zeros, time_dim=-2)
    torch.testing.assert_close(ours, trl)


def test_lambda_return_constant_case_closed_form():
    gamma, lmbda, c, v0, H = 0.9, 0.8, 1.5, 4.0, 6
    ret = lambda_return(torch.full((2, H, 1), c), torch.full((2, H, 1), v0), gamma=gamma, lmbda=lmbda)
    a, d = c + gamma * (1 - lmbda) * v0, gamma * lmbda
    k = torch.arange(H, 0, -1, dtype=torch.float32)  # steps left: H - t
    closed = a * (1 - d ** k) / (1 - d) + d ** k * v0
    torch.testing.assert_close(ret[0, :, 0], closed)
    assert ret[0, -1, 0].item() == pytest.approx(c + gamma * v0)  # last step: one-step target
    assert (ret[0, :-1, 0] - (c + gamma * v0)).abs().min() > 0.1  # elsewhere: not the TD(0) target


def test_lambda_return_bad_shapes():
    with pytest.raises(ValueError, match="reward and value"):
        lambda_return(torch.zeros(2, 3, 1), torch.zeros(2, 4, 1))
    with pytest.raises(ValueError, match="bootstrap"):
        lambda_return(torch.zeros(2, 3, 1), torch.zeros(2, 3, 1), torch.zeros(3, 1))


def test_torchrl_actor_loss_gives_one_step_target_on_constant_case_ours_the_lambda_return():
    """TorchRL 0.14.1's DreamerActorLoss: lambda_target == r + gamma v everywhere (REFERENCE.md); ours: lambda-return."""
    wm, actor, value = _parts()
    c, v0, H, gamma, lmbda = 1.0, 10.0, 5, 0.99, 0.95
    _constant_heads(wm, value, c, v0)
    trl = TorchRLActorLoss(actor, value, to_dreamer_env(wm, SPEC), imagination_horizon=H)
    trl.make_value_estimator(gamma=gamma, lmbda=lmbda)
    ours = DreamerActorLoss(actor, value, wm, imagination_horizon=H)
    ours.make_value_estimator(gamma=gamma, lmbda=lmbda)
    start = TensorDict({"state": torch.randn(4, S), "belief": torch.randn(4, D)}, [4])
    _, trl_fake = trl(start)
    _, our_fake = ours(start)
    td0 = torch.full((4, H, 1), c + gamma * v0)
    torch.testing.assert_close(trl_fake["lambda_target"], td0)
    expected = _reference_lambda(torch.full((4, H, 1), c), torch.full((4, H, 1), v0), torch.full((4, 1), v0),
                                 gamma, lmbda)
    torch.testing.assert_close(our_fake["lambda_target"], expected)
    diff = (our_fake["lambda_target"] - trl_fake["lambda_target"]).abs()[0, :, 0]
    assert diff[-1] < 1e-4 and (diff[:-1] > 0.1).all()  # the documented difference: all steps but the last


# ------------------------------------------------------------------ modules
def test_dreamer_actor_formulas_and_torchrl_state_dict():
    torch.manual_seed(0)
    trl = TorchRLDreamerActor(A, depth=2, num_cells=8)
    ours = DreamerActor(A, depth=2, num_cells=8, in_features=S + D)
    s, b = torch.randn(10, S), torch.randn(10, D)
    trl(s, b)  # materialise TorchRL's lazy layer
    ours.load_state_dict(trl.state_dict())  # same parameter names
    trl_loc, trl_scale = trl(s, b)
    loc, scale = ours(s, b)
    torch.testing.assert_close(loc, 5 * torch.tanh(trl_loc / 5))  # the paper's mean scaling
    torch.testing.assert_close(scale, trl_scale, atol=2e-4, rtol=0)  # TorchRL's shift: std_bias - std_min_val
    x = torch.cat([s, b], -1)
    for layer in list(trl.backbone)[:-1]:
        x = layer(x)
    raw = x.chunk(2, -1)[1]
    torch.testing.assert_close(scale, nn.functional.softplus(raw + torch.log(torch.expm1(torch.tensor(5.0)))) + 1e-4)
    ours.mean_scale = None
    torch.testing.assert_close(ours(s, b)[0], trl_loc)


def test_make_dreamer_actor_samples_in_bounds_mode_deterministic_and_tensor_sampler_matches():
    spec = Bounded(torch.tensor([-2.0, 0.0]), torch.tensor([1.0, 3.0]), (2,))
    actor = make_dreamer_actor(spec, S, D, num_cells=HID)
    td = TensorDict({"state": torch.randn(64, S), "belief": torch.randn(64, D)}, [64])
    with set_exploration_type(ExplorationType.RANDOM):
        torch.manual_seed(1)
        a = actor(td.clone())["action"]
    assert a.shape == (64, 2) and (a >= spec.space.low).all() and (a <= spec.space.high).all()
    torch.manual_seed(1)
    torch.testing.assert_close(tanh_normal_sampler(actor)(td["state"], td["belief"]), a)
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        m1, m2 = actor(td.clone())["action"], actor(td.clone())["action"]
    torch.testing.assert_close(m1, m2)
    loc, _ = actor.module[0].module(td["state"], td["belief"])
    torch.testing.assert_close(m1, torch.tanh(loc) * 1.5 + torch.tensor([-0.5, 1.5]))


def test_value_model_shapes():
    value = make_value_model(S, D, hidden_dim=HID)
    out = value(TensorDict({"state": torch.zeros(3, 4, S), "belief": torch.zeros(3, 4, D)}, [3, 4]))
    assert out["state_value"].shape == (3, 4, 1)
    assert ValueModel().net[0].in_features == 230 and len(ValueModel().net) == 7  # 3 x 400 ELU + output


def test_one_hot_actor_straight_through_gradient_and_mode():
    spec = OneHot(3)
    torch.manual_seed(0)
    wm = make_world_model(Composite(observation=Unbounded((5,))), spec, state_dim=S, belief_dim=D, hidden_dim=HID)
    actor = make_dreamer_actor(spec, S, D, num_cells=HID)
    value = make_value_model(S, D, hidden_dim=HID)
    td = TensorDict({"state": torch.randn(6, S), "belief": torch.randn(6, D)}, [6])
    with set_exploration_type(ExplorationType.RANDOM):
        a = actor(td.clone())["action"]
    assert a.shape == (6, 3) and torch.allclose(a.detach().sum(-1), torch.ones(6)) and a.requires_grad
    mode = actor(td.clone())["action"]  # default: deterministic, the argmax of the logits
    logits = actor.module[0].module(td["state"], td["belief"])
    assert torch.equal(mode.argmax(-1), logits.argmax(-1))
    loss, fake = DreamerActorLoss(actor, value, wm, imagination_horizon=3)(_batch())
    loss["loss_actor"].backward()  # straight-through: gradients reach the logits' network
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in actor.parameters())
    assert all(p.grad is None for p in wm.parameters())
    assert torch.allclose(fake["action"].sum(-1), torch.ones(3, 4, 3))


@pytest.mark.parametrize("spec,match", [(Categorical(4), "OneHot"), (Unbounded((2,)), "finite bounds"),
                                        (Composite(other=SPEC), "without the key")])
def test_make_dreamer_actor_rejects_specs_it_cannot_serve(spec, match):
    with pytest.raises(ValueError, match="action_spec") as err:
        make_dreamer_actor(spec, S, D)
    assert match in str(err.value)


# ------------------------------------------------------------------ losses
def test_actor_loss_gradients_reach_only_the_actor_and_value_loss_only_the_value():
    wm, actor, value = _parts()
    frozen = wm.encoder.net[0].weight
    frozen.requires_grad_(False)  # a user's frozen parameter stays frozen
    actor_loss = DreamerActorLoss(actor, value, wm, imagination_horizon=4)
    value_loss = DreamerValueLoss(value)
    la, fake = actor_loss(_batch())
    la["loss_actor"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in actor.parameters())
    assert all(p.grad is None for p in wm.parameters()) and all(p.grad is None for p in value.parameters())
    assert all(p.requires_grad for n, p in wm.named_parameters() if p is not frozen) and not frozen.requires_grad
    assert all(p.requires_grad for p in value.parameters())
    actor.zero_grad(set_to_none=True)
    lv, _ = value_loss(fake)
    lv["loss_value"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in value.parameters())
    assert all(p.grad is None for p in wm.parameters()) and all(p.grad is None for p in actor.parameters())


def test_actor_gradient_flows_through_dynamics_reward_and_value():
    """d loss / d action is non-zero through each of reward and value (not only through the actor's own terms)."""
    wm, actor, value = _parts()
    loss = DreamerActorLoss(actor, value, wm, imagination_horizon=3)
    _constant_heads(wm, value, 0.0, 0.0)  # returns independent of the actions: no actor gradient
    loss(_batch())[0]["loss_actor"].backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in actor.parameters())
    for head in (wm.reward_model.net, value.module.net):
        wm2, actor2, value2 = _parts()
        wm2.load_state_dict(wm.state_dict()), actor2.load_state_dict(actor.state_dict())
        value2.load_state_dict(value.state_dict())
        target = wm2.reward_model.net if head is wm.reward_model.net else value2.module.net
        with torch.no_grad():
            target[-1].weight.normal_()  # only this head depends on the state
        DreamerActorLoss(actor2, value2, wm2, imagination_horizon=3)(_batch())[0]["loss_actor"].backward()
        assert sum(p.grad.abs().sum() for p in actor2.parameters()) > 0


def test_imagination_is_the_shared_engine_and_matches_a_hand_loop():
    wm, actor, value = _parts()
    loss = DreamerActorLoss(actor, value, wm, imagination_horizon=5)
    start = {"state": torch.randn(7, S), "belief": torch.randn(7, D)}
    noise = torch.randn(7, 5, S)
    torch.manual_seed(3)
    ours = loss.imagine(start, noise=noise)
    # RSSMRollout.imagine with the same noise and the same actor draws
    sampler = tanh_normal_sampler(actor)
    torch.manual_seed(3)
    ref = wm.rollout.imagine(start, policy=sampler, horizon=5, noise=noise)
    for k in ("state", "belief", "action", "prior_mean", "prior_std"):
        torch.testing.assert_close(ours[k], ref[k])
    # a hand loop with the prior's own API and TorchRL's TanhNormal actor (same RNG stream)
    torch.manual_seed(3)
    s, b = start["state"], start["belief"]
    prior = wm.rollout.prior
    with set_exploration_type(ExplorationType.RANDOM):
        for t in range(5):
            a = actor(TensorDict({"state": s, "belief": b}, [7]))["action"]
            b = prior.transition(s, b, a)
            mean, std = prior.stats(b)
            s = mean + std * noise[:, t]
            torch.testing.assert_close(ours["action"][:, t], a)
            torch.testing.assert_close(ours["state"][:, t], s)
            torch.testing.assert_close(ours["belief"][:, t], b)


@pytest.mark.parametrize("H", [1, 2, 15])
def test_imagined_horizon_and_time_alignment(H):
    wm, actor, value = _parts()
    calls = []
    actor.module[0].module.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    loss = DreamerActorLoss(actor, value, wm, imagination_horizon=H)
    loss.make_value_estimator(gamma=0.9, lmbda=0.7)
    batch = _batch(2, 3)
    _, fake = loss(batch)
    assert calls == [6] * H  # H actor steps, each on all B x T = 6 start states
    assert fake.batch_size == (2, 3, H) and fake["lambda_target"].shape == (2, 3, H, 1)
    torch.testing.assert_close(fake["state"][..., 0, :], batch["next", "state"])  # row 0 starts at s_0
    torch.testing.assert_close(fake["state"][..., 1:, :], fake["next", "state"][..., :-1, :])  # row t+1 = s_{t+1}
    ns, nb = fake["next", "state"], fake["next", "belief"]
    with torch.no_grad():
        r, v = wm.reward_model(ns, nb), value.module(ns, nb)
    torch.testing.assert_close(fake["next", "reward"], r)  # r_t: the reward head's mean on s_{t+1}
    torch.testing.assert_close(fake["next", "state_value"], v)
    # last target bootstraps from v(s_H), the value of the last imagined state
    torch.testing.assert_close(fake["lambda_target"][..., -1, :], r[..., -1, :] + 0.9 * v[..., -1, :])
    torch.testing.assert_close(fake["lambda_target"], _reference_lambda(r, v, v[..., -1, :], 0.9, 0.7))


def test_actor_loss_value_and_discount():
    wm, actor, value = _parts()
    loss = DreamerActorLoss(actor, value, wm, imagination_horizon=4)
    torch.manual_seed(0)
    la, fake = loss(_batch())
    w = 0.99 ** torch.arange(4.0)[:, None]
    expected = -(fake["lambda_target"] * w).sum((-2, -1)).mean()
    torch.testing.assert_close(la["loss_actor"].detach(), expected)
    lv, _ = DreamerValueLoss(value)(fake)
    v = value.module(fake["state"], fake["belief"]).detach()
    torch.testing.assert_close(lv["loss_value"].detach(), (w * (v - fake["lambda_target"]) ** 2).sum((-2, -1)).mean())
    lv_mean, _ = DreamerValueLoss(value, discount_loss=False, time_reduction="mean")(fake)
    torch.testing.assert_close(lv_mean["loss_value"].detach(), ((v - fake["lambda_target"]) ** 2).mean())


def test_torchrl_losses_run_on_our_world_model_and_value_loss_is_interchangeable():
    wm, actor, value = _parts()
    env = to_dreamer_env(wm, SPEC)
    trl = TorchRLActorLoss(actor, value, env, imagination_horizon=4)
    trl.make_value_estimator(gamma=0.99, lmbda=0.95)
    start = TensorDict({"state": torch.randn(5, S), "belief": torch.randn(5, D)}, [5])
    la, fake = trl(start)
    la["loss_actor"].backward()
    assert all(p.grad is not None for p in actor.parameters())
    lv_trl, _ = TorchRLValueLoss(value)(fake)
    lv_ours, _ = DreamerValueLoss(value)(fake)
    torch.testing.assert_close(lv_ours["loss_value"], lv_trl["loss_value"])  # same reduction on TorchRL's data
    _, our_fake = DreamerActorLoss(actor, value, wm, imagination_horizon=4)(start)
    lv_trl2, _ = TorchRLValueLoss(value)(our_fake.clone())
    torch.testing.assert_close(DreamerValueLoss(value)(our_fake)[0]["loss_value"], lv_trl2["loss_value"])


class _CatMLP(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n, HID), nn.ELU(), nn.Linear(HID, 1))

    def forward(self, state, belief):
        return self.net(torch.cat([state, belief], -1))


def _torchrl_dreamer_env():
    """A DreamerEnv built as TorchRL's Dreamer example builds it, with TorchRL's networks.

    Belief size = hidden size: TorchRL's RSSMPrior applies Linear(hidden, hidden) to the belief.
    """
    D = HID
    prior = TorchRLPrior(SPEC, hidden_dim=HID, rnn_hidden_dim=D, state_dim=S, action_dim=A)
    reward_net = _CatMLP(S + D)
    reward = SafeProbabilisticTensorDictSequential(
        SafeModule(reward_net, in_keys=["state", "belief"], out_keys=["loc"]),
        SafeProbabilisticModule(in_keys=["loc"], out_keys=["reward"], distribution_class=IndependentNormal,
                                distribution_kwargs={"scale": 1.0, "event_dim": 1}),
    )
    transition = SafeSequential(SafeModule(prior, in_keys=["state", "belief", "action"],
                                           out_keys=["_", "_", "state", "belief"]))
    from torchrl.envs.model_based.dreamer import DreamerEnv

    env = DreamerEnv(WorldModelWrapper(transition, reward), prior_shape=torch.Size([S]), belief_shape=torch.Size([D]))
    env.observation_spec = Composite(state=Unbounded((S,)), belief=Unbounded((D,)))
    env.state_spec = Composite(state=Unbounded((S,)), belief=Unbounded((D,)))
    env.action_spec = SPEC
    env.reward_spec = Unbounded((1,))
    return env, prior, reward_net


def test_our_losses_run_on_a_torchrl_dreamer_env_with_torchrl_modules():
    torch.manual_seed(0)
    D = HID
    env, prior, reward_net = _torchrl_dreamer_env()
    trl_actor = ProbabilisticActor(
        TensorDictModule(TorchRLDreamerActor(A, depth=2, num_cells=HID), in_keys=["state", "belief"],
                         out_keys=["loc", "scale"]),
        in_keys=["loc", "scale"], out_keys=["action"], distribution_class=TanhNormal,
        distribution_kwargs={"low": SPEC.space.low, "high": SPEC.space.high, "tanh_loc": True},
    )
    value = make_value_model(S, D, hidden_dim=HID)
    loss = DreamerActorLoss(trl_actor, value, env, imagination_horizon=3)
    start = TensorDict({"state": torch.randn(5, S), "belief": torch.randn(5, D)}, [5])
    trl_actor(start.clone())  # materialise the lazy layer
    la, fake = loss(start)
    la["loss_actor"].backward()
    assert all(p.grad is not None for p in trl_actor.parameters())
    assert all(p.grad is None for p in prior.parameters()) and all(p.grad is None for p in reward_net.parameters())
    assert fake["lambda_target"].shape == (5, 3, 1)
    # the reward is the head's mean (TorchRL's loc), not a sample
    with torch.no_grad():
        torch.testing.assert_close(fake["next", "reward"], reward_net(fake["next", "state"], fake["next", "belief"]))
    DreamerValueLoss(value)(fake)[0]["loss_value"].backward()


# ------------------------------------------------------------------ bad input
def test_bad_horizon_world_model_without_reward_head_and_bad_model():
    wm, actor, value = _parts()
    for H in (0, -1, 2.5):
        with pytest.raises(ValueError, match="imagination_horizon"):
            DreamerActorLoss(actor, value, wm, imagination_horizon=H)
    del wm.module[1]  # a world model without its reward module
    with pytest.raises(ValueError, match="no reward head"):
        DreamerActorLoss(actor, value, wm)
    env, _, _ = _torchrl_dreamer_env()
    env.world_model = env.world_model[0]  # transition only
    with pytest.raises(ValueError, match="reward head"):
        DreamerActorLoss(actor, value, env)
    with pytest.raises(TypeError, match="model_based_env"):
        DreamerActorLoss(actor, value, nn.Linear(2, 2))
    with pytest.raises(TypeError):
        DreamerActorLoss(actor, value, _parts()[0], gamma=0.9)  # TorchRL's: gamma goes to make_value_estimator
    with pytest.raises(ValueError, match="value_loss"):
        DreamerValueLoss(value, value_loss="l3")


@pytest.mark.parametrize("value_type, estimator, lmbda", [
    ("TD0", "TD0Estimator", 0.0), ("TD1", "TD1Estimator", 1.0), ("TDLambda", "TDLambdaEstimator", 0.8)])
def test_value_estimator_carries_settings_and_keys(value_type, estimator, lmbda):
    """As TorchRL's: make_value_estimator builds a value_estimator whose value key set_keys reaches."""
    from torchrl.objectives.utils import ValueEstimators

    wm, actor, value = _parts()
    loss = DreamerActorLoss(actor, value, wm, imagination_horizon=3)
    loss.set_keys(value="v_before")
    loss.make_value_estimator(ValueEstimators[value_type], gamma=0.9, lmbda=0.8)
    est = loss.value_estimator
    assert type(est).__name__ == estimator and est.tensor_keys.value == "v_before"
    assert (loss.gamma, loss.lmbda) == (0.9, lmbda) and float(est.gamma) == pytest.approx(0.9)
    if value_type == "TDLambda":
        assert float(est.lmbda) == pytest.approx(0.8)
    loss.set_keys(value="v_after")
    assert loss.value_estimator.tensor_keys.value == "v_after" and loss.tensor_keys.value == "v_after"
    # the targets follow the settings: lambda-returns with this loss's gamma and lambda
    _, fake = loss(_batch(2, 2))
    expected = lambda_return(fake["next", "reward"], fake["next", "v_after"], gamma=0.9, lmbda=lmbda)
    torch.testing.assert_close(fake["lambda_target"], expected)


def test_missing_start_latents_and_recompute_from_observations():
    wm, actor, value = _parts()
    loss = DreamerActorLoss(actor, value, wm, imagination_horizon=2)
    with pytest.raises(KeyError, match="start latents"):
        loss(TensorDict({"foo": torch.zeros(2, 3)}, [2, 3]))
    td = TensorDict({"action": torch.zeros(2, 3, A), ("next", "observation"): torch.randn(2, 3, 5)}, [2, 3])
    _, fake = loss(td)  # posterior recomputed without gradients
    assert fake.batch_size == (2, 3, 2)
    # with root observations and is_init, the recomputed starts are the model loss's: episode starts
    # filtered from their first observation (h_0 = f(0, 0, 0), s_0 ~ q(h_0, e(o_0))), not from zeros
    from torchrl_rssm.objectives import RSSMLoss

    td = TensorDict({"action": torch.randn(2, 3, A), "observation": torch.randn(2, 3, 5),
                     ("next", "observation"): torch.randn(2, 3, 5), ("next", "reward"): torch.zeros(2, 3, 1),
                     "is_init": torch.tensor([[True, False, False], [True, False, True]]).unsqueeze(-1)}, [2, 3])
    torch.manual_seed(1)
    starts = loss.start_states(td)
    torch.manual_seed(1)
    _, model_out = RSSMLoss(wm).compute(td)
    torch.testing.assert_close(starts["belief"], model_out["next", "belief"].detach())
    torch.testing.assert_close(starts["state"], model_out["next", "state"].detach())
    torch.manual_seed(1)
    zero_start = loss.start_states(td.exclude("observation"))  # no root observation: zeros at is_init
    assert not torch.allclose(zero_start["belief"], starts["belief"])


def test_nan_in_imagined_returns_raises_non_finite_error():
    wm, actor, value = _parts()
    loss = DreamerActorLoss(actor, value, wm, imagination_horizon=2)
    batch = _batch()
    batch["next", "belief"][0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteInputError, match="lambda-returns"):
        loss(batch)
    loss.check_finite = False
    assert torch.isnan(loss(batch)[1]["lambda_target"]).any()


def test_set_keys_and_torchrl_style_probabilistic_value():
    wm, _, _ = _parts()
    actor = make_dreamer_actor(SPEC, S, D, num_cells=HID, in_keys=("s", "b"))
    value_net = _CatMLP(S + D)
    value = SafeProbabilisticTensorDictSequential(  # TorchRL's Dreamer example: a Normal value head
        SafeModule(value_net, in_keys=["s", "b"], out_keys=["loc"]),
        SafeProbabilisticModule(in_keys=["loc"], out_keys=["state_value"], distribution_class=IndependentNormal,
                                distribution_kwargs={"scale": 1.0, "event_dim": 1}),
    )
    loss = DreamerActorLoss(actor, value, wm, imagination_horizon=3)
    loss.set_keys(state="s", belief="b")
    vloss = DreamerValueLoss(value)
    vloss.set_keys(state="s", belief="b")
    batch = TensorDict({("next", "s"): torch.randn(2, 3, S), ("next", "b"): torch.randn(2, 3, D)}, [2, 3])
    la, fake = loss(batch)
    assert set(fake.keys()) >= {"s", "b", "action", "lambda_target"}
    with torch.no_grad():  # the value's mean (loc), not a sample
        torch.testing.assert_close(fake["next", "state_value"], value_net(fake["next", "s"], fake["next", "b"]))
    la["loss_actor"].backward()
    vloss(fake)[0]["loss_value"].backward()
    assert all(p.grad is not None for p in value_net.parameters())


# ------------------------------------------------------------------ mixed precision
def _losses_and_grads(autocast_dtype, seed=3):
    wm, actor, value = _parts()
    actor_loss = DreamerActorLoss(actor, value, wm, imagination_horizon=6, autocast_dtype=autocast_dtype)
    value_loss = DreamerValueLoss(value, autocast_dtype=autocast_dtype)
    torch.manual_seed(seed)  # the same noise (drawn in float32 either way)
    la, fake = actor_loss(_batch(4, 5))
    la["loss_actor"].backward()
    lv, _ = value_loss(fake)
    lv["loss_value"].backward()
    grads = [p.grad.clone() for p in list(actor.parameters()) + list(value.parameters())]
    return la["loss_actor"], lv["loss_value"], fake, grads


def test_bf16_autocast_losses_and_gradients_close_to_float32_with_float32_outputs():
    la32, lv32, fake32, g32 = _losses_and_grads(None)
    la16, lv16, fake16, g16 = _losses_and_grads(torch.bfloat16)
    # the loss, targets and fake_data stay float32; parameters and gradients too
    assert la16.dtype == lv16.dtype == torch.float32
    assert all(fake16.get(k).dtype == fake32.get(k).dtype for k in fake32.keys(True, True))
    assert all(g.dtype == torch.float32 for g in g16)
    assert not torch.equal(la16, la32)  # autocast did something
    torch.testing.assert_close(la16, la32, rtol=1e-2, atol=0)  # measured ~0.3%
    torch.testing.assert_close(lv16, lv32, rtol=1e-2, atol=0)
    torch.testing.assert_close(fake16["lambda_target"], fake32["lambda_target"], rtol=0, atol=2e-2)  # ~4e-3
    for a, b in zip(g16, g32):  # each parameter's gradient: relative error of the tensor < 2.5% (measured <1%)
        assert (a - b).norm() <= 2.5e-2 * b.norm(), ((a - b).norm() / b.norm()).item()


def test_autocast_default_off_and_bad_dtype():
    wm, actor, value = _parts()
    assert DreamerActorLoss(actor, value, wm).autocast_dtype is None and DreamerValueLoss(value).autocast_dtype is None
    with pytest.raises(ValueError, match="autocast_dtype"):
        DreamerActorLoss(actor, value, wm, autocast_dtype=torch.float64)
    with pytest.raises(ValueError, match="autocast_dtype"):
        DreamerValueLoss(value, autocast_dtype="bf16")


def _update_grads(compile, seeds=(3, 4), H=2):
    wm, actor, value = _parts()
    actor_loss = DreamerActorLoss(actor, value, wm, imagination_horizon=H, compile=compile)
    value_loss = DreamerValueLoss(value, compile=compile)
    out = []
    for seed in seeds:  # a second call runs the cached graph
        torch.manual_seed(seed)
        la, fake = actor_loss(_batch(2, 3))
        la["loss_actor"].backward()
        lv, _ = value_loss(fake)
        lv["loss_value"].backward()
        out.append((la["loss_actor"].detach(), lv["loss_value"].detach(), fake.detach(),
                    [p.grad.clone() for p in list(actor.parameters()) + list(value.parameters())]))
        assert all(p.grad is None for p in wm.parameters())
        actor.zero_grad(set_to_none=True), value.zero_grad(set_to_none=True)
    return out


def test_compiled_losses_match_eager_same_noise_and_gradients():
    """compile= traces imagination + heads (actor loss) and the value loss; same random stream as eager.

    aot_eager here for speed (it runs AOTAutograd's forward/backward split); inductor was checked by hand.
    """
    eager = _update_grads(False)
    compiled = _update_grads({"backend": "aot_eager", "fullgraph": True})
    for (la, lv, fake, grads), (la_c, lv_c, fake_c, grads_c) in zip(eager, compiled):
        torch.testing.assert_close(la_c, la)
        torch.testing.assert_close(lv_c, lv)
        torch.testing.assert_close(fake_c["lambda_target"], fake["lambda_target"])
        torch.testing.assert_close(fake_c["action"], fake["action"])
        for g_c, g in zip(grads_c, grads):
            torch.testing.assert_close(g_c, g)
    assert not torch.equal(eager[0][0], eager[1][0])  # the two calls differ (fresh noise)


def test_compile_bad_arguments():
    wm, actor, value = _parts()
    with pytest.raises(TypeError, match="compile"):
        DreamerActorLoss(actor, value, wm, compile="inductor")
    with pytest.raises(TypeError, match="compile"):
        DreamerValueLoss(value, compile="inductor")
    one_hot = make_dreamer_actor(OneHot(3), S, D, num_cells=HID)
    with pytest.raises(ValueError, match="compile needs a TanhNormal actor"):
        DreamerActorLoss(one_hot, value, wm, compile=True)
