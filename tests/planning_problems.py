"""Planning problems with known optima and small networks, shared by the planner tests."""
from __future__ import annotations

import torch
from torch import nn
from torchrl.data import Bounded, Composite, Unbounded
from torchrl.envs.model_based.dreamer import DreamerEnv
from torchrl.modules import SafeModule, SafeSequential, WorldModelWrapper

from torchrl_rssm.modules import RewardModel, RSSMPrior
from torchrl_rssm.planners import CEMPlanner

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


TARGET = torch.tensor([0.4, -0.3])


class ConstantPrior(nn.Module):
    """Stationary problem: every step rewards -|a - target|^2 (the state is the action)."""

    state_dim = 2
    rnn_hidden_dim = 2

    def forward(self, state, belief, action):
        return action, torch.zeros_like(action), action, belief


class TargetReward(nn.Module):
    def forward(self, state, belief):
        return -((state - TARGET) ** 2).sum(-1, keepdim=True)


# -------------------------------------------------------------- small RSSM networks
S, D, HID, A = 4, 8, 8, 2


def small_networks(seed: int = 0):
    torch.manual_seed(seed)
    return RSSMPrior(None, hidden_dim=HID, rnn_hidden_dim=D, state_dim=S, action_dim=A), RewardModel(S, D, HID)


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
