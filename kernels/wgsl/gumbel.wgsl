// Gumbel-Softmax (SPEC §4) with counter-based Philox4x32-10 noise.
//
// Forward and backward give one workgroup to each row: threads stride over the row's K
// elements, and the row max, sum and argmax are reduced in workgroup memory. Rows of at most
// 64 elements take the `_rows` entry points instead: one thread per row. The noise of flat
// element n depends only on (seed, offset, n), so any thread may draw any element's noise; the
// unit of drawing is the quad, flat elements 4c .. 4c + 3, which share one Philox call (so a
// thread walks the quads overlapping its row and skips the lanes of the rows around it).
// Flat indices fit in 32 bits: a storage binding holds fewer than 2^32 bytes (host-checked).

struct Params {
    rows: u32,
    classes: u32,
    seed_lo: u32,
    seed_hi: u32,
    offset_lo: u32,
    offset_hi: u32,
    hard: u32,       // 1: y is the one-hot argmax
    inv_tau: f32,
    elements: u32,   // gumbel_noise: elements to draw
}

const WG: u32 = 64u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<elem>;
// Forward: y. Backward: dlogits. Noise: g (an f32 pipeline, so elem = f32).
@group(0) @binding(2) var<storage, read_write> out: array<elem>;
// Forward: y_soft, and the f32 work row of the passes before it (the host binds a scratch
// buffer when the caller wants no y_soft), so that `out` is only written once, rounded.
@group(0) @binding(3) var<storage, read_write> y_soft: array<f32>;
@group(0) @binding(4) var<storage, read> y_soft_in: array<f32>;
@group(0) @binding(5) var<storage, read> dy: array<elem>;
// philox_words: counter (4 words) and key (2 words) in, 4 words out.
@group(0) @binding(6) var<storage, read_write> words: array<u32>;

// `Lane`, `red`, reduce_max and reduce_sum come from reduce.wgsl (or reduce_subgroup.wgsl);
// reduce_argmax, a workgroup tree in both variants, also needs indices.
var<workgroup> red_idx: array<u32, WG>;

// The high half of the 64-bit product a · b, from 16-bit limbs (WGSL has no 64-bit integers
// and no mulhi): Hacker's Delight's mulhu, whose partial sums never overflow 32 bits. The
// Philox rounds call it with constant a, so its limbs fold away.
fn mul_hi(a: u32, b: u32) -> u32 {
    let al = a & 0xffffu;
    let ah = a >> 16u;
    let bl = b & 0xffffu;
    let bh = b >> 16u;
    let t = ah * bl + ((al * bl) >> 16u);
    let u = al * bh + (t & 0xffffu);
    return ah * bh + (t >> 16u) + (u >> 16u);
}

// Philox4x32 with 10 rounds (Random123): multipliers 0xD2511F53, 0xCD9E8D57; key bumps
// 0x9E3779B9, 0xBB67AE85. The low half of each product is WGSL's wrapping u32 product.
fn philox4x32_10(counter: vec4<u32>, key: vec2<u32>) -> vec4<u32> {
    var c = counter;
    var k = key;
    for (var round = 0u; round < 10u; round++) {
        if (round > 0u) {
            k += vec2<u32>(0x9E3779B9u, 0xBB67AE85u);
        }
        let hi0 = mul_hi(0xD2511F53u, c.x);
        let lo0 = 0xD2511F53u * c.x;
        let hi1 = mul_hi(0xCD9E8D57u, c.z);
        let lo1 = 0xCD9E8D57u * c.z;
        c = vec4<u32>(hi1 ^ c.y ^ k.x, lo1, hi0 ^ c.w ^ k.y, lo0);
    }
    return c;
}

// −ln(1 − t) for t in (0, 1), accurate in relative terms near t = 0 where ln(u) of u = 1 − t
// is not (GPU ln has an absolute error bound near 1). WGSL has no log1p: for t <= 1/2 use
// −ln(1 − t) = 2 atanh(z), z = t / (2 − t) <= 1/3, as an odd series to z^17.
fn neg_log1p_neg(t: f32) -> f32 {
    if (t > 0.5) {
        return -log(1.0 - t);
    }
    let z = t / (2.0 - t);
    let z2 = z * z;
    var s = 1.0 / 17.0;
    s = s * z2 + 1.0 / 15.0;
    s = s * z2 + 1.0 / 13.0;
    s = s * z2 + 1.0 / 11.0;
    s = s * z2 + 1.0 / 9.0;
    s = s * z2 + 1.0 / 7.0;
    s = s * z2 + 1.0 / 5.0;
    s = s * z2 + 1.0 / 3.0;
    s = s * z2 + 1.0;
    return 2.0 * z * s;
}

// The four Philox words of quad c (SPEC §4): flat elements 4c .. 4c + 3 take lanes 0 .. 3 of
// the call for counter c, so the kernels draw a quad's words once and use all four.
fn quad_words(c: u32) -> vec4<u32> {
    return philox4x32_10(vec4<u32>(c, 0u, p.offset_lo, p.offset_hi),
                         vec2<u32>(p.seed_lo, p.seed_hi));
}

// Gumbel noise from one Philox word (SPEC §4).
fn noise_from_word(x: u32) -> f32 {
    let u = (f32(x >> 9u) + 0.5) * (1.0 / 8388608.0);
    let e = neg_log1p_neg(1.0 - u);
    return -log(e);
}

// The index of the largest value; ties go to the lowest index.
fn reduce_argmax(lid: u32, v: f32, i: u32) -> u32 {
    red[lid] = v;
    red_idx[lid] = i;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            let ov = red[lid + s];
            let oi = red_idx[lid + s];
            if (ov > red[lid] || (ov == red[lid] && oi < red_idx[lid])) {
                red[lid] = ov;
                red_idx[lid] = oi;
            }
        }
        workgroupBarrier();
    }
    let r = red_idx[0];
    workgroupBarrier();
    return r;
}

// The row passes, over the row's elements k0, k0 + stride, ... < K of the row at flat `base`
// (the noise pass: over its quads; the passes that write `out`: over its pairs, below): the
// workgroup entry points stride by WG from their thread, the `_rows` ones walk the whole row
// (k0 = 0, stride = 1). Each returns this thread's part of what the next step reduces.

// The number of quads that overlap the row at `base` (the first is quad base / 4).
fn row_quads(base: u32) -> u32 {
    return (base + p.classes + 3u) / 4u - base / 4u;
}

// Forward pass 1, by quads (one Philox call each; lanes outside the row are the neighbouring
// rows'): s = logits + g, kept in `y_soft` (f32) until the last pass; the max.
fn perturb(base: u32, j0: u32, stride: u32) -> f32 {
    var m = -3.4028235e38;
    let end = base + p.classes;
    for (var j = j0; j < row_quads(base); j += stride) {
        let c = base / 4u + j;
        let w = quad_words(c);
        for (var lane = 0u; lane < 4u; lane++) {
            let e = 4u * c + lane;
            if (e >= base && e < end) {
                let s = logits_ld(e) + noise_from_word(w[lane]);
                y_soft[e] = s;
                m = max(m, s);
            }
        }
    }
    return m;
}

// Forward pass 2: e = exp((s − max) / tau) (the max is subtracted first, as on the CPU); Σ e.
fn exponentiate(base: u32, k0: u32, stride: u32, m: f32) -> f32 {
    var sum = 0.0;
    for (var k = k0; k < p.classes; k += stride) {
        let e = exp((y_soft[base + k] - m) * p.inv_tau);
        y_soft[base + k] = e;
        sum += e;
    }
    return sum;
}

// The passes that write `out` walk the row by pairs of elements at even flat indices (one word
// of packed bf16): pair j of the row at `base` starts at flat index `e`; `first` and `second`
// say which of its two elements are in the row (the others belong to the rows around it, which
// other threads write: `out_stp` stores only this row's).
struct Pair {
    e: u32,
    first: bool,
    second: bool,
}

fn row_pairs(base: u32) -> u32 {
    return ((base + p.classes + 1u) >> 1u) - (base >> 1u);
}

fn row_pair(base: u32, j: u32) -> Pair {
    let e = (base & ~1u) + 2u * j;
    return Pair(e, e >= base, e + 1u < base + p.classes);
}

// The largest normalised value seen and its index (0xffffffff when none).
struct Best {
    value: f32,
    index: u32,
}

// Forward pass 3 at flat element e: normalise (y_soft), track the argmax for the hard sample.
fn normalise_at(e: u32, base: u32, inv_sum: f32, best: ptr<function, Best>) -> f32 {
    let ys = y_soft[e] * inv_sum;
    y_soft[e] = ys;
    if (ys > (*best).value) {
        *best = Best(ys, e - base);
    }
    return ys;
}

// Forward pass 3: normalise (y_soft, and y rounded), each thread in increasing index order.
fn normalise(base: u32, k0: u32, stride: u32, inv_sum: f32) -> Best {
    var best = Best(-1.0, 0xffffffffu);
    for (var j = k0; j < row_pairs(base); j += stride) {
        let q = row_pair(base, j);
        var y0 = 0.0;
        var y1 = 0.0;
        if (q.first) {
            y0 = normalise_at(q.e, base, inv_sum, &best);
        }
        if (q.second) {
            y1 = normalise_at(q.e + 1u, base, inv_sum, &best);
        }
        out_stp(q.e, q.first, q.second, y0, y1);
    }
    return best;
}

// Hard forward: y = one_hot(arg).
fn write_one_hot(base: u32, k0: u32, stride: u32, arg: u32) {
    let hot = base + arg;
    for (var j = k0; j < row_pairs(base); j += stride) {
        let q = row_pair(base, j);
        out_stp(q.e, q.first, q.second, select(0.0, 1.0, q.e == hot),
                select(0.0, 1.0, q.e + 1u == hot));
    }
}

// Backward pass 1: Σ y_soft · dy.
fn dot_y_soft_dy(base: u32, k0: u32, stride: u32) -> f32 {
    var dot = 0.0;
    for (var k = k0; k < p.classes; k += stride) {
        dot += y_soft_in[base + k] * dy_ld(base + k);
    }
    return dot;
}

// Backward pass 2 at flat element e: dlogits = y_soft (dy − dot) / tau.
fn dlogits_at(e: u32, dot: f32) -> f32 {
    return p.inv_tau * y_soft_in[e] * (dy_ld(e) - dot);
}

// Backward pass 2, by pairs.
fn write_dlogits(base: u32, k0: u32, stride: u32, dot: f32) {
    for (var j = k0; j < row_pairs(base); j += stride) {
        let q = row_pair(base, j);
        var d0 = 0.0;
        var d1 = 0.0;
        if (q.first) {
            d0 = dlogits_at(q.e, dot);
        }
        if (q.second) {
            d1 = dlogits_at(q.e + 1u, dot);
        }
        out_stp(q.e, q.first, q.second, d0, d1);
    }
}

@compute @workgroup_size(64)
fn gumbel_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  lane: Lane) {
    let lid = lane.lid;
    let row = flat_workgroup(wg, nwg);
    if (row >= p.rows) {
        return;
    }
    let base = row * p.classes;
    let m = reduce_max(lane, perturb(base, lid, WG));
    let inv_sum = 1.0 / reduce_sum(lane, exponentiate(base, lid, WG, m));
    let best = normalise(base, lid, WG, inv_sum);
    if (p.hard == 1u) {
        write_one_hot(base, lid, WG, reduce_argmax(lid, best.value, best.index));
    }
}

@compute @workgroup_size(64)
fn gumbel_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   lane: Lane) {
    let lid = lane.lid;
    let row = flat_workgroup(wg, nwg);
    if (row >= p.rows) {
        return;
    }
    let base = row * p.classes;
    write_dlogits(base, lid, WG, reduce_sum(lane, dot_y_soft_dy(base, lid, WG)));
}

// Short rows (K <= 64, host's choice): one thread per row, no workgroup reductions, so that
// 64 rows share a workgroup instead of 64 threads sharing one short row.
@compute @workgroup_size(64)
fn gumbel_forward_rows(@builtin(workgroup_id) wg: vec3<u32>,
                       @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
    let row = flat_workgroup(wg, nwg) * WG + lid;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.classes;
    let m = perturb(base, 0u, 1u);
    let inv_sum = 1.0 / exponentiate(base, 0u, 1u, m);
    let best = normalise(base, 0u, 1u, inv_sum);
    if (p.hard == 1u) {
        write_one_hot(base, 0u, 1u, best.index);
    }
}

@compute @workgroup_size(64)
fn gumbel_backward_rows(@builtin(workgroup_id) wg: vec3<u32>,
                        @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_index) lid: u32) {
    let row = flat_workgroup(wg, nwg) * WG + lid;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.classes;
    write_dlogits(base, 0u, 1u, dot_y_soft_dy(base, 0u, 1u));
}

// One thread per quad.
@compute @workgroup_size(64)
fn gumbel_noise(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let c = flat_workgroup(wg, nwg) * WG + lid;
    if (4u * c >= p.elements) {
        return;
    }
    let w = quad_words(c);
    for (var lane = 0u; lane < 4u; lane++) {
        let n = 4u * c + lane;
        if (n < p.elements) {
            out_st(n, noise_from_word(w[lane]));
        }
    }
}

// The raw Philox words for one counter and key (tests compare them with SPEC's known answers).
@compute @workgroup_size(1)
fn philox_words() {
    let w = philox4x32_10(vec4<u32>(words[0], words[1], words[2], words[3]),
                          vec2<u32>(words[4], words[5]));
    words[6] = w.x;
    words[7] = w.y;
    words[8] = w.z;
    words[9] = w.w;
}
