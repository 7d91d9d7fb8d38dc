// Group-Rational KAN (SPEC §3): y = P(x) / Q(x), P(x) = Σ a_i x^i, Q(x) = 1 + Σ |b_j| |x|^j.
//
// Tiling (forward and backward alike, as in the CUDA kernels): workgroup w owns the tile of
// `rows_per_tile` rows starting at row (w / groups) · rows_per_tile, and of those rows only
// group g = w % groups's columns. So every thread loads that group's coefficients once, into
// registers, and walks the tile with no division per element. The degrees M and N are
// pipeline-overridable constants (the host builds one pipeline per (M, N)): after
// specialisation every loop over the coefficients has a fixed trip count, so the driver can
// unroll it and keep the coefficient arrays in registers, and Horner runs over exactly the
// call's coefficients.
//
// Threads own pairs of elements at even flat indices (one word of packed bf16, so a pair is
// stored at once). A group's columns of a row may start or end mid-pair; such a pair is shared
// with the neighbouring group's workgroup (or, with odd C, the next row's), and each stores only
// its own element (`out_stp`).
// The columns of one row overlap at most group_width / 2 + 1 pairs: the tile's "slots" are
// (row, pair) for those, walked by the threads in order.
//
// Backward (FlashKAT): pass 1 (`grkan_backward_partials`) also accumulates the coefficient
// gradients (da, db) per thread, reduces them over the workgroup (reduce.wgsl or
// reduce_subgroup.wgsl, a fixed pattern) into one partial per tile; pass 2
// (`grkan_backward_reduce`) sums the partials of each coefficient over the tiles in tile order.
// No floating atomics: the result is bitwise reproducible.

struct Params {
    rows: u32,
    channels: u32,
    group_width: u32,
    groups: u32,
    num_degree: u32,    // M: a has M + 1 coefficients per group (= NUM_DEGREE)
    den_degree: u32,    // N: b has N coefficients per group (= DEN_DEGREE)
    elements: u32,      // rows * channels
    rows_per_tile: u32,
    tiles: u32,         // ceil(rows / rows_per_tile)
}

// M and N, set by the host per pipeline (the defaults are KAT's).
override NUM_DEGREE: u32 = 5u;
override DEN_DEGREE: u32 = 4u;

const WG: u32 = 256u;
// M + 1 <= 8 numerator and N <= 7 denominator coefficients per group (host-checked).
const MAX_A: u32 = 8u;
const MAX_B: u32 = 7u;
const MAX_COEFS: u32 = 15u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<elem>;
@group(0) @binding(2) var<storage, read> a: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;
@group(0) @binding(4) var<storage, read> dy: array<elem>;
// y (forward) or dx (backward).
@group(0) @binding(5) var<storage, read_write> out: array<elem>;
// [tiles, groups, (M + 1) + N] per-tile sums of the coefficient gradients.
@group(0) @binding(6) var<storage, read_write> partials: array<f32>;
@group(0) @binding(7) var<storage, read_write> da: array<f32>;
@group(0) @binding(8) var<storage, read_write> db: array<f32>;

fn sgn(v: f32) -> f32 {
    return select(1.0, -1.0, v < 0.0);
}

// One group's coefficients: a_0 .. a_M, and |b_j|, sgn(b_j) for j = 1 .. N at index j - 1.
struct Coefs {
    a: array<f32, MAX_A>,
    babs: array<f32, MAX_B>,
    bsgn: array<f32, MAX_B>,
}

fn load_coefs(g: u32) -> Coefs {
    var c: Coefs;
    for (var i = 0u; i <= NUM_DEGREE; i++) {
        c.a[i] = a[g * (NUM_DEGREE + 1u) + i];
    }
    for (var j = 0u; j < DEN_DEGREE; j++) {
        let v = b[g * DEN_DEGREE + j];
        c.babs[j] = abs(v);
        c.bsgn[j] = sgn(v);
    }
    return c;
}

// P, P', the denominator's sum S = Σ |b_j| |x|^j (Q = 1 + S) and S' = Σ j |b_j| |x|^(j-1).
struct Rational {
    num: f32,
    dnum: f32,
    q: f32,
    dq_abs: f32,
}

fn rational(c: ptr<function, Coefs>, xv: f32) -> Rational {
    // Horner for P and P'.
    var num = (*c).a[NUM_DEGREE];
    var dnum = 0.0;
    for (var i = NUM_DEGREE; i > 0u; i--) {
        dnum = dnum * xv + num;
        num = num * xv + (*c).a[i - 1u];
    }
    // Horner in |x| for S and S'.
    let ax = abs(xv);
    var s = 0.0;
    var ds = 0.0;
    for (var j = DEN_DEGREE; j > 0u; j--) {
        ds = ds * ax + s;
        s = s * ax + (*c).babs[j - 1u];
    }
    // Now s = Σ_{j>=1} |b_j| |x|^(j-1) and ds its derivative in |x| shifted by one power:
    // S = s · |x|, S' = d(s · |x|)/d|x| = s + |x| · ds.
    return Rational(num, dnum, 1.0 + s * ax, s + ax * ds);
}

// A workgroup's tile: its group, first row and row count, and the slot count per row.
struct Tile {
    g: u32,
    row0: u32,
    rows: u32,
    slots: u32,
}

fn tile_of(w: u32) -> Tile {
    let row0 = (w / p.groups) * p.rows_per_tile;
    return Tile(w % p.groups, row0, min(p.rows, row0 + p.rows_per_tile) - row0,
                p.group_width / 2u + 1u);
}

// A thread's place in the tile's slots (row, pair), advanced by WG slots at a time with no
// division: `step_rows` rows and `step_slots` slots, carrying into the row.
struct Walk {
    row: u32,
    slot: u32,
    step_rows: u32,
    step_slots: u32,
}

fn walk_start(t: Tile, lid: u32) -> Walk {
    return Walk(lid / t.slots, lid % t.slots, WG / t.slots, WG % t.slots);
}

fn walk_next(w: ptr<function, Walk>, t: Tile) {
    (*w).row += (*w).step_rows;
    (*w).slot += (*w).step_slots;
    if ((*w).slot >= t.slots) {
        (*w).slot -= t.slots;
        (*w).row += 1u;
    }
}

// The pair a slot stands for: its first flat index (even), and which of its two elements are
// the group's columns of that row.
struct Pair {
    e: u32,
    first: bool,
    second: bool,
}

fn pair_of(t: Tile, w: Walk) -> Pair {
    let start = (t.row0 + w.row) * p.channels + t.g * p.group_width;
    let end = start + p.group_width;
    let e = (start & ~1u) + 2u * w.slot;
    let first = (e >= start) && (e < end);
    let second = (e + 1u >= start) && (e + 1u < end);
    return Pair(e, first, second);
}

@compute @workgroup_size(256)
fn grkan_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let w = flat_workgroup(wg, nwg);
    if (w >= p.tiles * p.groups) {
        return;
    }
    let t = tile_of(w);
    var c = load_coefs(t.g);
    for (var s = walk_start(t, lid); s.row < t.rows; walk_next(&s, t)) {
        let q = pair_of(t, s);
        var y0 = 0.0;
        var y1 = 0.0;
        if (q.first) {
            let r = rational(&c, x_ld(q.e));
            y0 = r.num / r.q;
        }
        if (q.second) {
            let r = rational(&c, x_ld(q.e + 1u));
            y1 = r.num / r.q;
        }
        out_stp(q.e, q.first, q.second, y0, y1);
    }
}

// The backward at flat element e: returns dx, adds the element's terms to the coefficient
// gradients in acc.
fn backward_at(e: u32, c: ptr<function, Coefs>, acc: ptr<function, array<f32, MAX_COEFS>>) -> f32 {
    let xv = x_ld(e);
    let g_out = dy_ld(e);
    let r = rational(c, xv);
    let inv_q = 1.0 / r.q;
    let dq = sgn(xv) * r.dq_abs;
    // da_i += dy · x^i / Q
    var xi = 1.0;
    for (var i = 0u; i <= NUM_DEGREE; i++) {
        (*acc)[i] += g_out * xi * inv_q;
        xi *= xv;
    }
    // db_j += −dy · P/Q² · sgn(b_j) · |x|^j
    let db_common = -g_out * r.num * inv_q * inv_q;
    let ax = abs(xv);
    var axj = ax;
    for (var j = 1u; j <= DEN_DEGREE; j++) {
        (*acc)[NUM_DEGREE + j] += db_common * (*c).bsgn[j - 1u] * axj;
        axj *= ax;
    }
    return g_out * (r.dnum * inv_q - r.num * dq * inv_q * inv_q);
}

@compute @workgroup_size(256)
fn grkan_backward_partials(@builtin(workgroup_id) wg: vec3<u32>,
                           @builtin(num_workgroups) nwg: vec3<u32>,
                           lane: Lane) {
    let lid = lane.lid;
    let w = flat_workgroup(wg, nwg);
    if (w >= p.tiles * p.groups) {
        return;
    }
    let t = tile_of(w);
    var c = load_coefs(t.g);
    var acc: array<f32, MAX_COEFS>;
    for (var k = 0u; k < MAX_COEFS; k++) {
        acc[k] = 0.0;
    }
    for (var s = walk_start(t, lid); s.row < t.rows; walk_next(&s, t)) {
        let q = pair_of(t, s);
        var d0 = 0.0;
        var d1 = 0.0;
        if (q.first) {
            d0 = backward_at(q.e, &c, &acc);
        }
        if (q.second) {
            d1 = backward_at(q.e + 1u, &c, &acc);
        }
        out_stp(q.e, q.first, q.second, d0, d1);
    }
    // Reduce each coefficient over the workgroup (reduce.wgsl or reduce_subgroup.wgsl), in a
    // fixed pattern.
    let ncoef = NUM_DEGREE + 1u + DEN_DEGREE;
    for (var k = 0u; k < ncoef; k++) {
        let total = reduce_sum(lane, acc[k]);
        if (lid == 0u) {
            partials[w * ncoef + k] = total;
        }
    }
}

@compute @workgroup_size(256)
fn grkan_backward_reduce(@builtin(workgroup_id) wg: vec3<u32>,
                         @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_index) lid: u32) {
    let m = p.num_degree;
    let n = p.den_degree;
    let ncoef = m + 1u + n;
    let i = flat_workgroup(wg, nwg) * WG + lid;
    if (i >= p.groups * ncoef) {
        return;
    }
    let g = i / ncoef;
    let k = i % ncoef;
    var sum = 0.0;
    for (var t = 0u; t < p.tiles; t++) {
        sum += partials[(t * p.groups + g) * ncoef + k];
    }
    if (k <= m) {
        da[g * (m + 1u) + k] = sum;
    } else {
        db[g * n + k - m - 1u] = sum;
    }
}
