"""Latent-space planners (CEM, MPPI).

- :class:`CEMPlanner`, :class:`MPPIPlanner`: TorchRL policy modules that plan from
  ``state`` / ``belief`` (drop-ins for TorchRL's planners of the same names, which
  they also accept a ``DreamerEnv`` for), built on the tensor functions
  :func:`cem` and :func:`mppi`.
- the parts: :mod:`.action_space` (what is sampled), :mod:`.base` (the shared module:
  keys, warm start, compile, CUDA graphs), :mod:`.torchrl_envs` (foreign world models);
  candidates of this package's world model are scored by the imagination engine
  (:class:`~torchrl_rssm.modules.imagination.FastRSSMReturns`).
- :class:`PlaNetPolicy` (re-exported from :mod:`torchrl_rssm.policies`): filter the
  belief with the observation, plan, add exploration noise.
"""
from ..modules.imagination import FastRSSMReturns
from .action_space import ActionSpace, shift_plan, top_k_elites
from .base import PlannerBase
from .cem import CEMPlanner, cem
from .mppi import MPPIPlanner, mppi
from .torchrl_envs import EnvStepReturns, TensorDictReturns, TensorReturns

__all__ = [
    "ActionSpace", "CEMPlanner", "EnvStepReturns", "FastRSSMReturns", "MPPIPlanner", "PlaNetPolicy", "PlannerBase",
    "TensorDictReturns", "TensorReturns", "cem", "mppi", "shift_plan", "top_k_elites",
]


def __getattr__(name):
    # lazy: torchrl_rssm.policies imports the planners, so importing it here would be a cycle
    if name == "PlaNetPolicy":
        from ..policies.planet import PlaNetPolicy

        return PlaNetPolicy
    if name == "policy":
        import importlib

        return importlib.import_module(".policy", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
