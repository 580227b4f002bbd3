"""What the planners sample (planners/action_space.py): discrete one-hot and categorical actions,
clipping to the bounds."""
from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from torch import nn
from torchrl.data import Bounded, Categorical, OneHot

from planning_problems import ConstantPrior, GoalReward, WalkPrior
from torchrl_rssm.planners import CEMPlanner, MPPIPlanner

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
