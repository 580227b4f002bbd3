"""Environments for PlaNet-style agents: a factory, pixel transforms and the simulators' random state.

Importing this package sets ``MUJOCO_GL=egl`` unless it is already set (headless
rendering for dm_control).
"""
from .factory import DEFAULT_ACTION_REPEAT, PAPER_TASKS, available_envs, make_env
from .random_state import EnvRandomState, env_random_states, set_env_random_states
from .transforms import BitDepth, Dequantize, GrayScalePixels, ResizePixels, dequantize

__all__ = [
    "BitDepth", "DEFAULT_ACTION_REPEAT", "Dequantize", "EnvRandomState", "GrayScalePixels", "PAPER_TASKS",
    "ResizePixels",
    "available_envs", "dequantize", "env_random_states", "make_env", "set_env_random_states",
]
