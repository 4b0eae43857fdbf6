#!/usr/bin/env bash
# The GPU measurement of the Hopper paths, one process per comparison (about 10 minutes on one
# H100 at 64K; `--quick`: 16K, a few minutes): each forced variant, the automatic choice
# (descriptor forward, pointer backward on Hopper), the persistent grid, the row statistics. Run from the repository root on the GPU machine:
#
#     bash bench/gpu_run.sh            # or: bash bench/gpu_run.sh --quick
#
# Writes bench/results/hopper_<name>_<card>.json (card: h100, h200 or gpu; copied to $OUT when
# set), then prints the targets table (bench/targets.py). Each step runs under its own time limit,
# so one slow step cannot eat the others.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=. PYTHONUNBUFFERED=1
LENGTH=(--lengths 65536)
LIMIT=150
if [[ "${1:-}" == "--quick" ]]; then
    LENGTH=(--quick)
    LIMIT=90
fi
RESULTS=bench/results
run() {  # name, time limit (s), command...
    local name=$1 limit=$2
    shift 2
    echo "=== $name"
    timeout "$limit" "$@" || echo "=== $name stopped (exit $?)"
}
python3 -c 'import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name())'
CARD=$(python3 -c 'import torch; n = torch.cuda.get_device_name(); print("h200" if "H200" in n else "h100" if "H100" in n else "gpu")')
run compile_check 120 python3 bench/compile_check.py --out "$RESULTS/hopper_compile_check_$CARD.json"
run config_check 150 python3 bench/config_check.py --lengths 4096 --warp-specialised \
    --layouts random_10pct causal_dense --out "$RESULTS/hopper_config_check_$CARD.json"
run pointers "$LIMIT" python3 bench/attention.py "${LENGTH[@]}" --no-extras \
    --loads pointers --grid tiles --out "$RESULTS/hopper_pointers_$CARD.json"
run descriptors "$LIMIT" python3 bench/attention.py "${LENGTH[@]}" --no-extras \
    --loads descriptors --grid tiles --out "$RESULTS/hopper_descriptors_$CARD.json"
run auto "$LIMIT" python3 bench/attention.py "${LENGTH[@]}" --no-extras \
    --out "$RESULTS/hopper_auto_$CARD.json"
run persistent 100 python3 bench/attention.py "${LENGTH[@]}" --no-extras --forward-only \
    --layouts random_10pct sink_window top_p_xattention \
    --loads descriptors --grid persistent --out "$RESULTS/hopper_persistent_$CARD.json"
run row_stats "$LIMIT" python3 bench/attention.py "${LENGTH[@]}" --layouts \
    --budgets exact bracket --out "$RESULTS/hopper_row_stats_$CARD.json"
if [[ -n "${OUT:-}" ]]; then
    cp "$RESULTS"/hopper_*_"$CARD".json "$OUT"/ 2>/dev/null
fi
python3 bench/targets.py "$RESULTS"/hopper_{pointers,descriptors,auto,persistent,row_stats}_"$CARD".json
