"""PlaNet's acting policy: the contract's acting semantics, exploration noise, batches,
discrete actions, and a TorchRL collector driving it on a real Gymnasium env."""
from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from torchrl.collectors import Collector
from torchrl.data import Bounded, Composite, Unbounded
from torchrl.envs import GymEnv, InitTracker, SerialEnv, StepCounter, TransformedEnv
from torchrl.envs.utils import ExplorationType, set_exploration_type

from torchrl_rssm.modules import make_world_model
from torchrl_rssm.planners import CEMPlanner, MPPIPlanner
from torchrl_rssm.policies import PlaNetPolicy

S, D, HID, OBS = 4, 8, 8, 3
SMALL = dict(planning_horizon=3, optim_steps=2, num_candidates=20, top_k=4)


def make_policy(action_spec=None, **kw) -> PlaNetPolicy:
    torch.manual_seed(0)
    action_spec = action_spec if action_spec is not None else Bounded(-2, 2, (1,))
    wm = make_world_model(Composite(observation=Unbounded((OBS,))), action_spec, state_dim=S, belief_dim=D,
                          hidden_dim=HID)
    return PlaNetPolicy(wm, action_spec=action_spec, **{**SMALL, **kw})


def pendulum(max_steps: int = 6) -> TransformedEnv:
    env = TransformedEnv(GymEnv("Pendulum-v1"), InitTracker())
    env.append_transform(StepCounter(max_steps=max_steps))
    return env


@pytest.mark.parametrize("batched", [False, True])
def test_collector_carries_and_resets_the_belief(batched):
    """A TorchRL Collector drives the policy unchanged on Pendulum-v1; two episodes of 6 steps."""
    torch.manual_seed(0)
    env = SerialEnv(2, pendulum) if batched else pendulum()
    env = TransformedEnv(env) if batched else env
    env.set_seed(0)
    policy = make_policy(env.action_spec_unbatched if batched else env.action_spec, warm_start=True)
    env.append_transform(policy.make_tensordict_primer())
    collector = Collector(env, policy, frames_per_batch=24 if batched else 12, total_frames=-1)
    try:
        data = next(iter(collector))
    finally:
        collector.shutdown()
    data = data.reshape(-1, 12) if batched else data.unsqueeze(0)  # [envs, time]
    is_init = data["is_init"].squeeze(-1)
    assert is_init[:, 0].all() and is_init[:, 6].all() and is_init.sum() == 2 * data.shape[0]
    belief, state = data["belief"], data["state"]
    h0 = policy.world_model.rollout.initial_belief()
    for episode in (slice(0, 6), slice(6, 12)):
        start, rest = episode.start, range(episode.start + 1, episode.stop)
        # episode start: h_0 = f(0, 0, a=0) and the first observation filtered, as in training
        torch.testing.assert_close(belief[:, start], h0.expand_as(belief[:, start]))
        assert (state[:, start] != 0).all()
        # the belief changes within the episode (filtered with new observations)
        assert all((belief[:, t] - belief[:, t - 1]).abs().amax(-1).gt(1e-6).all() for t in rest)
        # the carried belief is the previous step's ("next", "belief")
        for t in rest:
            torch.testing.assert_close(belief[:, t], data["next", "belief"][:, t - 1])
    assert (data["action"].abs() <= 2).all()
    assert data["plan"].shape[-2:] == (3, 1)


def test_acting_semantics_of_the_contract():
    policy = make_policy()
    wm, rollout = policy.world_model, policy.world_model.rollout
    obs = torch.randn(2, OBS)
    h = torch.randn(2, D)
    td = TensorDict(observation=obs, belief=h.clone(), is_init=torch.tensor([[True], [False]]), batch_size=[2])
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        torch.manual_seed(1)
        out = policy(td.clone())
    torch.manual_seed(1)
    with torch.no_grad():
        h0 = rollout.prior.transition(torch.zeros(1, S), torch.zeros(1, D), torch.zeros(1, 1))  # f(0, 0, a=0)
        h_t = torch.cat([h0, h[1:]])
        mean, std = rollout.posterior.stats(h_t, wm.encoder(obs))
        s_t = mean + std * torch.randn(2, S)  # the first random draw of a step
        next_belief = rollout.prior.transition(s_t, h_t, out["action"])
    # is_init: h_t = f(0, 0, 0); otherwise the carried h_t; then s_t ~ q(h_t, e(o_t)) in both cases
    torch.testing.assert_close(out["belief"], h_t)
    torch.testing.assert_close(out["state"], s_t)
    torch.testing.assert_close(out["next", "belief"], next_belief)


def test_exploration_noise_follows_the_exploration_type_and_enters_the_next_belief():
    policy = make_policy(exploration_noise=0.3)
    rollout = policy.world_model.rollout
    td = TensorDict(observation=torch.randn(64, OBS), belief=torch.randn(64, D),
                    is_init=torch.zeros(64, 1, dtype=torch.bool), batch_size=[64])
    actions = {}
    for name, kind in [("deterministic", ExplorationType.DETERMINISTIC), ("mode", ExplorationType.MODE),
                       ("random", ExplorationType.RANDOM), ("none", None)]:
        torch.manual_seed(0)
        if kind is None:  # outside any context: exploration_type() is None -> noise (TorchRL's modules do the same)
            out = policy(td.clone())
        else:
            with set_exploration_type(kind):
                out = policy(td.clone())
        actions[name] = out["action"]
        with torch.no_grad():  # the next belief uses the executed action, noise included
            expected = rollout.prior.transition(out["state"], out["belief"], out["action"])
        torch.testing.assert_close(out["next", "belief"], expected)
    torch.testing.assert_close(actions["deterministic"], actions["mode"])
    noise = actions["random"] - actions["deterministic"]
    assert noise.abs().max() > 0 and (actions["random"].abs() <= 2).all()
    inside = actions["random"].abs() < 2  # unclipped rows show the noise scale
    assert 0.15 < noise[inside].std() < 0.45
    torch.testing.assert_close(actions["none"], actions["random"])


@pytest.mark.parametrize("planner_cls", [CEMPlanner, MPPIPlanner])
def test_any_batch_dims_and_either_planner(planner_cls):
    torch.manual_seed(0)
    spec = Bounded(-1, 1, (2,))
    wm = make_world_model(Composite(observation=Unbounded((OBS,))), spec, state_dim=S, belief_dim=D, hidden_dim=HID)
    planner = planner_cls(wm, action_spec=spec, **SMALL)
    policy = PlaNetPolicy(wm, planner)
    for batch in [(), (3,), (2, 3)]:
        td = TensorDict(observation=torch.randn(*batch, OBS), is_init=torch.zeros(*batch, 1, dtype=torch.bool),
                        batch_size=batch)  # no belief yet: starts from zeros like the primer
        out = policy(td)
        assert out["action"].shape == (*batch, 2)
        assert out["state"].shape == (*batch, S) and out["next", "belief"].shape == (*batch, D)


def test_discrete_actions_on_cartpole():
    torch.manual_seed(0)
    env = TransformedEnv(GymEnv("CartPole-v1"), InitTracker())
    spec = env.action_spec  # one-hot
    wm = make_world_model(env.observation_spec, spec, state_dim=S, belief_dim=D, hidden_dim=HID)
    policy = PlaNetPolicy(wm, action_spec=spec, exploration_noise=0.5, **SMALL)
    env.append_transform(policy.make_tensordict_primer())
    data = env.rollout(5, policy)
    assert data["action"].shape == (data.shape[0], 2)
    assert (data["action"].long().sum(-1) == 1).all()
    assert (data["belief"][1:] - data["belief"][:-1]).abs().amax(-1).gt(0).all()


def test_bad_input_is_named():
    policy = make_policy()
    with pytest.raises(KeyError, match="InitTracker"):
        policy(TensorDict(observation=torch.randn(2, OBS), batch_size=[2]))
    with pytest.raises(ValueError, match="belief"):
        policy(TensorDict(observation=torch.randn(2, OBS), belief=torch.zeros(2, D + 1),
                          is_init=torch.zeros(2, 1, dtype=torch.bool), batch_size=[2]))
    with pytest.raises(ValueError, match="exploration_noise"):
        make_policy(exploration_noise=-1.0)
    with pytest.raises(ValueError, match="exploration_noise"):
        policy.exploration_noise = -0.5
    policy.exploration_noise = 0.1  # settable, as a plain attribute was
    assert policy.exploration.scale == 0.1
    with pytest.raises(TypeError, match="world_model"):
        PlaNetPolicy(object(), action_spec=Bounded(-1, 1, (1,)))
    wm = policy.world_model
    planner = CEMPlanner(wm, action_spec=Bounded(-2, 2, (1,)), state_key="s", **SMALL)
    with pytest.raises(ValueError, match="state_key"):
        PlaNetPolicy(wm, planner)


def test_primer_declares_the_latent():
    policy = make_policy(warm_start=True)
    primer = policy.make_tensordict_primer()
    assert set(primer.primers.keys()) == {"state", "belief", "plan"}
    assert primer.primers["belief"].shape[-1] == D and primer.primers["plan"].shape[-2:] == (3, 1)


def deterministic_posterior(wm) -> None:
    """Posterior std exactly 0: samples equal means, so acting and training filters are deterministic."""
    with torch.no_grad():
        wm.rollout.posterior.obs_rnn_to_post_projector[-1].bias[S:] = -1e4


def check_training_filter_reproduces(wm, data) -> None:
    """rollout.observe on the collected [T] data (is_init from the env, episodes restarting mid-sequence,
    the root observation filtered at episode starts) reproduces the latents the policy carried."""
    is_init = data["is_init"]
    with torch.no_grad():
        out = wm.rollout.observe(wm.encoder(data["next", "observation"]), data["action"], is_init=is_init,
                                 init_embedding=wm.encoder(data["observation"]))
        first = wm.rollout.initial_filtered(wm.encoder(data["observation"]))
        no_o0 = wm.rollout.observe(wm.encoder(data["next", "observation"]), data["action"], is_init=is_init)
    # step t of the filter consumes a_t and o_{t+1}: its belief is the policy's ("next", "belief") at t
    torch.testing.assert_close(out["belief"], data["next", "belief"])
    # and, where o_{t+1} does not start an episode, its state is the policy's s_{t+1}
    cont = ~is_init[..., 1:, 0]
    torch.testing.assert_close(out["state"][..., :-1, :][cont], data["state"][..., 1:, :][cont])
    # episode starts: h_0 = f(0, 0, 0) and s_0 = q(h_0, e(o_0)), the first observation filtered
    starts = is_init[..., 0]
    torch.testing.assert_close(data["belief"][starts], first["belief"][starts])
    torch.testing.assert_close(data["state"][starts], first["state"][starts])
    # the old rule (episodes start from the zero latent, o_0 never filtered) does not reproduce them
    assert (no_o0["belief"] - data["next", "belief"]).abs().max() > 1e-3


@pytest.mark.parametrize("driver", ["rollout", "collector"])
def test_acting_beliefs_equal_training_filter_on_the_collected_data(driver):
    torch.manual_seed(0)
    env = pendulum(max_steps=4) if driver == "rollout" else TransformedEnv(SerialEnv(2, lambda: pendulum(4)))
    spec = env.action_spec if driver == "rollout" else env.action_spec_unbatched
    obs_spec = Composite(observation=Unbounded((OBS,)))
    wm = make_world_model(obs_spec, spec, state_dim=S, belief_dim=D, hidden_dim=HID, min_std=0.0)
    deterministic_posterior(wm)
    policy = PlaNetPolicy(wm, action_spec=spec, warm_start=True, **SMALL)
    env.append_transform(policy.make_tensordict_primer())
    env.set_seed(0)
    if driver == "rollout":
        with set_exploration_type(ExplorationType.RANDOM):  # noisy actions: the filter must use the executed ones
            data = env.rollout(10, policy, break_when_any_done=False)
    else:  # a TorchRL Collector on two environments (RANDOM by default): data [envs, T]
        collector = Collector(env, policy, frames_per_batch=20, total_frames=-1)
        try:
            data = next(iter(collector)).reshape(2, 10)
        finally:
            collector.shutdown()
    is_init = data["is_init"][..., 0]
    assert is_init[..., 0].all() and is_init[..., 4].all() and is_init[..., 8].all()
    assert is_init.sum() == 3 * is_init[..., 0].numel()  # two resets inside each sequence
    check_training_filter_reproduces(wm, data)
