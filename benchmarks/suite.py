"""One preset on a suite of tasks: does one setting learn everywhere?

For each task, runs ``torchrl-rssm train --preset P --env TASK --seed S`` for every seed
(subprocesses, as a user would; ``--jobs`` runs at once, each at the preset's thread
count), measures a uniformly random policy on the same task at the same action repeat,
and writes per task the JSON, Markdown row and curve PNG that ``quick_learning.py``
writes for one task. Then it writes the suite's table and one figure (a panel per task)
under ``results/suite_<preset>.{json,md,png}``.

A seed ends **clearly above random** when its final test return (the mean of the
preset's ``test_episodes`` noise-free episodes) exceeds the random policy's mean by more
than 3 standard errors, the standard error being the random policy's episode standard
deviation over the square root of ``test_episodes``. The table's last line gives the
fraction of tasks where every seed does.

    python benchmarks/suite.py --preset dreamerv3-quick --seeds 0 1 --jobs 2
    python benchmarks/suite.py --preset quick --seeds 0 --tasks dmc:cartpole-swingup dmc:cheetah-run
    python benchmarks/suite.py --preset dreamerv3-quick --table     # rebuild from the JSONs only
    python benchmarks/suite.py --compare dreamerv3-quick quick dreamer-quick   # presets side by side

Finished runs under ``--root`` are reused (``result.json`` in each run folder), so a
suite killed half-way continues where it stopped.
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import quick_learning as ql  # noqa: E402
from _common import git_state  # noqa: E402

#: the suite: DMC proprioceptive tasks (DreamerV3's protocol) and Gymnasium tasks, one of
#: them with discrete actions and early termination (CartPole-v1)
TASKS = (
    "dmc:cartpole-swingup", "dmc:cartpole-balance", "dmc:reacher-easy", "dmc:cheetah-run",
    "dmc:walker-stand", "dmc:walker-walk", "dmc:finger-spin", "dmc:pendulum-swingup",
    "gym:Pendulum-v1", "gym:Reacher-v5", "gym:CartPole-v1",
)
#: standard errors of the random policy's mean a final test return must clear
MARGIN_SE = 3.0


def bar(random_mean: float, random_std: float | None, test_episodes: int) -> float:
    """The return a seed must exceed: random mean + 3 standard errors of a ``test_episodes`` mean.

    Examples:
        >>> round(bar(-1067.0, 372.0, 4), 1)   # Pendulum-v1, 4 test episodes
        -509.0
    """
    return random_mean + MARGIN_SE * (random_std or 0.0) / math.sqrt(max(test_episodes, 1))


def task_args(args: argparse.Namespace, task: str) -> argparse.Namespace:
    """``quick_learning``'s arguments for one task of the suite."""
    return argparse.Namespace(preset=args.preset, env=task, algo=None, overrides=list(args.overrides),
                              seeds=args.seeds, jobs=args.jobs, root=args.root / ql.slug(task), reuse=True,
                              out=args.results / f"learning_{args.preset}_{ql.slug(task)}{_sets(args)}.json",
                              table=False)


def _sets(args: argparse.Namespace) -> str:
    """The overrides in a file name (``_optimizer-laprop``): a run that is not the preset keeps its own files."""
    return "".join("_" + ql.slug(item).replace("=", "-") for item in args.overrides)


def run_task(args: argparse.Namespace, task: str, pool: ThreadPoolExecutor) -> dict:
    """Every seed of one task (on the shared pool), the random policy, and the task's files."""
    targs = task_args(args, task)
    cfg = ql.run_config(targs)
    try:
        runs = list(pool.map(lambda s: ql.train(targs, s), args.seeds))
    except RuntimeError as error:  # a refusal (e.g. Dreamer on discrete actions) is a row too, not a crash
        summary = dict(preset=args.preset, task=task, overrides=list(args.overrides), failed=_reason(str(error)),
                       command="python benchmarks/suite.py " + shlex.join(sys.argv[1:]), **git_state())
        targs.out.parent.mkdir(parents=True, exist_ok=True)
        targs.out.write_text(json.dumps(summary, indent=2) + "\n")
        return summary
    rand, repeat = ql.random_returns(cfg, max(cfg.test_episodes * len(args.seeds), 8))
    summary = ql.summarise(targs, cfg, runs, rand, repeat)
    summary["command"] = "python benchmarks/suite.py " + shlex.join(sys.argv[1:])
    summary["test_episodes"] = cfg.test_episodes
    _with_verdict(summary, args.preset)
    targs.out.parent.mkdir(parents=True, exist_ok=True)
    targs.out.write_text(json.dumps(summary, indent=2) + "\n")
    ql.plot_curves(summary, targs.out.with_suffix(".png"))
    return summary


def _with_verdict(summary: dict, name: str) -> dict:
    """A task's summary with its bar and verdicts, computed once from its random policy and test episodes (the
    preset's where ``quick_learning.py``'s files, written before the suite, do not record them)."""
    if "failed" in summary or "clearly_above" in summary:
        return summary
    from torchrl_rssm.recipes import preset

    episodes = summary.get("test_episodes") or preset(name).test_episodes
    summary["bar"] = round(bar(summary["random_mean"], summary["random_std"], episodes), 1)
    summary["clearly_above"] = [x > summary["bar"] for x in summary["ours_final_test_return"]]
    return summary


def _reason(error: str) -> str:
    """The last line of a failed run's stderr, without the program's prefix: what a reader needs to know."""
    lines = [line for line in error.strip().splitlines() if line.strip()]
    return lines[-1].removeprefix("torchrl-rssm: error: ").strip() if lines else "failed"


def _cpu(summary: dict) -> str:
    """`` (CPU 22.0, 21.5)``: each run's process CPU minutes, where the runs recorded them."""
    cpu = [run.get("cpu_s") for run in summary.get("runs", [])]
    return f" (CPU {', '.join(f'{c / 60:.1f}' for c in cpu)})" if cpu and all(c is not None for c in cpu) else ""


def table(summaries: list[dict]) -> str:
    """The suite's Markdown table, one row per task, and the fraction of tasks learned."""
    lines = ["| task | action repeat | random policy (mean ± std) | bar (+3 SE) | final test return per seed | "
             "clearly above random | wall time per run | commit |",
             "|---|---:|---|---:|---|---|---|---|"]
    learned = 0
    for s in summaries:
        if "failed" in s:
            lines.append(f"| {s['task']} | | | | failed: {s['failed']} | no | | {(s.get('commit') or '?')[:7]} |")
            continue
        above = s["clearly_above"]
        learned += all(above)
        verdict = "yes" if all(above) else (f"{sum(above)} of {len(above)} seeds" if any(above) else "no")
        commits = ", ".join(f"{(c['commit'] or '?')[:7]}{'+dirty' if c.get('dirty') else ''}"
                            for c in s["commits"])
        lines.append(f"| {s['task']} | {s['action_repeat']} | {s['random_mean']:.1f} ± {s['random_std'] or 0:.1f} "
                     f"({s['random_episodes']} ep.) | {s['bar']:.1f} | "
                     f"{', '.join(f'{x:.1f}' for x in s['ours_final_test_return'])} | {verdict} | "
                     f"{', '.join(f'{w / 60:.1f}' for w in s['wall_s'])} min{_cpu(s)} | {commits} |")
    lines.append(f"\nEvery seed clearly above random on **{learned} of {len(summaries)}** tasks.")
    return "\n".join(lines) + "\n"


def _result(results: Path, name: str, task: str) -> dict | None:
    """The summary of preset ``name`` on ``task`` with nothing overridden: ``learning_<name>_<task>.json``,
    else any results JSON that says so (the default task's file is ``quick_learning.json``)."""
    path = results / f"learning_{name}_{ql.slug(task)}.json"
    for candidate in [path, *sorted(results.glob("*.json"))]:
        if candidate.exists():
            s = json.loads(candidate.read_text())
            if isinstance(s, dict) and s.get("preset") == name and s.get("task") == task and not s.get("overrides"):
                return s
    return None


def compare(results: Path, presets: list[str], tasks: list[str]) -> str:
    """One row per task, one column per preset: each seed's final test return, marked ``*`` when
    clearly above that run's random policy (same task and action repeat), or "not run"."""
    head = " | ".join(f"`{p}`" for p in presets)
    lines = [f"| task | {head} |", "|---|" + "---|" * len(presets)]
    for task in tasks:
        cells = []
        for name in presets:
            s = _result(results, name, task)
            if s is None or "failed" in s:
                cells.append("not run" if s is None else f"failed: {s['failed']}")
                continue
            above = _with_verdict(s, name)["clearly_above"]
            finals = ", ".join(f"{x:.0f}{'*' if ok else ''}" for x, ok in zip(s["ours_final_test_return"], above))
            cells.append(f"{finals} (random {s['random_mean']:.0f}, repeat {s['action_repeat']})")
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return ("\n".join(lines) + "\n\n`*`: more than 3 standard errors of the random policy's mean above it. Each "
            "cell is one preset with only `--env` changed; its JSON and curves: "
            "`benchmarks/results/learning_<preset>_<task>.{json,png}`.\n")


def plot(summaries: list[dict], out: Path, title: str) -> None:
    """One panel per task: each seed's test returns against environment steps, the random band and the bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(4, len(summaries))
    rows = math.ceil(len(summaries) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.6 * rows), squeeze=False)
    for ax, s in zip(axes.flat, summaries):
        low, high = s["random_mean"] - (s["random_std"] or 0), s["random_mean"] + (s["random_std"] or 0)
        ax.axhspan(low, high, color="grey", alpha=0.25)
        ax.axhline(s["bar"], color="grey", ls="--", lw=0.8)
        for run in s["runs"]:
            test = (run.get("curves") or {}).get("test", [])
            ax.plot([x / 1000 for x, _ in test], [r for _, r in test], "o-", ms=2, lw=1.2, label=f"seed {run['seed']}")
        ax.set_title(s["task"], fontsize=9)
        ax.set_xlabel("env steps (k)", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(summaries):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title + "  (grey: random policy mean ± std; dashed: +3 SE bar)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="dreamerv3-quick", help="any preset name")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), help="tasks (default: the whole suite)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (default 2, one thread each)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="passed to every run's `torchrl-rssm train --set` (then it is not the preset)")
    parser.add_argument("--root", type=Path, default=None, help="run folders (default runs/suite/<preset>)")
    parser.add_argument("--results", type=Path, default=ql.RESULTS, help="where the JSON, tables and figures go")
    parser.add_argument("--table", action="store_true", help="only rebuild the suite's table and figure")
    parser.add_argument("--compare", nargs="+", metavar="PRESET",
                        help="only write the side-by-side table of these presets' results (suite_compare.md)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.compare:
        text = compare(args.results, args.compare, args.tasks)
        (args.results / "suite_compare.md").write_text(
            "<!-- generated by python benchmarks/suite.py --compare " + " ".join(args.compare) + " -->\n" + text)
        print(text)
        return
    args.root = args.root or Path("runs/suite") / f"{args.preset}{_sets(args)}"  # never another setting's runs
    name = args.results / f"suite_{args.preset}{_sets(args)}"
    if args.table:
        summaries = [_with_verdict(json.loads(p.read_text()), args.preset) for task in args.tasks
                     if (p := args.results / f"learning_{args.preset}_{ql.slug(task)}{_sets(args)}.json").exists()]
    else:
        with ThreadPoolExecutor(args.jobs) as pool:  # every (task, seed) run shares the pool
            tasks = ThreadPoolExecutor(len(args.tasks))
            summaries = list(tasks.map(lambda t: run_task(args, t, pool), args.tasks))
            tasks.shutdown()
    text = table(summaries)  # failed runs are rows of the table; the figure has curves only
    learned = [s for s in summaries if "clearly_above" in s]
    sets = "".join(f" --set {item}" for item in args.overrides)
    name.with_suffix(".md").write_text(f"<!-- generated by benchmarks/suite.py --preset {args.preset}{sets} -->\n" + text)
    name.with_suffix(".json").write_text(json.dumps(
        {"preset": args.preset, "seeds": args.seeds, "tasks": [s["task"] for s in summaries],
         "learned": sum(all(s["clearly_above"]) for s in learned), "script": git_state(),
         "command": "python benchmarks/suite.py " + shlex.join(sys.argv[1:] if argv is None else argv)}, indent=2) + "\n")
    if learned:
        plot(learned, name.with_suffix(".png"), f"`{args.preset}` on the suite")
    print(text)


if __name__ == "__main__":
    main()
