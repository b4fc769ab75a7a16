#!/bin/sh
# Run on the GPU machine (device run, carry [".device"] from prepare-device.sh), from the repository
# root: seed 0 of LEGCF at c = 500, t = 2 on gowalla (d = 128, 3 layers) and of its two Table 3
# ablations, the three configs at once on the one GPU, each in its own folder under $OUT. At LIMIT
# seconds (default 500) the runs get SIGTERM: finished cells are stored, a cell still training is
# lost with the machine. Then one report of the three stores with the dense seed-0 cell this
# folder already holds (results-gpu.sqlite). Back here: copy $OUT's stores beside
# results-gpu.sqlite and rebuild the report (README.md). NO_INSTALL=1 and DEVICE=cpu try the
# script's flow on the CPU machine.
set -u
OUT=${OUT:-/tmp/recshrink-out}
LIMIT=${LIMIT:-500}
DEVICE=${DEVICE:-cuda}
HERE=reports/fidelity-gowalla-legcf
if [ -z "${NO_INSTALL:-}" ]; then
    pip install --quiet --no-index --no-deps .device/wheels/*.whl || exit 1
fi
export RECSHRINK_DATA=${RECSHRINK_DATA:-.device/datasets} RECSHRINK_CACHE=${RECSHRINK_CACHE:-/tmp/recshrink-cache}
export PYTHONUNBUFFERED=1
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
mkdir -p "$OUT"
pids=""
for variant in "" -no-update -random-init; do
    name=legcf$variant
    # seed 0 only, and LEGCF only: the dense d = 128 cell is already in results-gpu.sqlite
    sed -e 's/^seeds = .*/seeds = [0]/' -e '/^\[methods.lightgcn\]/d' \
        "bench/configs/fidelity-gowalla-legcf$variant.toml" > "/tmp/$name.toml"
    timeout -s TERM "$LIMIT" python3 -m bench.cli run "/tmp/$name.toml" --out "/tmp/$name" \
        --device "$DEVICE" --threads 2 --no-progress > "$OUT/$name.log" 2>&1 &
    pids="$pids $!"
done
# where each cell stands shortly before the limit (a cell stopped by it leaves no other trace)
( sleep $((LIMIT - 15)); python3 -m bench.cli status /tmp/legcf /tmp/legcf-no-update /tmp/legcf-random-init \
    > "$OUT/status.txt" 2>&1 ) &
for pid in $pids; do wait "$pid"; done
for variant in "" -no-update -random-init; do
    [ -f "/tmp/legcf$variant/results.sqlite" ] && cp "/tmp/legcf$variant/results.sqlite" "$OUT/results-gpu-legcf$variant.sqlite"
done
tail -n 3 "$OUT"/*.log
cat "$OUT/status.txt" 2>/dev/null && cat "$OUT/status.txt" >> "$OUT/legcf.log" && rm "$OUT/status.txt"
# at most 8 files come back: 3 logs, 3 stores, the report's summary and claims
python3 -m bench.cli report "$HERE/results-gpu.sqlite" "$OUT"/results-gpu-legcf*.sqlite -o /tmp/report \
    && cp /tmp/report/summary.md /tmp/report/claims.csv "$OUT/"
