"""Environments for PlaNet-style agents: a factory and pixel transforms.

Importing this package sets ``MUJOCO_GL=egl`` unless it is already set (headless
rendering for dm_control).
"""
from .factory import DEFAULT_ACTION_REPEAT, PAPER_TASKS, available_envs, make_env
from .transforms import BitDepth, Dequantize, GrayScalePixels, ResizePixels, dequantize

__all__ = [
    "BitDepth", "DEFAULT_ACTION_REPEAT", "Dequantize", "GrayScalePixels", "PAPER_TASKS", "ResizePixels",
    "available_envs", "dequantize", "make_env",
]
