// Group-Rational KAN (SPEC §3): y = P(x) / Q(x), P(x) = Σ a_i x^i, Q(x) = 1 + Σ |b_j| |x|^j.
//
// Forward: one thread per pair of elements (2e, 2e + 1). Backward: pass 1
// (`grkan_backward_partials`) gives each workgroup a tile of `rows_per_tile` rows of one group;
// it writes dx and reduces the tile's coefficient gradients (da, db) in workgroup memory into
// one partial per tile. Pass 2 (`grkan_backward_reduce`) sums the partials of each coefficient
// over the tiles in tile order. No floating atomics: the result is bitwise reproducible. The
// workgroup reduction is reduce.wgsl's.
//
// Threads own pairs of elements at even flat indices (one word of packed bf16, so a pair is
// stored at once); in the backward a group's columns of a row may start or end mid-pair, and
// such a pair is shared with the neighbouring group's workgroup: each stores only its own
// element (`out_stp`).

struct Params {
    rows: u32,
    channels: u32,
    group_width: u32,
    groups: u32,
    num_degree: u32,    // M: a has M + 1 coefficients per group
    den_degree: u32,    // N: b has N coefficients per group
    elements: u32,      // rows * channels
    rows_per_tile: u32, // backward pass 1
    tiles: u32,         // ceil(rows / rows_per_tile)
}

const WG: u32 = 256u;
// At most (M + 1) + N = 8 + 7 coefficients per group.
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

// P, P', the denominator's sum S = Σ |b_j| |x|^j (Q = 1 + S) and S' = Σ j |b_j| |x|^(j-1).
struct Rational {
    num: f32,
    dnum: f32,
    q: f32,
    dq_abs: f32,
}

fn rational(g: u32, xv: f32) -> Rational {
    let m = p.num_degree;
    let n = p.den_degree;
    let a0 = g * (m + 1u);
    // Horner for P and P'.
    var num = a[a0 + m];
    var dnum = 0.0;
    for (var i = m; i > 0u; i--) {
        dnum = dnum * xv + num;
        num = num * xv + a[a0 + i - 1u];
    }
    // Horner in |x| for S and S'.
    let ax = abs(xv);
    let b0 = g * n;
    var s = 0.0;
    var ds = 0.0;
    for (var j = n; j > 0u; j--) {
        ds = ds * ax + s;
        s = s * ax + abs(b[b0 + j - 1u]);
    }
    // Now s = Σ_{j>=1} |b_j| |x|^(j-1) and ds its derivative in |x| shifted by one power:
    // S = s · |x|, S' = d(s · |x|)/d|x| = s + |x| · ds.
    return Rational(num, dnum, 1.0 + s * ax, s + ax * ds);
}

fn sgn(v: f32) -> f32 {
    return select(1.0, -1.0, v < 0.0);
}

// y at flat element e.
fn forward_at(e: u32) -> f32 {
    let r = rational((e % p.channels) / p.group_width, x_ld(e));
    return r.num / r.q;
}

@compute @workgroup_size(256)
fn grkan_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let e = 2u * (flat_workgroup(wg, nwg) * WG + lid);
    if (e >= p.elements) {
        return;
    }
    if (e + 1u < p.elements) {
        out_st2(e, forward_at(e), forward_at(e + 1u));
    } else {
        out_st(e, forward_at(e));
    }
}

// The backward at flat element e of group g: returns dx, adds the element's terms to the
// coefficient gradients in acc.
fn backward_at(e: u32, g: u32, acc: ptr<function, array<f32, MAX_COEFS>>) -> f32 {
    let m = p.num_degree;
    let n = p.den_degree;
    let xv = x_ld(e);
    let g_out = dy_ld(e);
    let r = rational(g, xv);
    let inv_q = 1.0 / r.q;
    let dq = sgn(xv) * r.dq_abs;
    // da_i += dy · x^i / Q
    var xi = 1.0;
    for (var i = 0u; i <= m; i++) {
        (*acc)[i] += g_out * xi * inv_q;
        xi *= xv;
    }
    // db_j += −dy · P/Q² · sgn(b_j) · |x|^j
    let db_common = -g_out * r.num * inv_q * inv_q;
    let ax = abs(xv);
    var axj = ax;
    for (var j = 1u; j <= n; j++) {
        (*acc)[m + j] += db_common * sgn(b[g * n + j - 1u]) * axj;
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
    let g = w % p.groups;
    let tile = w / p.groups;
    let m = p.num_degree;
    let n = p.den_degree;
    let ncoef = m + 1u + n;
    let row0 = tile * p.rows_per_tile;
    let rows = min(p.rows, row0 + p.rows_per_tile) - row0;
    // A row's group_width elements from its start s overlap at most group_width / 2 + 1 pairs,
    // the first at s rounded down to even: each thread takes pair slots of the tile's rows.
    let slots = p.group_width / 2u + 1u;

    var acc: array<f32, MAX_COEFS>;
    for (var k = 0u; k < MAX_COEFS; k++) {
        acc[k] = 0.0;
    }
    for (var t = lid; t < rows * slots; t += WG) {
        let start = (row0 + t / slots) * p.channels + g * p.group_width;
        let end = start + p.group_width;
        let e = (start & ~1u) + 2u * (t % slots);
        let first = e >= start && e < end;
        let second = e + 1u >= start && e + 1u < end;
        var d0 = 0.0;
        var d1 = 0.0;
        if (first) {
            d0 = backward_at(e, g, &acc);
        }
        if (second) {
            d1 = backward_at(e + 1u, g, &acc);
        }
        out_stp(e, first, second, d0, d1);
    }
    // Reduce each coefficient over the workgroup (reduce.wgsl or reduce_subgroup.wgsl), in a
    // fixed pattern.
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
