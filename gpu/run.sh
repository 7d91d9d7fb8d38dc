#!/usr/bin/env bash
# The GPU check of flashneck's CUDA backend (docs/cuda.md), run from the folder that
# `cargo xtask gpu-bundle` writes. Needs a CUDA 13 driver, compute-sanitizer and python3 with
# torch; no Rust. Writes JSON and logs under $OUT (default: ./out next to this script) and prints a
# short table last. Every step has its own time limit: 100 + 70 + 70 + 200 = 440 s in all (480 s
# with each step's 10 s kill grace), well inside a 600 s device command.
set -u
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="${OUT:-$HERE/out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
START=$(date +%s)

# libnvrtc and libcublas of CUDA 13: python's nvidia wheels, then the toolkit.
LIBDIRS=$(python3 - <<'PY' 2>/dev/null
import glob, os
try:
    import nvidia
    for base in list(nvidia.__path__):
        for d in sorted(glob.glob(os.path.join(base, "*", "lib"))):
            print(d)
except Exception:
    pass
PY
)
for d in /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda/lib64 $LIBDIRS; do
    [ -d "$d" ] && LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
export LD_LIBRARY_PATH

STEPS="$OUT/steps.tsv"
: > "$STEPS"
# step NAME LIMIT_S COMMAND... : run with a time limit, log to $OUT/NAME.log, record the outcome.
step() {
    local name=$1 limit=$2; shift 2
    local t0=$(date +%s)
    echo "=== $name (limit ${limit}s): $*"
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    local dt=$(( $(date +%s) - t0 ))
    local status=pass
    [ $rc -ne 0 ] && status=fail
    [ $rc -eq 124 ] || [ $rc -eq 137 ] && status=timeout
    tail -n 15 "$OUT/$name.log"
    printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$dt" >> "$STEPS"
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/device.txt" 2>&1

# 1. Conformance, every op and dtype the backend claims; a missing driver fails.
step conformance 100 env FLASHNECK_REQUIRE_CUDA=1 "$HERE/conformance_cuda" --test-threads=4

# 2. compute-sanitizer over a subset (one launch path of every kernel family), on the small suite:
#    the sanitizers slow kernels 10-100x.
SUBSET="grkan::backward_matches_oracle grkan::forward_matches_oracle gumbel::forward_matches_oracle gumbel::backward_matches_oracle gumbel::large_k_and_one_row gumbel::noise_matches_philox"
step memcheck 70 env FLASHNECK_REQUIRE_CUDA=1 FLASHNECK_CONFORMANCE=small compute-sanitizer --tool memcheck --error-exitcode 1 \
    --print-limit 20 "$HERE/conformance_cuda" --test-threads=1 $SUBSET
step racecheck 70 env FLASHNECK_REQUIRE_CUDA=1 FLASHNECK_CONFORMANCE=small compute-sanitizer --tool racecheck --error-exitcode 1 \
    --print-limit 20 "$HERE/conformance_cuda" --test-threads=1 $SUBSET

# 3. The benches at the standard sizes (copy bandwidth, bf16 GEMM, the PyTorch peers, all in this
#    run; --full does not fit the limit).
if [ -x "$HERE/flashneck-bench" ]; then
    step bench 200 "$HERE/flashneck-bench" --backend cuda --standard --out "$OUT/bench"
else
    printf 'bench\tmissing\t-\t0\n' >> "$STEPS"
fi

# JSON summary, then the bench report's head and the table of steps, last.
python3 - "$OUT" "$START" <<'PY'
import json, os, sys, time
out, start = sys.argv[1], int(sys.argv[2])
steps = []
for line in open(os.path.join(out, "steps.tsv")):
    name, status, rc, secs = line.rstrip("\n").split("\t")
    steps.append({"step": name, "status": status, "exit_code": rc, "seconds": int(secs)})
device = open(os.path.join(out, "device.txt")).read().strip()
summary = {
    "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "device": device,
    "total_seconds": int(time.time()) - start,
    "steps": steps,
    "passed": all(s["status"] == "pass" for s in steps),
}
json.dump(summary, open(os.path.join(out, "gpu_check.json"), "w"), indent=2)
report = os.path.join(out, "bench", "report.md")
if os.path.exists(report):
    print("--- bench report (head) ---")
    print("".join(open(report).readlines()[:40]))
print(f"--- GPU check on {device}, {summary['total_seconds']} s ---")
print(f"| {'step':<11} | {'status':<8} | {'s':>4} |")
for s in steps:
    print(f"| {s['step']:<11} | {s['status']:<8} | {s['seconds']:>4} |")
PY
grep -qv "	pass	" "$STEPS" && exit 1
exit 0
