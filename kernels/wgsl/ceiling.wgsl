// The device's f32 compute ceiling, for the bench (WgpuBackend::fma_peak_tflops): fused
// multiply-adds on registers only, nothing read from memory in the loop, so the rate is the
// one the shader cores can issue. The attention kernels compute in f32 on every storage type,
// so this (not a tensor-core GEMM, which WGSL cannot reach) is the roof they run under.
//
// Each thread runs 8 independent chains of vec4 FMAs (32 scalar chains): enough independent
// work per thread to cover the FMA latency even at low occupancy. The multiplier and addend
// come from the uniform, so the compiler cannot fold the chains, and every thread stores its
// sum, so it cannot drop them. The host passes m = c = 1 and every chain starts at an integer:
// each chain then counts its trips exactly (integers below 2^24), so the stored sums tell the
// host how many trips really ran.

struct Params {
    iterations: u32,   // loop trips; each makes 8 vec4 FMAs = 64 FLOP per thread
    threads: u32,      // threads launched that store (the sink's length)
    m: f32,            // multiplier (1)
    c: f32,            // addend (1)
}

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> sink: array<f32>;

@compute @workgroup_size(256)
fn fma_peak(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) t: u32) {
    let thread = flat_workgroup(wg, nwg) * WG + t;
    let m = vec4<f32>(p.m);
    let c = vec4<f32>(p.c);
    // Distinct integer starting values per thread and chain: (thread % 1024) + 4 chain + lane.
    let x = f32(thread & 1023u);
    var a0 = vec4<f32>(x, x + 1.0, x + 2.0, x + 3.0);
    var a1 = a0 + 4.0;
    var a2 = a0 + 8.0;
    var a3 = a0 + 12.0;
    var a4 = a0 + 16.0;
    var a5 = a0 + 20.0;
    var a6 = a0 + 24.0;
    var a7 = a0 + 28.0;
    for (var i = 0u; i < p.iterations; i++) {
        a0 = fma(a0, m, c);
        a1 = fma(a1, m, c);
        a2 = fma(a2, m, c);
        a3 = fma(a3, m, c);
        a4 = fma(a4, m, c);
        a5 = fma(a5, m, c);
        a6 = fma(a6, m, c);
        a7 = fma(a7, m, c);
    }
    if (thread < p.threads) {
        let s = ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7));
        sink[thread] = (s.x + s.y) + (s.z + s.w);
    }
}
