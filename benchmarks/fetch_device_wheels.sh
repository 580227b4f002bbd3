#!/usr/bin/env bash
# Downloads the wheels benchmarks/device_check.sh installs on a GPU machine that has torch
# (Python 3.12, torch 2.11, CUDA) but no package index. Run it here, where pip can reach PyPI:
#
#     bash benchmarks/fetch_device_wheels.sh [DEST]      # default DEST: device_wheels/ (gitignored)
#
# then `run` the device check with carry=["device_wheels"]. The device limit is 64 MiB for the
# whole working tree: the script prints the total and fails above WHEELS_MAX_MIB (default 60).
# Versions are the ones this package is tested with here; no dependency resolution is done
# (--no-deps): the list below is the closure of what is not in a bare torch install.
set -euo pipefail
DEST="${1:-device_wheels}"
MAX_MIB="${WHEELS_MAX_MIB:-60}"
mkdir -p "$DEST"
grep -qx "/$DEST/" .gitignore 2>/dev/null || echo "/$DEST/" >> .git/info/exclude 2>/dev/null || true
PKGS=(
  "torchrl==0.14.1" "tensordict==0.14.3" "mujoco" "dm_control" "gymnasium"
  # their dependencies that a torch-only image lacks
  "dm-env" "dm-tree" "labmaze" "lxml" "absl-py" "glfw" "pyopengl" "pyparsing" "protobuf"
  "cloudpickle" "orjson" "pyvers" "farama-notifications" "etils" "tqdm" "tensorboard" "pytest"
  "scipy" "imageio" "pillow"
)
pip download --only-binary=:all: --no-deps --python-version 3.12 --implementation cp --abi cp312 \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  --platform any -d "$DEST" "${PKGS[@]}"
TOTAL=$(du -cm "$DEST"/*.whl | tail -1 | cut -f1)
echo "fetch_device_wheels: $(ls "$DEST"/*.whl | wc -l) wheels, ${TOTAL} MiB in $DEST"
du -m "$DEST"/*.whl | sort -rn | head -5
if [ "$TOTAL" -gt "$MAX_MIB" ]; then
  echo "fetch_device_wheels: ${TOTAL} MiB is over ${MAX_MIB} MiB (the device tree limit is 64 MiB in all)." >&2
  echo "Drop what the device image already has (e.g. scipy, pillow, tensorboard: check with pip list there)." >&2
  exit 1
fi
