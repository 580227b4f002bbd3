"""Learning check: final test return of a preset over seeds, against a random policy.

For each seed, runs ``torchrl-rssm train --preset P [--env TASK] [--algo A] --seed S``
(a subprocess, as a user would), reads the final test return (mean of the preset's
batched noise-free test episodes) and the wall time, runs a uniformly random policy on
the same task at the same action repeat for ``test_episodes x seeds`` episodes, and
writes a JSON with the commit and the exact commands that produced it. Then regenerates
``results/learning.md``, one row per results JSON present.

    python benchmarks/quick_learning.py                               # PlaNet `quick`, seeds 0 1 2, one at a time
    python benchmarks/quick_learning.py --env dmc:reacher-easy --seeds 0 1
    python benchmarks/quick_learning.py --preset quick-pixels --seeds 0 1
    python benchmarks/quick_learning.py --preset dreamer-quick        # any preset name
    python benchmarks/quick_learning.py --reuse                       # keep finished runs under --root
    python benchmarks/quick_learning.py --table                       # only rebuild results/learning.md

``--env`` keeps the preset's settings and changes only the task, as
``torchrl-rssm train --env`` does: the action repeat becomes the task's (PlaNet's for its
DMC domains, else 1) and the episode length the task's limit. Outputs:
``results/quick_learning.json`` for the plain ``quick`` preset (the README's table),
``results/learning_<preset>_<task>[_<key>-<value>...].json`` for everything else (one suffix per ``--set``), each with a PNG beside it of return
against episodes per seed (training and test episodes, from the runs' TensorBoard events).

Each run uses the preset's ``num_threads`` (1 for ``quick``). ``--jobs`` (default 1) runs
that many seeds at once; the tables record which was used, since runs sharing a 2-core
machine with other work take longer.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import git_state  # noqa: E402

ROOT = HERE.parent
RESULTS = HERE / "results"


def slug(text: str) -> str:
    return text.replace(":", "-").replace("/", "-")


def cli_args(args: argparse.Namespace, seed: int | None = None) -> list[str]:
    """The ``torchrl-rssm train`` arguments of one run (without --logdir / --no-progress)."""
    out = ["--preset", args.preset]
    if args.env:
        out += ["--env", args.env]
    if args.algo:
        out += ["--algo", args.algo]
    for item in args.overrides:
        out += ["--set", item]
    if seed is not None:
        out += ["--seed", str(seed)]
    return out


def run_config(args: argparse.Namespace):
    """The run's configuration exactly as the CLI builds it."""
    from torchrl_rssm.cli import _parser, train_config
    from torchrl_rssm.recipes.trainer import apply_agent_action_repeat

    cfg, _ = train_config(_parser().parse_args(["train", *cli_args(args)]))
    return apply_agent_action_repeat(cfg)  # the random policy then runs at the repeat the run trains at


def train(args: argparse.Namespace, seed: int) -> dict:
    logdir = args.root / f"s{seed}"
    result_file = logdir / "result.json"
    if args.reuse and result_file.exists():
        return json.loads(result_file.read_text())
    command = ["torchrl-rssm", "train", *cli_args(args, seed), "--logdir", str(logdir), "--no-progress"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env.setdefault("OMP_NUM_THREADS", "1")
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "torchrl_rssm.cli", *command[1:]], capture_output=True,
                         text=True, env=env)
    wall = time.perf_counter() - start
    logdir.mkdir(parents=True, exist_ok=True)
    (logdir / "stderr.txt").write_text(out.stderr)
    if out.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result.update(seed=seed, wall_s=round(wall, 1), command=shlex.join(command), **git_state())
    result["curves"] = curves(logdir)
    result_file.write_text(json.dumps(result, indent=2))
    return result


def curves(logdir: Path) -> dict[str, list[list[float]]]:
    """``{"train": [[env_step, return], ...], "test": [...]}`` from the run's TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logdir), size_guidance={"scalars": 0}).Reload()
    tags = set(events.Tags()["scalars"])
    return {name: [[e.step, round(e.value, 1)] for e in events.Scalars(tag)] if tag in tags else []
            for name, tag in (("train", "train/episode_return"), ("test", "test/return"))}


def plot_curves(summary: dict, out: Path) -> None:
    """Return against episodes, one colour per seed (training episodes thin, tests bold), random band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps_per_episode = summary["env_steps"] / (summary.get("seed_episodes", 0) + summary["episodes"])
    fig, ax = plt.subplots(figsize=(7, 4))
    low, high = summary["random_mean"] - (summary["random_std"] or 0), summary["random_mean"] + (summary["random_std"] or 0)
    ax.axhspan(low, high, color="grey", alpha=0.25, label="random policy (mean ± std)")
    for run in summary["runs"]:
        c = run.get("curves") or {}
        line, = ax.plot([s / steps_per_episode for s, _ in c.get("train", [])], [r for _, r in c.get("train", [])],
                        lw=0.8, alpha=0.6, label=f"seed {run['seed']}: training episodes")
        ax.plot([s / steps_per_episode for s, _ in c.get("test", [])], [r for _, r in c.get("test", [])],
                "o-", lw=2, color=line.get_color(), label=f"seed {run['seed']}: test (noise-free)")
    ax.set_xlabel("episode")
    ax.set_ylabel("return")
    ax.set_title(f"{summary['agent']} `{summary['preset']}` on {summary['task']} ({summary['observations']})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def random_returns(cfg, episodes: int, seed: int = 10_000) -> tuple[list[float], int]:
    """Returns of a uniformly random policy on ``cfg``'s task at ``cfg``'s action repeat, and that repeat."""
    import torch

    from torchrl_rssm.envs import make_env

    torch.manual_seed(seed)
    returns = []
    for i in range(episodes):
        env = make_env(cfg.env, from_pixels=False, action_repeat=cfg.action_repeat,
                       max_episode_steps=cfg.max_episode_steps, env_kwargs=cfg.env_kwargs, seed=seed + i)
        returns.append(float(env.rollout(env.max_episode_steps)["next", "reward"].sum()))
        repeat = int(env.action_repeat)  # the task's default where cfg leaves it None
        env.close()
    return returns, repeat


def output_path(args: argparse.Namespace, cfg) -> Path:
    if args.out is not None:
        return args.out
    if args.preset == "quick" and not args.env and not args.algo and not args.overrides:
        return RESULTS / "quick_learning.json"
    # --set runs get their own file, so that they never overwrite the plain run of the same task
    sets = "".join("_" + slug(item).replace("=", "-") for item in args.overrides)
    return RESULTS / f"learning_{args.preset}_{slug(cfg.env)}{sets}.json"


def summarise(args: argparse.Namespace, cfg, runs: list[dict], rand: list[float], repeat: int) -> dict:
    ours = [r["test_return"] for r in runs]
    obs = "pixels 64x64" if cfg.from_pixels else "state vectors"
    if cfg.from_pixels and cfg.image_size != 64:
        obs = f"pixels {cfg.image_size}x{cfg.image_size}"
    commits = sorted({(r.get("commit"), r.get("dirty")) for r in runs}, key=str)
    return {
        "task": cfg.env, "observations": obs, "action_repeat": repeat,
        "agent": cfg.algo, "preset": args.preset, "overrides": args.overrides,
        "command": "python benchmarks/quick_learning.py " + shlex.join(sys.argv[1:]),
        "run_command": "torchrl-rssm " + shlex.join(["train", *cli_args(args), "--seed", "S"]),
        "runs": [{"seed": r["seed"], "test_return": r["test_return"], "wall_s": r["wall_s"], "cpu_s": r.get("cpu_s"),
                  "command": r.get("command"), "commit": r.get("commit"), "dirty": r.get("dirty"),
                  "curves": r.get("curves")} for r in runs],
        "commits": [{"commit": c, "dirty": d} for c, d in commits],
        "script": git_state(),
        "seeds": [r["seed"] for r in runs],
        "ours_final_test_return": [round(x, 1) for x in ours],
        "ours_mean": round(statistics.mean(ours), 1),
        "ours_std": round(statistics.stdev(ours), 1) if len(ours) > 1 else None,
        "random_mean": round(statistics.mean(rand), 1),
        "random_std": round(statistics.stdev(rand), 1) if len(rand) > 1 else None,
        "random_episodes": len(rand),
        "wall_s": [r["wall_s"] for r in runs],
        "seed_episodes": runs[0].get("seed_episodes", 0), "episodes": runs[0]["episodes"], "env_steps": runs[0]["env_steps"], "updates": runs[0].get("updates"),
        "jobs": args.jobs, "threads_per_run": cfg.num_threads,
        "partial": any(r.get("partial") for r in runs),
    }


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.0f}"


def table(paths: list[Path]) -> str:
    """One markdown row per results JSON."""
    lines = ["| task | agent (preset) | random policy | ours: final test return per seed | mean | "
             "wall time per run | runs at once | commit |",
             "|---|---|---|---|---|---|---|---|"]
    for path in paths:
        s = json.loads(path.read_text())
        if "ours_final_test_return" not in s:
            continue
        task = s["task"]
        obs = s.get("observations")
        if obs is None:  # older files: "dmc:... (state vectors, action repeat 8)"
            task, _, rest = task.partition(" (")
            obs = rest.rstrip(")")
        else:
            obs = f"{obs}, action repeat {s.get('action_repeat')}"
        sets = "".join(f" `--set {o}`" for o in s.get("overrides") or [])
        agent = f"{s.get('agent', 'planet')} (`{s.get('preset', 'quick')}`{sets})"
        commits = s.get("commits") or [{"commit": s.get("commit"), "dirty": s.get("dirty")}]
        commit = ", ".join(f"{(c['commit'] or '?')[:7]}{'+dirty' if c.get('dirty') else ''}" for c in commits)
        partial = " (partial)" if s.get("partial") else ""
        rand = f"{s['random_mean']:.0f} ± {s['random_std'] or 0:.0f} ({s['random_episodes']} ep.)"
        lines.append(
            f"| {task}, {obs} | {agent}{partial} | {rand} | "
            f"{', '.join(_fmt(x) for x in s['ours_final_test_return'])} | {s['ours_mean']:.0f} | "
            f"{', '.join(f'{w / 60:.1f}' for w in s['wall_s'])} min | {s.get('jobs', '?')} | {commit} |")
    return "\n".join(lines) + "\n"


def write_table(folder: Path = RESULTS) -> Path:
    """Regenerates ``<folder>/learning.md`` from the results JSONs in ``folder``."""
    paths = sorted((p for p in folder.glob("*.json")
                    if p.name == "quick_learning.json" or p.name.startswith("learning_")),
                   key=lambda p: (p.name != "quick_learning.json", p.name))  # the README's table first
    out = folder / "learning.md"
    out.write_text("<!-- generated by benchmarks/quick_learning.py from the JSONs beside it -->\n" + table(paths))
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="quick", help="any preset name (default quick)")
    parser.add_argument("--env", default=None, help="another task with the preset's settings (as `train --env`)")
    parser.add_argument("--algo", default=None, help="passed to `torchrl-rssm train --algo`")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="passed to `torchrl-rssm train --set` (recorded in the JSON)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=1, help="seeds run at once (default 1)")
    parser.add_argument("--root", type=Path, default=None, help="run folders (default runs/learning/<name>)")
    parser.add_argument("--reuse", action="store_true", help="reuse finished runs found under --root")
    parser.add_argument("--out", type=Path, default=None, help="results JSON (default from preset and task)")
    parser.add_argument("--table", action="store_true", help="only regenerate results/learning.md")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.table:
        print(write_table().read_text())
        return

    cfg = run_config(args)
    out = output_path(args, cfg)
    if args.root is None:
        args.root = Path("runs/learning") / out.stem
    with ThreadPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(lambda s: train(args, s), args.seeds))
    rand, repeat = random_returns(cfg, cfg.test_episodes * len(args.seeds))
    summary = summarise(args, cfg, runs, rand, repeat)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    out.with_suffix(".md").write_text(table([out]))
    plot_curves(summary, out.with_suffix(".png"))
    md = write_table(out.parent)
    print(table([out]))
    print(f"wrote {out}, {out.with_suffix('.png')} and {md}")


if __name__ == "__main__":
    main()
