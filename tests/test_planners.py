"""Latent planners: known optima (linear dynamics, quadratic reward), batches, numerics,
discrete actions, warm start, the fast RSSM path against a reference loop, the TorchRL
drop-in path (DreamerEnv), bad input, torch.compile and CUDA graphs."""
from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from torch import nn
from torchrl.data import Binary, Bounded, Categorical, Composite, OneHot, Unbounded
from torchrl.envs.model_based.dreamer import DreamerEnv
from torchrl.modules import SafeModule, SafeSequential, WorldModelWrapper
from torchrl.modules.models.model_based import RSSMPrior as TorchRLRSSMPrior
from torchrl.modules.planners import MPPIPlanner as TorchRLMPPIPlanner

from torchrl_rssm.modules import RewardModel, RSSMPrior, make_world_model
from torchrl_rssm.planners import (
    CEMPlanner,
    FastRSSMReturns,
    MPPIPlanner,
    TensorReturns,
)
from torchrl_rssm.planners._common import TensorDictReturns

# ------------------------------------------------------------ a problem with a known optimum
# Linear dynamics h' = F h + G a on the belief; the "state" is the last action, so that a
# reward of the latent alone can charge the action: r = -|h'|^2 - LAM |a|^2.
# Over H steps the return is a quadratic in the stacked actions with a closed-form maximiser.
FMAT = torch.tensor([[0.9, 0.2], [-0.1, 0.95]])
GMAT = torch.tensor([[0.5, 0.0], [0.1, 0.4]])
LAM, HORIZON = 0.3, 5
BOX = Bounded(-1, 1, (2,))
TOL = 0.05  # on the first action; CEM with N=1000, K=100, I=10 lands within ~0.005 here


class LinearPrior(nn.Module):
    """TorchRL's prior convention: (state, belief, action) -> (mean, std, state, belief)."""

    state_dim = 2
    rnn_hidden_dim = 2

    def __init__(self, offset: float = 0.0):
        super().__init__()
        self.offset = offset

    def forward(self, state, belief, action):
        belief = belief @ FMAT.T + action @ GMAT.T
        return action, torch.zeros_like(action), action, belief


class QuadReward(nn.Module):
    def __init__(self, offset: float = 0.0):
        super().__init__()
        self.offset = offset

    def forward(self, state, belief):
        return self.offset - (belief**2).sum(-1, keepdim=True) - LAM * (state**2).sum(-1, keepdim=True)


def analytic_optimum(h0: torch.Tensor) -> torch.Tensor:
    """argmax of sum_t r_t: h_{t+1} = c_t + G_t a with a the stacked actions; solve the normal equations."""
    f, g = FMAT.double(), GMAT.double()
    lhs = LAM * torch.eye(2 * HORIZON, dtype=torch.float64)
    rhs = torch.zeros(2 * HORIZON, dtype=torch.float64)
    for t in range(HORIZON):
        gt = torch.zeros(2, 2 * HORIZON, dtype=torch.float64)
        for k in range(t + 1):
            gt[:, 2 * k : 2 * k + 2] = torch.linalg.matrix_power(f, t - k) @ g
        ct = torch.linalg.matrix_power(f, t + 1) @ h0.double()
        lhs += gt.T @ gt
        rhs += gt.T @ ct
    return (-torch.linalg.solve(lhs, rhs)).view(HORIZON, 2).float()


def start_beliefs(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 2, generator=g) * 2 - 1) * 0.6  # optima stay inside the [-1, 1] box


def lq_planner(cls=CEMPlanner, offset: float = 0.0, **kw):
    kw.setdefault("num_candidates", 1000)
    kw.setdefault("optim_steps", 10)
    kw.setdefault("top_k", 100)
    return cls((LinearPrior(), QuadReward(offset)), planning_horizon=HORIZON, action_spec=BOX, **kw)


def test_analytic_optimum_is_inside_the_box():
    opt = torch.stack([analytic_optimum(h) for h in start_beliefs(8)])
    assert opt.abs().max() < 0.9  # so clipping does not move the optimum


@pytest.mark.parametrize("cls", [CEMPlanner, MPPIPlanner])
def test_first_action_near_analytic_optimum(cls):
    torch.manual_seed(0)
    h0 = start_beliefs(1)
    planner = lq_planner(cls)
    td = TensorDict(state=torch.zeros(2), belief=h0[0], batch_size=[])
    action = planner(td)["action"]
    assert action.shape == (2,)
    assert (action - analytic_optimum(h0[0])[0]).abs().max() < TOL


@pytest.mark.parametrize("cls", [CEMPlanner, MPPIPlanner])
def test_eight_environments_with_different_states(cls):
    torch.manual_seed(1)
    h0 = start_beliefs(8, seed=1)
    planner = lq_planner(cls)
    td = TensorDict(state=torch.zeros(2, 4, 2), belief=h0.view(2, 4, 2), batch_size=[2, 4])
    action = planner(td)["action"]
    assert action.shape == (2, 4, 2)
    expected = torch.stack([analytic_optimum(h)[0] for h in h0]).view(2, 4, 2)
    assert (action - expected).abs().max() < TOL
    # different states -> different plans (no mixing across the batch)
    assert (expected.view(8, 2)[:, None] - expected.view(8, 2)[None]).abs().sum(-1).triu(1).max() > 0.1


@pytest.mark.parametrize("cls", [CEMPlanner, MPPIPlanner])
def test_top_k_one_is_finite(cls):
    torch.manual_seed(0)
    planner = lq_planner(cls, top_k=1, num_candidates=50)
    mean, std = planner.optimize(torch.zeros(3, 2), start_beliefs(3))
    assert torch.isfinite(mean).all() and torch.isfinite(std).all()
    assert (std >= planner.min_std).all()  # one elite: population std 0, then the lower bound


def test_mppi_finite_with_large_negative_returns():
    torch.manual_seed(0)
    h0 = start_beliefs(4)
    planner = lq_planner(MPPIPlanner, offset=-1e4 / HORIZON, temperature=1.0)  # returns around -1e4
    mean, _ = planner.optimize(torch.zeros(4, 2), h0)
    assert torch.isfinite(mean).all()
    expected = torch.stack([analytic_optimum(h)[0] for h in h0])
    assert (mean[:, 0] - expected).abs().max() < TOL


def test_torchrl_mppi_weights_overflow_where_ours_do_not():
    # The reason for the max-subtraction: exp(temperature * R) underflows to 0/0 for R ~ -1e4.
    returns = torch.tensor([-1.0e4, -1.0e4 - 1.0])
    naive = returns.exp() / returns.exp().sum()
    assert torch.isnan(naive).any()
    shifted = (returns - returns.max()).exp()
    assert torch.isfinite(shifted / shifted.sum()).all()
    assert TorchRLMPPIPlanner is not None  # the TorchRL planner with that formula exists


# ---------------------------------------------------------------------------- discrete
STEPS = torch.tensor([-1.0, 0.0, 1.0])  # action i moves the position by STEPS[i]


class WalkPrior(nn.Module):
    state_dim = 1
    rnn_hidden_dim = 1

    def forward(self, state, belief, action):
        belief = belief + (action * STEPS).sum(-1, keepdim=True)
        return belief, torch.zeros_like(belief), belief, belief


class GoalReward(nn.Module):
    def forward(self, state, belief):
        return -((belief - 2.0) ** 2)


@pytest.mark.parametrize("spec", [OneHot(3), Categorical(3)])
def test_discrete_cem_finds_best_sequence(spec):
    # From 0 to the goal 2 in 4 steps: the best sequence is (+1, +1, 0, 0) (return -1);
    # every other one of the 81 sequences returns at most -2.
    torch.manual_seed(0)
    planner = CEMPlanner((WalkPrior(), GoalReward()), 4, 6, 200, 20, action_spec=spec)
    probs, _ = planner.optimize(torch.zeros(1, 1), torch.zeros(1, 1))
    assert probs.argmax(-1).tolist() == [[2, 2, 1, 1]]
    assert torch.allclose(probs.sum(-1), torch.ones(1, 4))
    action = planner(TensorDict(state=torch.zeros(1), belief=torch.zeros(1), batch_size=[]))["action"]
    if isinstance(spec, OneHot):
        assert action.tolist() == [False, False, True] or action.tolist() == [0, 0, 1]
    else:
        assert int(action) == 2


def test_discrete_mppi_finds_best_first_action():
    torch.manual_seed(0)
    planner = MPPIPlanner((WalkPrior(), GoalReward()), temperature=3.0, planning_horizon=4, optim_steps=6,
                          num_candidates=200, top_k=20, action_spec=Categorical(3))
    probs, _ = planner.optimize(torch.zeros(2, 1), torch.zeros(2, 1))
    assert probs[:, :2].argmax(-1).tolist() == [[2, 2], [2, 2]]


# ---------------------------------------------------------------------------- warm start
class ConstantPrior(nn.Module):
    """Stationary problem: every step rewards -|a - target|^2 (the state is the action)."""

    state_dim = 2
    rnn_hidden_dim = 2

    def forward(self, state, belief, action):
        return action, torch.zeros_like(action), action, belief


TARGET = torch.tensor([0.4, -0.3])


class TargetReward(nn.Module):
    def forward(self, state, belief):
        return -((state - TARGET) ** 2).sum(-1, keepdim=True)


def test_warm_start_matches_cold_start_with_fewer_iterations():
    torch.manual_seed(0)
    kw = dict(planning_horizon=6, num_candidates=300, top_k=30, action_spec=BOX)
    model = (ConstantPrior(), TargetReward())
    zeros = torch.zeros(4, 2)
    cold, _ = CEMPlanner(model, optim_steps=8, **kw).optimize(zeros, zeros)
    few = CEMPlanner(model, optim_steps=2, **kw)
    cold_few, _ = few.optimize(zeros, zeros)
    # warm start through the tensordict path: the previous plan, shifted by one step
    warm_planner = CEMPlanner(model, optim_steps=2, warm_start=True, **kw)
    td = TensorDict(state=zeros, belief=zeros, plan=cold, is_init=torch.zeros(4, 1, dtype=torch.bool),
                    batch_size=[4])
    out = warm_planner(td)
    warm_action, warm_plan = out["action"], out["plan"]
    assert warm_plan.shape == (4, 6, 2)
    err_cold = (cold[:, 0] - TARGET).abs().max()
    err_warm = (warm_action - TARGET).abs().max()
    err_cold_few = (cold_few[:, 0] - TARGET).abs().max()
    assert err_cold < TOL and err_warm < TOL
    assert (warm_action - cold[:, 0]).abs().max() < TOL
    assert err_cold_few > err_warm  # the same 2 iterations from scratch are not there yet
    # an episode start discards the previous plan (cold start for that row)
    td = TensorDict(state=zeros, belief=zeros, plan=torch.full((4, 6, 2), 0.9),
                    is_init=torch.tensor([[True], [False], [False], [False]]), batch_size=[4])
    torch.manual_seed(0)
    a = warm_planner(td)["action"]
    assert (a[1:] - 0.9).abs().max() < (a[0] - 0.9).abs().max()
    # a row still holding the primer's zeros starts cold too, exactly like an episode start,
    # while the other rows keep their warm start
    no_plan = torch.full((4, 6, 2), 0.9)
    no_plan[0] = 0.0
    td = TensorDict(state=zeros, belief=zeros, plan=no_plan, is_init=torch.zeros(4, 1, dtype=torch.bool),
                    batch_size=[4])
    torch.manual_seed(0)
    b = warm_planner(td)["action"]
    torch.testing.assert_close(b, a)


# -------------------------------------------------------------- the fast RSSM tensor path
S, D, HID, A = 4, 8, 8, 2


def small_networks(seed: int = 0):
    torch.manual_seed(seed)
    return RSSMPrior(None, hidden_dim=HID, rnn_hidden_dim=D, state_dim=S, action_dim=A), RewardModel(S, D, HID)


def test_fast_returns_match_reference_loop_with_the_same_noise():
    prior, reward = small_networks()
    M, N, H = 3, 5, 4
    state, belief = torch.randn(M, S), torch.randn(M, D)
    actions = torch.rand(M, N, H, A) * 2 - 1
    noise = torch.randn(H, M, N, S)
    with torch.no_grad():
        fast = FastRSSMReturns(prior, reward)(state, belief, actions, noise=noise)
        # reference: the prior's own forward, one step at a time, candidates flattened
        s = state.repeat_interleave(N, 0)
        h = belief.repeat_interleave(N, 0)
        total = torch.zeros(M * N)
        for t in range(H):
            mean, std, _, h = prior(s, h, actions.reshape(M * N, H, A)[:, t])
            s = mean + std * noise[t].reshape(M * N, S)
            total += reward(s, h).squeeze(-1)
        means_only = FastRSSMReturns(prior, reward, sample=False)(state, belief, actions)
        generic = TensorReturns(prior, reward, sample=False)(state, belief, actions)
        fast_model = FastRSSMReturns(prior, reward)
        plain = fast_model.rollout(fast_model.weights(), state, belief, actions, noise)  # what compile traces
        plain_means = fast_model.rollout(fast_model.weights(), state, belief, actions, None)
    assert fast.shape == (M, N)
    torch.testing.assert_close(fast, total.view(M, N), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(plain, total.view(M, N), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(means_only, generic, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(plain_means, generic, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("update", ["sgd", "fused_adam", "data_edit", "load_state_dict", "reward_only"])
def test_fast_returns_follow_weight_updates(update):
    # the folded weights must follow every kind of update, including those that leave no
    # version bump (fused optimisers, .data edits as in Polyak averaging)
    prior, reward = small_networks()
    fast, generic = FastRSSMReturns(prior, reward, sample=False), TensorReturns(prior, reward, sample=False)
    state, belief, actions = torch.randn(2, S), torch.randn(2, D), torch.rand(2, 3, 4, A) * 2 - 1
    params = [*prior.parameters(), *reward.parameters()]
    with torch.no_grad():
        before = fast(state, belief, actions)
    if update in ("sgd", "fused_adam"):
        opt = (torch.optim.SGD(params, lr=0.5) if update == "sgd" else torch.optim.Adam(params, lr=0.1, fused=True))
        sum(q.square().sum() for q in params).backward()
        opt.step()
    elif update == "data_edit":
        for q in params:
            q.data.mul_(0.5).add_(0.1)
    elif update == "load_state_dict":
        prior.load_state_dict(small_networks(seed=3)[0].state_dict())
    else:
        reward.load_state_dict(small_networks(seed=3)[1].state_dict())
    with torch.no_grad():
        after = fast(state, belief, actions)
        torch.testing.assert_close(after, generic(state, belief, actions), rtol=1e-5, atol=1e-5)
    assert (after - before).abs().max() > 1e-3


def test_fast_returns_deepcopy_after_compile_uses_its_own_networks():
    import copy

    prior, reward = small_networks()
    fast = FastRSSMReturns(prior, reward, sample=False)
    fast.compile_rollout(backend="aot_eager", fullgraph=True)
    state, belief, actions = torch.randn(2, S), torch.randn(2, D), torch.rand(2, 3, 4, A) * 2 - 1
    with torch.no_grad():
        fast(state, belief, actions)
        twin = copy.deepcopy(fast)
        for q in twin.parameters():
            q.mul_(0.5)
        expected = TensorReturns(twin.prior, twin.reward, sample=False)(state, belief, actions)
        torch.testing.assert_close(twin(state, belief, actions), expected, rtol=1e-5, atol=1e-5)


def test_world_model_planner_uses_fast_path_and_any_batch_dims():
    spec = Bounded(-1, 1, (A,))
    wm = make_world_model(Composite(observation=Unbounded((5,))), spec, state_dim=S, belief_dim=D, hidden_dim=HID)
    planner = CEMPlanner(wm, 4, 2, 30, 3, action_spec=spec, action_key=("agent", "act"))
    assert isinstance(planner.returns_model, FastRSSMReturns)
    for batch in [(), (3,), (2, 3)]:
        td = TensorDict(state=torch.randn(*batch, S), belief=torch.randn(*batch, D), batch_size=batch)
        action = planner(td)["agent", "act"]
        assert action.shape == (*batch, A) and (action.abs() <= 1).all()
        assert "action" not in td.keys()


def dreamer_env(prior: nn.Module, reward: nn.Module, probabilistic_reward: bool = False) -> DreamerEnv:
    """A DreamerEnv as TorchRL's Dreamer example builds it, with explicit specs."""
    if probabilistic_reward:
        from tensordict.nn import (
            ProbabilisticTensorDictModule,
            ProbabilisticTensorDictSequential,
        )
        from torchrl.modules.distributions import IndependentNormal

        reward_module = ProbabilisticTensorDictSequential(
            SafeModule(reward, in_keys=["state", "belief"], out_keys=["loc"]),
            ProbabilisticTensorDictModule(in_keys=["loc"], out_keys=["reward"], distribution_class=IndependentNormal,
                                          distribution_kwargs={"scale": 1.0, "event_dim": 1}),
        )
    else:
        reward_module = SafeModule(reward, in_keys=["state", "belief"], out_keys=["reward"])
    transition = SafeSequential(SafeModule(prior, in_keys=["state", "belief", "action"],
                                           out_keys=["_", "_", "state", "belief"]))
    sd, bd = prior.state_dim, prior.rnn_hidden_dim
    env = DreamerEnv(world_model=WorldModelWrapper(transition, reward_module),
                     prior_shape=torch.Size([sd]), belief_shape=torch.Size([bd]))
    env.observation_spec = Composite(state=Unbounded((sd,)), belief=Unbounded((bd,)))
    env.state_spec = Composite(state=Unbounded((sd,)), belief=Unbounded((bd,)))
    env.action_spec = Bounded(-1, 1, (prior.action_dim if hasattr(prior, "action_dim") else 2,))
    env.reward_spec = Unbounded((1,))
    return env


@pytest.mark.parametrize("probabilistic_reward", [False, True])
def test_drop_in_on_dreamer_env_finds_our_networks(probabilistic_reward):
    prior, reward = small_networks()
    env = dreamer_env(prior, reward, probabilistic_reward)
    planner = CEMPlanner(env, 4, 3, 40, 5)  # TorchRL's positional signature
    assert isinstance(planner.returns_model, FastRSSMReturns)
    assert planner.returns_model.prior is prior
    td = TensorDict(state=torch.randn(2, 3, S), belief=torch.randn(2, 3, D), batch_size=[2, 3])
    assert planner(td)["action"].shape == (2, 3, A)
    # also usable as the env's policy, as TorchRL's planner is
    rollout = env.rollout(3, planner, auto_reset=False,
                          tensordict=TensorDict(state=torch.zeros(S), belief=torch.zeros(D), batch_size=[]))
    assert rollout["action"].shape == (3, A)


def test_drop_in_torchrl_prior_runs_as_a_tensor_loop():
    # TorchRL's RSSMPrior under the Dreamer keys: called with its own convention, on tensors.
    torch.manual_seed(0)
    torchrl_prior = TorchRLRSSMPrior(Bounded(-1, 1, (A,)), hidden_dim=HID, rnn_hidden_dim=D, state_dim=S)
    _, reward = small_networks()
    env = dreamer_env(torchrl_prior, reward)
    planner = CEMPlanner(env, 4, 3, 40, 5)
    assert isinstance(planner.returns_model, TensorReturns)
    td = TensorDict(state=torch.randn(2, 3, S), belief=torch.randn(2, 3, D), batch_size=[2, 3])
    action = planner(td)["action"]
    assert action.shape == (2, 3, A) and torch.isfinite(action).all()


def test_linear_quadratic_problem_in_a_dreamer_env():
    torch.manual_seed(0)
    planner = CEMPlanner(dreamer_env(LinearPrior(), QuadReward()), HORIZON, 10, 1000, 100)
    h0 = start_beliefs(2)
    out = planner(TensorDict(state=torch.zeros(2, 2), belief=h0, batch_size=[2]))
    expected = torch.stack([analytic_optimum(h)[0] for h in h0])
    assert (out["action"] - expected).abs().max() < TOL


class LinearStep(nn.Module):
    """The linear-quadratic problem on one observation [h, last action] (TorchRL docs' layout)."""

    def forward(self, obs, action):
        return torch.cat([obs[..., :2] @ FMAT.T + action @ GMAT.T, action], -1)


class LinearStepReward(nn.Module):
    def forward(self, obs):
        return -(obs[..., :2] ** 2).sum(-1, keepdim=True) - LAM * (obs[..., 2:] ** 2).sum(-1, keepdim=True)


def test_foreign_world_model_runs_through_tensordicts_and_finds_the_optimum():
    from torchrl.envs.model_based import ModelBasedEnvBase

    class HiddenObsEnv(ModelBasedEnvBase):  # the model-based env of TorchRL's CEMPlanner docstring
        def __init__(self, world_model):
            super().__init__(world_model)
            self.observation_spec = Composite(hidden_observation=Unbounded((4,)))
            self.state_spec = Composite(hidden_observation=Unbounded((4,)))
            self.action_spec = Bounded(-1, 1, (2,))
            self.reward_spec = Unbounded((1,))

        def _reset(self, tensordict=None, **kwargs):
            return self.full_state_spec.zero()

    world_model = WorldModelWrapper(
        SafeModule(LinearStep(), in_keys=["hidden_observation", "action"], out_keys=["hidden_observation"]),
        SafeModule(LinearStepReward(), in_keys=["hidden_observation"], out_keys=["reward"]),
    )
    planner = CEMPlanner(HiddenObsEnv(world_model), HORIZON, 10, 1000, 100)
    assert isinstance(planner.returns_model, TensorDictReturns)
    assert planner.in_keys == ["hidden_observation"]
    torch.manual_seed(0)
    h0 = start_beliefs(2)
    obs = torch.cat([h0, torch.zeros(2, 2)], -1)
    action = planner(TensorDict(hidden_observation=obs, batch_size=[2]))["action"]
    expected = torch.stack([analytic_optimum(h)[0] for h in h0])
    assert (action - expected).abs().max() < TOL


def test_any_stateless_env_is_stepped_without_rollout():
    # A transformed model-based env is not a bare world model: stepped with env.step (transforms apply).
    from torchrl.envs import RewardScaling, TransformedEnv

    from torchrl_rssm.planners._common import EnvStepReturns

    torch.manual_seed(0)
    env = TransformedEnv(dreamer_env(LinearPrior(), QuadReward()), RewardScaling(0.0, 2.0))
    planner = CEMPlanner(env, HORIZON, 10, 1000, 100)
    assert isinstance(planner.returns_model, EnvStepReturns)
    h0 = start_beliefs(2)
    action = planner(TensorDict(state=torch.zeros(2, 2), belief=h0, batch_size=[2]))["action"]
    expected = torch.stack([analytic_optimum(h)[0] for h in h0])
    assert (action - expected).abs().max() < TOL


def test_mppi_drop_in_with_torchrl_advantage_module():
    from torchrl.modules import ValueOperator
    from torchrl.objectives.value import TDLambdaEstimator

    from torchrl_rssm.planners.mppi import AdvantageReturns

    torch.manual_seed(0)
    env = dreamer_env(LinearPrior(), QuadReward())
    value = ValueOperator(nn.Linear(2, 1), in_keys=["belief"])
    advantage = TDLambdaEstimator(gamma=0.99, lmbda=0.95, value_network=value)
    ours = MPPIPlanner(env, advantage, 1.0, HORIZON, 5, 200, 20)  # TorchRL's positional signature
    theirs = TorchRLMPPIPlanner(env, advantage, 1.0, HORIZON, 5, 200, 20)
    assert isinstance(ours.returns_model, AdvantageReturns)
    td = TensorDict(state=torch.zeros(2, 2), belief=start_beliefs(2), batch_size=[2])
    a_ours, a_theirs = ours(td.clone())["action"], theirs(td.clone())["action"]
    assert a_ours.shape == (2, 2) and torch.isfinite(a_ours).all()
    assert (a_ours - a_theirs).abs().max() < 0.25  # the same objective, optimised by both


# ---------------------------------------------------------------------------- bad input
def test_bad_input_is_named():
    model = (LinearPrior(), QuadReward())
    with pytest.raises(TypeError, match="action_spec"):
        CEMPlanner(model, action_spec=Binary(3))
    with pytest.raises(ValueError, match="action_spec"):
        CEMPlanner(model)
    with pytest.raises(ValueError, match="top_k"):
        CEMPlanner(model, 5, 2, 10, 11, action_spec=BOX)
    with pytest.raises(TypeError, match="model"):
        CEMPlanner(object(), action_spec=BOX)
    prior, reward = small_networks()
    planner = CEMPlanner((prior, reward), 3, 1, 10, 2, action_spec=BOX)
    with pytest.raises(ValueError, match="`state`"):
        planner.plan(torch.zeros(2, S + 1), torch.zeros(2, D))
    with pytest.raises(ValueError, match="`belief`"):
        planner.plan(torch.zeros(2, S), torch.zeros(2, D - 1))
    with pytest.raises(KeyError, match="belief"):
        planner(TensorDict(state=torch.zeros(2, S), batch_size=[2]))


# -------------------------------------------------------------------- compile, CUDA graphs
@pytest.mark.parametrize("scope", ["search", "rollout"])
def test_search_compiles_with_fullgraph(scope):
    # aot_eager checks that Dynamo captures the whole search, or the latent rollout, in one
    # graph (fullgraph=True: no graph break) and keeps eager RNG, so the result equals eager.
    prior, reward = small_networks()
    kw = dict(action_spec=BOX)
    eager = CEMPlanner((prior, reward), 3, 2, 20, 4, **kw)
    compiled = CEMPlanner((prior, reward), 3, 2, 20, 4, compile={"backend": "aot_eager", "scope": scope}, **kw)
    s, b = torch.randn(2, S), torch.randn(2, D)
    torch.manual_seed(0)
    ref = eager.optimize(s, b)
    torch.manual_seed(0)
    out = compiled.optimize(s, b)
    for x, y in zip(out, ref):
        torch.testing.assert_close(x, y)


def test_inductor_compiled_rollout_on_cpu_matches_eager():
    # compile=True on CPU compiles the rollout with inductor (C++ kernels); the noise stays eager
    prior, reward = small_networks()
    eager, compiled = FastRSSMReturns(prior, reward), FastRSSMReturns(prior, reward)
    compiled.compile_rollout(fullgraph=True, dynamic=False)
    state, belief = torch.randn(2, S), torch.randn(2, D)
    actions, noise = torch.rand(2, 5, 3, A) * 2 - 1, torch.randn(3, 2, 5, S)
    with torch.no_grad():
        torch.testing.assert_close(compiled(state, belief, actions, noise), eager(state, belief, actions, noise),
                                   rtol=1e-4, atol=1e-4)
        prior.rnn.weight_hh.mul_(0.5)  # the folded weights are graph inputs: an update must not recompile
        with torch._dynamo.config.patch(error_on_recompile=True):
            torch.testing.assert_close(compiled(state, belief, actions, noise),
                                       eager(state, belief, actions, noise), rtol=1e-4, atol=1e-4)
    planner = CEMPlanner((prior, reward), 3, 2, 20, 4, action_spec=BOX, compile=True)
    action = planner.plan(state, belief)
    assert planner.returns_model._compiled is not None
    assert action.shape == (2, A) and (action.abs() <= 1).all()
    with pytest.raises(ValueError, match="scope"):
        CEMPlanner((prior, reward), 3, 2, 20, 4, action_spec=BOX, compile={"scope": "everything"})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU; none on this machine")
def test_cuda_graph_and_inductor_plans_find_the_optimum():
    torch.manual_seed(0)
    prior, reward = small_networks()
    prior, reward = prior.cuda(), reward.cuda()
    box = Bounded(-1, 1, (A,), device="cuda")
    s, b = torch.randn(4, S, device="cuda"), torch.randn(4, D, device="cuda")
    eager = CEMPlanner((prior, reward), 5, 4, 200, 20, action_spec=box)
    graphed = CEMPlanner((prior, reward), 5, 4, 200, 20, action_spec=box, cuda_graph=True)
    both = CEMPlanner((prior, reward), 5, 4, 200, 20, action_spec=box, cuda_graph=True, compile=True)
    for planner in (graphed, both):
        for _ in range(2):  # capture, then replay with new inputs
            a = planner.plan(s, b)
            assert a.shape == (4, A) and torch.isfinite(a).all()
        assert len(planner._graphs) == 1
    # statistically the same planner: returns of the planned first actions agree with eager
    returns = FastRSSMReturns(prior, reward, sample=False)
    with torch.no_grad():
        plans = {name: p.optimize(s, b)[0] for name, p in [("eager", eager), ("graphed", graphed), ("both", both)]}
        scores = {k: returns(s, b, v.unsqueeze(1)).mean() for k, v in plans.items()}
    assert abs(scores["graphed"] - scores["eager"]) < 0.5 * abs(scores["eager"]) + 0.5
    # the linear-quadratic optimum on the GPU, captured
    lq = CEMPlanner((LinearPrior(), QuadReward()), HORIZON, 10, 1000, 100, action_spec=box, cuda_graph=True)
    global FMAT, GMAT
    f, g = FMAT, GMAT
    FMAT, GMAT = f.cuda(), g.cuda()
    try:
        h0 = start_beliefs(2)
        mean, _ = lq.optimize(torch.zeros(2, 2, device="cuda"), h0.cuda())
    finally:
        FMAT, GMAT = f, g
    expected = torch.stack([analytic_optimum(h)[0] for h in h0])
    assert (mean[:, 0].cpu() - expected).abs().max() < TOL


@pytest.mark.parametrize("cls", [CEMPlanner, MPPIPlanner])
def test_candidates_are_clipped_to_the_action_bounds(cls):
    """PlaNet's official code clips the candidates: the model never scores an action outside the box,
    even when the reward keeps growing beyond it (and the plan then sits on the bound)."""
    torch.manual_seed(0)
    low, high = torch.tensor([-0.5, 0.0]), torch.tensor([0.2, 1.0])
    seen = []

    class Record(nn.Module):
        def forward(self, state, belief):  # ConstantPrior: the state is the action
            seen.append(state.clone())
            return state.sum(-1, keepdim=True)  # grows without bound towards +inf

    planner = cls((ConstantPrior(), Record()), planning_horizon=3, optim_steps=4, num_candidates=200, top_k=20,
                  action_spec=Bounded(low, high, (2,)), init_std=4.0)
    action = planner(TensorDict(state=torch.zeros(3, 2), belief=torch.zeros(3, 2), batch_size=[3]))["action"]
    seen = torch.cat([s.reshape(-1, 2) for s in seen])
    assert (seen >= low).all() and (seen <= high).all()
    assert (seen == high).any() and (seen == low).any()  # wide sampling did hit the bounds, and was clipped
    torch.testing.assert_close(action, high.expand(3, 2), atol=0.05, rtol=0)
