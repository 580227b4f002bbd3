"""Run configuration: one dataclass for both agents, presets for the paper's tasks and quick CPU runs.

Every field can be overridden from the command line (``torchrl-rssm train --set lr=3e-4``).
Fields are grouped: environment, world model, world-model loss and optimiser, PlaNet (planner),
Dreamer (actor and value), schedule, run. Fields are named after the constructor arguments
they feed (``planning_horizon``, ``num_candidates``, ``lambda_reward``, ``gamma``, ``lmbda``);
the string under each field is its documentation (``torchrl-rssm presets``, ``--help``).
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import json
import inspect
import textwrap
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from ..envs.factory import PAPER_TASKS

__all__ = ["AGENTS", "FIELD_HELP", "PRESETS", "TASK_FIELDS", "PlaNetConfig", "RunConfig", "apply_overrides",
           "from_dict", "preset"]

#: Agents the trainer core knows (``algo``); ``dreamer`` needs ``recipes/dreamer.py``.
AGENTS = ("planet", "dreamer")


@dataclass
class RunConfig:
    """All settings of a run (PlaNet or Dreamer). Defaults are PlaNet's paper settings (appendix A).

    Examples:
        >>> cfg = preset("quick")
        >>> cfg.env, cfg.from_pixels, cfg.algo
        ('dmc:cartpole-swingup', False, 'planet')
        >>> apply_overrides(cfg, ["lr=3e-4", "planner=mppi"]).lr
        0.0003
    """

    algo: str = "planet"
    """agent: "planet" (world model + planner) or "dreamer" (world model + actor and value)"""
    # --- environment
    env: str = "dmc:cartpole-swingup"
    """task: dmc:<domain>-<task> or gym:<id>"""
    from_pixels: bool = True
    """observe 64x64 images (else the state vector)"""
    action_repeat: int | None = None
    """env steps per agent step; None: the paper's value for its DMC domains, else 1"""
    max_episode_steps: int | None = None
    """agent steps per episode; None: the task's limit (DMC: 1000 env steps / action_repeat)"""
    bit_depth: int = 5
    """bits kept per pixel channel"""
    image_size: int = 64
    """side of the square images the model sees (rendered, or the env's own images resized)"""
    grayscale: bool = False
    """observe one-channel images instead of RGB"""
    env_kwargs: dict | None = None
    """keyword arguments for the environment's constructor, as JSON: --set 'env_kwargs={"continuous": false}'"""
    # --- world model (make_world_model)
    state_dim: int = 30
    """stochastic latent size"""
    belief_dim: int = 200
    """deterministic (GRU) latent size"""
    hidden_dim: int = 200
    """hidden units of the RSSM's MLPs and heads"""
    embed_dim: int = 200
    """observation embedding size (vector observations only; pixels: 1024 from the conv stack)"""
    conv_channels: int = 32
    """pixels: channels of the encoder's first conv (doubling per layer; PlaNet 32), the decoder likewise"""
    min_std: float = 0.1
    """lower bound on the latent's standard deviation"""
    compile: bool = False
    """torch.compile the RSSM step"""
    # --- world-model loss (RSSMLoss) and optimiser
    free_nats: float = 3.0
    """KL below this many nats is not penalised"""
    kl_balance: float | None = None
    """KL balancing weight (None: plain KL)"""
    overshooting_distance: int = 1
    """latent overshooting distance (1: none)"""
    overshooting_weight: float = 1.0
    """weight of the overshooting KL terms"""
    lambda_reward: float = 1.0
    """weight of the reward log-likelihood (the official PlaNet code uses 10)"""
    lr: float = 1e-3
    """world-model learning rate (PlaNet 1e-3; Dreamer 6e-4)"""
    adam_eps: float = 1e-4
    """Adam epsilon (all optimisers)"""
    grad_clip: float = 1000.0
    """gradient-norm clip per optimiser (PlaNet 1000; Dreamer 100)"""
    batch_size: int = 50
    """chunks per update (B)"""
    chunk_length: int = 50
    """steps per chunk (L); episodes shorter than this cannot be trained on"""
    # --- PlaNet: planning and acting (CEMPlanner / MPPIPlanner, PlaNetPolicy)
    planner: str = "cem"
    """"cem" or "mppi\""""
    planning_horizon: int = 12
    """H: planning horizon"""
    optim_steps: int = 10
    """I: optimisation iterations per action"""
    num_candidates: int = 1000
    """J: candidate action sequences"""
    top_k: int = 100
    """K: elites refitted per iteration"""
    mppi_temperature: float = 1.0
    """MPPI temperature"""
    exploration_noise: float = 0.3
    """std of the Gaussian noise added to actions while collecting (both agents)"""
    # --- Dreamer: behaviour learning (Dreamer v1 defaults)
    imagination_horizon: int = 15
    """Dreamer: imagined steps per start state"""
    gamma: float = 0.99
    """Dreamer: discount"""
    lmbda: float = 0.95
    """Dreamer: lambda of the lambda-returns"""
    actor_lr: float = 8e-5
    """Dreamer: actor learning rate"""
    value_lr: float = 8e-5
    """Dreamer: value learning rate"""
    actor_hidden_dim: int = 400
    """Dreamer: actor hidden units"""
    value_hidden_dim: int = 400
    """Dreamer: value hidden units"""
    time_reduction: str = "mean"
    """Dreamer: "mean" over imagined steps and starts (the paper's losses, for its clip of 100) or "sum" over steps (TorchRL's)"""
    # --- schedule
    seed_episodes: int = 5
    """S: random episodes before training"""
    episodes: int = 1000
    """training episodes collected by the agent (after the seed episodes)"""
    updates_per_episode: int = 100
    """C: gradient steps before each collected episode (used when train_ratio is None)"""
    train_ratio: float | None = None
    """model updates per collected agent step (one stored transition); None: updates_per_episode per episode"""
    test_every: int = 25
    """episodes between test runs (also one at the end; 0: never)"""
    test_episodes: int = 5
    """noise-free test episodes, run as one batch"""
    checkpoint_every: int = 10
    """episodes between checkpoints (one is also written at exit)"""
    buffer_capacity: int | None = None
    """replay capacity in agent steps; None: from the run, (seed_episodes + episodes) x episode steps, capped"""
    buffer_device: str = "cpu"
    """where the replay storage lives; sampled batches move to `device`"""
    buffer_on_disk: bool = False
    """LazyMemmapStorage under logdir instead of memory"""
    nan_policy: str = "skip"
    """"skip": skip the update, warn and count; "raise": stop with an error"""
    # --- collection layout (see recipes/trainer.py, "Scale")
    num_envs: int = 1
    """environments stepped together as one batch (the policy acts on the whole batch in one call)"""
    env_backend: str = "serial"
    """how a batch of environments runs: "serial" (SerialEnv, one process) or "parallel" (ParallelEnv)"""
    collector: str = "sync"
    """"sync": in the trainer's process; "async": TorchRL MultiAsyncCollector workers; "distributed": TorchRL DistributedCollector"""
    collector_workers: int = 2
    """worker processes of the "async" / "distributed" collector (each steps num_envs environments)"""
    distributed_port: int = 29517
    """TCP port of the "distributed" collector's process group (TorchRL DistributedCollector, launcher="mp")"""
    # --- run
    seed: int = 0
    """seeds python, numpy, torch and the envs"""
    device: str = "cpu"
    """models and updates: cpu, cuda, cuda:N"""
    num_threads: int | None = None
    """torch CPU threads (None: torch's default; small models gain nothing from a second)"""
    logdir: str = "runs/planet"
    """TensorBoard logs, config.json and checkpoints"""
    video_every: int = 50
    """episodes between reconstruction images / open-loop videos (0: never)"""
    progress: bool = True
    """progress bar on stderr (else a status line per test and per checkpoint)"""

    #: fields that may differ when resuming a run (everything else must match the checkpoint)
    RESUMABLE: ClassVar[tuple[str, ...]] = (
        "episodes", "test_every", "test_episodes", "checkpoint_every", "device", "logdir", "video_every",
        "progress", "compile", "nan_policy", "num_threads", "buffer_device",
        "num_envs", "env_backend", "collector", "collector_workers", "distributed_port",
    )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def mismatches(self, other: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
        """Fields that differ from a saved configuration and may not change on resume."""
        mine = self.to_dict()
        other = _upgrade(other)
        keys = (set(mine) | set(other)) - set(self.RESUMABLE)
        return {k: (other.get(k), mine.get(k)) for k in sorted(keys)
                if k in other and other.get(k) != mine.get(k)}


#: Old name of the class (PlaNet only).
PlaNetConfig = RunConfig


def _field_help() -> dict[str, str]:
    """The string under each field, read from the source (CleanRL-style field docs)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(RunConfig)))
    body = tree.body[0].body
    out = {}
    for node, after in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
            out[node.target.id] = str(after.value.value)
    return out


#: One line of documentation per field.
FIELD_HELP: dict[str, str] = _field_help()

#: Old field names (checkpoints written before the rename still load).
RENAMED = {"horizon": "planning_horizon", "candidates": "num_candidates", "reward_weight": "lambda_reward"}

#: Settings that belong to a preset's task: ``--env`` resets them to the new task's defaults.
TASK_FIELDS = ("action_repeat", "max_episode_steps", "logdir")

# PlaNet's six tasks: the paper's settings; action repeats from the paper's appendix
# (one table, the environments' PAPER_TASKS).
PAPER_ACTION_REPEAT = {env.split(":", 1)[1]: repeat for env, repeat in PAPER_TASKS.items()}

PRESETS: dict[str, dict[str, Any]] = {
    task: dict(env=f"dmc:{task}", action_repeat=repeat, logdir=f"runs/planet-{task}")
    for task, repeat in PAPER_ACTION_REPEAT.items()
}
# A run that finishes in about ten minutes on a 2-core CPU: cartpole swing-up from state
# vectors, a smaller model and planner, fewer updates. Pixels cost far more per update: see
# "quick-pixels".
PRESETS["quick"] = dict(
    env="dmc:cartpole-swingup", from_pixels=False, action_repeat=8,
    state_dim=16, belief_dim=64, hidden_dim=64, embed_dim=64,
    batch_size=16, chunk_length=25, lr=3e-3, lambda_reward=10.0,
    planning_horizon=12, optim_steps=6, num_candidates=256, top_k=25,
    seed_episodes=5, episodes=35, updates_per_episode=40,
    test_every=10, test_episodes=4, checkpoint_every=5, buffer_capacity=100_000,
    video_every=0, num_threads=1, logdir="runs/planet-quick",
)
# The same from 64x64 pixels, sized for under 60 minutes at one thread on a 2-core CPU
# (benchmarks/pixels_budget.py, measured alone: 0.42 s per update, 5.3 s per collected episode):
# half-width convs (16 channels: 4x fewer conv FLOPs than PlaNet's 32, 2.6 s per update), the quick
# preset's RSSM and planner, 60 agent episodes of 80 updates (a first try with 50 updates per
# episode had not learned the pixel model by episode 60: its open-loop predictions were blurred).
PRESETS["quick-pixels"] = dict(
    PRESETS["quick"], from_pixels=True, conv_channels=16, lr=1e-3, buffer_capacity=None,
    episodes=60, updates_per_episode=80, video_every=20, logdir="runs/planet-quick-pixels",
)
# A few seconds: used by the tests to run the whole loop.
PRESETS["tiny"] = dict(
    PRESETS["quick"], state_dim=4, belief_dim=16, hidden_dim=16, embed_dim=16,
    batch_size=4, chunk_length=8, max_episode_steps=20, seed_episodes=2, episodes=1,
    updates_per_episode=3, planning_horizon=4, optim_steps=2, num_candidates=16, top_k=4,
    test_every=1, test_episodes=2, checkpoint_every=1, buffer_capacity=1000,
    video_every=1, logdir="runs/planet-tiny",
)


# Dreamer (Hafner et al. 2020) on the paper's six tasks: action repeat 2 everywhere, 5000 prefill
# env steps (5 episodes), 100 updates per 1000 env steps (one episode), 1M env steps in all;
# model lr 6e-4, actor and value lr 8e-5, gradient clip 100, 400-unit heads, horizon 15.
DREAMER_PAPER = dict(
    algo="dreamer", from_pixels=True, action_repeat=2, hidden_dim=400, lr=6e-4, adam_eps=1e-4,
    grad_clip=100.0, batch_size=50, chunk_length=50, imagination_horizon=15, gamma=0.99, lmbda=0.95,
    actor_lr=8e-5, value_lr=8e-5, actor_hidden_dim=400, value_hidden_dim=400, exploration_noise=0.3,
    seed_episodes=5, episodes=995, updates_per_episode=100,
)
for _task in PAPER_ACTION_REPEAT:
    PRESETS[f"dreamer-{_task}"] = dict(DREAMER_PAPER, env=f"dmc:{_task}", logdir=f"runs/dreamer-{_task}")
# Dreamer on this 2-core CPU: cartpole swing-up from state vectors, PlaNet quick's world model,
# small actor and value with faster learning rates than the paper's (a short run: 60 episodes,
# 48k env steps; acting costs one actor call per step, so the budget goes to 100 updates per episode).
_PLANNER_FIELDS = ("planner", "planning_horizon", "optim_steps", "num_candidates", "top_k", "mppi_temperature")
PRESETS["dreamer-quick"] = dict(
    {k: v for k, v in PRESETS["quick"].items() if k not in _PLANNER_FIELDS}, algo="dreamer", grad_clip=100.0, imagination_horizon=15, gamma=0.99, lmbda=0.95,
    actor_lr=3e-4, value_lr=1e-3, actor_hidden_dim=64, value_hidden_dim=64, time_reduction="sum",
    episodes=55, updates_per_episode=100, test_every=10, checkpoint_every=10, logdir="runs/dreamer-quick",
)
# A few seconds: the tests' Dreamer run.
PRESETS["dreamer-tiny"] = dict(
    {k: v for k, v in PRESETS["tiny"].items() if k not in _PLANNER_FIELDS}, algo="dreamer", grad_clip=100.0, imagination_horizon=4, actor_lr=1e-3, value_lr=1e-3,
    actor_hidden_dim=16, value_hidden_dim=16, logdir="runs/dreamer-tiny",
)


def presets_by_agent() -> dict[str, list[str]]:
    """Preset names grouped by their ``algo``."""
    out: dict[str, list[str]] = {}
    for name, settings in PRESETS.items():
        out.setdefault(settings.get("algo", "planet"), []).append(name)
    return out


def preset(name: str) -> RunConfig:
    """The configuration of a named preset (``quick``, ``tiny``, or one of the paper's tasks)."""
    if name not in PRESETS:
        hint = difflib.get_close_matches(name, PRESETS, n=1)
        raise ValueError(f"Unknown preset {name!r}{f' (did you mean {hint[0]!r}?)' if hint else ''}; "
                         f"available: {sorted(PRESETS)}.")
    return RunConfig(**PRESETS[name])


_KIND_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "a boolean (true/false)"}


_JSON_FIELDS = {"env_kwargs"}


def _parse_value(text: str, current: Any, name: str) -> Any:
    if text.lower() in ("none", "null"):
        return None
    if name in _JSON_FIELDS or isinstance(current, dict):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"Override {name}={text!r}: expected a JSON object, e.g. '{{\"continuous\": false}}' "
                             f"({err.msg}).") from None
        if not isinstance(value, dict):
            raise ValueError(f"Override {name}={text!r}: expected a JSON object, got {type(value).__name__}.")
        return value
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
    kind = type(current)
    try:
        return kind(text)
    except ValueError:
        expected = _KIND_NAMES.get(kind, f"a value of type {kind.__name__}")
        raise ValueError(f"Override {name}={text!r}: expected {expected}.") from None


def _unknown_field(key: str, item: str, names: set[str]) -> ValueError:
    if key in RENAMED:
        return ValueError(f"Override {item!r}: field {key!r} was renamed to {RENAMED[key]!r}.")
    hint = difflib.get_close_matches(key, sorted(names), n=1)
    suggestion = f" Did you mean {hint[0]!r}?" if hint else ""
    return ValueError(f"Override {item!r}: unknown field {key!r}.{suggestion} Fields: {sorted(names)}.")


def override_keys(overrides: list[str]) -> set[str]:
    """The field names a list of ``key=value`` strings sets."""
    return {o.split("=", 1)[0].strip().replace("-", "_") for o in overrides if "=" in o}


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """Applies ``key=value`` strings to a configuration (in place) and returns it.

    Examples:
        >>> apply_overrides(preset("tiny"), ["batch_size=8"]).batch_size
        8
        >>> apply_overrides(preset("tiny"), ["batchsize=8"])
        Traceback (most recent call last):
        ...
        ValueError: Override 'batchsize=8': unknown field 'batchsize'. Did you mean 'batch_size'? ...
    """
    names = {f.name for f in fields(cfg)}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"Override {item!r}: expected key=value.")
        key, text = item.split("=", 1)
        key = key.strip().replace("-", "_")
        if key not in names:
            raise _unknown_field(key, item, names)
        setattr(cfg, key, _parse_value(text.strip(), getattr(cfg, key), key))
    return cfg


def _upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """A saved configuration with old field names renamed."""
    return {RENAMED.get(k, k): v for k, v in data.items()}


def from_dict(data: dict[str, Any]) -> RunConfig:
    """A configuration from a saved dict (unknown keys ignored, renamed fields upgraded)."""
    known = {f.name for f in fields(RunConfig)}
    return dataclasses.replace(RunConfig(), **{k: v for k, v in _upgrade(data).items() if k in known})
