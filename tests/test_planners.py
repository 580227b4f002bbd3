"""CEM and MPPI on problems with known optima (linear dynamics, quadratic reward), batches,
numerics, warm start (shifted plans), the world-model fast path, bad input, torch.compile and
CUDA graphs (planners/cem.py, mppi.py, base.py)."""
from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from torch import nn
from torchrl.data import Binary, Bounded, Categorical, Composite, Unbounded
from torchrl.modules.planners import MPPIPlanner as TorchRLMPPIPlanner

import planning_problems as problems
from planning_problems import (
    A, BOX, D, HID, HORIZON, S, TARGET, TOL, ConstantPrior, GoalReward, LinearPrior, QuadReward, TargetReward,
    WalkPrior,
    analytic_optimum, lq_planner, small_networks, start_beliefs,
)
from torchrl_rssm.modules import FastRSSMReturns, make_world_model
from torchrl_rssm.planners import CEMPlanner, MPPIPlanner

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
    f, g = problems.FMAT, problems.GMAT  # LinearPrior reads them from its module at call time
    problems.FMAT, problems.GMAT = f.cuda(), g.cuda()
    try:
        h0 = start_beliefs(2)
        mean, _ = lq.optimize(torch.zeros(2, 2, device="cuda"), h0.cuda())
    finally:
        problems.FMAT, problems.GMAT = f, g
    expected = torch.stack([analytic_optimum(h)[0] for h in h0])
    assert (mean[:, 0].cpu() - expected).abs().max() < TOL


def test_warm_start_shifts_the_previous_plan_by_one_step():
    """start_plan: step k of the new plan is step k + 1 of the previous one; the new last step and the
    episode-start rows are cold; stds: warm_std (shifted steps) and init_std (new step) times the half-width."""
    box = Bounded(torch.tensor([-2.0, 0.0]), torch.tensor([2.0, 1.0]), (2,))  # centre (0, 0.5), half-width (2, 0.5)
    planner = CEMPlanner((ConstantPrior(), TargetReward()), 4, 1, 10, 2, action_spec=box, warm_start=True,
                         init_std=1.0, warm_std=0.25)
    prev = torch.arange(3 * 4 * 2, dtype=torch.float32).reshape(3, 4, 2) / 100  # every step different
    fresh = torch.tensor([False, True, False])
    mean, std = planner.start_plan(3, prev_plan=prev, fresh_rows=fresh)
    keep = ~fresh
    torch.testing.assert_close(mean[keep, :3], prev[keep, 1:])
    torch.testing.assert_close(mean[keep, 3], torch.tensor([0.0, 0.5]).expand(2, 2))
    torch.testing.assert_close(std[keep, :3], torch.tensor([0.5, 0.125]).expand(2, 3, 2))
    torch.testing.assert_close(std[keep, 3], torch.tensor([2.0, 0.5]).expand(2, 2))
    torch.testing.assert_close(mean[1], torch.tensor([0.0, 0.5]).expand(4, 2))  # episode start: cold
    torch.testing.assert_close(std[1], torch.tensor([2.0, 0.5]).expand(4, 2))
    # discrete plans: the shifted probabilities mixed with warm_std of uniform
    disc = CEMPlanner((WalkPrior(), GoalReward()), 3, 1, 10, 2, action_spec=Categorical(3), warm_start=True,
                      warm_std=0.25)
    probs = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
    mean, _ = disc.start_plan(1, prev_plan=probs)
    expected = torch.tensor([[[0.75 * 0 + 0.25 / 3, 0.75 + 0.25 / 3, 0.25 / 3],
                              [0.25 / 3, 0.25 / 3, 0.75 + 0.25 / 3], [1 / 3, 1 / 3, 1 / 3]]])
    torch.testing.assert_close(mean, expected)


class ClockPrior(nn.Module):
    """The belief counts the steps, the state is the last action: a plan's step k is for time t + k + 1."""

    state_dim = 1
    rnn_hidden_dim = 1

    def forward(self, state, belief, action):
        return action, torch.zeros_like(action), action, belief + 1


class MovingTarget(nn.Module):
    """-|a - target(t)|^2 with a target that moves every step: a plan that is not shifted is off by one."""

    def forward(self, state, belief):
        return -((state - 0.2 * belief + 0.5) ** 2)


@pytest.mark.parametrize("cls", [CEMPlanner, MPPIPlanner])
def test_warm_start_with_a_moving_optimum_reuses_the_shifted_plan(cls):
    # the optimum at time t is a_t = 0.2 t - 0.5; planned at t = 0 the plan is (a_1, ..., a_4)
    torch.manual_seed(0)
    kw = dict(planning_horizon=4, num_candidates=300, top_k=30, action_spec=Bounded(-1, 1, (1,)))
    model = (ClockPrior(), MovingTarget())
    optimum = lambda t: 0.2 * t - 0.5  # noqa: E731
    cold, _ = cls(model, optim_steps=8, **kw).optimize(torch.zeros(2, 1), torch.zeros(2, 1))
    torch.testing.assert_close(cold[..., 0], torch.tensor([optimum(t) for t in (1, 2, 3, 4)]).expand(2, 4),
                               atol=0.03, rtol=0)
    # one step later (belief 1), one iteration from the warm plan: the first action is a_2, not a_1
    warm = cls(model, optim_steps=1, warm_start=True, warm_std=0.02, **kw)
    td = TensorDict(state=torch.zeros(2, 1), belief=torch.ones(2, 1), plan=cold,
                    is_init=torch.zeros(2, 1, dtype=torch.bool), batch_size=[2])
    out = warm(td)
    assert (out["action"] - optimum(2)).abs().max() < 0.03
    torch.testing.assert_close(out["plan"][:, :3, 0], cold[:, 1:, 0], atol=0.03, rtol=0)
