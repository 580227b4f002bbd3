#!/usr/bin/env bash
# One command for a GPU machine with torch preinstalled (Python 3.12, torch 2.11, CUDA) and no
# package index: installs torchrl, tensordict, dm_control, mujoco, gymnasium from wheels carried
# in the working tree (benchmarks/fetch_device_wheels.sh downloads them beforehand), then runs
#   1. the CUDA tests (tests that use --device cuda / torch.cuda, the CUDA-graph planner included),
#   2. benchmarks/run_all.py --device cuda at full sizes,
#   3. benchmarks/bench_collection.py --device cuda (num_envs 1..8),
#   4. a short PlaNet training at the paper's settings from pixels (env steps/s, updates/s)
#      (and Dreamer's, when a dreamer preset exists),
# all inside 12 minutes (each step has its own timeout), writing JSON and a markdown table to $OUT.
#
#     OUT=/tmp/out bash benchmarks/device_check.sh                 # on the GPU machine
#     DRY_RUN=1 OUT=/tmp/out bash benchmarks/device_check.sh       # here, on CPU: checks the plumbing
#
# WHEELS (default device_wheels/) is the folder of wheels. DRY_RUN=1 skips the install when the
# packages import already, runs every step on CPU at tiny sizes with short timeouts, and checks
# that every result file is written.
set -uo pipefail
OUT="${OUT:-$(mktemp -d)}"
WHEELS="${WHEELS:-device_wheels}"
DRY="${DRY_RUN:-0}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MUJOCO_GL=egl
START=$(date +%s)
STATUS="$OUT/device_check.json"
echo "{}" > "$STATUS"
note() {  # note NAME RC SECONDS: one entry of the status JSON
  python - "$STATUS" "$1" "$2" "$3" <<'PY'
import json, sys
path, name, rc, secs = sys.argv[1:]
data = json.load(open(path)); data[name] = {"rc": int(rc), "seconds": int(secs)}
json.dump(data, open(path, "w"), indent=1)
PY
}
step() {  # step NAME TIMEOUT_S CMD...: runs CMD with a timeout, logs to $OUT/NAME.log
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  echo "== $name (timeout ${limit}s)"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  note "$name" "$rc" "$(( $(date +%s) - t0 ))"
  echo "   rc=$rc, $(( $(date +%s) - t0 ))s"; tail -3 "$OUT/$name.log"
}

# 0. install from the carried wheels (no index)
if python -c "import torchrl, tensordict, dm_control, mujoco, gymnasium" 2>/dev/null; then
  echo "== packages already importable"
elif [ -d "$WHEELS" ]; then
  # --no-deps: the folder holds exactly what is needed (see fetch_device_wheels.sh), torch stays as installed
  step install 240 bash -c "pip install --no-index --no-deps $WHEELS/*.whl"
else
  echo "device_check: no packages and no $WHEELS/ (run benchmarks/fetch_device_wheels.sh first)" >&2; exit 2
fi
python - <<'PY' > "$OUT/versions.json"
import json, platform, torch, torchrl, tensordict
print(json.dumps({"python": platform.python_version(), "torch": torch.__version__, "torchrl": torchrl.__version__,
                  "tensordict": tensordict.__version__, "cuda": torch.cuda.is_available(),
                  "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}))
PY
cat "$OUT/versions.json"

if [ "$DRY" = "1" ]; then DEV=cpu; QUICK=--quick; else DEV=cuda; QUICK=; fi

# 1. CUDA tests (on CPU, DRY_RUN only collects them)
# every test file that mentions CUDA (device-parametrised tests, skipif(no cuda), the CUDA-graph planner)
CUDA_TESTS=$(grep -l "cuda" tests/test_*.py | tr '\n' ' ')
if [ "$DRY" = "1" ]; then
  step tests 120 python -m pytest -q --collect-only $CUDA_TESTS
else
  step tests 200 python -m pytest -q -rs $CUDA_TESTS
fi
# 2. the benchmark suite at full sizes on the GPU
if [ "$DRY" = "1" ]; then
  step run_all 60 python benchmarks/run_all.py --help
else
  step run_all 240 python benchmarks/run_all.py --device $DEV
fi
# run_all's report for this device (written during this run only; $OUT brings back 8 files at most)
find benchmarks/results -newer "$STATUS" \( -name 'cuda*.json' -o -name 'cuda*.md' \) -exec cp {} "$OUT/" \;
# 3. collection by layout (also part of run_all; kept separately for its own JSON)
if [ "$DRY" = "1" ]; then SMOKE=--smoke; else SMOKE=; fi
step collection 150 python benchmarks/bench_collection.py $QUICK $SMOKE --no-async --device $DEV --json "$OUT/collection.json"
# 4. short trainings at the paper's settings from pixels: env steps/s and updates/s
train() {  # train NAME PRESET EPISODES extra --set args...
  local name=$1 preset=$2 episodes=$3; shift 3
  step "$name" "${TRAIN_TIMEOUT:-150}" python -m torchrl_rssm.cli train --preset "$preset" --pixels --device $DEV \
    --episodes "$episodes" --logdir "$OUT/train_$name" --no-progress --set test_every=0 --set video_every=0 \
    --set checkpoint_every=0 "$@"
}
if [ "$DRY" = "1" ]; then
  train planet tiny 1 --set seed_episodes=1
else
  train planet cartpole-swingup 2 --set seed_episodes=1
fi
if python -c "from torchrl_rssm.recipes.config import PRESETS; assert any(p.get('algo') == 'dreamer' for p in PRESETS.values())" 2>/dev/null; then
  DPRESET=$(python -c "from torchrl_rssm.recipes.config import PRESETS; print(next(n for n, p in PRESETS.items() if p.get('algo') == 'dreamer' and 'quick' not in n and 'tiny' not in n))")
  if [ "$DRY" = "1" ]; then train dreamer "$DPRESET" 1 --set seed_episodes=1 --set max_episode_steps=20 --set chunk_length=8 --set batch_size=4; 
  else train dreamer "$DPRESET" 2 --set seed_episodes=1; fi
fi
# the table: rates from each training's TensorBoard scalars
python - "$OUT" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
rows = []
status = json.loads((out / "device_check.json").read_text())
for run in sorted(p for p in out.glob("train_*") if p.is_dir()):
    rates = {}
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        acc = EventAccumulator(str(run)); acc.Reload()
        for tag in ("perf/updates_per_s", "perf/env_steps_per_s"):
            if tag in acc.Tags().get("scalars", []):
                rates[tag.split("/")[1]] = acc.Scalars(tag)[-1].value
    except Exception as err:  # noqa: BLE001
        rates["error"] = str(err)
    log = out / f"{run.name[6:]}.log"
    result = next((json.loads(l) for l in log.read_text().splitlines()[::-1] if l.startswith("{")), {}) if log.exists() else {}
    secs = status.get(run.name[6:], {}).get("seconds") or None
    rows.append({"run": run.name[6:], **rates, **{k: result.get(k) for k in ("env_steps", "updates")},
                 "seconds_with_startup": secs,
                 "env_steps_per_s_with_startup": round(result["env_steps"] / secs, 1) if secs and result.get("env_steps") else None})
(out / "device_check_runs.json").write_text(json.dumps(rows, indent=1))
md = ["| step | rc | seconds |", "| --- | --- | --- |"] + [f"| {k} | {v['rc']} | {v['seconds']} |" for k, v in status.items()]
md += ["", "| training | env steps | updates | updates/s | env steps/s (whole run, start-up included) |",
       "| --- | --- | --- | --- | --- |"]
md += [f"| {r['run']} | {r.get('env_steps')} | {r.get('updates')} | {r.get('updates_per_s', 'n/a')} | "
       f"{r.get('env_steps_per_s_with_startup')} |" for r in rows]
coll = out / "collection.json"
if coll.exists():
    md += ["", "| collection | ms per env step | note |", "| --- | --- | --- |"]
    md += [f"| {r['name']} | {r['ours_ms']:.3f} | {r['note']} |" for r in json.loads(coll.read_text())]
(out / "device_check.md").write_text("\n".join(md) + "\n")
print("\n".join(md))
PY
rm -rf "$OUT"/train_*  # event files stay out of $OUT's 8-file limit
(cd "$OUT" && tar czf logs.tgz *.log && rm -f *.log)  # one file for all logs
echo "device_check: $(( $(date +%s) - START ))s in all; results in $OUT"
python -c "import json,sys; d=json.load(open('$STATUS')); bad=[k for k,v in d.items() if v['rc']]; print('failed steps:', bad or 'none'); sys.exit(1 if bad else 0)"
