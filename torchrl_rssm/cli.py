"""``torchrl-rssm``: train and evaluate world-model agents (PlaNet, Dreamer) on TorchRL.

    torchrl-rssm train                              # PlaNet, the `quick` preset (2-core CPU, minutes)
    torchrl-rssm train --algo dreamer               # Dreamer, the `dreamer-quick` preset
    torchrl-rssm train --preset cartpole-swingup --device cuda
    torchrl-rssm train --env dmc:walker-walk --set batch_size=32 --set model_lr=6e-4
    torchrl-rssm train --logdir runs/x --resume     # continue a killed run
    torchrl-rssm eval --checkpoint runs/x --episodes 5 --video out.mp4
    torchrl-rssm presets
    torchrun --nproc-per-node 4 -m torchrl_rssm.cli train --preset cartpole-swingup --device cuda

stdout carries only the result (one JSON line); progress, status lines and warnings go to stderr.
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
import time
from pathlib import Path

from .recipes.config import (AGENTS, FIELD_HELP, PRESETS, TASK_FIELDS, RunConfig, apply_overrides, override_keys,
                             preset, presets_by_agent)

_TRAIN_HELP = """\
A preset fixes every setting, including its task's: env, action_repeat, max_episode_steps
and logdir. --env changes the task and resets those task settings to the new task's
defaults (action_repeat: the paper's value for its DMC domains, else 1; max_episode_steps:
the task's limit; logdir: runs/<algo>-<env>) unless you set them (--set action_repeat=4,
--logdir). Everything else (model sizes, schedule) stays the preset's. Without --logdir a
run whose folder is taken starts a new one beside it (runs/planet-quick-2, ...).

--resume continues the run in --logdir with the settings of its checkpoint (episodes
included); settings given on this command line override them where a resumed run may
change them ({resumable}); others must match the checkpoint.

Under torchrun (WORLD_SIZE > 1) every process trains on its own environments and replay,
and the agents average their gradients over the processes.

fields (--set KEY=VALUE), with the values of the preset {name!r} (the one this command runs;
`--preset NAME --help` shows another's, `torchrl-rssm presets` lists every preset):
{fields}"""


def _field_lines(cfg: RunConfig) -> str:
    return "\n".join(f"  {k} = {v!r}: {FIELD_HELP[k]}" for k, v in cfg.to_dict().items())


class _TqdmStderrHandler(logging.StreamHandler):
    """Writes log records to stderr through ``tqdm.write`` (they do not break the progress bar)."""

    def emit(self, record):
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 -- logging must never raise
            self.handleError(record)


def setup_logging() -> None:
    """Library warnings (torchrl's) and our logs to stderr, plain text (no colour codes).

    TorchRL's INFO lines (e.g. ``Initialized LazyTensorStorage``) repeat what the status lines
    say: only its warnings and errors are shown.
    """
    plain = logging.Formatter("%(asctime)s [%(name)s][%(levelname)s] %(message)s")
    from torchrl._utils import logger as torchrl_logger  # torchrl sets a coloured stdout handler here

    for handler in list(torchrl_logger.handlers):
        torchrl_logger.removeHandler(handler)
    handler = _TqdmStderrHandler()
    handler.setFormatter(plain)
    torchrl_logger.addHandler(handler)
    torchrl_logger.setLevel(logging.WARNING)
    ours = logging.getLogger("torchrl_rssm")
    if not ours.handlers:
        mine = _TqdmStderrHandler()
        mine.setFormatter(plain)
        ours.addHandler(mine)
        ours.setLevel(logging.INFO)
        ours.propagate = False


def _default_preset(algo: str | None) -> str:
    return "quick" if algo in (None, "planet") or f"{algo}-quick" not in PRESETS else f"{algo}-quick"


def _chosen_preset(argv: list[str]) -> str:
    """The preset a ``train`` command line will run (for its ``--help``): ``--preset``, else by ``--algo``."""
    values: dict[str, str] = {}
    for i, arg in enumerate(argv):
        for flag in ("--preset", "--algo"):
            if arg == flag and i + 1 < len(argv):
                values[flag] = argv[i + 1]
            elif arg.startswith(flag + "="):
                values[flag] = arg.split("=", 1)[1]
    name = values.get("--preset") or _default_preset(values.get("--algo"))
    return name if name in PRESETS else _default_preset(None)


def _parser(preset_name: str = "quick") -> argparse.ArgumentParser:
    shown = preset(preset_name)
    parser = argparse.ArgumentParser(prog="torchrl-rssm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    description = _TRAIN_HELP.format(resumable=", ".join(RunConfig.RESUMABLE), name=preset_name,
                                     fields=_field_lines(shown))
    train = sub.add_parser("train", help="train an agent", description=description,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("--preset", default=None,
                       help=f"one of {sorted(PRESETS)} (default: quick; with --algo A: A-quick)")
    train.add_argument("--algo", choices=AGENTS, default=None,
                       help="agent (default: the preset's; without --preset it picks <algo>-quick)")
    train.add_argument("--env", help="task, e.g. dmc:cartpole-swingup or gym:Pendulum-v1 (resets the preset's "
                                     "action_repeat, max_episode_steps and logdir)")
    train.add_argument("--pixels", dest="from_pixels", action="store_true", default=None,
                       help=f"observe pixels (preset: from_pixels={shown.from_pixels})")
    train.add_argument("--state", dest="from_pixels", action="store_false", help="observe state vectors")
    train.add_argument("--device", help=f"cpu, cuda, cuda:N (preset: {shown.device})")
    train.add_argument("--seed", type=int, help=f"seed (preset: {shown.seed}; another seed adds -seed<N> to "
                                                "the logdir)")
    train.add_argument("--logdir", help=f"TensorBoard logs and checkpoints (preset: {shown.logdir})")
    train.add_argument("--episodes", type=int,
                       help=f"agent episodes, after the {shown.seed_episodes} seed episodes (preset: {shown.episodes})")
    train.add_argument("--num-envs", dest="num_envs", type=int,
                       help=f"environments stepped together as one batch (preset: {shown.num_envs})")
    train.add_argument("--env-backend", dest="env_backend", choices=("serial", "parallel"),
                       help="batch of environments in this process (serial) or one process each (parallel)")
    train.add_argument("--collector", choices=("sync", "async", "distributed"),
                       help="sync: collect in this process; async: TorchRL worker processes collect while "
                            "the model trains (--set collector_workers=N)")
    train.add_argument("--train-ratio", dest="train_ratio", type=float,
                       help="model updates per collected agent step (preset: updates_per_episode="
                            f"{shown.updates_per_episode} per episode)")
    train.add_argument("--resume", action="store_true",
                       help="continue from <logdir>/checkpoint with the run's own settings")
    train.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                       help="no progress bar: a status line per test and per checkpoint on stderr instead")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override any configuration field (repeatable; fields listed above)")

    ev = sub.add_parser("eval", help="run test episodes from a checkpoint")
    ev.add_argument("--checkpoint", required=True,
                    help="a run's logdir, its checkpoint/ folder, or checkpoint/state.pt")
    ev.add_argument("--episodes", type=int, default=5, help="test episodes, run as one batch (default: 5)")
    ev.add_argument("--device", default=None,
                    help="where the models run: cpu, cuda, cuda:N (default: the run's own device)")
    ev.add_argument("--video", default=None, help="write the first episode's frames to this .mp4 or .gif")

    sub.add_parser("presets", help="list the presets by agent, and the fields")
    return parser


_FLAG_FIELDS = ("algo", "env", "from_pixels", "device", "seed", "logdir", "episodes", "progress", "num_envs",
                "env_backend", "collector", "train_ratio")


def next_free_logdir(logdir: str) -> str:
    """``logdir`` if it is missing or empty, else the first such ``<logdir>-2``, ``<logdir>-3``, ...

    Examples:
        >>> import tempfile
        >>> root = tempfile.mkdtemp()
        >>> next_free_logdir(f"{root}/run") == f"{root}/run"
        True
        >>> Path(f"{root}/run").mkdir(); Path(f"{root}/run/config.json").touch()  # a run is there
        >>> next_free_logdir(f"{root}/run") == f"{root}/run-2"
        True
    """
    candidate, n = logdir, 1
    while Path(candidate).exists() and any(Path(candidate).iterdir()):
        n += 1
        candidate = f"{logdir}-{n}"
    return candidate


def train_config(args: argparse.Namespace) -> tuple[RunConfig, bool]:
    """The run's configuration from the parsed ``train`` arguments; also whether to resume.

    Without ``--logdir`` (or ``--set logdir=``) a new run never lands in a taken folder: the
    next free ``<logdir>-N`` is used (:func:`next_free_logdir`).
    """
    cfg = preset(args.preset or _default_preset(args.algo))
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
    cfg.validate()  # every field, the flags' too, before anything is built or written
    if not args.resume:
        if not logdir_given:
            cfg.logdir = next_free_logdir(cfg.logdir)
        return cfg, False
    # a resumed run keeps its own settings; what this command line sets explicitly overrides them
    from .recipes.checkpoint import saved_config

    resumed = saved_config(cfg.logdir)  # also recovers a checkpoint a kill left as checkpoint.old
    resumed.logdir = cfg.logdir
    for key in set(explicit) | set_keys:
        if key != "logdir":
            setattr(resumed, key, getattr(cfg, key))
    return resumed.validate(), True


def _json_line(result: dict) -> str:
    """Strict JSON (a NaN, e.g. no test run yet, becomes null)."""
    clean = {k: (None if isinstance(v, float) and v != v else v) for k, v in result.items()}
    return json.dumps(clean, allow_nan=False)


def _train(args: argparse.Namespace) -> int:
    """``train``: one process, or one rank of a ``torchrun`` launch (``WORLD_SIZE > 1``)."""
    import torch
    import torch.distributed as dist

    from .recipes.distributed import check_same_config, init_distributed, rank_config
    from .recipes.trainer import Trainer

    rank, world, local_rank = init_distributed()
    trainer = None
    try:
        cfg, resume = train_config(args)
        if world > 1:
            logdir = [cfg.logdir]  # rank 0's choice of a free folder holds for every rank
            dist.broadcast_object_list(logdir, src=0)
            cfg.logdir = logdir[0]
            check_same_config(cfg)
            cfg = rank_config(cfg, rank, local_rank)
            if cfg.device.startswith("cuda"):
                torch.cuda.set_device(torch.device(cfg.device))
        trainer = Trainer(cfg, resume=resume)
        result = trainer.train()
        if rank == 0:
            extra = {"world_size": world} if world > 1 else {}
            # this process's CPU time (all its threads): on a shared machine, what the run itself cost
            extra["cpu_s"] = round(time.process_time(), 1)
            print(_json_line({"logdir": cfg.logdir, **result, **extra}), flush=True)
    finally:
        if world > 1:
            # Nothing holding the process group may outlive it: freed last, a gloo group is destroyed
            # with the GIL held and can deadlock against gloo's worker thread (pytorch#56297).
            trainer = None
            gc.collect()
            if dist.is_initialized():
                dist.destroy_process_group()
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .recipes.evaluate import check_video_path, evaluate
    from .recipes.trainer import load_trainer

    if args.video is not None:
        check_video_path(args.video)  # before building anything
    trainer = load_trainer(args.checkpoint, device=args.device, with_buffer=False, progress=False)
    result = evaluate(trainer, episodes=args.episodes, video=args.video, progress=True)
    print(_json_line(result), flush=True)
    return 0


def _presets() -> int:
    for algo, names in presets_by_agent().items():
        print(f"{algo}:")
        for name in names:
            print(f"  {name}: {PRESETS[name]}")
    for algo in AGENTS:
        shown = _default_preset(algo)
        print(f"fields of a {algo} run (--set KEY=VALUE), with the values of the preset {shown!r}:")
        print(_field_lines(preset(shown)))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        # headless: Gymnasium renders rgb_array frames through pygame, whose SDL would probe Wayland
        # and print "error: XDG_RUNTIME_DIR is invalid or not set" (the frames need no display)
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    args = _parser(_chosen_preset(argv)).parse_args(argv)
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
    except KeyboardInterrupt:  # Ctrl-C: the trainer wrote its checkpoint on the way out; no traceback
        print("torchrl-rssm: interrupted. A training run's checkpoint was written at exit: continue it with "
              "`torchrl-rssm train --logdir <its logdir> --resume`.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
