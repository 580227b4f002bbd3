"""PlaNet's planners and acting policy on a DreamerV3 world model (categorical latents, two-hot
reward head, continuation head), through the one imagination loop that RSSMRolloutV3 imagines
with: a hand-built problem with a known best action, CEM and MPPI over 1 and several envs, the
policy in a TorchRL env, and the engine path against the rollout's own imagination."""
from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule, TensorDictSequential
from torchrl.data import Bounded

from torchrl_rssm.modules import (
    DreamerV3ContinuationHead,
    DreamerV3MLP,
    DreamerV3RewardHead,
    DreamerV3VectorEncoder,
    RSSMPosteriorV3,
    RSSMPriorV3,
    RSSMRolloutV3,
    RSSMWorldModel,
    filter_step,
    imagine,
    symexp_bins,
)
from torchrl_rssm.modules.rssm import rollout_prior
from torchrl_rssm.planners import CEMPlanner, MPPIPlanner, TensorReturns
from torchrl_rssm.policies import BeliefFilter, PlaNetPolicy

# ------------------------------------------------- a hand-built V3 model with a known best action
# One categorical of K = 5 classes; the belief is h' = tanh(a) (a 1-D action in [-1, 1]) and the
# prior puts class k where h' is nearest to tanh(CENTERS[k]), sharply (so the draw is the mode).
# The two-hot reward head pays REWARD_BINS[k] (a symexp bin) in class k; the continuation head
# says class 4 ends the episode. Without continuation the best action is in class 4 (a > 0.712);
# with it, class 3 (0.235 < a < 0.712): the last step may take class 4's reward, earlier ones not.
K, CENTERS = 5, torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0])
REWARD_BINS = [128, 129, 130, 132, 134]
CLASS3 = (0.235, 0.712)
CLASS4 = 0.712
BOX = Bounded(-1, 1, (1,))


def hand_built_model():
    prior = RSSMPriorV3(action_shape=(1,), hidden_dim=2, rnn_hidden_dim=1, num_categoricals=1, num_classes=K,
                        action_dim=1)
    reward = DreamerV3RewardHead(K + 1, depth=0)
    continuation = DreamerV3ContinuationHead(K + 1, depth=0)
    with torch.no_grad():
        for p in [*prior.parameters(), *reward.parameters(), *continuation.parameters()]:
            p.zero_()
        first = prior.action_state_projector[0]  # x = silu(a + 10) ~ a + 10 (the state is ignored)
        first.weight[0, K] = 1.0
        first.bias[0] = 10.0
        gru = prior.rnn  # reset, update, candidate rows; no hidden-side weights: h' = (1 - z) n, z ~ 0
        gru.bias_ih[1] = -30.0
        gru.weight_ih[2, 0], gru.bias_ih[2] = 1.0, -10.0  # n = tanh(x - 10) ~ tanh(a)
        head1, head2 = prior.rnn_to_prior_projector[0], prior.rnn_to_prior_projector[2]
        head1.weight[0, 0], head1.bias[0] = 1.0, 10.0  # y = silu(h + 10) ~ h + 10
        c, beta = torch.tanh(CENTERS), 200.0  # logits_k = -beta (h - c_k)^2 + (terms equal for every k)
        head2.weight[:, 0] = 2 * beta * c
        head2.bias.copy_(-beta * (20 * c + c**2))
        out = reward.mlp.model[-1]
        for k, b in enumerate(REWARD_BINS):
            out.weight[b, k] = 50.0  # class k: all the mass on bin REWARD_BINS[k]
        cont = continuation.mlp.model[-1]
        cont.weight[0, :K] = torch.tensor([30.0, 30.0, 30.0, 30.0, -30.0])
    return prior, reward, continuation


def class_of(prior, action):
    """The class the prior's mode puts an action's latent in (one step from the zero latent)."""
    n = action.shape[0]
    logits = prior.logits(prior.transition(torch.zeros(n, K), torch.zeros(n, 1), action))
    return logits.argmax(-1).squeeze(-1)


def test_the_hand_built_model_is_what_it_claims():
    prior, reward, continuation = hand_built_model()
    bins = symexp_bins()
    actions = torch.tensor([[-0.9], [-0.4], [0.1], [0.5], [0.9]])
    with torch.no_grad():
        classes = class_of(prior, actions)
        latent = torch.nn.functional.one_hot(classes, K).float()
        values = reward(latent, torch.zeros(5, 1))[1].squeeze(-1)
        alive = continuation(latent, torch.zeros(5, 1))[1].squeeze(-1)
    assert classes.tolist() == [0, 1, 2, 3, 4]
    torch.testing.assert_close(values, bins[REWARD_BINS], rtol=1e-4, atol=1e-4)
    assert (alive[:4] > 0.999).all() and alive[4] < 1e-3


@pytest.mark.parametrize("planner_cls", [CEMPlanner, MPPIPlanner])
@pytest.mark.parametrize("num_envs", [1, 3])
@pytest.mark.parametrize("with_continuation", [False, True])
def test_plan_on_a_v3_model_finds_the_best_action(planner_cls, num_envs, with_continuation):
    torch.manual_seed(0)
    prior, reward, continuation = hand_built_model()
    model = (prior, reward, continuation) if with_continuation else (prior, reward)
    kw = {"temperature": 20.0} if planner_cls is MPPIPlanner else {"top_k": 50}
    planner = planner_cls(model, planning_horizon=4, optim_steps=8, num_candidates=500, action_spec=BOX, **kw)
    assert isinstance(planner.returns_model, TensorReturns)  # the shared loop, not the Gaussian fused scorer
    state = torch.nn.functional.one_hot(torch.randint(K, (num_envs,)), K).float()  # any start: it is ignored
    action = planner.plan(state, torch.randn(num_envs, 1))
    assert action.shape == (num_envs, 1)
    if with_continuation:  # class 3 now, class 4 only at the last step
        assert ((action > CLASS3[0]) & (action < CLASS3[1])).all(), action
    else:
        assert (action > CLASS4).all(), action


def test_continuation_weights_rewards_by_the_probability_of_still_running():
    prior, reward, continuation = hand_built_model()
    r = symexp_bins()[REWARD_BINS]
    returns = TensorReturns(prior, reward, continuation=continuation)
    # per step: class 3, class 4 (ends the episode), class 3, class 3
    actions = torch.tensor([0.5, 0.9, 0.5, 0.5]).reshape(1, 1, 4, 1)
    with torch.no_grad():
        got = returns(torch.zeros(1, K), torch.zeros(1, 1), actions)
        plain = TensorReturns(prior, reward)(torch.zeros(1, K), torch.zeros(1, 1), actions)
    torch.testing.assert_close(got, (r[3] + r[4]).reshape(1, 1), rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(plain, (3 * r[3] + r[4]).reshape(1, 1), rtol=1e-3, atol=1e-3)


# -------------------------------------------------------------- random V3 networks
C, KK, D, HID, A, OBS = 3, 4, 16, 16, 2, 3


def v3_networks(core: str = "block_gru", unimix: float = 0.01, seed: int = 0, action_dim: int = A):
    torch.manual_seed(seed)
    prior = RSSMPriorV3(action_shape=(action_dim,), hidden_dim=HID, rnn_hidden_dim=D, num_categoricals=C,
                        num_classes=KK, action_dim=action_dim, recurrent_model=core, num_blocks=4, unimix=unimix)
    post = RSSMPosteriorV3(hidden_dim=HID, num_categoricals=C, num_classes=KK, rnn_hidden_dim=D, obs_embed_dim=HID,
                           unimix=unimix)
    reward = DreamerV3RewardHead(C * KK + D, num_cells=HID, outscale=1.0)  # nonzero, to compare numbers
    continuation = DreamerV3ContinuationHead(C * KK + D, num_cells=HID)
    return prior, post, reward, continuation


@pytest.mark.parametrize("core", ["gru", "block_gru"])
def test_engine_path_equals_the_v3_rollouts_imagination_for_fixed_noise(core):
    prior, post, reward, continuation = v3_networks(core)
    rollout = RSSMRolloutV3(prior, post)
    M, N, H = 2, 3, 5
    state = torch.nn.functional.one_hot(torch.randint(KK, (M, C)), KK).float().flatten(-2)
    belief = torch.randn(M, D)
    actions = torch.rand(M, N, H, A) * 2 - 1
    uniform = torch.rand(M, N, H, C)
    with torch.no_grad():
        scored = TensorReturns(prior, reward, continuation=continuation)(
            state, belief, actions, noise=uniform.reshape(M * N, H, C).transpose(0, 1))
        start = {"state": state.repeat_interleave(N, 0).view(M, N, -1),
                 "belief": belief.repeat_interleave(N, 0).view(M, N, -1)}
        own = rollout.imagine(start, action=actions, uniform=uniform)  # [M, N, H, ...]
        r = reward(own["state"], own["belief"])[1].squeeze(-1)
        c = continuation(own["state"], own["belief"])[1].squeeze(-1)
        alive = torch.cat([torch.ones(M, N, 1), c[..., :-1].cumprod(-1)], -1)
        expected = (r * alive).sum(-1)
        # and the step core by hand: one imagine_step after another
        s, h = start["state"].reshape(M * N, -1), start["belief"].reshape(M * N, -1)
        for t in range(H):
            w, a_in = prior.project_action(actions.reshape(M * N, H, A)[:, t])
            belief_t = prior.transition_projected(s, h, a_in, w)
            s, h = prior.sample(prior.logits(belief_t), uniform.reshape(M * N, H, C)[:, t]), belief_t
        assert torch.equal(own["state"][:, :, -1].reshape(M * N, -1), s)
        assert torch.equal(own["belief"][:, :, -1].reshape(M * N, -1), h)
    torch.testing.assert_close(scored, expected, rtol=1e-5, atol=1e-5)
    assert set(own) == {"state", "belief", "prior_logits", "action"}
    # the module-level loop is the rollout's: same outputs, any batch dims
    direct = imagine(prior, start, action=actions, noise=uniform)
    for key in own:
        assert torch.equal(direct[key], own[key])


def test_shared_loop_on_v3_is_differentiable_and_follows_modes():
    prior, _, reward, _ = v3_networks("gru", unimix=0.0)
    state, belief = torch.zeros(4, C * KK), torch.randn(4, D)
    actor = torch.nn.Linear(C * KK + D, A)
    out = imagine(prior, {"state": state, "belief": belief},
                  policy=lambda s, h: torch.tanh(actor(torch.cat([s, h], -1))), horizon=6)
    assert out["state"].shape == (4, 6, C * KK) and out["prior_logits"].shape == (4, 6, C, KK)
    assert torch.equal(out["state"].detach().reshape(4, 6, C, KK).sum(-1), torch.ones(4, 6, C))
    reward(out["state"], out["belief"])[1].sum().backward()  # straight-through gradients reach the actor
    assert actor.weight.grad is not None and actor.weight.grad.abs().sum() > 0
    with torch.no_grad():
        modes = rollout_prior(prior, state, belief, action=torch.zeros(3, 4, A), sample=False)
    expected = torch.nn.functional.one_hot(modes["prior_logits"].argmax(-1), KK).float().flatten(-2)
    assert torch.equal(modes["state"], expected)


def v3_world_model(seed: int = 0) -> tuple[RSSMWorldModel, DreamerV3ContinuationHead]:
    prior, post, reward, continuation = v3_networks(seed=seed, action_dim=1)  # Pendulum's action
    transition = TensorDictSequential(
        TensorDictModule(DreamerV3VectorEncoder(OBS, depth=1, num_cells=HID), in_keys=[("next", "observation")],
                         out_keys=[("next", "encoded_latents")]),
        RSSMRolloutV3(prior, post),
        TensorDictModule(DreamerV3MLP(C * KK + D, OBS, depth=1, num_cells=HID), in_keys=[("next", "state"),
                         ("next", "belief")], out_keys=[("next", "reco_observation")]),
    )
    reward_module = TensorDictModule(reward, in_keys=[("next", "state"), ("next", "belief")],
                                     out_keys=[("next", "reward_logits"), ("next", "reward")])
    return RSSMWorldModel(transition, reward_module), continuation


@pytest.mark.parametrize("planner_cls", [CEMPlanner, MPPIPlanner])
@pytest.mark.parametrize("batch", [(1,), (3,), (2, 2)])
def test_planners_run_on_a_v3_world_model_over_batches(planner_cls, batch):
    wm, continuation = v3_world_model()
    planner = planner_cls(wm, planning_horizon=3, optim_steps=2, num_candidates=16, top_k=4,
                          action_spec=Bounded(-2, 2, (1,)), continuation_model=continuation, warm_start=True)
    state = torch.nn.functional.one_hot(torch.randint(KK, (*batch, C)), KK).float().flatten(-2)
    td = TensorDict(state=state, belief=torch.randn(*batch, D), batch_size=batch)
    out = planner(td)
    assert out["action"].shape == (*batch, 1) and out["plan"].shape == (*batch, 3, 1)
    assert ((out["action"] >= -2) & (out["action"] <= 2)).all()


def test_planet_policy_acts_on_a_v3_world_model_in_a_torchrl_env():
    from torchrl_rssm.envs import make_env

    wm, continuation = v3_world_model()
    env = make_env("gym:Pendulum-v1", from_pixels=False)
    policy = PlaNetPolicy(wm, action_spec=env.action_spec, planning_horizon=3, optim_steps=2, num_candidates=16,
                          top_k=4, continuation_model=continuation, warm_start=True)
    env.append_transform(policy.make_tensordict_primer())
    torch.manual_seed(0)
    data = env.rollout(5, policy)
    rollout = wm.rollout
    assert data["state"].shape == (5, C * KK) and data["belief"].shape == (5, D)
    # categorical latents: one one-hot per categorical
    assert torch.equal(data["state"].reshape(5, C, KK).sum(-1), torch.ones(5, C))
    # episode start: h_0 = f(0, 0, a=0) (observe's reset); afterwards the belief advanced by the executed action
    torch.testing.assert_close(data["belief"][0], rollout.initial_belief())
    torch.testing.assert_close(data["belief"][1:], data["next", "belief"][:-1])
    with torch.no_grad():
        advanced = rollout.prior.transition(data["state"], data["belief"], data["action"])
    torch.testing.assert_close(data["next", "belief"], advanced)


def test_belief_filter_is_one_filter_step_of_observe_per_env_step():
    wm, _ = v3_world_model()
    rollout = wm.rollout
    belief_filter = BeliefFilter(wm)
    z, h = torch.nn.functional.one_hot(torch.randint(KK, (4, C)), KK).float().flatten(-2), torch.randn(4, D)
    action, obs, u = torch.rand(4, 1) * 4 - 2, torch.randn(4, OBS), torch.rand(4, C)
    td = TensorDict(state=z, belief=h, batch_size=[4])
    with torch.no_grad():
        next_h = belief_filter.advance(td, action)["next", "belief"]  # with the executed action
        s_next, h_next = belief_filter.filter(obs, next_h, torch.zeros(4, 1, dtype=torch.bool), noise=u)
        # observe's step core on the same inputs (no reset), same posterior draw
        w, a_in = rollout.prior.project_action(action)
        pw, e_in = rollout.posterior.project_embedding(D, wm.encoder(obs))
        s_ref, h_ref, _ = filter_step(rollout.prior, rollout.posterior, z, h, torch.ones(4, 1), a_in, w, e_in, pw, u)
        # at an episode start: observe's reset (zero state, belief and action), then the posterior
        s0, h0 = belief_filter.filter(obs, h, torch.ones(4, 1, dtype=torch.bool), noise=u)
        s0_ref, h0_ref, _ = filter_step(rollout.prior, rollout.posterior, z, h, torch.zeros(4, 1),
                                        *rollout.prior.project_action(torch.zeros(4, 1))[::-1], e_in, pw, u)
    torch.testing.assert_close(h_next, h_ref)
    assert torch.equal(s_next, s_ref)
    torch.testing.assert_close(h0, h0_ref)
    assert torch.equal(s0, s0_ref)
