"""``torchrl-rssm``: train and evaluate world-model agents (PlaNet; Dreamer when available).

    torchrl-rssm train                              # the `quick` preset (2-core CPU, minutes)
    torchrl-rssm train --preset cartpole-swingup --device cuda
    torchrl-rssm train --env dmc:walker-walk --set batch_size=32 --set lr=6e-4
    torchrl-rssm train --logdir runs/x --resume     # continue a killed run
    torchrl-rssm eval --checkpoint runs/x --episodes 5 --video out.mp4
    torchrl-rssm presets

stdout carries only the result (one JSON line); progress, status lines and library logs go
to stderr.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys

from .recipes.config import AGENTS, FIELD_HELP, PRESETS, TASK_FIELDS, RunConfig, apply_overrides, override_keys, \
    preset, presets_by_agent

_TRAIN_HELP = f"""\
A preset fixes every setting, including its task's: env, action_repeat, max_episode_steps
and logdir. --env changes the task and resets those task settings to the new task's
defaults (action_repeat: the paper's value for its DMC domains, else 1; max_episode_steps:
the task's limit; logdir: runs/<algo>-<env>) unless you set them (--set action_repeat=4,
--logdir). Everything else (model sizes, schedule) stays the preset's.

--resume continues the run in --logdir with the settings of its checkpoint (episodes
included); settings given on this command line override them where a resumed run may
change them ({', '.join(RunConfig.RESUMABLE)}); others must match the checkpoint.

fields (--set KEY=VALUE):
""" + "\n".join(f"  {f.name} = {f.default!r}: {FIELD_HELP.get(f.name, '')}" for f in dataclasses.fields(RunConfig))


class _TqdmStderrHandler(logging.StreamHandler):
    """Writes log records to stderr through ``tqdm.write`` (they do not break the progress bar)."""

    def emit(self, record):
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 -- logging must never raise
            self.handleError(record)


def setup_logging() -> None:
    """Library logs (torchrl's and ours) to stderr; no colour codes unless stderr is a terminal."""
    plain = logging.Formatter("%(asctime)s [%(name)s][%(levelname)s] %(message)s")
    from torchrl._utils import logger as torchrl_logger  # torchrl sets a coloured stdout handler here

    for handler in list(torchrl_logger.handlers):
        torchrl_logger.removeHandler(handler)
    handler = _TqdmStderrHandler()
    if sys.stderr.isatty():
        from torchrl._utils import _CustomFormatter
        handler.setFormatter(_CustomFormatter())
    else:
        handler.setFormatter(plain)
    torchrl_logger.addHandler(handler)
    ours = logging.getLogger("torchrl_rssm")
    if not ours.handlers:
        mine = _TqdmStderrHandler()
        mine.setFormatter(plain)
        ours.addHandler(mine)
        ours.setLevel(logging.INFO)
        ours.propagate = False


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="torchrl-rssm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train an agent", description=_TRAIN_HELP,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("--preset", default=None, help=f"one of {sorted(PRESETS)} (default: quick)")
    train.add_argument("--algo", choices=AGENTS, default=None, help="agent (default: the preset's, planet)")
    train.add_argument("--env", help="task, e.g. dmc:cartpole-swingup or gym:Pendulum-v1 (resets the preset's "
                                     "action_repeat, max_episode_steps and logdir)")
    train.add_argument("--pixels", dest="from_pixels", action="store_true", default=None, help="observe pixels")
    train.add_argument("--state", dest="from_pixels", action="store_false", help="observe state vectors")
    train.add_argument("--device", help="cpu, cuda, cuda:N")
    train.add_argument("--seed", type=int)
    train.add_argument("--logdir", help="TensorBoard logs and checkpoints go here")
    train.add_argument("--episodes", type=int, help="training episodes after the seed episodes")
    train.add_argument("--num-envs", dest="num_envs", type=int,
                       help="environments stepped together as one batch (default 1)")
    train.add_argument("--env-backend", dest="env_backend", choices=("serial", "parallel"),
                       help="batch of environments in this process (serial) or one process each (parallel)")
    train.add_argument("--collector", choices=("sync", "async", "distributed"),
                       help="sync: collect in this process; async: TorchRL worker processes collect while "
                            "the model trains (--set collector_workers=N)")
    train.add_argument("--train-ratio", dest="train_ratio", type=float,
                       help="model updates per collected agent step (default: updates_per_episode per episode)")
    train.add_argument("--resume", action="store_true",
                       help="continue from <logdir>/checkpoint with the run's own settings")
    train.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                       help="no progress bar: a status line per test and per checkpoint on stderr instead")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override any configuration field (repeatable; fields listed below)")

    ev = sub.add_parser("eval", help="run test episodes from a checkpoint")
    ev.add_argument("--checkpoint", required=True,
                    help="a run's logdir, its checkpoint/ folder, or checkpoint/state.pt")
    ev.add_argument("--episodes", type=int, default=5, help="test episodes (run as one batch)")
    ev.add_argument("--device", default=None)
    ev.add_argument("--video", default=None, help="write the first episode's frames to this .mp4 or .gif")

    sub.add_parser("presets", help="list the presets by agent, and the fields")
    return parser


_FLAG_FIELDS = ("algo", "env", "from_pixels", "device", "seed", "logdir", "episodes", "progress", "num_envs",
                "env_backend", "collector", "train_ratio")


def train_config(args: argparse.Namespace) -> tuple[RunConfig, bool]:
    """The run's configuration from the parsed ``train`` arguments; also whether to resume."""
    name = args.preset
    if name is None:
        name = "quick" if args.algo in (None, "planet") or f"{args.algo}-quick" not in PRESETS else f"{args.algo}-quick"
    cfg = preset(name)
    explicit = {k: getattr(args, k) for k in _FLAG_FIELDS if getattr(args, k) is not None}
    set_keys = override_keys(args.overrides)
    if args.env:
        defaults = RunConfig()
        for key in TASK_FIELDS:  # the preset's task settings do not carry over to another task
            setattr(cfg, key, getattr(defaults, key))
    for key, value in explicit.items():
        setattr(cfg, key, value)
    logdir_given = "logdir" in explicit or "logdir" in set_keys
    if args.env and not logdir_given:
        cfg.logdir = f"runs/{cfg.algo}-{args.env.replace(':', '-').replace('/', '-')}"
    apply_overrides(cfg, args.overrides)
    if args.seed is not None and not logdir_given:
        cfg.logdir = f"{cfg.logdir}-seed{cfg.seed}"
    if not args.resume:
        return cfg, False
    # a resumed run keeps its own settings; what this command line sets explicitly overrides them
    from .recipes.checkpoint import saved_config

    resumed = saved_config(cfg.logdir)  # also recovers a checkpoint a kill left as checkpoint.old
    resumed.logdir = cfg.logdir
    for key in set(explicit) | set_keys:
        if key != "logdir":
            setattr(resumed, key, getattr(cfg, key))
    return resumed, True


def _json_line(result: dict) -> str:
    """Strict JSON (a NaN, e.g. no test run yet, becomes null)."""
    clean = {k: (None if isinstance(v, float) and v != v else v) for k, v in result.items()}
    return json.dumps(clean, allow_nan=False)


def _train(args: argparse.Namespace) -> int:
    from .recipes.trainer import Trainer

    cfg, resume = train_config(args)
    trainer = Trainer(cfg, resume=resume)
    result = trainer.train()
    print(_json_line({"logdir": cfg.logdir, **result}), flush=True)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .recipes.evaluate import _check_video_path, evaluate
    from .recipes.trainer import load_trainer

    if args.video is not None:
        _check_video_path(args.video)  # before building anything
    trainer = load_trainer(args.checkpoint, device=args.device, with_buffer=False, progress=False)
    result = evaluate(trainer, episodes=args.episodes, video=args.video)
    print(_json_line(result), flush=True)
    return 0


def _presets() -> int:
    for algo, names in presets_by_agent().items():
        print(f"{algo}:")
        for name in names:
            print(f"  {name}: {PRESETS[name]}")
    print("fields (--set KEY=VALUE):")
    for f in dataclasses.fields(RunConfig):
        print(f"  {f.name} = {f.default!r}: {FIELD_HELP.get(f.name, '')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging()
    try:
        if args.command == "train":
            return _train(args)
        if args.command == "eval":
            return _eval(args)
        return _presets()
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as err:
        print(f"torchrl-rssm: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
