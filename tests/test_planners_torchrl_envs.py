"""The TorchRL drop-in paths (planners/torchrl_envs.py): a DreamerEnv holding our networks or
TorchRL's, foreign tensordict world models, any stateless env, TorchRL's advantage modules."""
from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from torch import nn
from torchrl.data import Bounded, Composite, Unbounded
from torchrl.modules import SafeModule, WorldModelWrapper
from torchrl.modules.models.model_based import RSSMPrior as TorchRLRSSMPrior
from torchrl.modules.planners import MPPIPlanner as TorchRLMPPIPlanner

from planning_problems import (
    A, D, FMAT, GMAT, HID, HORIZON, LAM, S, TOL, LinearPrior, QuadReward, analytic_optimum, dreamer_env,
    small_networks, start_beliefs,
)
from torchrl_rssm.modules import FastRSSMReturns
from torchrl_rssm.planners import CEMPlanner, MPPIPlanner, TensorReturns
from torchrl_rssm.planners.torchrl_envs import TensorDictReturns

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

    from torchrl_rssm.planners.torchrl_envs import EnvStepReturns

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
