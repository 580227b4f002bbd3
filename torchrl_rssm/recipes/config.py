"""PlaNet configuration: one dataclass, presets for the paper's six tasks and a quick CPU preset.

Every field can be overridden from the command line (``torchrl-rssm train --set lr=3e-4``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass
class PlaNetConfig:
    """All settings of a PlaNet run. Defaults are the paper's (appendix A).

    Examples:
        >>> cfg = preset("quick")
        >>> cfg.env, cfg.from_pixels
        ('dmc:cartpole-swingup', False)
        >>> apply_overrides(cfg, ["lr=3e-4", "planner=mppi"]).lr
        0.0003
    """

    # environment
    env: str = "dmc:cartpole-swingup"
    from_pixels: bool = True
    action_repeat: int | None = None  # None: the paper's value for the task
    max_episode_steps: int | None = None  # agent steps; None: 1000 env steps / action_repeat
    bit_depth: int = 5
    # world model
    state_dim: int = 30
    belief_dim: int = 200
    hidden_dim: int = 200
    embed_dim: int = 200  # vector observations only (pixels: 1024 from the conv stack)
    min_std: float = 0.1
    compile: bool = False
    # loss
    free_nats: float = 3.0
    kl_balance: float | None = None
    overshooting_distance: int = 1
    overshooting_weight: float = 1.0
    reward_weight: float = 1.0  # the official code uses 10
    # optimisation
    lr: float = 1e-3
    adam_eps: float = 1e-4
    grad_clip: float = 1000.0
    batch_size: int = 50
    chunk_length: int = 50
    # planning and acting
    planner: str = "cem"  # "cem" or "mppi"
    horizon: int = 12
    optim_steps: int = 10
    candidates: int = 1000
    top_k: int = 100
    mppi_temperature: float = 1.0
    exploration_noise: float = 0.3
    # schedule
    seed_episodes: int = 5
    episodes: int = 1000  # training episodes collected with the planner (after the seed episodes)
    updates_per_episode: int = 100  # C: model updates before each collected episode
    test_every: int = 25  # episodes
    test_episodes: int = 5  # run as one batch of environments
    checkpoint_every: int = 10  # episodes
    buffer_capacity: int = 1_000_000  # agent steps
    buffer_on_disk: bool = False  # LazyMemmapStorage under logdir instead of memory / device
    nan_policy: str = "skip"  # "skip": skip the update, warn and count; "raise": stop with an error
    # run
    seed: int = 0
    device: str = "cpu"
    # torch CPU threads (None: torch's default). Small models gain nothing from a second
    # thread, and OpenMP threads spinning on a busy machine slow small ops by orders of magnitude.
    num_threads: int | None = None
    logdir: str = "runs/planet"
    video_every: int = 50  # episodes between reconstruction images / open-loop videos (0: never)
    progress: bool = True

    # fields that may differ when resuming a run (everything else must match the checkpoint)
    RESUMABLE: tuple[str, ...] = field(
        default=("episodes", "test_every", "test_episodes", "checkpoint_every", "device", "logdir",
                 "video_every", "progress", "compile", "nan_policy", "num_threads"),
        repr=False, compare=False,
    )

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "RESUMABLE"}

    def mismatches(self, other: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
        """Fields that differ from a saved configuration and may not change on resume."""
        mine = self.to_dict()
        keys = (set(mine) | set(other)) - set(self.RESUMABLE)
        return {k: (other.get(k), mine.get(k)) for k in sorted(keys) if other.get(k) != mine.get(k)}


# PlaNet's six tasks: the paper's settings; action repeats from the paper's appendix.
PAPER_ACTION_REPEAT = {
    "cartpole-swingup": 8, "reacher-easy": 4, "cheetah-run": 4,
    "finger-spin": 2, "ball_in_cup-catch": 4, "walker-walk": 2,
}

PRESETS: dict[str, dict[str, Any]] = {
    task: dict(env=f"dmc:{task}", action_repeat=repeat, logdir=f"runs/planet-{task}")
    for task, repeat in PAPER_ACTION_REPEAT.items()
}
# A run that finishes in about ten minutes on a 2-core CPU: cartpole swing-up from state
# vectors, a smaller model and planner, fewer updates. Pixels cost ~6 ms per image per
# update on such a CPU, too slow for this budget: see "quick-pixels".
PRESETS["quick"] = dict(
    env="dmc:cartpole-swingup", from_pixels=False, action_repeat=8,
    state_dim=16, belief_dim=64, hidden_dim=64, embed_dim=64,
    batch_size=16, chunk_length=25, lr=3e-3, reward_weight=10.0,
    horizon=12, optim_steps=6, candidates=256, top_k=25,
    seed_episodes=5, episodes=35, updates_per_episode=40,
    test_every=10, test_episodes=4, checkpoint_every=5, buffer_capacity=100_000,
    video_every=0, num_threads=1, logdir="runs/planet-quick",
)
# The same from pixels (documented; about 1-2 hours on a 2-core CPU, minutes on a GPU).
PRESETS["quick-pixels"] = dict(
    PRESETS["quick"], from_pixels=True, state_dim=30, belief_dim=200, hidden_dim=200, num_threads=None,
    batch_size=16, chunk_length=25, lr=1e-3, episodes=100, updates_per_episode=50,
    video_every=25, logdir="runs/planet-quick-pixels",
)
# A few seconds: used by the tests to run the whole loop.
PRESETS["tiny"] = dict(
    PRESETS["quick"], state_dim=4, belief_dim=16, hidden_dim=16, embed_dim=16,
    batch_size=4, chunk_length=8, max_episode_steps=20, seed_episodes=2, episodes=1,
    updates_per_episode=3, horizon=4, optim_steps=2, candidates=16, top_k=4,
    test_every=1, test_episodes=2, checkpoint_every=1, buffer_capacity=1000,
    video_every=1, logdir="runs/planet-tiny",
)


def preset(name: str) -> PlaNetConfig:
    """The configuration of a named preset (``quick``, ``tiny``, or one of the paper's tasks)."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; available: {sorted(PRESETS)}.")
    return PlaNetConfig(**PRESETS[name])


def _parse_value(text: str, current: Any, name: str) -> Any:
    if text.lower() in ("none", "null"):
        return None
    kind = type(current)
    if isinstance(current, bool):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"Override {name}={text!r}: expected a boolean (true/false).")
    if current is None:  # optional field: try int, then float, then str
        for cast in (int, float):
            try:
                return cast(text)
            except ValueError:
                pass
        return text
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"Override {name}={text!r}: expected a {kind.__name__}.") from None


def apply_overrides(cfg: PlaNetConfig, overrides: list[str]) -> PlaNetConfig:
    """Applies ``key=value`` strings to a configuration (in place) and returns it."""
    names = {f.name for f in fields(cfg)} - {"RESUMABLE"}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"Override {item!r}: expected key=value.")
        key, text = item.split("=", 1)
        key = key.strip().replace("-", "_")
        if key not in names:
            raise ValueError(f"Override {item!r}: unknown field {key!r}; fields: {sorted(names)}.")
        setattr(cfg, key, _parse_value(text.strip(), getattr(cfg, key), key))
    return cfg


def from_dict(data: dict[str, Any]) -> PlaNetConfig:
    known = {f.name for f in fields(PlaNetConfig)} - {"RESUMABLE"}
    return dataclasses.replace(PlaNetConfig(), **{k: v for k, v in data.items() if k in known})
