#!/usr/bin/env bash
# The GPU check of flashneck's CUDA backend (docs/cuda.md), run from the folder that
# `cargo xtask gpu-bundle` writes. Needs a CUDA 13 driver, compute-sanitizer and python3 with
# torch; no Rust. Every step has its own time limit: 90 + 30 + 40 + 60 + 60 + 125 + 45 + 45 =
# 495 s in all (575 s with each step's 10 s kill grace), plus a 15 s Vulkan probe, inside a 600 s
# device command; the benches pace themselves (--time-budget) to end before their limits, so their
# reports are always written.
#
# Output: the device tool brings back at most 8 files from $OUT, so the logs and reports go to a
# work folder, packed into $OUT/all.tgz after every step (a killed run still leaves them), and
# the end copies the 7 files people read into $OUT: gpu_check.json, side_by_side.json,
# steps.tsv, summary.txt (what is printed last), results_cuda.json, results_wgpu.json,
# report_cuda.md. It prints a short table last.
# Without $OUT (a local run) everything stays in ./out next to this script. With
# FLASHNECK_GPU_STEPS=name,name only those steps run (the others are recorded as not-run).
# Steps: conformance model model-sparse memcheck racecheck bench wgpu-tests bench-wgpu, and
# profile (Nsight Compute on the hot kernels, 150 s), which runs only when named.
set -u
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ -n "${OUT:-}" ]; then
    WORK="$HERE/work"
    rm -rf "$WORK"
else
    OUT="$HERE/out"
    WORK="$OUT"
fi
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1
START=$(date +%s)
# The copy of the tree that travels may not keep execute bits.
chmod +x "$HERE"/conformance_cuda "$HERE"/conformance_wgpu "$HERE"/direct_wgpu \
    "$HERE"/flashneck-bench "$HERE"/model-train 2>/dev/null
# Which commit the bundle was built from (the tree copied to the device has no .git): the
# benches record it, and so does gpu_check.json.
FLASHNECK_COMMIT=$(sed -n 's/^commit=//p' "$HERE/BUNDLE_INFO" 2>/dev/null)
export FLASHNECK_COMMIT="${FLASHNECK_COMMIT:-unknown}"
# The kernels' cubins, compiled for sm_90 by `cargo xtask gpu-bundle`; the backend compiles what
# is missing, once for all the processes below.
export FLASHNECK_CUBIN_DIR="$HERE/cubins"
mkdir -p "$FLASHNECK_CUBIN_DIR"

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

STEPS="$WORK/steps.tsv"
: > "$STEPS"
# Pack the work folder into $OUT/all.tgz (when it is not $OUT itself).
pack() {
    [ "$WORK" != "$OUT" ] && tar -czf "$OUT/all.tgz" -C "$WORK" . 2>/dev/null
    return 0
}
# step NAME LIMIT_S COMMAND... : run with a time limit, log to $WORK/NAME.log, record the
# outcome. With CLASSIFY set to a function name, that function may restate the outcome from the
# log (called as CLASSIFY STATUS LOG; prints the status).
CLASSIFY=""
# FLASHNECK_GPU_STEPS=a,b runs only the steps named (a rerun of what failed, in the time left);
# the others are recorded as not-run.
ONLY="${FLASHNECK_GPU_STEPS:-}"
wanted() {
    [ -z "$ONLY" ] && return 0
    case ",$ONLY," in *",$1,"*) return 0 ;; *) return 1 ;; esac
}
step() {
    local name=$1 limit=$2; shift 2
    if ! wanted "$name"; then
        printf '%s\tnot-run\t-\t0\n' "$name" >> "$STEPS"
        return
    fi
    local t0=$(date +%s)
    echo "=== $name (limit ${limit}s): $*"
    timeout --kill-after=10 "$limit" "$@" > "$WORK/$name.log" 2>&1
    local rc=$?
    local dt=$(( $(date +%s) - t0 ))
    local status=pass
    [ $rc -ne 0 ] && status=fail
    [ $rc -eq 124 ] || [ $rc -eq 137 ] && status=timeout
    [ -n "$CLASSIFY" ] && status=$("$CLASSIFY" "$status" "$WORK/$name.log")
    tail -n 15 "$WORK/$name.log"
    printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$dt" >> "$STEPS"
    pack
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$WORK/device.txt" 2>&1
cp "$HERE/BUNDLE_INFO" "$WORK/" 2>/dev/null

# 1. Conformance, every op and dtype the backend claims; a missing driver fails. Every launch is
#    waited for (FLASHNECK_CUDA_SYNC), so that a fault names its kernel.
step conformance 90 env FLASHNECK_REQUIRE_CUDA=1 FLASHNECK_CUDA_SYNC=1 "$HERE/conformance_cuda" \
    --test-threads=8

# 1b. The model crate trains on the device through the CUDA backend (every op family's forward
#     and backward composed): dense attention to 90% held-out accuracy (97% on the CPU with this
#     seed), then block-sparse attention with Re-ttention on 256-token sequences to 75% (91% on
#     the CPU; chance is 50%). The host matmuls dominate: ~4 s and ~15 s on a 2-core CPU.
if [ -x "$HERE/model-train" ]; then
    step model 30 "$HERE/model-train" --backend cuda --d-model 128 --steps 400 --min-accuracy 0.9
    step model-sparse 40 "$HERE/model-train" --backend cuda --d-model 64 --heads-q 1 --heads-kv 1 \
        --attention sparse --rettention --len 256 --mark-span 64 --batch 16 --steps 200 \
        --min-accuracy 0.75
else
    printf 'model\tmissing\t-\t0\n' >> "$STEPS"
fi

# 2. compute-sanitizer over a subset (one launch path of every kernel family), on the small suite:
#    the sanitizers slow kernels 10-100x, racecheck most on shared memory, so it runs fewer tests
#    (the same kernels: every family, forward and backward, sparse and dense attention).
SANITIZER=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
MEMCHECK_TESTS="grkan::backward_matches_oracle grkan::forward_matches_oracle gumbel::forward_matches_oracle gumbel::backward_matches_oracle gumbel::large_k_and_one_row gumbel::noise_matches_philox attention::forward_matches_oracle attention::backward_matches_oracle attention::fully_masked_rows sparse::epilogue_matches_oracle sparse::random_layouts_backward sparse::block_topk_matches_oracle"
RACECHECK_TESTS="grkan::backward_matches_oracle gumbel::forward_matches_oracle gumbel::backward_matches_oracle attention::forward_matches_oracle sparse::random_layouts_backward sparse::block_topk_matches_oracle"
# A sanitizer that does not support the device (it happens in sandboxed containers) is reported,
# not failed; a filter that runs no test, or fewer than asked, fails.
sanitizer_outcome() {
    local status=$1 log=$2
    if grep -q "Device not supported" "$log"; then
        echo unsupported
    elif [ "$status" = pass ] && ! grep -q "^running $EXPECT tests" "$log"; then
        echo wrong-tests
    else
        echo "$status"
    fi
}
CLASSIFY=sanitizer_outcome
for tool in memcheck racecheck; do
    if [ "$tool" = memcheck ]; then TESTS=$MEMCHECK_TESTS; else TESTS=$RACECHECK_TESTS; fi
    EXPECT=$(echo $TESTS | wc -w)
    if [ -x "$SANITIZER" ]; then
        step $tool 60 env FLASHNECK_REQUIRE_CUDA=1 FLASHNECK_CONFORMANCE=small "$SANITIZER" \
            --tool $tool --error-exitcode 1 --print-limit 20 "$HERE/conformance_cuda" \
            --test-threads=1 $TESTS
    else
        printf '%s\tmissing\t-\t0\n' "$tool" >> "$STEPS"
    fi
done
CLASSIFY=""

# 3. The benches at the standard sizes (copy bandwidth, bf16 GEMM, the PyTorch peers, all in this
#    run; --full does not fit the limit), CUDA first.
if [ -x "$HERE/flashneck-bench" ]; then
    step bench 125 "$HERE/flashneck-bench" --backend cuda --standard --time-budget 107 --out "$WORK/bench"
else
    printf 'bench\tmissing\t-\t0\n' >> "$STEPS"
fi

# 4. The wgpu backend on the same GPU through Vulkan: its conformance suite and direct tests
#    (which must find a GPU adapter, not a CPU driver), then issue 5's comparison with the CUDA
#    kernels (GR-KAN, Gumbel-Softmax forward and backward, attention forward). The bundle carries
#    the Vulkan loader; NVIDIA's Vulkan driver comes with the container's driver libraries when
#    it has them.
ICD=""
# The device machine mounts the driver (Vulkan's manifest with it) under /usr/local/nvidia.
for f in /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json \
         /usr/share/vulkan/icd.d/nvidia_icd.json /etc/vulkan/icd.d/nvidia_icd.json \
         /usr/share/vulkan/icd.d/nvidia_icd.x86_64.json; do
    [ -f "$f" ] && { ICD="$f"; break; }
done
if [ -z "$ICD" ]; then
    # No manifest: write one for the driver's Vulkan library if the container has it.
    GLX=$(ldconfig -p 2>/dev/null | awk '/libGLX_nvidia.so.0/ {print $NF; exit}')
    for g in /usr/local/nvidia/lib64/libGLX_nvidia.so.0 /usr/local/nvidia/lib/libGLX_nvidia.so.0; do
        [ -z "$GLX" ] && [ -f "$g" ] && GLX="$g"
    done
    if [ -n "$GLX" ]; then
        ICD="$WORK/nvidia_icd.json"
        printf '{"file_format_version":"1.0.0","ICD":{"library_path":"%s","api_version":"1.3.0"}}\n' \
            "$GLX" > "$ICD"
    fi
fi
# wgpu_tests: both wgpu test executables, the second only if the first passes.
wgpu_tests() {
    "$HERE/conformance_wgpu" --test-threads=4 && "$HERE/direct_wgpu" --test-threads=4
}
# A manifest is not a driver: probe for a Vulkan adapter with one direct test, which prints
# `wgpu adapter: ...` once it has opened one. That line, not the test's outcome, decides: a test
# that fails on a real adapter is a wgpu failure for the steps below, not a missing driver.
VULKAN=""
if [ -n "$ICD" ] && [ -x "$HERE/direct_wgpu" ] && { wanted wgpu-tests || wanted bench-wgpu; }; then
    # Older loaders read VK_ICD_FILENAMES, newer ones VK_DRIVER_FILES.
    export VK_ICD_FILENAMES="$ICD" VK_DRIVER_FILES="$ICD"
    # The manifest names the driver library by its bare name: the driver's folder goes on the
    # search path too.
    WGPU_LD="$HERE/vulkan:/usr/local/nvidia/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    timeout --kill-after=5 15 env LD_LIBRARY_PATH="$WGPU_LD" "$HERE/direct_wgpu" --exact \
        --nocapture every_shader_fits_the_adapter_workgroup_memory > "$WORK/vulkan-probe.log" 2>&1
    grep -q "wgpu adapter:" "$WORK/vulkan-probe.log" && VULKAN=yes
fi
if [ -n "$VULKAN" ]; then
    echo "Vulkan driver manifest: $ICD" > "$WORK/vulkan.txt"
    grep -m1 "wgpu adapter" "$WORK/vulkan-probe.log" >> "$WORK/vulkan.txt"
    if [ -x "$HERE/conformance_wgpu" ]; then
        export -f wgpu_tests
        export HERE
        step wgpu-tests 45 env FLASHNECK_WGPU_REQUIRE_GPU=1 LD_LIBRARY_PATH="$WGPU_LD" \
            bash -c wgpu_tests
    else
        printf 'wgpu-tests\tmissing\t-\t0\n' >> "$STEPS"
    fi
    if [ -x "$HERE/flashneck-bench" ]; then
        step bench-wgpu 45 env LD_LIBRARY_PATH="$WGPU_LD" \
            "$HERE/flashneck-bench" --backend wgpu --standard --time-budget 34 --no-peer \
            --op grkan,gumbel_softmax,attention_forward --out "$WORK/bench-wgpu"
    else
        printf 'bench-wgpu\tmissing\t-\t0\n' >> "$STEPS"
    fi
else
    if [ -z "$ICD" ]; then
        why="no ICD manifest, no libGLX_nvidia.so.0"
    elif [ ! -x "$HERE/direct_wgpu" ]; then
        why="the bundle has no direct_wgpu to probe with"
    else
        why="manifest $ICD, but no adapter (see vulkan-probe.log)"
    fi
    echo "no NVIDIA Vulkan driver in this container ($why)" > "$WORK/vulkan.txt"
    unset VK_ICD_FILENAMES VK_DRIVER_FILES
    printf 'wgpu-tests\tno-vulkan\t-\t0\n' >> "$STEPS"
    printf 'bench-wgpu\tno-vulkan\t-\t0\n' >> "$STEPS"
fi

# 5. Opt-in, for a second call in the time left (FLASHNECK_GPU_STEPS=profile; the default run
#    skips it): Nsight Compute's speed-of-light, occupancy, launch and memory sections for the
#    first launches of each hot kernel, taken from one short bench run per op, so that a kernel
#    far under its ceiling says why (shared-memory bound, occupancy, latency, ...). The text
#    goes to profile.log (in all.tgz).
NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
PROFILED="attention_forward:f16:attention_forward_f16_ attention_forward:f32:attention_forward_f32_
attention_backward:bf16:attn_bwd_ grkan_forward:f32:grkan_forward_ grkan_backward:bf16:grkan_backward_
gumbel_softmax_forward:f32:gumbel_forward_"
profile_kernels() {
    local spec op dtype prefix rc=0
    for spec in $PROFILED; do
        IFS=: read -r op dtype prefix <<< "$spec"
        echo "--- ncu: $op $dtype (kernels named $prefix*)"
        "$NCU" --kernel-name-base function --kernel-name "regex:^$prefix" --launch-count 3 \
            --section SpeedOfLight --section Occupancy --section LaunchStats \
            --section MemoryWorkloadAnalysis \
            "$HERE/flashneck-bench" --backend cuda --standard --op "$op" --dtype "$dtype" \
            --no-peer --quiet --time-budget 4 --out "$WORK/profile-bench" || rc=1
    done
    return $rc
}
if [ -n "$ONLY" ] && wanted profile; then
    if [ -x "$NCU" ] && [ -x "$HERE/flashneck-bench" ]; then
        export -f profile_kernels
        export HERE WORK NCU PROFILED
        step profile 150 bash -c profile_kernels
    else
        printf 'profile\tmissing\t-\t0\n' >> "$STEPS"
    fi
fi

# JSON summary, the side-by-side wgpu/CUDA figures, the bench report's head and the table of
# steps, last.
python3 - "$WORK" "$START" "$FLASHNECK_COMMIT" <<'PY'
import json, os, sys, time
out, start, commit = sys.argv[1], int(sys.argv[2]), sys.argv[3]
# A step that could not run for want of something the container lacks (NVIDIA's Vulkan driver,
# a sanitizer that supports the device) is reported but does not fail the check; everything
# else must pass.
NOT_A_FAILURE = {"no-vulkan", "unsupported", "not-run"}
steps = []
for line in open(os.path.join(out, "steps.tsv")):
    name, status, rc, secs = line.rstrip("\n").split("\t")
    steps.append({"step": name, "status": status, "exit_code": rc, "seconds": int(secs)})
device = open(os.path.join(out, "device.txt")).read().strip()

def cases(path):
    """(median seconds, share of the compute ceiling or None) of every case that ran, by
    (op, dtype, problem label)."""
    try:
        res = json.load(open(path))
    except (OSError, ValueError):
        return {}
    got = {}
    for b in res.get("backends", []):
        for c in b.get("cases", []):
            t = c.get("time") or {}
            if c.get("status") == "ok" and t.get("median_s"):
                case = c["case"]
                got[(case["op"], case["dtype"], label(case["problem"]))] = (
                    t["median_s"], c.get("fraction_of_gemm"))
    return got

def label(p):
    return json.dumps(p, sort_keys=True)

# Issue 5: wgpu's throughput over CUDA's on the same problem (GR-KAN and Gumbel-Softmax, same
# dtype), and wgpu's f32 attention forward over CUDA's f16 one (the issue's target), also over
# CUDA's f32 one (the comparison the issue note proposes: no tensor cores on either side).
# Each entry also carries wgpu's share of its own compute ceiling, the f32 FMA peak measured in
# the same run: how far the WGSL kernel is from what the API lets it reach.
cuda = cases(os.path.join(out, "bench", "results.json"))
wgpu = cases(os.path.join(out, "bench-wgpu", "results.json"))
side = []
for (op, dt, prob), (t_wgpu, fma_share) in sorted(wgpu.items()):
    if op == "attention_forward":
        refs = ["f16", "f32"] if dt == "f32" else []
    else:
        refs = [dt]
    for ref_dt in refs:
        t_cuda = cuda.get((op, ref_dt, prob), (None,))[0]
        if t_cuda:
            side.append({"op": op, "wgpu_dtype": dt, "cuda_dtype": ref_dt,
                         "problem": json.loads(prob), "wgpu_s": t_wgpu, "cuda_s": t_cuda,
                         "wgpu_share_of_cuda": t_cuda / t_wgpu,
                         "wgpu_share_of_f32_fma_peak": fma_share})
json.dump(side, open(os.path.join(out, "side_by_side.json"), "w"), indent=2)

summary = {
    "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "commit": commit,
    "device": device,
    "total_seconds": int(time.time()) - start,
    "steps": steps,
    "passed": all(s["status"] == "pass" or s["status"] in NOT_A_FAILURE for s in steps),
}
json.dump(summary, open(os.path.join(out, "gpu_check.json"), "w"), indent=2)
# What is printed last is also kept as summary.txt (docs/results/ takes it as it is).
text = open(os.path.join(out, "summary.txt"), "w")
def print(*args):
    line = " ".join(str(a) for a in args)
    sys.stdout.write(line + "\n")
    text.write(line + "\n")
print(f"commit {commit}, {summary['date_utc']}")
report = os.path.join(out, "bench", "report.md")
if os.path.exists(report):
    print("--- bench report (head) ---")
    print("".join(open(report).readlines()[:40]))
if side:
    print("--- wgpu throughput as a share of CUDA's (and of wgpu's f32 FMA peak), same GPU, "
          "same run ---")
    for r in side:
        prob = " ".join(f"{k}={v}" for k, v in r["problem"].items() if k != "family")
        fma = r["wgpu_share_of_f32_fma_peak"]
        fma = f"{100 * fma:5.1f}% FMA" if fma is not None else "    - FMA"
        print(f"{r['op']:<24} wgpu {r['wgpu_dtype']:<4} vs cuda {r['cuda_dtype']:<4} {prob:<44}"
              f" {100 * r['wgpu_share_of_cuda']:6.1f}%  {fma}")
print(f"--- GPU check on {device}, {summary['total_seconds']} s ---")
print(f"| {'step':<12} | {'status':<11} | {'s':>4} |")
for s in steps:
    print(f"| {s['step']:<12} | {s['status']:<11} | {s['seconds']:>4} |")
print("passed" if summary["passed"] else "FAILED")
text.close()
sys.exit(0 if summary["passed"] else 1)
PY
RC=$?
# The files people read, beside all.tgz (at most 8 files come back from $OUT).
if [ "$WORK" != "$OUT" ]; then
    for f in gpu_check.json side_by_side.json steps.tsv summary.txt; do
        [ -f "$WORK/$f" ] && cp "$WORK/$f" "$OUT/$f"
    done
    [ -f "$WORK/bench/results.json" ] && cp "$WORK/bench/results.json" "$OUT/results_cuda.json"
    [ -f "$WORK/bench/report.md" ] && cp "$WORK/bench/report.md" "$OUT/report_cuda.md"
    [ -f "$WORK/bench-wgpu/results.json" ] && cp "$WORK/bench-wgpu/results.json" "$OUT/results_wgpu.json"
    pack
fi
exit $RC
