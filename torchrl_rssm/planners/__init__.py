"""Latent-space planners (CEM, MPPI).

- :class:`CEMPlanner`, :class:`MPPIPlanner`: TorchRL policy modules that plan from
  ``state`` / ``belief`` (drop-ins for TorchRL's planners of the same names, which
  they also accept a ``DreamerEnv`` for), built on the tensor functions
  :func:`cem` and :func:`mppi`.
- the parts: :mod:`.action_space` (what is sampled), :mod:`.base` (the shared module:
  keys, warm start, compile, CUDA graphs), :mod:`.torchrl_envs` (foreign world models);
  candidates of this package's world model are scored by its fused imagination
  (:class:`~torchrl_rssm.modules.FastRSSMReturns`).

The acting policy that filters the belief, plans and explores is
:class:`torchrl_rssm.policies.PlaNetPolicy` (policies build on planners, not the reverse).
"""
from .action_space import ActionSpace, shift_plan, top_k_elites
from .base import PlannerBase
from .cem import CEMPlanner, cem
from .mppi import MPPIPlanner, mppi
from .torchrl_envs import EnvStepReturns, TensorDictReturns, TensorReturns

__all__ = [
    "ActionSpace", "CEMPlanner", "EnvStepReturns", "MPPIPlanner", "PlannerBase", "TensorDictReturns", "TensorReturns",
    "cem", "mppi", "shift_plan", "top_k_elites",
]
