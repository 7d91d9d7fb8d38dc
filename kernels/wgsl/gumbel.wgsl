// Gumbel-Softmax (SPEC §4) with counter-based Philox4x32-10 noise.
//
// Forward and backward give TPR threads to each row (a power of two, fixed per pipeline by the
// host: the fewest whose registers hold the row at any alignment, up to a whole workgroup of 64
// threads, or 256 for the longer rows, from 1023 classes), so a workgroup of WG threads takes
// WG / TPR rows, and
// the rows' max, sum and argmax are reduced among their TPR threads in workgroup memory.
//
// Work unit: the quad, flat elements 4c .. 4c + 3, which share one Philox call (SPEC §4: the
// noise of flat element n is lane n % 4 of the call for counter n / 4). A thread walks the
// quads that overlap its row (quad j0, j0 + TPR, ...; lanes of the rows around it are
// skipped), draws each quad's words once, and keeps its first CACHE quads in registers; only
// the rest of a long row goes through an f32 row in memory (binding 3). So rows of up to 4094
// classes (and of 4096) read logits once, draw the noise once and write y (and y_soft if asked
// for) once. Stores go by pairs of elements (a quad is two words of
// packed bf16), so only pairs cut by a row boundary need the atomic lone-element store.
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
    write_soft: u32, // forward: 1 if the caller wants y_soft in binding 3
}

// Threads per workgroup, set by the host per pipeline: 64, or 256 for the rows longer than 64
// threads hold in registers (reduce.wgsl's scratch array is sized by it too).
override WG: u32 = 64u;
// Threads per row, set by the host per pipeline: a power of two dividing WG.
override TPR: u32 = 64u;
// Quads of its row a thread keeps in registers (the host's `CACHED_QUADS`).
const CACHE: u32 = 4u;
// Below every finite value: the max of no elements, and the lanes of a quad outside the row.
const LOWEST: f32 = -3.4028235e38;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<elem>;
// Forward: y. Backward: dlogits. Noise: g (an f32 pipeline, so elem = f32).
@group(0) @binding(2) var<storage, read_write> out: array<elem>;
// Forward: y_soft (when p.write_soft), and the f32 row of the quads past each thread's CACHE
// before that (the host binds a scratch buffer when the caller wants no y_soft and the rows are
// longer than the registers hold; a one-word one when nothing is stored here).
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

// Max (is_max) or sum of v over the TPR threads of this thread's row: reduce.wgsl's (or
// reduce_subgroup.wgsl's) workgroup reductions when a row has the whole workgroup, else a tree
// within each row's slots of `red`. All threads get their row's result.
fn row_reduce(lane: Lane, v: f32, is_max: bool) -> f32 {
    // A row of one thread (K <= 13) is reduced already: no barrier (TPR is uniform).
    if (TPR == 1u) {
        return v;
    }
    if (TPR == WG) {
        if (is_max) {
            return reduce_max(lane, v);
        }
        return reduce_sum(lane, v);
    }
    let lid = lane.lid;
    red[lid] = v;
    workgroupBarrier();
    for (var s = TPR / 2u; s > 0u; s >>= 1u) {
        if (lid % TPR < s) {
            let o = red[lid + s];
            red[lid] = select(red[lid] + o, max(red[lid], o), is_max);
        }
        workgroupBarrier();
    }
    let r = red[lid - lid % TPR];
    workgroupBarrier();
    return r;
}

// The index of the largest value among the TPR threads of this thread's row; ties go to the
// lowest index.
fn reduce_argmax(lid: u32, v: f32, i: u32) -> u32 {
    if (TPR == 1u) {
        return i;
    }
    red[lid] = v;
    red_idx[lid] = i;
    workgroupBarrier();
    for (var s = TPR / 2u; s > 0u; s >>= 1u) {
        if (lid % TPR < s) {
            let ov = red[lid + s];
            let oi = red_idx[lid + s];
            if (ov > red[lid] || (ov == red[lid] && oi < red_idx[lid])) {
                red[lid] = ov;
                red_idx[lid] = oi;
            }
        }
        workgroupBarrier();
    }
    let r = red_idx[lid - lid % TPR];
    workgroupBarrier();
    return r;
}

// ---------------------------------------------------------------- row passes

// The number of quads that overlap the row at `base` (the first is quad base / 4).
fn row_quads(base: u32) -> u32 {
    return (base + p.classes + 3u) / 4u - base / 4u;
}

// Whether flat element e belongs to the row at `base`.
fn in_row(e: u32, base: u32) -> bool {
    return e >= base && e < base + p.classes;
}

// s = logits + g of quad c's elements in the row at `base` (LOWEST in the other lanes).
fn perturb_quad(c: u32, base: u32) -> vec4<f32> {
    let w = quad_words(c);
    var s = vec4<f32>(LOWEST);
    for (var lane = 0u; lane < 4u; lane++) {
        let e = 4u * c + lane;
        if (in_row(e, base)) {
            s[lane] = logits_ld(e) + noise_from_word(w[lane]);
        }
    }
    return s;
}

// Quad c's values in the f32 row of binding 3 (LOWEST outside the row).
fn row_quad(c: u32, base: u32) -> vec4<f32> {
    var s = vec4<f32>(LOWEST);
    for (var lane = 0u; lane < 4u; lane++) {
        let e = 4u * c + lane;
        if (in_row(e, base)) {
            s[lane] = y_soft[e];
        }
    }
    return s;
}

fn max4(s: vec4<f32>) -> f32 {
    return max(max(s.x, s.y), max(s.z, s.w));
}

// Σ exp((s − max) / tau) over quad c's elements in the row (the max subtracted first, as on
// the CPU).
fn exp_sum_quad(s: vec4<f32>, c: u32, base: u32, m: f32) -> f32 {
    var sum = 0.0;
    for (var lane = 0u; lane < 4u; lane++) {
        if (in_row(4u * c + lane, base)) {
            sum += exp((s[lane] - m) * p.inv_tau);
        }
    }
    return sum;
}

// The largest normalised value seen and its index in the row (0xffffffff when none).
struct Best {
    value: f32,
    index: u32,
}

// The row's softmax: its max and 1 / Σ exp((s − max) / tau).
struct Softmax {
    m: f32,
    inv_sum: f32,
}

// Store quad c's values of the row at `base` as two pairs of `out`.
fn store_quad(c: u32, base: u32, y: vec4<f32>) {
    let e = 4u * c;
    out_stp(e, in_row(e, base), in_row(e + 1u, base), y.x, y.y);
    out_stp(e + 2u, in_row(e + 2u, base), in_row(e + 3u, base), y.z, y.w);
}

// y_soft = exp((s − max) / tau) / sum for quad c's elements in the row: stored in y_soft when
// asked for, and (rounded) in `out` unless the sample is hard (the one-hot pass writes `out`
// then, once); the argmax tracked in `best` (elements in increasing order).
fn normalise_quad(s: vec4<f32>, c: u32, base: u32, sm: Softmax, best: ptr<function, Best>) {
    var y = vec4<f32>(0.0);
    for (var lane = 0u; lane < 4u; lane++) {
        let e = 4u * c + lane;
        if (in_row(e, base)) {
            let ys = exp((s[lane] - sm.m) * p.inv_tau) * sm.inv_sum;
            y[lane] = ys;
            if (p.write_soft == 1u) {
                y_soft[e] = ys;
            }
            if (ys > (*best).value) {
                *best = Best(ys, e - base);
            }
        }
    }
    if (p.hard == 0u) {
        store_quad(c, base, y);
    }
}

// Forward pass 1: s = logits + g for this thread's quads (the first CACHE into `cache`, the
// rest into the f32 row); this thread's max.
fn perturb(base: u32, j0: u32, stride: u32, cache: ptr<function, array<vec4<f32>, CACHE>>) -> f32 {
    let nq = row_quads(base);
    var m = LOWEST;
    for (var i = 0u; i < CACHE; i++) {
        let j = j0 + i * stride;
        if (j < nq) {
            (*cache)[i] = perturb_quad(base / 4u + j, base);
            m = max(m, max4((*cache)[i]));
        }
    }
    for (var j = j0 + CACHE * stride; j < nq; j += stride) {
        let c = base / 4u + j;
        let s = perturb_quad(c, base);
        for (var lane = 0u; lane < 4u; lane++) {
            if (in_row(4u * c + lane, base)) {
                y_soft[4u * c + lane] = s[lane];
            }
        }
        m = max(m, max4(s));
    }
    return m;
}

// Forward pass 2: this thread's part of Σ exp((s − max) / tau).
fn exp_sum(base: u32, j0: u32, stride: u32, m: f32,
           cache: ptr<function, array<vec4<f32>, CACHE>>) -> f32 {
    let nq = row_quads(base);
    var sum = 0.0;
    for (var i = 0u; i < CACHE; i++) {
        let j = j0 + i * stride;
        if (j < nq) {
            sum += exp_sum_quad((*cache)[i], base / 4u + j, base, m);
        }
    }
    for (var j = j0 + CACHE * stride; j < nq; j += stride) {
        let c = base / 4u + j;
        sum += exp_sum_quad(row_quad(c, base), c, base, m);
    }
    return sum;
}

// Forward pass 3: normalise, store y (soft samples) and y_soft (when asked for); this thread's
// argmax for the hard sample.
fn normalise(base: u32, j0: u32, stride: u32, sm: Softmax,
             cache: ptr<function, array<vec4<f32>, CACHE>>) -> Best {
    let nq = row_quads(base);
    var best = Best(-1.0, 0xffffffffu);
    for (var i = 0u; i < CACHE; i++) {
        let j = j0 + i * stride;
        if (j < nq) {
            normalise_quad((*cache)[i], base / 4u + j, base, sm, &best);
        }
    }
    for (var j = j0 + CACHE * stride; j < nq; j += stride) {
        let c = base / 4u + j;
        normalise_quad(row_quad(c, base), c, base, sm, &best);
    }
    return best;
}

// Hard forward: y = one_hot(arg), by quads.
fn write_one_hot(base: u32, j0: u32, stride: u32, arg: u32) {
    let hot = vec4<u32>(base + arg);
    for (var j = j0; j < row_quads(base); j += stride) {
        let c = base / 4u + j;
        let e = vec4<u32>(4u * c) + vec4<u32>(0u, 1u, 2u, 3u);
        store_quad(c, base, select(vec4<f32>(0.0), vec4<f32>(1.0), e == hot));
    }
}

// Backward: quad c's y_soft and dy (0 outside the row).
struct Grad {
    ys: vec4<f32>,
    dy: vec4<f32>,
}

fn grad_quad(c: u32, base: u32) -> Grad {
    var g = Grad(vec4<f32>(0.0), vec4<f32>(0.0));
    for (var lane = 0u; lane < 4u; lane++) {
        let e = 4u * c + lane;
        if (in_row(e, base)) {
            g.ys[lane] = y_soft_in[e];
            g.dy[lane] = dy_ld(e);
        }
    }
    return g;
}

// Σ y_soft · dy over quad c's elements in the row.
fn dot_quad(g: Grad, c: u32, base: u32) -> f32 {
    var dot = 0.0;
    for (var lane = 0u; lane < 4u; lane++) {
        if (in_row(4u * c + lane, base)) {
            dot += g.ys[lane] * g.dy[lane];
        }
    }
    return dot;
}

// dlogits = y_soft (dy − dot) / tau for quad c's elements in the row.
fn dlogits_quad(g: Grad, c: u32, base: u32, dot: f32) {
    store_quad(c, base, p.inv_tau * g.ys * (g.dy - vec4<f32>(dot)));
}

// Backward pass 1: this thread's part of Σ y_soft · dy (its first CACHE quads kept).
fn dot_y_soft_dy(base: u32, j0: u32, stride: u32, cache: ptr<function, array<Grad, CACHE>>) -> f32 {
    let nq = row_quads(base);
    var dot = 0.0;
    for (var i = 0u; i < CACHE; i++) {
        let j = j0 + i * stride;
        if (j < nq) {
            (*cache)[i] = grad_quad(base / 4u + j, base);
            dot += dot_quad((*cache)[i], base / 4u + j, base);
        }
    }
    for (var j = j0 + CACHE * stride; j < nq; j += stride) {
        let c = base / 4u + j;
        dot += dot_quad(grad_quad(c, base), c, base);
    }
    return dot;
}

// Backward pass 2: dlogits = y_soft (dy − dot) / tau.
fn write_dlogits(base: u32, j0: u32, stride: u32, dot: f32,
                 cache: ptr<function, array<Grad, CACHE>>) {
    let nq = row_quads(base);
    for (var i = 0u; i < CACHE; i++) {
        let j = j0 + i * stride;
        if (j < nq) {
            dlogits_quad((*cache)[i], base / 4u + j, base, dot);
        }
    }
    for (var j = j0 + CACHE * stride; j < nq; j += stride) {
        let c = base / 4u + j;
        dlogits_quad(grad_quad(c, base), c, base, dot);
    }
}

// ---------------------------------------------------------------- entry points

// Row `row` of the grid for thread lid (rows past p.rows are not valid: their threads skip the
// work but still take part in the barriers).
fn grid_row(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return flat_workgroup(wg, nwg) * (WG / TPR) + lid / TPR;
}

@compute @workgroup_size(WG)
fn gumbel_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  lane: Lane) {
    let lid = lane.lid;
    let row = grid_row(wg, nwg, lid);
    let valid = row < p.rows;
    let base = row * p.classes;
    let j0 = lid % TPR;
    var cache: array<vec4<f32>, CACHE>;
    var own = LOWEST;
    if (valid) {
        own = perturb(base, j0, TPR, &cache);
    }
    let m = row_reduce(lane, own, true);
    own = 0.0;
    if (valid) {
        own = exp_sum(base, j0, TPR, m, &cache);
    }
    let sum = row_reduce(lane, own, false);
    var best = Best(-1.0, 0xffffffffu);
    if (valid) {
        best = normalise(base, j0, TPR, Softmax(m, 1.0 / sum), &cache);
    }
    if (p.hard == 1u) {
        let arg = reduce_argmax(lid, best.value, best.index);
        if (valid) {
            write_one_hot(base, j0, TPR, arg);
        }
    }
}

@compute @workgroup_size(WG)
fn gumbel_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   lane: Lane) {
    let lid = lane.lid;
    let row = grid_row(wg, nwg, lid);
    let valid = row < p.rows;
    let base = row * p.classes;
    let j0 = lid % TPR;
    var cache: array<Grad, CACHE>;
    var own = 0.0;
    if (valid) {
        own = dot_y_soft_dy(base, j0, TPR, &cache);
    }
    let dot = row_reduce(lane, own, false);
    if (valid) {
        write_dlogits(base, j0, TPR, dot, &cache);
    }
}

// One thread per quad.
@compute @workgroup_size(WG)
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
