"""Environment factory: dm_control and Gymnasium tasks as TorchRL environments.

:func:`make_env` builds a :class:`~torchrl.envs.TransformedEnv` with PlaNet's
preprocessing done by TorchRL transforms::

    base env (action repeat inside)          dm_control / Gymnasium (env_kwargs to its constructor)
    -> PermuteTransform / ResizePixels       pixels: uint8 [3, H, W] ("pixels"), channels-first,
                                             rendered, or the env's own image observation resized
    -> GrayScalePixels (grayscale=True)      uint8 [1, H, W]
    -> BitDepth(bit_depth)                   uint8, on the 2**bit_depth grid
    -> CatTensors                            vector obs -> float "observation"
    -> DoubleToFloat                         float64 obs/action/reward -> float32
    -> StepCounter(max_episode_steps)        "step_count", truncation
    -> RewardSum                             "episode_reward"
    -> InitTracker                           "is_init"
    -> primers                               e.g. the policy's belief/state

Action repeat is done inside the base environment: the reward is summed over
the repeated steps, the loop stops early when the episode ends, and for
dm_control pixels the scene is rendered **once per agent step** (TorchRL's
``frame_skip`` on a pixel ``DMControlWrapper`` renders at every physics step,
which costs ``repeat`` times more: ~120 ms instead of ~16 ms per agent step for
cartpole with repeat 8 on a 2-core CPU).

``MUJOCO_GL`` defaults to ``egl`` (set when this module is imported, before
dm_control is loaded): on headless machines ``osmesa`` does not work and GLFW
needs a display.
"""
from __future__ import annotations

import difflib
import importlib
import importlib.util
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torchrl.envs import (  # noqa: E402
    CatTensors,
    RenameTransform,
    UnsqueezeTransform,
    DoubleToFloat,
    EnvBase,
    ExcludeTransform,
    InitTracker,
    PermuteTransform,
    RewardSum,
    StepCounter,
    Transform,
    TransformedEnv,
)

from .transforms import BitDepth, GrayScalePixels, ResizePixels  # noqa: E402

__all__ = ["DEFAULT_ACTION_REPEAT", "PAPER_TASKS", "available_envs", "make_env"]

#: The six DeepMind Control tasks of the PlaNet paper and their action repeats.
PAPER_TASKS: dict[str, int] = {
    "dmc:cartpole-swingup": 8,
    "dmc:reacher-easy": 4,
    "dmc:cheetah-run": 4,
    "dmc:finger-spin": 2,
    "dmc:ball_in_cup-catch": 4,
    "dmc:walker-walk": 2,
}

#: Default action repeat per dm_control domain (PlaNet's settings; other domains: 1).
DEFAULT_ACTION_REPEAT: dict[str, int] = {
    "cartpole": 8,
    "reacher": 4,
    "cheetah": 4,
    "finger": 2,
    "ball_in_cup": 4,
    "walker": 2,
}

_FORMATS = ("'dmc:<domain>-<task>' (e.g. 'dmc:cartpole-swingup'), 'gym:<id>' (e.g. 'gym:Pendulum-v1') or "
            "'gym:<module>:<id>' (imports <module> first, which registers <id>)")


def _dmc_tasks() -> list[tuple[str, str]]:
    from dm_control import suite

    return list(suite.ALL_TASKS)


def available_envs(backend: str | None = None) -> list[str]:
    """Names accepted by :func:`make_env`.

    Args:
        backend: ``"dmc"`` (every dm_control suite task), ``"gym"`` (every id
            registered in Gymnasium; some need extra packages to run), or
            ``None`` for both.

    Examples:
        >>> "dmc:cartpole-swingup" in available_envs("dmc")
        True
        >>> "gym:Pendulum-v1" in available_envs("gym")
        True
    """
    if backend not in (None, "dmc", "gym"):
        raise ValueError(f"available_envs: backend must be None, 'dmc' or 'gym', got {backend!r}.")
    names: list[str] = []
    if backend in (None, "dmc"):
        names += [f"dmc:{d}-{t}" for d, t in _dmc_tasks()]
    if backend in (None, "gym"):
        import gymnasium

        names += [f"gym:{k}" for k in sorted(gymnasium.registry)]
    return names


def _unknown(name: str, reason: str, candidates: list[str]) -> ValueError:
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return ValueError(f"make_env: unknown environment name={name!r} ({reason}).{hint} Use {_FORMATS}.")


def _parse_name(name: str) -> tuple[str, str, str]:
    """Returns ``(backend, a, b)``: ``("dmc", domain, task)`` or ``("gym", id, "")``."""
    if not isinstance(name, str):
        raise TypeError(f"make_env: name must be a str such as 'dmc:cartpole-swingup', got {type(name).__name__}.")
    backend, sep, rest = name.partition(":")
    if not sep:
        backend, rest = "dmc", name  # bare 'domain-task' is accepted for dm_control
    if backend == "dmc":
        tasks = _dmc_tasks()
        names = [f"dmc:{d}-{t}" for d, t in tasks]
        domain, _, task = rest.partition("-")
        if (domain, task) not in tasks:
            listing = ", ".join(f"{d}-{t}" for d, t in tasks)
            err = _unknown(name, "not a dm_control suite task", names)
            raise ValueError(f"{err.args[0]} Available dm_control tasks: {listing}.")
        return "dmc", domain, task
    if backend == "gym":
        import gymnasium

        module, sep, gym_id = rest.partition(":")
        if sep:  # Gymnasium's "module:Id": importing the module registers the id
            _import_env_module(name, module)
            if gym_id not in gymnasium.registry:
                ids = [f"gym:{module}:{k}" for k in gymnasium.registry]
                raise _unknown(name, f"module {module!r} was imported but registers no Gymnasium id {gym_id!r}", ids)
            return "gym", gym_id, ""
        if rest not in gymnasium.registry:
            ids = [f"gym:{k}" for k in gymnasium.registry]
            raise _unknown(name, "not a registered Gymnasium id", ids)
        return "gym", rest, ""
    raise _unknown(name, f"unknown backend {backend!r}; expected 'dmc' or 'gym'", [])


def _import_env_module(name: str, module: str) -> None:
    """Imports the module of a ``"gym:<module>:<id>"`` name, as ``gymnasium.make("module:Id")`` does.

    The working directory is searched last when the module is not found elsewhere: a console
    script such as ``torchrl-rssm`` does not put it on ``sys.path`` (``python -m`` and an
    interactive session do), and a user's ``myenvs.py`` next to them should import either way.
    """
    if not module or not all(part.isidentifier() for part in module.split(".")):
        raise ValueError(f"make_env: {name!r} names the module {module!r}, which is not a Python module name; "
                         f"use {_FORMATS}.")
    top = module.partition(".")[0]
    cwd = os.getcwd()
    if importlib.util.find_spec(top) is None and cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)
    try:
        importlib.import_module(module)
    except ImportError as err:
        raise ValueError(
            f"make_env: could not import module {module!r} for environment {name!r} ({type(err).__name__}: {err}); "
            "it must be importable (on PYTHONPATH or in the working directory) and register the id with "
            "gymnasium.register."
        ) from err


def _check_positive_int(value: Any, arg: str, allow_none: bool = True) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"make_env: {arg} must be a positive int{' or None' if allow_none else ''}, got {value!r}.")
    return int(value)


_REPEAT_CLS = None


def _action_repeat_pixels_cls():
    """Builds (once) the dm_control wrapper class; dm_control is imported lazily."""
    global _REPEAT_CLS
    if _REPEAT_CLS is None:
        from dm_control.suite.wrappers import pixels

        class ActionRepeatPixels(pixels.Wrapper):
            """dm_control pixel wrapper: repeats each action ``repeat`` times, renders once.

            The reward is summed over the repeated steps and the loop stops at the
            episode's last step. It subclasses dm_control's ``pixels.Wrapper`` so
            that TorchRL's ``DMControlWrapper`` accepts it (and seeds its task).
            """

            def __init__(self, env, repeat: int = 1, **kwargs):
                super().__init__(env, **kwargs)
                self._repeat = int(repeat)

            def step(self, action):
                reward = 0.0
                for _ in range(self._repeat):
                    time_step = self._env.step(action)
                    reward += time_step.reward or 0.0
                    if time_step.last():
                        break
                return self._add_pixel_observation(time_step._replace(reward=reward))

        ActionRepeatPixels.__module__ = __name__
        ActionRepeatPixels.__qualname__ = "ActionRepeatPixels"
        _REPEAT_CLS = ActionRepeatPixels
    return _REPEAT_CLS


def __getattr__(name: str):
    # PEP 562: ``factory.ActionRepeatPixels`` (and unpickling) without importing
    # dm_control when this module is imported.
    if name == "ActionRepeatPixels":
        return _action_repeat_pixels_cls()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _frame_to_tensor(frame) -> torch.Tensor:
    """``render()`` output (numpy HWC uint8) -> tensor (picklable preproc)."""
    return torch.as_tensor(np.ascontiguousarray(frame))


def _vector_keys(env: EnvBase, exclude: Sequence[str] = ("pixels",)) -> list:
    return [k for k in env.observation_spec.keys(True, True) if k not in exclude]


def _make_dmc(domain, task, *, from_pixels, action_repeat, image_size, camera_id, pixels_only, seed, device,
              env_kwargs):
    from dm_control import suite
    from torchrl.envs import DMControlWrapper

    task_kwargs = dict(env_kwargs)
    if seed is not None:
        if "random" in task_kwargs:
            raise ValueError("make_env: give either seed or env_kwargs['random'] for a dm_control task, not both.")
        task_kwargs["random"] = seed
    try:
        env = suite.load(domain, task, task_kwargs=task_kwargs)
    except TypeError as err:
        raise ValueError(
            f"make_env: the environment's keyword arguments (env_kwargs and extra keywords) {env_kwargs!r} are not "
            f"accepted by the dm_control task {domain}-{task} ({err}); they are passed as suite.load(..., "
            "task_kwargs=...), e.g. {'time_limit': 10} "
            "or {'environment_kwargs': {...}}."
        ) from err
    step_limit = float(getattr(env, "_step_limit", float("inf")))
    if from_pixels:
        if camera_id is None:
            camera_id = 2 if domain == "quadruped" else 0
        render_kwargs = dict(height=image_size[0], width=image_size[1], camera_id=camera_id)
        env = _action_repeat_pixels_cls()(env, action_repeat, pixels_only=pixels_only, render_kwargs=render_kwargs)
        base = DMControlWrapper(env, device=device)
    else:
        base = DMControlWrapper(env, device=device, frame_skip=action_repeat)
    transforms: list[Transform] = []
    if from_pixels:
        transforms.append(PermuteTransform((-1, -3, -2), in_keys=["pixels"]))
    vec = _vector_keys(base)
    if vec and not (from_pixels and pixels_only):
        transforms.append(CatTensors(in_keys=vec, out_key="observation", del_keys=True))
    env_steps = None if math.isinf(step_limit) else int(step_limit)
    return base, transforms, env_steps


def _native_image(spec) -> tuple[Any, str] | None:
    """The key and layout of an image observation the env itself returns, if any.

    An image is a ``uint8`` entry of shape ``[H, W, C]`` with ``C`` in 1..4
    (``"channels_last"``), ``[C, H, W]`` (``"channels_first"``) or ``[H, W]``
    (``"hw"``, e.g. Atari grayscale). TorchRL's ``GymEnv`` names an RGB ``Box(0, 255,
    (H, W, 3))`` observation ``"pixels"``, which is preferred.
    """
    found = []
    for key in spec.keys(True, True):
        leaf, shape = spec[key], tuple(spec[key].shape)
        if leaf.dtype != torch.uint8 or len(shape) not in (2, 3):
            continue
        if len(shape) == 2:
            layout = "hw"
        elif shape[-1] <= 4:
            layout = "channels_last"
        elif shape[0] <= 4:
            layout = "channels_first"
        else:
            continue
        found.append((key, layout))
    found.sort(key=lambda kl: kl[0] != "pixels")
    return found[0] if found else None


_GYM_RESERVED = {"frame_skip": "action_repeat", "device": "device", "from_pixels": "from_pixels",
                 "pixels_only": "pixels_only"}


def _make_gym(gym_id, *, from_pixels, action_repeat, image_size, pixels_only, device, env_kwargs):
    from torchrl.envs import GymEnv
    from torchrl.record import PixelRenderTransform

    for key, arg in _GYM_RESERVED.items():
        if key in env_kwargs:
            raise ValueError(f"make_env: the environment's keyword arguments (env_kwargs and extra keywords) must "
                             f"not contain {key!r}; use make_env's {arg} argument.")
    kwargs = {"render_mode": "rgb_array"} if from_pixels else {}
    kwargs.update(env_kwargs)
    try:
        base = GymEnv(gym_id, frame_skip=action_repeat, device=device, **kwargs)
    except TypeError as err:
        raise ValueError(
            f"make_env: the environment's keyword arguments (env_kwargs and extra keywords) {env_kwargs!r} are not "
            f"accepted by the Gymnasium env {gym_id!r} ({err}); "
            "they are passed to gymnasium.make (the env's constructor), e.g. {'continuous': False}."
        ) from err
    transforms: list[Transform] = []
    native = _native_image(base.observation_spec)
    vec = _vector_keys(base, exclude=["pixels"] + ([native[0]] if native else []))
    if native is not None:
        key, layout = native
        if not from_pixels:
            raise ValueError(
                f"make_env: the Gymnasium env {gym_id!r} observes images itself ({key!r}, shape "
                f"{tuple(base.observation_spec[key].shape)}); use from_pixels=True (its own image is used, "
                "channels-first and resized to image_size)."
            )
        if key != "pixels":
            transforms.append(RenameTransform(in_keys=[key], out_keys=["pixels"]))
        if layout == "hw":
            transforms.append(UnsqueezeTransform(dim=-1, in_keys=["pixels"]))
        transforms.append(ResizePixels(image_size, channels_last=layout != "channels_first"))
    elif from_pixels:
        if kwargs.get("render_mode") != "rgb_array":
            raise ValueError(
                f"make_env: env_kwargs render_mode={kwargs.get('render_mode')!r} cannot give pixels for "
                f"{gym_id!r}; from_pixels=True renders with render_mode='rgb_array' (leave render_mode out)."
            )
        try:
            base.reset()
            frame = base._env.render()
            if frame is None or np.asarray(frame).ndim != 3:
                raise RuntimeError(f"render() returned {type(frame).__name__}, not an HxWx3 array")
        except Exception as err:  # noqa: BLE001 - anything the renderer raises
            raise RuntimeError(
                f"make_env: Gymnasium env {gym_id!r} cannot render rgb_array frames here ({type(err).__name__}: {err}). "
                "Use from_pixels=False for vector observations, or install its rendering dependencies."
            ) from err
        render = PixelRenderTransform(out_keys=["pixels"], preproc=_frame_to_tensor, as_non_tensor=False)
        transforms += [render, ResizePixels(image_size, channels_last=True)]
    if from_pixels and pixels_only and vec:
        transforms.append(ExcludeTransform(*vec))
    if vec and not (from_pixels and pixels_only) and vec != ["observation"]:
        transforms.append(CatTensors(in_keys=vec, out_key="observation", del_keys=True))
    spec = getattr(getattr(base._env, "spec", None), "max_episode_steps", None)
    return base, transforms, spec


def make_env(
    name: str,
    *,
    from_pixels: bool = True,
    action_repeat: int | None = None,
    bit_depth: int | None = 5,
    max_episode_steps: int | None = None,
    seed: int | None = None,
    device: torch.device | str = "cpu",
    primers: Transform | Sequence[Transform] | None = None,
    pixels_only: bool = True,
    image_size: int | tuple[int, int] = 64,
    camera_id: int | None = None,
    env_kwargs: dict[str, Any] | None = None,
    grayscale: bool = False,
    **kwargs: Any,
) -> TransformedEnv:
    """Builds a dm_control or Gymnasium task with PlaNet's preprocessing as TorchRL transforms.

    Args:
        name: ``"dmc:<domain>-<task>"`` for any dm_control suite task (the bare
            ``"<domain>-<task>"`` also works), ``"gym:<id>"`` for a registered
            Gymnasium id, or ``"gym:<module>:<id>"``, which imports ``<module>`` first
            (where a user's env registers itself with ``gymnasium.register``), as
            ``gymnasium.make("module:Id")`` does; the working directory is searched
            for the module last. See :func:`available_envs` and :data:`PAPER_TASKS`.
        from_pixels: observe ``uint8`` ``[3, image_size, image_size]`` images under
            ``"pixels"``; ``False`` gives a float32 vector under ``"observation"``
            (dm_control's observation dict concatenated). For a Gymnasium env whose
            own observation is an image (e.g. ``CarRacing-v3``, Atari) that image is
            used, made channels-first ``uint8`` and resized to ``image_size`` (no
            rendering); such an env needs ``from_pixels=True``.
        action_repeat: environment steps per agent step (reward summed). Default:
            PlaNet's value for the dm_control domain (:data:`DEFAULT_ACTION_REPEAT`),
            else 1.
        bit_depth: bits kept per pixel channel (:class:`BitDepth`); ``None`` or 8
            keeps all 8. Ignored without pixels.
        max_episode_steps: agent steps before truncation (``StepCounter``).
            Default: the task's own limit divided by the repeat (dm_control:
            ``1000 // action_repeat``; Gymnasium: ``spec.max_episode_steps //
            action_repeat`` when the id has one, else no limit).
        seed: seeds the task (``env.set_seed``).
        device: device of the environment's output tensors.
        primers: a ``TensorDictPrimer`` (or a list of transforms) appended last,
            e.g. the acting policy's ``make_tensordict_primer()``.
        pixels_only: with ``from_pixels``, drop the vector observation (``False``
            keeps both ``"pixels"`` and ``"observation"``).
        image_size: image side, or ``(height, width)``: rendered at that size
            (dm_control), else resized to it with
            :func:`torch.nn.functional.interpolate`. PlaNet: 64; the conv stacks of
            :func:`~torchrl_rssm.modules.make_world_model` take sides >= 46.
        camera_id: dm_control camera (default 0; 2 for quadruped).
        env_kwargs: keyword arguments for the environment's constructor, as a dict
            (the command line's ``--set env_kwargs=...``); joined with ``**kwargs``.
            Gymnasium: passed to ``gymnasium.make(id, **env_kwargs)`` (through
            TorchRL's ``GymEnv``), e.g. ``{"continuous": False}`` for
            ``CarRacing-v3``; ``frame_skip``, ``device``, ``from_pixels`` and
            ``pixels_only`` are make_env's own arguments and refused here.
            dm_control: passed as ``suite.load(domain, task,
            task_kwargs=env_kwargs)``, i.e. to the task's factory, e.g.
            ``{"time_limit": 10}`` or ``{"environment_kwargs": {"flat_observation":
            True}}``; ``"random"`` conflicts with ``seed``.
        grayscale: one-channel ``uint8`` ``[1, H, W]`` pixels (BT.601 luma,
            :class:`~torchrl_rssm.envs.GrayScalePixels`). Needs ``from_pixels``.
        **kwargs: more keyword arguments for the environment's constructor, as
            TorchRL's ``GymEnv`` and ``DMControlEnv`` take them:
            ``make_env("gym:CarRacing-v3", continuous=False)`` is
            ``make_env("gym:CarRacing-v3", env_kwargs={"continuous": False})``. A key
            given both ways is an error.

    Returns:
        A ``TransformedEnv`` with the extra attributes ``action_repeat`` and
        ``max_episode_steps`` (agent steps, or ``None``).

    Raises:
        ValueError: unknown ``name`` (the message lists the available tasks) or a
            bad argument (the message names it).

    Examples:
        >>> env = make_env("dmc:cartpole-swingup", seed=0)
        >>> td = env.rollout(3)
        >>> td["pixels"].shape, td["pixels"].dtype, env.action_repeat, env.max_episode_steps
        (torch.Size([3, 3, 64, 64]), torch.uint8, 8, 125)
        >>> make_env("gym:Pendulum-v1", from_pixels=False).observation_spec["observation"].shape
        torch.Size([3])
        >>> make_env("gym:Pendulum-v1", from_pixels=False, g=2.0).base_env._env.unwrapped.g  # to the constructor
        2.0
        >>> car = make_env("gym:CarRacing-v3", continuous=False, grayscale=True, image_size=96)
        >>> car.observation_spec["pixels"].shape, car.action_spec.shape
        (torch.Size([1, 96, 96]), torch.Size([5]))
    """
    backend, a, b = _parse_name(name)
    action_repeat = _check_positive_int(action_repeat, "action_repeat")
    if action_repeat is None:
        action_repeat = DEFAULT_ACTION_REPEAT.get(a, 1) if backend == "dmc" else 1
    max_episode_steps = _check_positive_int(max_episode_steps, "max_episode_steps")
    if isinstance(image_size, (tuple, list)) and len(image_size) == 2:
        image_size = tuple(_check_positive_int(v, "image_size", allow_none=False) for v in image_size)
    else:
        image_size = (_check_positive_int(image_size, "image_size", allow_none=False),) * 2
    if env_kwargs is None:
        env_kwargs = {}
    elif not isinstance(env_kwargs, dict) or not all(isinstance(k, str) for k in env_kwargs):
        raise ValueError(f"make_env: env_kwargs must be a dict with str keys or None, got {env_kwargs!r}.")
    both = sorted(set(env_kwargs) & set(kwargs))
    if both:
        raise ValueError(f"make_env: {both} given both in env_kwargs and as keyword arguments; give each once.")
    env_kwargs = {**env_kwargs, **kwargs}
    if not isinstance(grayscale, bool):
        raise ValueError(f"make_env: grayscale must be a bool, got {grayscale!r}.")
    if grayscale and not from_pixels:
        raise ValueError("make_env: grayscale=True needs from_pixels=True (it converts the pixels).")
    if bit_depth is not None:
        if isinstance(bit_depth, bool) or not isinstance(bit_depth, int) or not 1 <= bit_depth <= 8:
            raise ValueError(f"make_env: bit_depth must be an int in [1, 8] or None, got {bit_depth!r}.")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise ValueError(f"make_env: seed must be an int or None, got {seed!r}.")
    if primers is None:
        primers = []
    elif isinstance(primers, Transform):
        primers = [primers]
    else:
        primers = list(primers)
        bad = [p for p in primers if not isinstance(p, Transform)]
        if bad:
            raise TypeError(
                f"make_env: primers must be a TorchRL Transform (e.g. TensorDictPrimer) or a list of them, got {bad!r}."
            )

    if backend == "dmc":
        base, transforms, env_steps = _make_dmc(
            a, b, from_pixels=from_pixels, action_repeat=action_repeat, image_size=image_size,
            camera_id=camera_id, pixels_only=pixels_only, seed=seed, device=device, env_kwargs=env_kwargs,
        )
    else:
        base, transforms, env_steps = _make_gym(
            a, from_pixels=from_pixels, action_repeat=action_repeat, image_size=image_size,
            pixels_only=pixels_only, device=device, env_kwargs=env_kwargs,
        )
    if max_episode_steps is None and env_steps is not None:
        max_episode_steps = max(1, env_steps // action_repeat)

    if grayscale:
        transforms.append(GrayScalePixels(in_keys=["pixels"]))
    if from_pixels and bit_depth is not None and bit_depth < 8:
        transforms.append(BitDepth(bit_depth, in_keys=["pixels"]))
    transforms += [DoubleToFloat(), StepCounter(max_steps=max_episode_steps), RewardSum(), InitTracker()]
    env = TransformedEnv(base)
    for t in [*transforms, *primers]:
        env.append_transform(t)
    env.action_repeat = action_repeat
    env.max_episode_steps = max_episode_steps
    if seed is not None:
        env.set_seed(int(seed))
    return env
