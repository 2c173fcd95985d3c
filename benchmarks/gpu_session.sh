#!/usr/bin/env bash
# Every GPU measurement of genlit's speed work in one run (about 9 minutes on one large GPU);
# each step has its own time limit, and its output goes to $OUT (default gpu_out/).
#   OUT=/some/folder bash benchmarks/gpu_session.sh
set -u
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
python -c "import torch; print(torch.cuda.get_device_name(0), torch.__version__)" > "$OUT/device.txt" 2>&1
step() {  # step NAME SECONDS COMMAND...: runs it, keeps its output and exit code
    local name=$1 limit=$2; shift 2
    timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
    echo "$name: exit $?" >> "$OUT/summary.txt"
}
step capture_check 120 python benchmarks/capture_check.py --device cuda --steps 12
step overhead 240 python benchmarks/overhead.py --device cuda --repeats 3 --steps 150
step profile 60 python benchmarks/overhead.py --device cuda --profile --models gan --steps 50
step many_runs 150 python benchmarks/many_runs.py --device cuda --repeats 1 --steps 200
cat "$OUT/summary.txt"
