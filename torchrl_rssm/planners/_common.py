"""Old import path of the planners' shared machinery, kept as re-exports.

The parts now live in named modules: :mod:`.action_space` (``ActionSpace``,
``shift_plan``, ``top_k_elites``), :mod:`.base` (``PlannerBase``), :mod:`.torchrl_envs`
(foreign world models and ``DreamerEnv``) and :mod:`torchrl_rssm.modules.imagination`
(``FastRSSMReturns``, the imagination engine).
"""
from ..modules.imagination import FastRSSMReturns, _write
from .action_space import ActionSpace, Returns, shift_plan, top_k_elites
from .base import PlannerBase
from .torchrl_envs import (
    EnvStepReturns,
    TensorDictReturns,
    TensorReturns,
    _any_done,
    _fast_networks,
    _leaf_modules,
    _mask_after_done,
    _or_false,
    _strip_next,
    _SwapArgs,
)

__all__ = [
    "ActionSpace", "EnvStepReturns", "FastRSSMReturns", "PlannerBase", "Returns", "TensorDictReturns",
    "TensorReturns", "shift_plan", "top_k_elites",
]
