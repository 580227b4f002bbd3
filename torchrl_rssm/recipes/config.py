"""Run configuration: sections named after what they feed, presets for the paper's tasks and quick CPU runs.

A run's configuration is one flat :class:`RunConfig` (every field can be set from the command
line: ``torchrl-rssm train --set model_lr=3e-4``), assembled from sections. Each section's
fields carry the names of the arguments they feed, so a section passes whole to its
constructor as ``**asdict(cfg.section(Section))``:

===================  ==========================================================
section              feeds
===================  ==========================================================
:class:`Env`         :func:`~torchrl_rssm.envs.make_env` (``env`` is its ``name``)
:class:`WorldModel`  :func:`~torchrl_rssm.modules.make_world_model`
:class:`ModelLoss`   :class:`~torchrl_rssm.objectives.RSSMLoss`
:class:`Planning`    :class:`~torchrl_rssm.planners.CEMPlanner` / ``MPPIPlanner``
:class:`PlaNet`      the PlaNet agent: ``Planning``, ``planner`` and MPPI's ``temperature``
:class:`Imagination` :class:`~torchrl_rssm.objectives.DreamerActorLoss`
:class:`Returns`     ``DreamerActorLoss.make_value_estimator``
:class:`Dreamer`     the Dreamer agent: ``Imagination``, ``Returns``, its heads and learning rates
:class:`DreamerV3`   the DreamerV3 agent: latents, heads, actor/critic optimisers, imagination
===================  ==========================================================

The other sections (:class:`Training`, :class:`Schedule`, :class:`Replay`,
:class:`Collection`, :class:`Run`) are read by the trainer. An agent's own section
(:data:`AGENT_SECTIONS`) belongs to that agent alone: a preset or ``--set`` of one agent
cannot set another's fields, and a run's saved configuration holds only its agent's section.
Each field's help text is its ``metadata["help"]`` (``torchrl-rssm presets``, ``--help``), and what
it accepts its ``metadata["check"]`` (a :class:`Check`: type, range or choices): ``--set`` text is
read by it, and :meth:`RunConfig.validate` refuses a wrong type, an out-of-range value or an empty
string in one line naming the field, before a run builds anything. A section declares its fields
with ``_field(default, help, check)``; a field without a check is still checked by its type hint.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from ..envs.factory import PAPER_TASKS
from ..modules.encoders import min_image_size

__all__ = ["AGENTS", "AGENT_SECTIONS", "FIELD_HELP", "PRESETS", "TASK_FIELDS", "Check", "Collection", "Dreamer", "DreamerV3",
           "Env",
           "Imagination", "ModelLoss", "PlaNet", "Planning", "Replay", "Returns", "Run", "RunConfig", "Schedule",
           "Training", "WorldModel", "apply_overrides", "field_checks", "from_dict", "preset"]


@dataclass(frozen=True)
class Check:
    """What one field accepts (its ``metadata["check"]``): reads ``--set`` text, refuses bad values in one line.

    Args:
        kind: ``int``, ``float``, ``bool``, ``str`` or ``dict`` (a JSON object).
        low, high: inclusive bounds: a number, or another field's name (no bound while that
            field is None).
        above: exclusive lower bound (``above=0``: positive).
        choices: the accepted strings, or a function returning them (read when checking).
        optional: None is accepted (``none`` or ``null`` on the command line).
        what: a string's description, when ``test`` says more than "non-empty".
        test: raises ``ValueError`` (its message is the reason) for a string it refuses.

    Floats must be finite. Strings must be non-empty.

    Examples:
        >>> check = Check(int, low=1, high="num_candidates")
        >>> check.describe(preset("tiny"))
        'an integer in [1, num_candidates=16]'
        >>> check.check("top_k", 20, preset("tiny"))
        Traceback (most recent call last):
        ...
        ValueError: top_k=20: expected an integer in [1, num_candidates=16].
    """

    kind: type
    low: float | str | None = None
    high: float | str | None = None
    above: float | None = None
    choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None
    optional: bool = False
    what: str | None = None
    test: Callable[[str], Any] | None = None

    def options(self) -> tuple[str, ...] | None:
        """The accepted strings (``choices``, read now), or None."""
        return self.choices() if callable(self.choices) else self.choices

    def bounds(self, cfg: Any = None) -> tuple[float | None, float | None]:
        """``(low, high)`` with bounds that name a field read from ``cfg`` (None: no such bound)."""
        def read(bound):
            return getattr(cfg, bound, None) if isinstance(bound, str) else bound
        return read(self.low), read(self.high)

    def describe(self, cfg: Any = None) -> str:
        """What the field expects, e.g. ``"an integer >= 1 or None"``."""
        if self.kind is bool:
            text = "a boolean (true/false)"
        elif self.kind is dict:
            text = 'a JSON object, e.g. \'{"continuous": false}\''
        elif self.options() is not None:
            text = f"one of {list(self.options())}"
        elif self.kind is str:
            text = self.what or "a non-empty string"
        else:
            low, high = (f"{b}={v}" if isinstance(b, str) else f"{v}"
                         for b, v in zip((self.low, self.high), self.bounds(cfg)))
            has_low, has_high = (v is not None for v in self.bounds(cfg))
            text = "an integer" if self.kind is int else "a finite number"
            if has_low and has_high:
                text += f" in [{low}, {high}]"
            elif has_low:
                text += f" >= {low}"
            elif has_high:
                text += f" <= {high}"
            if self.above is not None:
                text += f" > {self.above}"
        return f"{text} or None" if self.optional else text

    def error(self, name: str, value: Any, cfg: Any = None, reason: str = "") -> ValueError:
        """The one-line error for ``name=value``."""
        because = f" ({' '.join(reason.split())})" if reason else ""
        return ValueError(f"{name}={value!r}: expected {self.describe(cfg)}{because}.")

    def parse(self, name: str, text: str) -> Any:
        """The value of ``--set name=text`` (its type only; :meth:`check` tests the range)."""
        text = text.strip()
        if self.optional and text.lower() in ("none", "null"):
            return None
        try:
            if self.kind is bool:
                return {"1": True, "true": True, "yes": True, "on": True,
                        "0": False, "false": False, "no": False, "off": False}[text.lower()]
            if self.kind is dict:
                value = json.loads(text)
                if not isinstance(value, dict):
                    raise ValueError(f"got {type(value).__name__}")
                return value
            if self.kind in (int, float):
                return self.kind(text)
            return text
        except (ValueError, KeyError) as err:
            reason = err.msg if isinstance(err, json.JSONDecodeError) else str(err) if self.kind is dict else ""
            raise self.error(name, text, reason=reason) from None

    def check(self, name: str, value: Any, cfg: Any = None) -> None:
        """Refuses (one-line ``ValueError`` naming ``name``) a value of the wrong type or out of range."""
        if value is None:
            if not self.optional:
                raise self.error(name, value, cfg)
            return
        if self.kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        elif self.kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif self.kind is str:
            ok = isinstance(value, str) and value.strip() != ""
        else:
            ok = isinstance(value, self.kind)
        if ok and self.kind in (int, float):
            low, high = self.bounds(cfg)
            ok = ((low is None or value >= low) and (high is None or value <= high)
                  and (self.above is None or value > self.above))
        if ok and self.options() is not None:
            ok = value in self.options()
        if ok and self.kind is dict:
            ok = all(isinstance(k, str) for k in value)
        if not ok:
            raise self.error(name, value, cfg)
        if self.test is not None:
            try:
                self.test(value)
            except ValueError as err:
                raise self.error(name, value, cfg, reason=str(err)) from None


def _int(low: int | str | None = None, high: int | str | None = None, optional: bool = False) -> Check:
    return Check(int, low, high, optional=optional)


def _num(low: float | None = None, high: float | None = None, above: float | None = None,
         optional: bool = False) -> Check:
    return Check(float, low, high, above=above, optional=optional)


def _one_of(*choices: Any) -> Check:
    return Check(str, choices=choices[0] if len(choices) == 1 and callable(choices[0]) else choices)


def _text(what: str, test: Callable[[str], Any] | None = None) -> Check:
    return Check(str, what=what, test=test)


def _json(optional: bool = False) -> Check:
    return Check(dict, optional=optional)


def _torch_device(text: str) -> None:
    import torch

    try:
        torch.device(text)
    except RuntimeError as err:
        raise ValueError(str(err).split("\n")[0]) from None


def _task_name(text: str) -> None:
    from ..envs.factory import _parse_name

    try:
        _parse_name(text)
    except ValueError as err:  # make_env's message, without what the check already says
        message = re.sub(r"^make_env: unknown environment name=.*? \((.*?)\)\.", r"\1;", str(err))
        message = message.removeprefix("make_env: ").split(" Use ")[0].rstrip(";").replace("; Did you", "; did you")
        raise ValueError(message) from None


_FLAG = Check(bool)
_DEVICE = _text("a torch device: cpu, cuda or cuda:N", test=_torch_device)


def _field(default: Any, help: str, check: Check | None = None) -> Any:
    """A dataclass field with its one-line documentation and what it accepts (``metadata["help"]``, ``["check"]``).

    Without ``check`` the field is checked by its type hint alone (:func:`field_checks`).
    """
    return field(default=default, metadata={"help": help, "check": check})


@dataclass
class Env:
    """The task (feeds :func:`~torchrl_rssm.envs.make_env`; ``env`` is its ``name``)."""

    env: str = _field("dmc:cartpole-swingup", "task: dmc:<domain>-<task>, gym:<id>, or gym:<module>:<id> (imports <module> first)",
                                              _text("a task name: dmc:<domain>-<task> or gym:<id>", test=_task_name))
    from_pixels: bool = _field(True, "observe images, image_size pixels square (else the state vector)", _FLAG)
    action_repeat: int | None = _field(None, "env steps per agent step; None: the paper's value for its DMC domains, "
                                             "else 1", _int(1, optional=True))
    max_episode_steps: int | None = _field(None, "agent steps per episode; None: the task's limit (DMC: 1000 env steps "
                                                 "/ action_repeat)", _int(1, optional=True))
    bit_depth: int = _field(5, "bits kept per pixel channel", _int(1, 8))
    image_size: int = _field(64, "side of the square images the model sees (rendered, or the env's own images resized)",
                                 _int(min_image_size(4)))
    grayscale: bool = _field(False, "observe one-channel images instead of RGB", _FLAG)
    env_kwargs: dict | None = _field(None, "keyword arguments for the environment's constructor, as JSON: --set "
                                           "'env_kwargs={\"continuous\": false}'", _json(optional=True))


@dataclass
class WorldModel:
    """The RSSM world model (feeds :func:`~torchrl_rssm.modules.make_world_model`)."""

    state_dim: int = _field(30, "stochastic latent size", _int(1))
    belief_dim: int = _field(200, "deterministic (GRU) latent size", _int(1))
    hidden_dim: int = _field(200, "hidden units of the RSSM's MLPs and heads", _int(1))
    embed_dim: int = _field(200, "observation embedding size (vector observations only; pixels: 1024 from the conv "
                                 "stack)", _int(1))
    channels: int = _field(32, "pixels: channels of the encoder's first conv (doubling per layer; PlaNet 32), the "
                               "decoder likewise", _int(1))
    min_std: float = _field(0.1, "lower bound on the latent's standard deviation", _num(0))
    compile_step: bool = _field(False, "torch.compile the RSSM step", _FLAG)


@dataclass
class ModelLoss:
    """The world model's loss (feeds :class:`~torchrl_rssm.objectives.RSSMLoss`)."""

    free_nats: float = _field(3.0, "KL below this many nats is not penalised", _num(0))
    kl_balance: float | None = _field(None, "KL balancing weight (None: plain KL)", _num(0, 1, optional=True))
    overshooting_distance: int = _field(1, "latent overshooting distance (1: none)", _int(1))
    overshooting_weight: float = _field(1.0, "weight of the overshooting KL terms", _num(0))
    lambda_reward: float = _field(1.0, "weight of the reward log-likelihood (the official PlaNet code uses 10)",
                                       _num(0))


@dataclass
class Training:
    """Optimisation and acting settings every agent shares."""

    model_lr: float = _field(1e-3, "world-model learning rate (PlaNet 1e-3; Dreamer 6e-4)", _num(above=0))
    adam_eps: float = _field(1e-4, "Adam epsilon (all optimisers)", _num(above=0))
    grad_clip: float = _field(1000.0, "gradient-norm clip per optimiser (PlaNet 1000; Dreamer 100)", _num(above=0))
    batch_size: int = _field(50, "chunks per update (B)", _int(1))
    chunk_length: int = _field(50, "steps per chunk (L); episodes shorter than this cannot be trained on", _int(1))
    exploration_noise: float = _field(0.3, "std of the Gaussian noise added to actions while collecting", _num(0))


@dataclass
class Planning:
    """The planner's search (feeds :class:`~torchrl_rssm.planners.CEMPlanner` and ``MPPIPlanner``)."""

    planning_horizon: int = _field(12, "H: planning horizon", _int(1))
    optim_steps: int = _field(10, "I: optimisation iterations per action", _int(1))
    num_candidates: int = _field(1000, "J: candidate action sequences", _int(1))
    top_k: int = _field(100, "K: elites refitted per iteration", _int(1, "num_candidates"))


@dataclass
class PlaNet(Planning):
    """PlaNet's own fields: the planner and its search."""

    planner: str = _field("cem", "PlaNet: \"cem\" or \"mppi\"", _one_of("cem", "mppi"))
    temperature: float = _field(1.0, "PlaNet: MPPI's temperature (planner=\"mppi\")", _num(above=0))


@dataclass
class Imagination:
    """Dreamer's imagined trajectories (feeds :class:`~torchrl_rssm.objectives.DreamerActorLoss`)."""

    imagination_horizon: int = _field(15, "Dreamer: imagined steps per start state", _int(1))
    time_reduction: str = _field("mean", "Dreamer: \"mean\" over imagined steps and starts (the paper's losses, for its "
                                         "clip of 100) or \"sum\" over steps (TorchRL's)", _one_of("mean", "sum"))


@dataclass
class Returns:
    """Dreamer's lambda-returns (feeds ``DreamerActorLoss.make_value_estimator``)."""

    gamma: float = _field(0.99, "Dreamer: discount", _num(0, 1))
    lmbda: float = _field(0.95, "Dreamer: lambda of the lambda-returns", _num(0, 1))


@dataclass
class Dreamer(Imagination, Returns):
    """Dreamer's own fields: imagination, returns, the actor and value heads and their learning rates."""

    actor_lr: float = _field(8e-5, "Dreamer: actor learning rate", _num(above=0))
    value_lr: float = _field(8e-5, "Dreamer: value learning rate", _num(above=0))
    actor_hidden_dim: int = _field(400, "Dreamer: actor hidden units", _int(1))
    value_hidden_dim: int = _field(400, "Dreamer: value hidden units", _int(1))


@dataclass
class DreamerV3:
    """DreamerV3's own fields (the world model's ``belief_dim``, ``hidden_dim`` and ``channels`` are shared;
    the losses take the paper's settings, ``from_paper``, with these overrides)."""

    num_categoricals: int = _field(32, "DreamerV3: categorical latents C (the state is C one-hots of K classes)", _int(1))
    num_classes: int = _field(32, "DreamerV3: classes K per categorical latent", _int(2))
    unimix: float = _field(0.01, "DreamerV3: uniform mixed into the latents' and the discrete actor's probabilities",
                           _num(0, 1))
    mlp_layers: int = _field(2, "DreamerV3: hidden layers of the vector encoder, decoder, heads, actor and critic",
                             _int(1))
    actor_critic_lr: float = _field(3e-5, "DreamerV3: actor and critic learning rate (model: model_lr)", _num(above=0))
    actor_critic_grad_clip: float = _field(100.0, "DreamerV3: gradient-norm clip of the actor and of the critic "
                                                  "(model: grad_clip)", _num(above=0))
    imagination_steps: int = _field(15, "DreamerV3: imagined steps per start state", _int(1))
    continuation_horizon: float = _field(333.0, "DreamerV3: the return horizon H; the discount 1 - 1/H is written into "
                                                "the continuation target and the replayed returns (paper: 333, a "
                                                "discount of 0.997)", _num(above=1))
    entropy_bonus: float = _field(3e-4, "DreamerV3: actor entropy weight (returns are normalised to ~[0, 1])", _num(0))
    slow_critic_tau: float = _field(0.02, "DreamerV3: EMA rate of the slow critic, stepped after every update",
                                    _num(0, 1))
    actor_gradient: str = _field("backprop", "DreamerV3 with continuous actions: the actor loss's gradient, "
                                             "\"backprop\" through the imagined dynamics (the paper's) or "
                                             "\"reinforce\" (the current reference code's); discrete actions always "
                                             "use REINFORCE", _one_of("backprop", "reinforce"))
    replay_value_weight: float = _field(0.0, "DreamerV3: weight of the critic's loss on replayed states (paper: "
                                             "0; the current reference code: 0.3)", _num(0))
    optimizer: str = _field("adam", "DreamerV3: \"adam\": one Adam per network, the paper's (model_lr and grad_clip; "
                                    "actor_critic_lr and actor_critic_grad_clip); \"laprop\": one TorchRL "
                                    "DreamerV3Optimizer (LaProp with adaptive gradient clipping, the current reference "
                                    "code's) over all three, at model_lr", _one_of("adam", "laprop"))
    agc: float = _field(0.3, "DreamerV3 with optimizer=\"laprop\": gradient clip as a fraction of each parameter's "
                             "norm (0: none)", _num(0))
    warmup_steps: int = _field(1000, "DreamerV3 with optimizer=\"laprop\": updates of linear learning-rate warm-up "
                                     "(0: none)", _int(0))
    autocast_dtype: str = _field("float32", "DreamerV3: the dtype of the update's forward passes: \"bfloat16\" runs "
                                            "them under torch.autocast (two-hot and return arithmetic stay float32)",
                                 _one_of("float32", "bfloat16"))


@dataclass
class Schedule:
    """When the trainer collects, updates, tests and saves (episodes count the collected ones)."""

    seed_episodes: int = _field(5, "S: random episodes before training (rounds of frames_per_batch steps when it is set)",
                                _int(0))
    episodes: int = _field(1000, "agent episodes, collected after the seed episodes (rounds of frames_per_batch steps "
                                 "when it is set)", _int(0))
    updates_per_episode: int = _field(100, "C: gradient steps before each collected episode or round (when train_ratio is "
                                           "None)",
                                           _int(0))
    train_ratio: float | None = _field(None, "model updates per collected agent step (one stored transition); None: "
                                             "updates_per_episode per episode", _num(0, optional=True))
    test_every: int = _field(25, "collected episodes (seed episodes included) between test runs (also one at the end; "
                                 "0: never)", _int(0))
    test_episodes: int = _field(5, "noise-free test episodes, run as one batch", _int(1))
    checkpoint_every: int = _field(10, "collected episodes between checkpoints (one is also written at exit)", _int(0))
    video_every: int = _field(50, "collected episodes between reconstruction images / open-loop predictions in "
                                  "TensorBoard (0: never)", _int(0))


@dataclass
class Replay:
    """The sequence replay buffer."""

    buffer_capacity: int | None = _field(None, "replay capacity in agent steps; None: sized from the run, "
                                               "(seed_episodes + episodes) x episode steps, capped at 10^6",
                                               _int("chunk_length", optional=True))
    buffer_device: str = _field("cpu", "where the replay storage lives; sampled batches move to `device`", _DEVICE)
    buffer_on_disk: bool = _field(False, "LazyMemmapStorage under logdir instead of memory", _FLAG)
    cross_episodes: bool = _field(False, "chunks are slices of each environment's stream of steps and may cross "
                                         "episode boundaries (the model resets at is_init): episodes of any "
                                         "length train, even 1 step", _FLAG)


@dataclass
class Collection:
    """How episodes are collected (see :mod:`torchrl_rssm.recipes.collection`)."""

    num_envs: int = _field(1, "environments stepped together as one batch (the policy acts on the whole batch in one "
                              "call)", _int(1))
    env_backend: str = _field("serial", "how a batch of environments runs: \"serial\" (SerialEnv, one process) or "
                                        "\"parallel\" (ParallelEnv)", _one_of("serial", "parallel"))
    frames_per_batch: int | None = _field(None, "agent steps collected per round over all num_envs environments "
                                                "(TorchRL's frames_per_batch; a multiple of num_envs); None: one episode "
                                                "per environment, num_envs x the episode limit. The schedule's episode "
                                                "counts (seed_episodes, episodes, test_every, ...) count rounds",
                                          _int(1, optional=True))
    collector: str = _field("sync", "\"sync\": in the trainer's process; \"async\": TorchRL MultiAsyncCollector workers; "
                                    "\"distributed\": TorchRL DistributedCollector",
                                    _one_of("sync", "async", "distributed"))
    collector_workers: int = _field(2, "worker processes of the \"async\" / \"distributed\" collector (each steps num_envs "
                                       "environments)", _int(1))
    distributed_port: int = _field(29517, "TCP port of the \"distributed\" collector's process group (TorchRL "
                                          "DistributedCollector, launcher=\"mp\")", _int(1, 65535))


@dataclass
class Run:
    """The run itself: agent, seed, device, output."""

    algo: str = _field("planet", "agent: \"planet\" (world model + planner), \"dreamer\" (world model + actor and value) or \"dreamerv3\" (categorical world model + actor and two-hot critic)",
                                 _one_of(lambda: tuple(AGENT_SECTIONS)))
    seed: int = _field(0, "seeds python, numpy, torch and the envs", _int(0, 2**31 - 1))
    device: str = _field("cpu", "models and updates: cpu, cuda, cuda:N", _DEVICE)
    num_threads: int | None = _field(None, "torch CPU threads (None: torch's default; small models gain nothing from a "
                                           "second)", _int(1, optional=True))
    nan_policy: str = _field("skip", "\"skip\": skip an update whose batch holds NaN/inf, warn and count; \"raise\": stop "
                                     "with an error", _one_of("skip", "raise"))
    logdir: str = _field("runs/planet", "TensorBoard logs, config.json and checkpoints", _text("a folder path"))
    progress: bool = _field(True, "progress bar on stderr (else a status line per test and per checkpoint)", _FLAG)


#: Each agent's own section: its fields are set only in runs of that agent.
AGENT_SECTIONS: dict[str, type] = {"planet": PlaNet, "dreamer": Dreamer, "dreamerv3": DreamerV3}
#: Agents the trainer core knows (``algo``).
AGENTS = tuple(AGENT_SECTIONS)


@dataclass
class RunConfig(Run, Collection, Replay, Schedule, DreamerV3, Dreamer, PlaNet, Training, ModelLoss, WorldModel, Env):
    """All settings of a run, flat (``cfg.batch_size``), assembled from the sections above.

    Defaults are PlaNet's paper settings (appendix A); presets (:data:`PRESETS`) set the rest.

    Examples:
        >>> from dataclasses import asdict
        >>> cfg = preset("quick")
        >>> cfg.env, cfg.from_pixels, cfg.algo
        ('dmc:cartpole-swingup', False, 'planet')
        >>> asdict(cfg.section(Planning))
        {'planning_horizon': 12, 'optim_steps': 6, 'num_candidates': 256, 'top_k': 25}
        >>> apply_overrides(cfg, ["model_lr=3e-4", "planner=mppi"]).model_lr
        0.0003
    """

    #: fields that may differ when resuming a run (everything else must match the checkpoint)
    RESUMABLE: ClassVar[tuple[str, ...]] = (
        "episodes", "test_every", "test_episodes", "checkpoint_every", "device", "logdir", "video_every",
        "progress", "compile_step", "nan_policy", "num_threads", "buffer_device",
        "num_envs", "env_backend", "collector", "collector_workers", "distributed_port",
    )

    def validate(self) -> RunConfig:
        """Checks every field this run uses (each field's :class:`Check`); returns ``self``.

        Raises:
            ValueError: one line naming the first bad field and what it expects.

        Examples:
            >>> cfg = preset("tiny"); cfg.gamma = 1.5  # a Dreamer field: not checked in a PlaNet run
            >>> cfg.validate().algo
            'planet'
            >>> cfg.top_k = 17
            >>> cfg.validate()
            Traceback (most recent call last):
            ...
            ValueError: top_k=17: expected an integer in [1, num_candidates=16].
        """
        checks = field_checks(type(self))
        for name in self.to_dict():  # the other agents' fields are not this run's
            checks[name].check(name, getattr(self, name), self)
        return self

    def section(self, kind: type) -> Any:
        """This configuration's values of one section (a dataclass instance of ``kind``)."""
        return kind(**{f.name: getattr(self, f.name) for f in fields(kind)})

    def to_dict(self) -> dict[str, Any]:
        """Every field, except those of the other agents' sections."""
        foreign = _foreign_fields(self.algo)
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in foreign}

    def mismatches(self, other: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
        """Fields that differ from a saved configuration and may not change on resume."""
        _check_known(other)
        mine = self.to_dict()
        keys = (set(mine) | set(other)) - set(self.RESUMABLE)
        return {k: (other.get(k), mine.get(k)) for k in sorted(keys)
                if k in other and other.get(k) != mine.get(k)}


_KINDS = {"int": int, "float": float, "bool": bool, "str": str, "dict": dict}


def field_checks(kind: type) -> dict[str, Check]:
    """Each field's :class:`Check`: its ``metadata["check"]``, else one from its type hint (``int | None``...).

    Every field of every section is checked, a new section's too: a field without its own
    ``check`` gets its type's (any integer, any finite number, a non-empty string...).

    Examples:
        >>> field_checks(RunConfig)["gamma"].describe()
        'a finite number in [0, 1]'
        >>> @dataclass
        ... class Extra:
        ...     steps: int | None = None
        >>> field_checks(Extra)["steps"].parse("steps", "many")
        Traceback (most recent call last):
        ...
        ValueError: steps='many': expected an integer or None.
    """
    out = {}
    for f in fields(kind):
        check = f.metadata.get("check")
        if check is None:
            hint = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
            parts = [p.strip() for p in hint.split("|")]
            named = [_KINDS[p] for p in parts if p in _KINDS]
            if len(named) != 1:
                raise TypeError(f"config field {f.name!r}: give it a check (metadata['check']); its type {hint!r} "
                                "is not one of int, float, bool, str, dict (or one of them | None).")
            check = Check(named[0], optional="None" in parts)
        out[f.name] = check
    return out


#: One line of documentation per field (its ``metadata["help"]``).
FIELD_HELP: dict[str, str] = {f.name: f.metadata["help"] for f in fields(RunConfig)}


def _section_fields(kind: type) -> set[str]:
    return {f.name for f in fields(kind)}


def _foreign_fields(algo: str) -> set[str]:
    """Fields of the agents' sections other than ``algo``'s."""
    own = _section_fields(AGENT_SECTIONS[algo]) if algo in AGENT_SECTIONS else set()
    return set().union(*(_section_fields(s) for s in AGENT_SECTIONS.values())) - own


def _check_agent_fields(algo: str, keys, where: str) -> None:
    """Refuses settings of another agent's section (e.g. a planner field for a Dreamer run)."""
    foreign = sorted(set(keys) & _foreign_fields(algo))
    if foreign and algo in AGENT_SECTIONS:
        owners = {k: next(a for a, s in AGENT_SECTIONS.items() if k in _section_fields(s)) for k in foreign}
        raise ValueError(f"{where}: {', '.join(f'{k} ({owners[k]})' for k in foreign)} "
                         f"{'is a field' if len(foreign) == 1 else 'are fields'} of another agent; "
                         f"algo={algo!r} does not use {'it' if len(foreign) == 1 else 'them'}.")


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
# vectors, a smaller model, fewer updates; the schedule and world model are shared with
# dreamer-quick, the planner is PlaNet's own. Pixels cost far more per update: see "quick-pixels".
_QUICK_SHARED = dict(
    env="dmc:cartpole-swingup", from_pixels=False, action_repeat=8,
    state_dim=16, belief_dim=64, hidden_dim=64, embed_dim=64,
    batch_size=16, chunk_length=25, model_lr=3e-3, lambda_reward=10.0,
    seed_episodes=5, episodes=35, updates_per_episode=40,
    test_every=10, test_episodes=4, checkpoint_every=5, video_every=10, num_threads=1,
)
PRESETS["quick"] = dict(
    _QUICK_SHARED, planning_horizon=12, optim_steps=6, num_candidates=256, top_k=25, logdir="runs/planet-quick",
)
# The same from 64x64 pixels, sized for under 60 minutes at one thread on a 2-core CPU
# (benchmarks/pixels_budget.py, measured alone: 0.42 s per update, 5.3 s per collected episode):
# half-width convs (16 channels: 4x fewer conv FLOPs than PlaNet's 32, 2.6 s per update), the quick
# preset's RSSM and planner, 60 agent episodes of 80 updates (a first try with 50 updates per
# episode had not learned the pixel model by episode 60: its open-loop predictions were blurred).
PRESETS["quick-pixels"] = dict(
    PRESETS["quick"], from_pixels=True, channels=16, model_lr=1e-3,
    episodes=60, updates_per_episode=80, video_every=20, logdir="runs/planet-quick-pixels",
)
# A few seconds: used by the tests to run the whole loop.
_TINY_SHARED = dict(
    _QUICK_SHARED, state_dim=4, belief_dim=16, hidden_dim=16, embed_dim=16,
    batch_size=4, chunk_length=8, max_episode_steps=20, seed_episodes=2, episodes=1,
    updates_per_episode=3, test_every=1, test_episodes=2, checkpoint_every=1, buffer_capacity=1000, video_every=1,
)
PRESETS["tiny"] = dict(_TINY_SHARED, planning_horizon=4, optim_steps=2, num_candidates=16, top_k=4,
                       logdir="runs/planet-tiny")

# Dreamer (Hafner et al. 2020) on the paper's six tasks: action repeat 2 everywhere, 5000 prefill
# env steps (5 episodes), 100 updates per 1000 env steps (one episode), 1M env steps in all;
# model lr 6e-4, actor and value lr 8e-5, gradient clip 100, 400-unit heads, horizon 15.
DREAMER_PAPER = dict(
    algo="dreamer", from_pixels=True, action_repeat=2, hidden_dim=400, model_lr=6e-4, adam_eps=1e-4,
    grad_clip=100.0, batch_size=50, chunk_length=50, imagination_horizon=15, gamma=0.99, lmbda=0.95,
    actor_lr=8e-5, value_lr=8e-5, actor_hidden_dim=400, value_hidden_dim=400, exploration_noise=0.3,
    seed_episodes=5, episodes=995, updates_per_episode=100,
)
for _task in PAPER_ACTION_REPEAT:
    PRESETS[f"dreamer-{_task}"] = dict(DREAMER_PAPER, env=f"dmc:{_task}", logdir=f"runs/dreamer-{_task}")
# Dreamer on this 2-core CPU: cartpole swing-up from state vectors, PlaNet quick's world model,
# small actor and value with faster learning rates than the paper's (a short run: 60 episodes,
# 48k env steps; acting costs one actor call per step, so the budget goes to 100 updates per episode).
PRESETS["dreamer-quick"] = dict(
    _QUICK_SHARED, algo="dreamer", grad_clip=100.0, imagination_horizon=15, gamma=0.99, lmbda=0.95,
    actor_lr=3e-4, value_lr=1e-3, actor_hidden_dim=64, value_hidden_dim=64, time_reduction="sum",
    episodes=55, updates_per_episode=100, test_every=10, checkpoint_every=10, logdir="runs/dreamer-quick",
)
# A few seconds: the tests' Dreamer run.
PRESETS["dreamer-tiny"] = dict(
    _TINY_SHARED, algo="dreamer", grad_clip=100.0, imagination_horizon=4, actor_lr=1e-3, value_lr=1e-3,
    actor_hidden_dim=16, value_hidden_dim=16, logdir="runs/dreamer-tiny",
)

# DreamerV3 (Hafner et al. 2023) on the DMC proprioceptive suite: the paper's settings (size S:
# belief 512, hidden 512, 32 x 32 categoricals, 2 hidden layers), Adam with model lr 1e-4 and
# actor / critic 3e-5, clips 1000 / 100, eps 1e-8, batch 16 x 64, horizon 15, action repeat 2,
# replay ratio 512 (0.5 updates per agent step), 500k env steps (the score file's 250k and 490k).
# On a GPU: --device cuda. From pixels (the DMC vision protocol, 64x64, 1M env steps): the
# dreamerv3-<task>-pixels presets. Chunks cross episodes.
DREAMERV3_PAPER = dict(
    algo="dreamerv3", from_pixels=False, action_repeat=2, belief_dim=512, hidden_dim=512, channels=32,
    num_categoricals=32, num_classes=32, unimix=0.01, mlp_layers=2, model_lr=1e-4, actor_critic_lr=3e-5,
    grad_clip=1000.0, actor_critic_grad_clip=100.0, adam_eps=1e-8, batch_size=16, chunk_length=64,
    imagination_steps=15, entropy_bonus=3e-4, slow_critic_tau=0.02, replay_value_weight=0.0,
    cross_episodes=True, seed_episodes=5, episodes=495, train_ratio=0.5, test_every=10, test_episodes=5,
    checkpoint_every=10, video_every=50,
)
for _task in ("cartpole-swingup", "cartpole-balance", "reacher-easy", "cheetah-run", "walker-stand", "walker-walk",
              "finger-spin", "pendulum-swingup", "ball_in_cup-catch"):
    PRESETS[f"dreamerv3-{_task}"] = dict(DREAMERV3_PAPER, env=f"dmc:{_task}",
                                         logdir=f"runs/dreamerv3-{_task}")
    # DreamerV3's visual DMC protocol: 64x64 images, 1M environment steps (1000 episodes at repeat 2)
    PRESETS[f"dreamerv3-{_task}-pixels"] = dict(DREAMERV3_PAPER, env=f"dmc:{_task}", from_pixels=True,
                                                episodes=995, logdir=f"runs/dreamerv3-{_task}-pixels")
# DreamerV3 on this 2-core CPU at one thread, one setting for every task (only --env changes; action
# repeat: 2 on DMC by the agent's protocol, else 1): a small model (belief 128, 8 x 8 categoricals,
# hidden 128, one hidden layer), batch 16 x 16 (256 imagination starts), faster learning rates than the
# paper's for a short run. Replay ratio from two runs on cartpole-swingup, seed 0, one thread, the other
# core busy: 0.1 updates per agent step (1,750 updates) took 9 min and ended at test return 135, not above
# random (125 +- 59); 0.3 (5,250 updates) took 22 min and ended at 220 (73 / 136 / 198 / 220 at 10k-40k
# env steps), just above the +3 SE bar (214) and still climbing: 0.3 fits the 30-minute budget.
# The budget is in agent steps, as DreamerV3's protocol counts environment steps: rounds of 500 agent
# steps (one DMC episode at repeat 2), so a task with short episodes is not trained less (Reacher-v5's
# 50-step episodes got 2,000 agent steps and 525 updates when a round was one episode).
PRESETS["dreamerv3-quick"] = dict(
    DREAMERV3_PAPER, env="dmc:cartpole-swingup", action_repeat=None, belief_dim=128, hidden_dim=128,
    num_categoricals=8, num_classes=8, mlp_layers=1, model_lr=6e-4, actor_critic_lr=2e-4, batch_size=16,
    chunk_length=16, frames_per_batch=500, seed_episodes=5, episodes=35, train_ratio=0.3, test_every=10, test_episodes=4,
    checkpoint_every=10, video_every=20, num_threads=1, logdir="runs/dreamerv3-quick",
)
# The same from 64x64 pixels for a 60-minute budget: quarter-width convs (8 base channels), batch 8 x 16,
# 25 episodes. At 0.25 updates per agent step (3,125 updates) a run took 29 min (25.5 CPU-min, seed 0 and 1
# on cartpole-swingup side by side), half the budget, and one seed of two ended above random with its actor
# saturated early: 0.5 (6,250 updates, about 0.3 s each at one thread) spends the rest of the budget on updates.
PRESETS["dreamerv3-quick-pixels"] = dict(
    PRESETS["dreamerv3-quick"], from_pixels=True, channels=8, batch_size=8, episodes=25, train_ratio=0.5,
    logdir="runs/dreamerv3-quick-pixels",
)
# A few seconds: the tests' DreamerV3 run.
PRESETS["dreamerv3-tiny"] = dict(
    DREAMERV3_PAPER, env="dmc:cartpole-swingup", action_repeat=8, belief_dim=16, hidden_dim=16, channels=4,
    num_categoricals=4, num_classes=4, mlp_layers=1, model_lr=1e-3, actor_critic_lr=1e-3, batch_size=4,
    chunk_length=8, imagination_steps=4, max_episode_steps=20, seed_episodes=2, episodes=1, train_ratio=None,
    updates_per_episode=3, test_every=1, test_episodes=2, checkpoint_every=1, buffer_capacity=1000, video_every=1,
    num_threads=1, logdir="runs/dreamerv3-tiny",
)


def presets_by_agent() -> dict[str, list[str]]:
    """Preset names grouped by their ``algo``."""
    out: dict[str, list[str]] = {}
    for name, settings in PRESETS.items():
        out.setdefault(settings.get("algo", "planet"), []).append(name)
    return out


def preset(name: str) -> RunConfig:
    """The configuration of a named preset (``quick``, ``tiny``, or one of the paper's tasks).

    Examples:
        >>> preset("dreamer-quick").section(Returns)
        Returns(gamma=0.99, lmbda=0.95)
    """
    if name not in PRESETS:
        hint = difflib.get_close_matches(name, PRESETS, n=1)
        raise ValueError(f"Unknown preset {name!r}{f' (did you mean {hint[0]!r}?)' if hint else ''}; "
                         f"available: {sorted(PRESETS)}.")
    settings = PRESETS[name]
    _check_agent_fields(settings.get("algo", "planet"), settings, f"preset {name!r}")
    return RunConfig(**settings)


def _unknown_field(key: str, item: str, names: set[str]) -> ValueError:
    hint = difflib.get_close_matches(key, sorted(names), n=1)
    parts = sorted(n for n in names if key in n.split("_"))  # "lr": model_lr, actor_lr, value_lr
    suggestion = f" Did you mean {hint[0]!r}?" if hint else f" Did you mean one of {parts}?" if parts else ""
    return ValueError(f"Override {item!r}: unknown field {key!r}.{suggestion} Fields: {sorted(names)}.")


def override_keys(overrides: list[str]) -> set[str]:
    """The field names a list of ``key=value`` strings sets."""
    return {o.split("=", 1)[0].strip().replace("-", "_") for o in overrides if "=" in o}


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """Applies ``key=value`` strings to a configuration (in place), checks it and returns it.

    Each value is read as its field's :class:`Check` says (``none``/``null`` only for a field
    that accepts None) and the whole configuration is then checked (:meth:`RunConfig.validate`):
    a bad value is a one-line ``ValueError`` naming the field and what it expects. A field of
    another agent's section is refused (``planning_horizon`` in a Dreamer run).

    Examples:
        >>> apply_overrides(preset("tiny"), ["batch_size=8"]).batch_size
        8
        >>> apply_overrides(preset("tiny"), ["batchsize=8"])
        Traceback (most recent call last):
        ...
        ValueError: Override 'batchsize=8': unknown field 'batchsize'. Did you mean 'batch_size'? ...
        >>> apply_overrides(preset("tiny"), ["batch_size=0"])
        Traceback (most recent call last):
        ...
        ValueError: batch_size=0: expected an integer >= 1.
        >>> apply_overrides(preset("dreamer-tiny"), ["top_k=8"])
        Traceback (most recent call last):
        ...
        ValueError: --set: top_k (planet) is a field of another agent; algo='dreamer' does not use it.
    """
    checks = field_checks(type(cfg))
    settings = []
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"Override {item!r}: expected key=value.")
        key, text = item.split("=", 1)
        key = key.strip().replace("-", "_")
        if key not in checks:
            raise _unknown_field(key, item, set(checks))
        settings.append((key, text))
    # another agent's field is refused before its value is read: that is the mistake to name
    algo = next((checks["algo"].parse("algo", text) for key, text in reversed(settings) if key == "algo"), cfg.algo)
    if algo in AGENT_SECTIONS:
        _check_agent_fields(algo, [key for key, _ in settings], "--set")
    for key, text in settings:
        setattr(cfg, key, checks[key].parse(key, text))
    cfg.validate()
    return cfg


def _check_known(data: dict[str, Any]) -> None:
    """A saved configuration with fields this version does not have cannot be loaded: say so in one line."""
    unknown = sorted(set(data) - {f.name for f in fields(RunConfig)})
    if unknown:
        raise ValueError(f"this checkpoint was written by an older torchrl_rssm (config fields {unknown} no longer "
                         "exist) and cannot be loaded by this version: start a new run.")


def from_dict(data: dict[str, Any]) -> RunConfig:
    """A configuration from a saved dict (:meth:`RunConfig.to_dict`); an older version's is refused."""
    _check_known(data)
    return dataclasses.replace(RunConfig(), **data)
