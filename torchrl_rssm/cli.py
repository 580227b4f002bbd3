"""``torchrl-rssm``: train and evaluate PlaNet agents.

    torchrl-rssm train                              # the `quick` preset (2-core CPU, 3-7 min)
    torchrl-rssm train --preset cartpole-swingup --device cuda
    torchrl-rssm train --env dmc:walker-walk --set batch_size=32 --set lr=6e-4
    torchrl-rssm train --logdir runs/x --resume     # continue a killed run
    torchrl-rssm eval --checkpoint runs/x --episodes 5 --video out.gif
    torchrl-rssm presets
"""
from __future__ import annotations

import argparse
import json
import sys

from .recipes.config import PRESETS, apply_overrides, preset


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="torchrl-rssm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a PlaNet agent")
    train.add_argument("--preset", default="quick", help=f"one of {sorted(PRESETS)} (default: quick)")
    train.add_argument("--env", help="task, e.g. dmc:cartpole-swingup or gym:Pendulum-v1")
    train.add_argument("--pixels", dest="from_pixels", action="store_true", default=None, help="observe pixels")
    train.add_argument("--state", dest="from_pixels", action="store_false", help="observe state vectors")
    train.add_argument("--device", help="cpu, cuda, cuda:N")
    train.add_argument("--seed", type=int)
    train.add_argument("--logdir", help="TensorBoard logs and checkpoints go here")
    train.add_argument("--episodes", type=int, help="training episodes after the seed episodes")
    train.add_argument("--resume", action="store_true", help="continue from <logdir>/checkpoint")
    train.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override any configuration field (repeatable)")

    ev = sub.add_parser("eval", help="run test episodes from a checkpoint")
    ev.add_argument("--checkpoint", required=True, help="a run's logdir or its checkpoint directory")
    ev.add_argument("--episodes", type=int, default=5, help="test episodes (run as one batch)")
    ev.add_argument("--device", default=None)
    ev.add_argument("--video", default=None, help="write the first episode's frames to this .gif")

    sub.add_parser("presets", help="list the presets and their settings")
    return parser


def _train(args: argparse.Namespace) -> int:
    from .recipes.planet import PlaNetTrainer

    cfg = preset(args.preset)
    for name in ("env", "from_pixels", "device", "seed", "logdir", "episodes", "progress"):
        value = getattr(args, name)
        if value is not None:
            setattr(cfg, name, value)
    logdir_given = bool(args.logdir) or any(o.split("=", 1)[0].strip() == "logdir" for o in args.overrides)
    if args.env and not logdir_given:
        cfg.logdir = f"runs/planet-{args.env.replace(':', '-').replace('/', '-')}"
    apply_overrides(cfg, args.overrides)
    if args.seed is not None and not logdir_given:
        cfg.logdir = f"{cfg.logdir}-seed{cfg.seed}"
    trainer = PlaNetTrainer(cfg, resume=args.resume)
    result = trainer.train()
    print(json.dumps({"logdir": cfg.logdir, **result}))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .recipes.planet import load_trainer
    from .recipes.evaluate import evaluate

    trainer = load_trainer(args.checkpoint, device=args.device, progress=False)
    result = evaluate(trainer, episodes=args.episodes, video=args.video)
    print(json.dumps(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "train":
            return _train(args)
        if args.command == "eval":
            return _eval(args)
        for name, settings in PRESETS.items():
            print(f"{name}: {settings}")
        return 0
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as err:
        print(f"torchrl-rssm: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
