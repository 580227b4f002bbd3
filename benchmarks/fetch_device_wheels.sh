#!/usr/bin/env bash
# Downloads the wheels benchmarks/device_check.sh installs on a GPU machine that has torch
# (Python 3.12, torch 2.11, CUDA) but no package index. Run it here, where pip can reach PyPI:
#
#     bash benchmarks/fetch_device_wheels.sh [DEST]      # default DEST: device_wheels/ (gitignored)
#
# then `run` the device check with carry=["device_wheels"] (/device_wheels/ is gitignored). Measured
# here: 21 wheels, 57 MiB (dm_control repacked to 4 MiB); with this 2 MiB tree, 59 of the 64 MiB.
# The package itself is not installed there: device_check.sh puts the tree on PYTHONPATH. The device limit is 64 MiB for the
# whole working tree: the script prints the total and fails above WHEELS_MAX_MIB (default 60).
# Versions are the ones this package is tested with here; no dependency resolution is done
# (--no-deps): the list below is the closure of what is not in a bare torch install.
set -euo pipefail
DEST="${1:-device_wheels}"
MAX_MIB="${WHEELS_MAX_MIB:-60}"
mkdir -p "$DEST"
PKGS=(
  "torchrl==0.14.1" "tensordict==0.14.3" "mujoco" "dm_control" "gymnasium"
  # the dependencies a torch-only image lacks that the DMC suite, TorchRL and the tests import
  # (installed with --no-deps: labmaze, dm-tree, etils, pyparsing are declared by dm_control but
  # not imported by its suite; tensorboard's server dependencies are not needed for writing logs)
  "dm-env" "lxml" "absl-py" "glfw" "pyopengl" "protobuf" "cloudpickle" "orjson" "pyvers"
  "farama-notifications" "tqdm" "tensorboard" "pytest" "pluggy" "iniconfig" "scipy"
)
pip download --only-binary=:all: --no-deps --python-version 3.12 --implementation cp --abi cp312 \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  --platform any -d "$DEST" "${PKGS[@]}"
# dm_control's wheel is 54 MiB, 48 of them assets the DMC suite's PlaNet/Dreamer tasks never load
# (locomotion soccer/walkers, the dog domain, MuJoCo test models): repack it without them.
python - "$DEST" <<'PY'
import pathlib, sys, zipfile
drop = ("dm_control/locomotion/soccer/", "dm_control/locomotion/walkers/assets", "dm_control/suite/dog_assets/",
        "dm_control/mujoco/testing/")
for wheel in pathlib.Path(sys.argv[1]).glob("dm_control-*.whl"):
    slim = wheel.with_suffix(".slim")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            if not item.filename.startswith(drop):
                dst.writestr(item, src.read(item.filename))
    slim.replace(wheel)
    print(f"fetch_device_wheels: {wheel.name} repacked without unused assets: {wheel.stat().st_size / 2**20:.1f} MiB")
PY
TOTAL=$(du -cm "$DEST"/*.whl | tail -1 | cut -f1)
echo "fetch_device_wheels: $(ls "$DEST"/*.whl | wc -l) wheels, ${TOTAL} MiB in $DEST"
du -m "$DEST"/*.whl | sort -rn | head -5
if [ "$TOTAL" -gt "$MAX_MIB" ]; then
  echo "fetch_device_wheels: ${TOTAL} MiB is over ${MAX_MIB} MiB (the device tree limit is 64 MiB in all)." >&2
  echo "Drop what the device image already has (e.g. scipy, pillow, tensorboard: check with pip list there)." >&2
  exit 1
fi
