"""Runs the two-rank DDP tests many times in a row and counts passes, failures and hangs.

A hang is a repetition still running after ``--timeout`` seconds (its process group is then
killed with SIGKILL, and the next repetition starts). Each repetition is one
``pytest tests/test_scale_distributed.py -k EXPR`` in a fresh process: the gloo ranks
spawned by ``torch.multiprocessing`` (both agents) and the ``torchrun`` training run.
Writes ``results/ddp_repeat.json`` and ``.md``; exit code 1 if any repetition failed or hung.

    python benchmarks/ddp_repeat.py                  # 30 repetitions
    python benchmarks/ddp_repeat.py --repeats 2      # a check

A script for a quiet machine, not a CI step (30 repetitions take tens of minutes on 2 cores).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

DEFAULT_TESTS = "ddp_update or torchrun"


def run_once(expr: str, timeout_s: float) -> dict:
    """One pytest run of the selected tests: ``{"outcome": "pass" | "fail" | "hang", "seconds", "tail"}``."""
    cmd = [sys.executable, "-m", "pytest", "tests/test_scale_distributed.py", "-q", "-x", "-p", "no:cacheprovider",
           "-k", expr]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    start = time.perf_counter()
    # its own process group: a hang is ended with every rank it spawned
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return dict(outcome="hang", seconds=round(time.perf_counter() - start, 1), tail=(out or "")[-1500:])
    seconds = round(time.perf_counter() - start, 1)
    # pytest exit code 5: no test selected, a wrong -k expression, not a pass
    outcome = "pass" if proc.returncode == 0 else "fail"
    summary = next((line for line in reversed(out.splitlines()) if line.strip()), "")  # "3 passed in ..."
    return dict(outcome=outcome, seconds=seconds, returncode=proc.returncode, summary=summary, tail=out[-1500:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds before a repetition counts as a hang")
    parser.add_argument("-k", dest="expr", default=DEFAULT_TESTS, help=f"pytest -k expression ({DEFAULT_TESTS!r})")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="folder for ddp_repeat.json/.md")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: expected an integer >= 1")
    runs = []
    for i in range(args.repeats):
        result = run_once(args.expr, args.timeout)
        runs.append(result)
        print(f"{i + 1}/{args.repeats}: {result['outcome']} in {result['seconds']} s", file=sys.stderr, flush=True)
    counts = {k: sum(r["outcome"] == k for r in runs) for k in ("pass", "fail", "hang")}
    report = dict(tests=args.expr, repeats=args.repeats, timeout_s=args.timeout, **counts,
                  seconds=[r["seconds"] for r in runs], summaries=[r.get("summary", "") for r in runs],
                  failures=[dict(index=i + 1, **r) for i, r in enumerate(runs) if r["outcome"] != "pass"],
                  command=" ".join(shlex.quote(c) for c in [sys.executable, *sys.argv]),
                  commit=subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                        text=True).stdout.strip())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ddp_repeat.json").write_text(json.dumps(report, indent=2))
    secs = sorted(report["seconds"])
    lines = [f"# Two-rank DDP tests, {args.repeats} repetitions in a row", "",
             f"Tests: `-k {args.expr!r}` of `tests/test_scale_distributed.py`; a repetition running past "
             f"{args.timeout:.0f} s counts as a hang.", "",
             "| passed | failed | hung | median s | max s |", "|---|---|---|---|---|",
             f"| {counts['pass']} | {counts['fail']} | {counts['hang']} | {statistics.median(secs):.1f} "
             f"| {secs[-1]:.1f} |",
             "", f"Command: `{report['command']}` at commit {report['commit']}.", ""]
    (args.out / "ddp_repeat.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0 if counts["pass"] == args.repeats else 1


if __name__ == "__main__":
    sys.exit(main())
