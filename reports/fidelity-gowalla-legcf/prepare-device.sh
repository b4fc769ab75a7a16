#!/bin/sh
# Run here, on the CPU machine, before a device call: gathers into .device/ (git-ignored) what the
# GPU machine lacks and cannot download (it has no network): wheels of recshrink and of the
# dependencies its image does not have (fvcore and its own, pymetis), and the gowalla files. The
# device's image has torch with CUDA, numpy, scipy, pandas, seaborn, jinja2, scikit-learn and tqdm.
# Then: device run, carry [".device"], command `sh reports/fidelity-gowalla-legcf/run-on-gpu.sh`.
set -eu
cd "$(git rev-parse --show-toplevel)"
DATA=${RECSHRINK_DATA:-../shared/datasets}
PY=${DEVICE_PYTHON:-3.12}  # the device's Python (3.12 on the lent H200s so far)
rm -rf .device
mkdir -p .device/wheels .device/datasets
cp -r "$DATA/gowalla" .device/datasets/
pip wheel --quiet --no-deps --no-build-isolation -w .device/wheels .
pip download --quiet --no-deps -d .device/wheels --python-version "$PY" --only-binary=:all: \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    pymetis yacs termcolor portalocker tabulate
# fvcore and iopath publish no wheels (source only); a pip install here left built ones in pip's cache
for pkg in fvcore iopath; do
    found=$(find "${PIP_CACHE_DIR:-$HOME/.cache/pip}" -name "$pkg-*-py3-none-any.whl" 2>/dev/null | head -n 1)
    if [ -z "$found" ]; then
        echo "prepare-device: no $pkg wheel in pip's cache; build one with: pip wheel --no-deps -w .device/wheels $pkg" >&2
        exit 1
    fi
    cp "$found" .device/wheels/
done
ls .device/wheels
du -sh .device
