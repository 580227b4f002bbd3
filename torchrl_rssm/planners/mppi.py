"""Model-predictive path integral (MPPI) planning in latent space.

Like CEM (see :mod:`.cem`), but the plan is refitted to a return-weighted average
of the candidates instead of the plain mean of the top K::

    w_i = exp(temperature * (R_i - max_j R_j)) / sum_j exp(temperature * (R_j - max_j R_j))

Subtracting the maximum (the log-sum-exp trick) changes nothing mathematically and
keeps the exponentials in (0, 1], so returns of any scale (e.g. around -1e4) give
finite weights. TorchRL's ``MPPIPlanner`` exponentiates ``temperature * advantage``
directly, which underflows to 0/0 = NaN for moderately negative returns.
``temperature`` multiplies the returns, as in TorchRL and TD-MPC (it is an inverse
temperature: larger values concentrate the weights on the best candidates).
"""
from __future__ import annotations

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey
from torch import nn
from torchrl.data import TensorSpec
from torchrl.envs.utils import step_mdp

from .action_space import ActionSpace, Returns, top_k_elites
from .base import PlannerBase


def mppi(
    returns_fn: Returns,
    mean: torch.Tensor,
    std: torch.Tensor,
    space: ActionSpace,
    *,
    temperature: float,
    num_candidates: int,
    top_k: int,
    optim_steps: int,
    min_std: float = 1e-3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MPPI over action sequences: return-weighted refits of ``(mean, std) [M, H, A]``.

    ``returns_fn: actions [M, N, H, A] -> [M, N]``. The weights are computed over the
    ``top_k`` best candidates (``top_k = num_candidates`` uses all of them).

    Examples:
        >>> import torch
        >>> from torchrl.data import Bounded
        >>> space = ActionSpace(Bounded(-1, 1, (1,)))
        >>> returns = lambda a: -1e4 - ((a - 0.5) ** 2).sum((-1, -2))  # large negative returns
        >>> mean, std = space.initial(1, 3, 1.0, "cpu", torch.float32)
        >>> mean, std = mppi(returns, mean, std, space, temperature=50.0, num_candidates=300,
        ...                  top_k=300, optim_steps=8)
        >>> bool(torch.isfinite(mean).all()) and bool((mean - 0.5).abs().max() < 0.1)
        True
    """
    for _ in range(optim_steps):
        actions = space.sample(mean, std, num_candidates)          # [M, N, H, A]
        returns = returns_fn(actions)                              # [M, N]
        elites, best = top_k_elites(actions, returns, top_k)       # [M, K, H, A], [M, K]
        logits = temperature * (best - best.max(dim=1, keepdim=True).values)  # <= 0: exp never overflows
        weights = logits.exp()
        weights = (weights / weights.sum(dim=1, keepdim=True))[:, :, None, None]
        mean = (weights * elites).sum(1)                           # discrete: weighted frequencies
        if not space.discrete:
            var = (weights * (elites - mean.unsqueeze(1)).pow(2)).sum(1)
            std = var.sqrt().clamp_min(min_std)
    return mean, std


class AdvantageReturns:
    """Scores candidates with a TorchRL advantage module (TorchRL's MPPI path).

    Steps the env with ``env.step`` on one batched tensordict per step, stacks the
    ``[M * N, H]`` trajectory (root / ``"next"``, as ``env.rollout`` lays it out),
    runs ``advantage_module`` on it and returns the advantage of the first step.
    """

    def __init__(self, env, advantage_module: TensorDictModuleBase, action_key: NestedKey,
                 advantage_key: NestedKey = "advantage"):
        self.env, self.advantage_module = env, advantage_module
        self.action_key, self.advantage_key = action_key, advantage_key

    def __call__(self, start: TensorDictBase, actions: torch.Tensor) -> torch.Tensor:
        M, N, H, A = actions.shape
        td = start.unsqueeze(1).expand(M, N).reshape(M * N).clone()
        td.update(self.env.full_done_spec.zero(td.shape))  # as after a reset: the steps stack key by key
        acts = actions.reshape(M * N, H, A)
        steps = []
        for t in range(H):
            td.set(self.action_key, acts[:, t])
            td = self.env.step(td)
            steps.append(td)
            td = step_mdp(td, keep_other=True)
        traj = torch.stack(steps, dim=1)  # [M * N, H]
        traj.refine_names(None, "time")
        self.advantage_module(traj)
        return traj.get(self.advantage_key)[:, 0].reshape(M, N)


class MPPIPlanner(PlannerBase):
    """MPPI planner over a latent model, as a TorchRL policy module.

    Accepts TorchRL's ``MPPIPlanner`` arguments (``env, advantage_module,
    temperature, planning_horizon, optim_steps, num_candidates, top_k, reward_key,
    action_key``) as well as this package's world model. With
    ``advantage_module=None`` (the default) candidates are scored by their sum of
    predicted rewards on the fast tensor path; with an advantage module (TorchRL's
    behaviour, e.g. ``TDLambdaEstimator`` with a value network) by the advantage of
    their first step, through the env (``env.step`` per imagined step).

    Args:
        model: see :class:`~torchrl_rssm.planners.CEMPlanner`.
        advantage_module: optional TorchRL advantage module (needs an env ``model``).
        temperature: multiplies the returns inside the exponential (default 1).
        planning_horizon, optim_steps, num_candidates: H, I, N.
        top_k: candidates that enter the weighted refit (default: all N).
        reward_key, action_key, keyword arguments: as :class:`CEMPlanner`.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Bounded, Composite, Unbounded
        >>> from torchrl_rssm.modules import make_world_model
        >>> action_spec = Bounded(-1, 1, (2,))
        >>> wm = make_world_model(Composite(observation=Unbounded((5,))), action_spec,
        ...                       state_dim=8, belief_dim=16, hidden_dim=16)
        >>> planner = MPPIPlanner(wm, temperature=2.0, planning_horizon=5, optim_steps=3,
        ...                       num_candidates=50, action_spec=action_spec)
        >>> td = TensorDict(state=torch.zeros(3, 8), belief=torch.zeros(3, 16), batch_size=[3])
        >>> planner(td)["action"].shape
        torch.Size([3, 2])
    """

    def __init__(
        self,
        model,
        advantage_module: TensorDictModuleBase | None = None,
        temperature: float = 1.0,
        planning_horizon: int = 12,
        optim_steps: int = 10,
        num_candidates: int = 1000,
        top_k: int | None = None,
        reward_key: NestedKey = ("next", "reward"),
        action_key: NestedKey = "action",
        *,
        action_spec: TensorSpec | None = None,
        reward_model: nn.Module | None = None,
        **kwargs,
    ):
        if advantage_module is not None and kwargs.get("compile"):
            raise ValueError("`compile=True` is not available with an `advantage_module` (tensordict path).")
        super().__init__(model, planning_horizon, optim_steps, num_candidates, top_k, reward_key, action_key,
                         action_spec=action_spec, reward_model=reward_model, **kwargs)
        self.temperature = float(temperature)
        self.advantage_module = advantage_module
        if advantage_module is not None:
            if self.env is None:
                raise ValueError("`advantage_module` needs a TorchRL env as `model` (it scores env trajectories).")
            self._tensor_path = False
            self._start_keys = list(self.env.observation_spec.keys(True, True))
            self.in_keys = list(self._start_keys) + [k for k in self.in_keys if k in (self.plan_key,
                                                                                        self.is_init_key)]
            del self.returns_model  # a registered submodule: replaced by a plain callable
            self.returns_model = AdvantageReturns(self.env, advantage_module, action_key)

    def search(self, returns_fn: Returns, mean: torch.Tensor, std: torch.Tensor,
               optim_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        return mppi(returns_fn, mean, std, self.space, temperature=self.temperature,
                    num_candidates=self.num_candidates, top_k=self.top_k, optim_steps=optim_steps,
                    min_std=self.min_std)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", temperature={self.temperature}"
