"""Chaos test: a run killed with SIGKILL at random moments and resumed each time, against the
uninterrupted run with the same seed.

Runs ``torchrl-rssm train --preset PRESET --seed SEED`` once without interruption (the
reference), then again in another logdir, killing it with SIGKILL ``--kills`` times at random
moments (each attempt lives ``U(0.3, 1) x S + U(0, 1) x 2 x (T - S) / (kills + 1)`` seconds,
``T`` the reference's wall time and ``S`` the time to its first checkpoint: kills land anywhere,
in start-up, collection, fits, tests and checkpoint writes alike) and resuming it with ``--resume``
after each kill, until it finishes. Compares the two final checkpoints (every weight and optimiser tensor, the counters,
the last test return) and reports the time lost to the kills (the chaos run's total wall time
minus the reference's). Writes ``results/chaos_<preset>.json`` and ``.md``.

    python benchmarks/chaos.py                         # quick preset, 10 kills (a long run)
    python benchmarks/chaos.py --preset tiny --kills 3 # a check in a minute or two
    python benchmarks/chaos.py --preset tiny --set episodes=6

Exit code 1 when the runs differ.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

import torch  # noqa: E402

from torchrl_rssm.recipes.checkpoint import latest_checkpoint, load_state  # noqa: E402


def _cmd(logdir: Path, args: argparse.Namespace, resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "torchrl_rssm.cli", "train", "--preset", args.preset, "--seed", str(args.seed),
           "--logdir", str(logdir), "--no-progress"]
    for item in args.set or []:
        cmd += ["--set", item]
    return cmd + (["--resume"] if resume else [])


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
                PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))


def _progress(logdir: Path) -> dict | None:
    """The counters of the run's newest good checkpoint (``None``: none yet)."""
    folder = latest_checkpoint(logdir) if logdir.exists() else None
    return None if folder is None else load_state(folder, replay=False)["counters"]


def _flatten(value, prefix: str = "") -> dict:
    out = {}
    if isinstance(value, dict):
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    elif isinstance(value, (list, tuple)) and value and isinstance(value[0], dict):
        for i, v in enumerate(value):
            out.update(_flatten(v, f"{prefix}{i}."))
    else:
        out[prefix.rstrip(".")] = value
    return out


def compare(a: dict, b: dict) -> dict:
    """Differences between two final checkpoints: tensors (max absolute difference), counters, return."""
    tensors, unequal = 0, []
    max_diff = 0.0
    flat_a = _flatten({k: a[k] for k in a["agent_keys"]})
    flat_b = _flatten({k: b[k] for k in b["agent_keys"]})
    for name in sorted(set(flat_a) | set(flat_b)):
        va, vb = flat_a.get(name), flat_b.get(name)
        if isinstance(va, torch.Tensor) and isinstance(vb, torch.Tensor):
            tensors += 1
            if va.shape != vb.shape or not torch.equal(va, vb):
                unequal.append(name)
                if va.shape == vb.shape and va.is_floating_point():
                    max_diff = max(max_diff, float((va.double() - vb.double()).abs().max()))
                else:
                    max_diff = float("inf")
        elif va != vb:
            unequal.append(name)
    return dict(tensors=tensors, unequal=unequal, max_abs_diff=max_diff,
                counters_equal=a["counters"] == b["counters"],
                test_return=(a["last_test_return"], b["last_test_return"]),
                bit_equal=not unequal and a["counters"] == b["counters"]
                and a["last_test_return"] == b["last_test_return"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kills", type=int, default=10, help="SIGKILLs delivered (default 10)")
    parser.add_argument("--kill-seed", type=int, default=0, help="seed of the random kill moments")
    parser.add_argument("--set", action="append", metavar="FIELD=VALUE", help="passed on to torchrl-rssm train")
    parser.add_argument("--workdir", type=Path, default=None, help="where the two runs go (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="folder for chaos_<preset>.json/.md")
    args = parser.parse_args()
    if args.kills < 0:
        parser.error(f"--kills {args.kills}: expected an integer >= 0")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="chaos-"))
    ref_dir, chaos_dir = work / "reference", work / "chaos"
    for d in (ref_dir, chaos_dir):
        shutil.rmtree(d, ignore_errors=True)

    start = time.perf_counter()
    proc = subprocess.Popen(_cmd(ref_dir, args, resume=False), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    first_s = None  # when the first checkpoint appears: start-up (imports, environments) before it
    while proc.poll() is None:
        if first_s is None and (ref_dir / "checkpoint" / "manifest.json").exists():
            first_s = time.perf_counter() - start
        time.sleep(0.05)
    reference_s = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"chaos: the reference run failed:\n{proc.stderr.read()[-3000:]}")
    first_s = reference_s if first_s is None else first_s
    print(f"reference run: {reference_s:.1f} s (first checkpoint after {first_s:.1f} s)", file=sys.stderr)

    rng = random.Random(args.kill_seed)
    # each attempt lives part of a start-up plus a random share of the work after it, so that
    # kills land in start-up, collection, fits, tests and checkpoint writes alike
    span = 2 * (reference_s - first_s) / (args.kills + 1)
    kills, attempts, total_s = [], 0, 0.0
    while True:
        # a kill before the first checkpoint leaves nothing to resume: that attempt starts afresh
        resume = attempts > 0 and _progress(chaos_dir) is not None
        attempts += 1
        killing = len(kills) < args.kills
        delay = rng.uniform(0.3, 1.0) * first_s + rng.uniform(0.0, 1.0) * span if killing else None
        t0 = time.perf_counter()
        proc = subprocess.Popen(_cmd(chaos_dir, args, resume=resume), env=_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            lived = time.perf_counter() - t0
            total_s += lived
            progress = _progress(chaos_dir)
            kills.append(dict(after_s=round(lived, 2), checkpoint_counters=progress))
            print(f"kill {len(kills)}/{args.kills} after {lived:.1f} s; last checkpoint: {progress}", file=sys.stderr)
            continue
        total_s += time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(f"chaos: attempt {attempts} (resume={resume}) failed:\n{proc.stderr.read()[-3000:]}")
        if len(kills) >= args.kills:
            break
        # it finished before its kill: start again from scratch is not the test; count what was delivered
        print(f"the run finished before kill {len(kills) + 1}; {len(kills)} kill(s) delivered", file=sys.stderr)
        break

    result = compare(load_state(chaos_dir / "checkpoint", replay=False), load_state(ref_dir / "checkpoint",
                                                                                       replay=False))
    report = dict(
        preset=args.preset, seed=args.seed, kill_seed=args.kill_seed, kills_asked=args.kills,
        kills_delivered=len(kills), attempts=attempts, reference_s=round(reference_s, 2),
        reference_first_checkpoint_s=round(first_s, 2),
        chaos_total_s=round(total_s, 2), time_lost_s=round(total_s - reference_s, 2), kills=kills,
        command=" ".join(shlex.quote(c) for c in [sys.executable, *sys.argv]),
        commit=subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True).stdout.strip(),
        **result)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"chaos_{args.preset}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str))
    lines = [
        f"# Chaos: `{args.preset}` seed {args.seed}, {len(kills)} SIGKILLs (kill seed {args.kill_seed})", "",
        "| | |", "|---|---|",
        f"| final weights and optimiser state | {'bit-equal' if not result['unequal'] else 'differ'} "
        f"({result['tensors']} tensors; max abs difference {result['max_abs_diff']:.3g}) |",
        f"| counters | {'equal' if result['counters_equal'] else 'differ'} |",
        f"| last test return (chaos, reference) | {result['test_return'][0]!r}, {result['test_return'][1]!r} |",
        f"| wall time: reference, chaos (all attempts) | {reference_s:.1f} s, {total_s:.1f} s |",
        f"| attempts (a kill before any checkpoint restarts afresh) | {attempts} |",
        f"| time lost to the kills | {total_s - reference_s:.1f} s ({(total_s - reference_s) / max(len(kills), 1):.1f} "
        "s per kill) |", "",
        "Kills (seconds each attempt lived; the last checkpoint's counters then):", "",
        *[f"{i + 1}. {k['after_s']} s: {k['checkpoint_counters']}" for i, k in enumerate(kills)], "",
        f"Command: `{report['command']}` at commit {report['commit']}.", "",
    ]
    stem.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0 if result["bit_equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
