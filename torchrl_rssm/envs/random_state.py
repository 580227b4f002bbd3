"""The environments' own random state, kept so that a resumed run's episodes start where they would have.

A simulator draws its initial states from its own generator (dm_control's
``task.random``, a ``numpy.random.RandomState``; Gymnasium's ``env.unwrapped.np_random``),
not from torch's. :class:`EnvRandomState` is a TorchRL transform that reads that generator's
state just **before** every reset of the environment it is appended to (it changes no data
and draws nothing). A checkpoint keeps the state read before the latest reset
(:func:`env_random_states`, one per sub-environment of a ``SerialEnv``); a resumed run puts it
back (:func:`set_env_random_states`) and resets again, so its next episode starts from the
same initial state as the uninterrupted run's.

Environments whose generator is not found (a custom ``EnvBase``) give ``None``: their
episodes are seeded as usual but not restored exactly. Sub-environments of a ``ParallelEnv``
live in worker processes and are not reachable here (``None`` too).
"""
from __future__ import annotations

import copy
from typing import Any

from tensordict import TensorDictBase
from torchrl.envs import EnvBase, ParallelEnv, SerialEnv, TransformedEnv
from torchrl.envs.transforms import Compose, Transform

__all__ = ["EnvRandomState", "env_random_states", "set_env_random_states"]


def _generator(base_env: EnvBase) -> tuple[str, Any] | None:
    """``(kind, generator)`` of a base env's simulator, or ``None`` when it has no known one."""
    inner = getattr(base_env, "_env", None)
    # dm_control: the suite env, possibly inside wrappers (the pixels wrapper keeps it in ``_env``)
    seen = 0
    while inner is not None and not hasattr(inner, "task") and hasattr(inner, "_env") and seen < 16:
        inner, seen = inner._env, seen + 1
    task = getattr(inner, "task", None)
    if task is not None and hasattr(task, "_random"):
        return "dm_control", task
    unwrapped = getattr(inner, "unwrapped", None)  # Gymnasium
    rng = getattr(unwrapped, "np_random", None) if unwrapped is not None else None
    if rng is not None and hasattr(rng, "bit_generator"):
        return "gymnasium", unwrapped
    return None


def _read(base_env: EnvBase) -> Any:
    found = _generator(base_env)
    if found is None:
        return None
    kind, holder = found
    if kind == "dm_control":
        return ("dm_control", holder._random.get_state())
    return ("gymnasium", copy.deepcopy(holder.np_random.bit_generator.state))


def _write(base_env: EnvBase, state: Any) -> bool:
    found = _generator(base_env)
    if found is None or state is None or found[0] != state[0]:
        return False
    kind, holder = found
    if kind == "dm_control":
        holder._random.set_state(state[1])
    else:
        holder.np_random.bit_generator.state = copy.deepcopy(state[1])
    return True


class EnvRandomState(Transform):
    """Reads the simulator's generator state before every reset (``snapshot``); changes nothing.

    Examples:
        >>> from torchrl_rssm.envs import make_env
        >>> env = make_env("gym:Pendulum-v1", from_pixels=False, max_episode_steps=5, seed=0)
        >>> env = env.append_transform(EnvRandomState())
        >>> first = env.reset()["observation"]
        >>> saved = env_random_states(env)          # the state the last reset started from
        >>> _ = env.reset()
        >>> set_env_random_states(env, saved)
        True
        >>> bool((env.reset()["observation"] == first).all())  # the same initial state again
        True
    """

    def __init__(self):
        super().__init__(in_keys=[], out_keys=[])
        #: the generator state read before the latest reset (``None``: no reset yet, or unknown)
        self.snapshot: Any = None

    def _reset_env_preprocess(self, tensordict: TensorDictBase | None) -> TensorDictBase | None:
        parent = self.parent
        if parent is not None:
            self.snapshot = _read(parent.base_env)
        return tensordict

    def _reset(self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase) -> TensorDictBase:
        return tensordict_reset


def _tracker(env: EnvBase) -> EnvRandomState | None:
    transform = getattr(env, "transform", None) if isinstance(env, TransformedEnv) else None
    parts = list(transform) if isinstance(transform, Compose) else [transform] if transform is not None else []
    return next((t for t in parts if isinstance(t, EnvRandomState)), None)


def _leaves(env: EnvBase) -> list[EnvBase] | None:
    """The single environments of ``env`` (itself, or a ``SerialEnv``'s built copies); ``None``
    when they are out of reach (a ``ParallelEnv``'s workers)."""
    if isinstance(env, SerialEnv):
        return list(getattr(env, "_envs", []) or []) or None
    if isinstance(env, TransformedEnv) and isinstance(env.base_env, SerialEnv):
        return _leaves(env.base_env)
    if isinstance(env, ParallelEnv) or (isinstance(env, TransformedEnv) and isinstance(env.base_env, ParallelEnv)):
        return None  # its environments live in worker processes
    return [env]


def env_random_states(env: EnvBase) -> list[Any] | None:
    """For each single environment of ``env`` (one, or a ``SerialEnv``'s), the simulator's generator
    state read before its latest reset (:class:`EnvRandomState`); ``None`` when out of reach."""
    leaves = _leaves(env)
    if leaves is None:
        return None
    out = []
    for leaf in leaves:
        tracker = _tracker(leaf)
        out.append(None if tracker is None else copy.deepcopy(tracker.snapshot))
    return out


def set_env_random_states(env: EnvBase, states: list[Any] | None) -> bool:
    """Puts back what :func:`env_random_states` returned; the next reset then starts where the
    one it was read before did. Returns ``True`` if every environment's state was restored."""
    leaves = _leaves(env)
    if leaves is None or states is None or len(states) != len(leaves):
        return False
    return all([_write(leaf.base_env if isinstance(leaf, TransformedEnv) else leaf, state)
                for leaf, state in zip(leaves, states)])
