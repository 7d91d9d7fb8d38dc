//! GR-KAN on the CPU (SPEC §3).
//!
//! `x [R, C]` is cut into tiles of whole rows (a fixed number of rows that depends only on `C`,
//! never on the thread count), processed in parallel by rayon. Each tile is a `Task` run
//! through the crate's runtime dispatch (`crate::simd`): on CPUs with AVX2+FMA the same source
//! is compiled with 8-lane vectors and fused multiply-adds, elsewhere as portable code. Rows are
//! walked in memory order; inside a row each group's channels are contiguous and the group's
//! coefficients are hoisted into a `Group`. KAT's default degrees `(5, 4)` get their own
//! instance with constant degrees (the loops unroll); other degrees share one instance with
//! runtime degrees.
//!
//! The forward is one elementwise loop per group, vectorised by LLVM. The backward works on
//! `[f32; L]` lane arrays in two passes per group row: the elementwise part (`dx` and the
//! weights `w = dy/Q`, `v = −dy·P/Q²`, kept in an L1 scratch row), then the accumulation of
//! `w·x^i` and `v·|x|^j` into per-lane accumulators of `da`, `db` (one set per group, kept
//! across the tile's rows), reduced to one f64 value per coefficient at the end of the tile. The
//! partials of all tiles are then summed tile 0, 1, 2, … in f64: bitwise reproducible regardless
//! of how many threads ran the tiles, and no atomics.

use crate::simd::{Isa, Task, madd};
use flashneck_core::params::MAX_KAN_DEGREE;
use flashneck_core::{Element, GrKanParams};
use rayon::prelude::*;

/// Lanes of the AVX2+FMA instance: one 256-bit register of f32.
const AVX2_LANES: usize = 8;
/// Lanes of the portable instance: one vector register of the compile target (4 on baseline
/// x86-64 SSE2, 8 with AVX, 16 with AVX-512), so that the backward's `M + N + 1` accumulators
/// and its temporaries fit in the register file.
const PORTABLE_LANES: usize = if cfg!(target_feature = "avx512f") {
    16
} else if cfg!(target_feature = "avx") {
    8
} else {
    4
};
/// Target elements per tile: small enough that a tile's `x`, `dy` and `dx` stay in L2.
const TILE_ELEMS: usize = 16 * 1024;

/// The coefficients of one group, hoisted out of the channel loops. `den` is the polynomial
/// `S(t) = Σ_{j=1..N} |b_j| t^j` as coefficients `[0, |b_1|, …, |b_N|]`, so that
/// `Q(x) = 1 + S(|x|)` and `Q'(x) = sgn(x) · S'(|x|)`.
#[derive(Clone, Copy)]
struct Group {
    num: [f32; MAX_KAN_DEGREE + 1],
    den: [f32; MAX_KAN_DEGREE + 1],
}

impl Group {
    fn new(p: &GrKanParams, a: &[f32], b: &[f32], g: usize) -> Group {
        let (m, n) = (p.num_degree, p.den_degree);
        let mut num = [0.0; MAX_KAN_DEGREE + 1];
        num[..=m].copy_from_slice(&a[g * (m + 1)..(g + 1) * (m + 1)]);
        let mut den = [0.0; MAX_KAN_DEGREE + 1];
        for j in 1..=n {
            den[j] = b[g * n + j - 1].abs();
        }
        Group { num, den }
    }

    fn all(p: &GrKanParams, a: &[f32], b: &[f32]) -> Vec<Group> {
        (0..p.groups).map(|g| Group::new(p, a, b, g)).collect()
    }
}

/// Rows per tile for `channels` channels (depends on the shape only, so results do not depend on
/// the thread count).
fn tile_rows(channels: usize) -> usize {
    (TILE_ELEMS / channels.max(1)).max(1)
}

/// Horner for the value and the derivative together, per lane.
#[inline(always)]
fn horner_d<const L: usize, const FMA: bool>(
    c: &[f32; MAX_KAN_DEGREE + 1],
    deg: usize,
    t: &[f32; L],
) -> ([f32; L], [f32; L]) {
    let mut v = [c[deg]; L];
    if deg == 0 {
        return (v, [0.0; L]);
    }
    // The first step by hand: the derivative starts at the leading coefficient.
    let mut d = v;
    for l in 0..L {
        v[l] = madd::<FMA>(v[l], t[l], c[deg - 1]);
    }
    for i in (0..deg - 1).rev() {
        let ci = c[i];
        for l in 0..L {
            d[l] = madd::<FMA>(d[l], t[l], v[l]);
            v[l] = madd::<FMA>(v[l], t[l], ci);
        }
    }
    (v, d)
}

/// The `L` elements of a full chunk as f32: one fixed-size copy (a vector load for f32).
#[inline(always)]
fn load<T: Element, const L: usize>(src: &[T]) -> [f32; L] {
    match <&[T; L]>::try_from(src) {
        Ok(full) => full.map(|v| v.to_f32()),
        Err(_) => load_partial(src),
    }
}

/// Store a full chunk of `L` elements as one fixed-size copy.
#[inline(always)]
fn store<T: Element, const L: usize>(dst: &mut [T], v: &[f32; L]) {
    match <&mut [T; L]>::try_from(&mut *dst) {
        Ok(full) => *full = v.map(T::from_f32),
        Err(_) => store_partial(dst, v),
    }
}

/// Load the ragged end of a group (fewer than `L` elements); missing lanes are 0.
#[inline(always)]
fn load_partial<T: Element, const L: usize>(src: &[T]) -> [f32; L] {
    let mut v = [0.0f32; L];
    for (d, s) in v.iter_mut().zip(src) {
        *d = s.to_f32();
    }
    v
}

/// Store the first `dst.len()` lanes of `v` (the ragged end of a group).
#[inline(always)]
fn store_partial<T: Element, const L: usize>(dst: &mut [T], v: &[f32; L]) {
    for (d, s) in dst.iter_mut().zip(v) {
        *d = T::from_f32(*s);
    }
}

/// `y = P(x) / Q(x)` for one element of a group (Horner on `x` and on `|x|`).
#[inline(always)]
fn rational<const FMA: bool>(g: &Group, m: usize, n: usize, x: f32) -> f32 {
    let ax = x.abs();
    let mut p = g.num[m];
    for &c in g.num[..m].iter().rev() {
        p = madd::<FMA>(p, x, c);
    }
    let mut s = g.den[n];
    for &c in g.den[..n].iter().rev() {
        s = madd::<FMA>(s, ax, c);
    }
    p / (1.0 + s)
}

/// Marks a runtime degree in [`degrees`].
const DYN: usize = usize::MAX;

/// The degrees a kernel instance runs with: the constants `M`, `N` (KAT's default `(5, 4)` has
/// its own instance, so that the Horner and accumulator loops unroll and the accumulators stay in
/// registers), or the runtime degrees of `p` when `M = DYN`.
#[inline(always)]
fn degrees<const M: usize, const N: usize>(p: &GrKanParams) -> (usize, usize) {
    if M == DYN {
        (p.num_degree, p.den_degree)
    } else {
        (M, N)
    }
}

/// Forward of one tile of whole rows. Each group's channels are one plain elementwise loop,
/// which LLVM's loop vectorizer turns into full-width vector code (8 lanes, unrolled, with a
/// scalar tail); elementwise, so the bits do not depend on how it is vectorized.
#[inline(always)]
fn forward_tile<T: Element, const M: usize, const N: usize, const FMA: bool>(
    p: &GrKanParams,
    groups: &[Group],
    x_tile: &[T],
    y_tile: &mut [T],
) {
    let (m, n) = degrees::<M, N>(p);
    let (c, width) = (p.channels, p.group_width());
    for (y_row, x_row) in y_tile.chunks_exact_mut(c).zip(x_tile.chunks_exact(c)) {
        for (g, (y_g, x_g)) in groups
            .iter()
            .zip(y_row.chunks_exact_mut(width).zip(x_row.chunks_exact(width)))
        {
            for (yo, xi) in y_g.iter_mut().zip(x_g) {
                *yo = T::from_f32(rational::<FMA>(g, m, n, xi.to_f32()));
            }
        }
    }
}

/// One forward tile as a dispatchable [`Task`].
struct ForwardTile<'a, T, const M: usize, const N: usize> {
    p: &'a GrKanParams,
    groups: &'a [Group],
    x: &'a [T],
    y: &'a mut [T],
}

impl<T: Element, const M: usize, const N: usize> Task for ForwardTile<'_, T, M, N> {
    #[inline(always)]
    fn run<const FMA: bool>(&mut self) {
        forward_tile::<T, M, N, FMA>(self.p, self.groups, self.x, self.y)
    }
}

/// Forward over all tiles with one kernel instance.
fn forward_with<T: Element, const M: usize, const N: usize>(
    p: &GrKanParams,
    groups: &[Group],
    x: &[T],
    y: &mut [T],
) {
    let isa = Isa::detect();
    let tile = tile_rows(p.channels) * p.channels;
    y.par_chunks_mut(tile)
        .zip(x.par_chunks(tile))
        .for_each(|(y, x)| isa.run(&mut ForwardTile::<T, M, N> { p, groups, x, y }));
}

/// Forward: `y = P(x) / Q(x)` (SPEC §3). Slices have the lengths `p` implies (checked by the
/// caller).
pub fn forward<T: Element>(p: &GrKanParams, x: &[T], a: &[f32], b: &[f32], y: &mut [T]) {
    let groups = Group::all(p, a, b);
    match (p.num_degree, p.den_degree) {
        (5, 4) => forward_with::<T, 5, 4>(p, &groups, x, y),
        _ => forward_with::<T, DYN, DYN>(p, &groups, x, y),
    }
}

/// Per-lane partial sums of one group's coefficient gradients inside one tile.
#[derive(Clone)]
struct GroupAcc<const L: usize> {
    /// `Σ dy · x^i / Q` for `i = 0..=M`.
    da: [[f32; L]; MAX_KAN_DEGREE + 1],
    /// `Σ −dy · P/Q² · |x|^j` for `j = 1..=N` (at index `j − 1`; `sgn(b_j)` is applied at the end).
    db: [[f32; L]; MAX_KAN_DEGREE],
}

/// The elementwise part of the backward for `L` channels: `dx`, and the weights
/// `w = dy / Q`, `v = −dy · P / Q²` of the coefficient gradients.
#[inline(always)]
fn backward_lanes<const L: usize, const FMA: bool>(
    g: &Group,
    (m, n): (usize, usize),
    x: &[f32; L],
    dy: &[f32; L],
) -> ([f32; L], [f32; L], [f32; L]) {
    let mut ax = [0.0f32; L];
    let mut sgn = [0.0f32; L];
    for l in 0..L {
        ax[l] = x[l].abs();
        // sgn(x) with sgn(±0) = +1 (SPEC §3).
        sgn[l] = if x[l] < 0.0 { -1.0 } else { 1.0 };
    }
    let (pv, pd) = horner_d::<L, FMA>(&g.num, m, x);
    let (sv, sd) = horner_d::<L, FMA>(&g.den, n, &ax);
    let mut w = [0.0f32; L];
    let mut v = [0.0f32; L];
    let mut dx = [0.0f32; L];
    for l in 0..L {
        let inv_q = 1.0 / (1.0 + sv[l]);
        w[l] = dy[l] * inv_q;
        v[l] = -w[l] * pv[l] * inv_q;
        // dy · (P'/Q − P·Q'/Q²) = w·P' + v·Q', with Q' = sgn(x)·S'(|x|).
        dx[l] = madd::<FMA>(w[l], pd[l], v[l] * sgn[l] * sd[l]);
    }
    (dx, w, v)
}

/// Add the gradient terms of `L` channels to the partials: `w · x^i` to `da_i`, `v · |x|^j`
/// to `db_j`.
#[inline(always)]
fn accumulate<const L: usize, const FMA: bool>(
    (m, n): (usize, usize),
    x: &[f32; L],
    w: &[f32; L],
    v: &[f32; L],
    acc: &mut GroupAcc<L>,
) {
    // x^j once; |x|^j is |x^j| (rounding is symmetric in the sign, so the bits are those of
    // repeated products of |x|).
    let mut pow = [[1.0f32; L]; MAX_KAN_DEGREE + 1];
    for j in 1..=m.max(n) {
        for l in 0..L {
            pow[j][l] = pow[j - 1][l] * x[l];
        }
    }
    for (da, pj) in acc.da[..=m].iter_mut().zip(&pow) {
        for l in 0..L {
            da[l] = madd::<FMA>(w[l], pj[l], da[l]);
        }
    }
    for (db, pj) in acc.db[..n].iter_mut().zip(&pow[1..]) {
        for l in 0..L {
            db[l] = madd::<FMA>(v[l], pj[l].abs(), db[l]);
        }
    }
}

/// Sum the lanes of `v` in a fixed order, in f64.
fn lane_sum(v: &[f32]) -> f64 {
    v.iter().map(|&e| e as f64).sum()
}

/// Fused backward of one tile of whole rows, `L` lanes at a time: writes `dx` and returns the
/// tile's partials, `[G, M+1]` then `[G, N]`, each summed over the tile's elements of its group.
#[inline(always)]
fn backward_tile<T: Element, const M: usize, const N: usize, const L: usize, const FMA: bool>(
    p: &GrKanParams,
    groups: &[Group],
    (x_tile, dy_tile): (&[T], &[T]),
    dx_tile: &mut [T],
) -> Vec<f64> {
    let (m, n) = degrees::<M, N>(p);
    let (c, width) = (p.channels, p.group_width());
    let a_len = groups.len() * (m + 1);
    // Rows in memory order (sequential streams for the prefetcher); each group keeps its own
    // per-lane accumulators, in L1, across the tile's rows.
    let zero = GroupAcc {
        da: [[0.0; L]; MAX_KAN_DEGREE + 1],
        db: [[0.0; L]; MAX_KAN_DEGREE],
    };
    let mut accs = vec![zero; groups.len()];
    let mut wv = vec![0.0f32; 2 * width];
    for ((dx_row, x_row), dy_row) in dx_tile
        .chunks_exact_mut(c)
        .zip(x_tile.chunks_exact(c))
        .zip(dy_tile.chunks_exact(c))
    {
        for ((g, acc), ((dx_g, x_g), dy_g)) in groups.iter().zip(accs.iter_mut()).zip(
            dx_row
                .chunks_exact_mut(width)
                .zip(x_row.chunks_exact(width))
                .zip(dy_row.chunks_exact(width)),
        ) {
            // Two passes over the group's channels: the elementwise part (long dependency
            // chains, no accumulators: many chunks in flight), keeping `w`, `v` in L1; then the
            // accumulation (short chains, the accumulators in registers). Full chunks in loops
            // without calls, then the ragged end, whose missing lanes have `w = v = 0`.
            let (w_g, v_g) = wv[..2 * width].split_at_mut(width);
            let mut xs = x_g.chunks_exact(L);
            let mut dys = dy_g.chunks_exact(L);
            let mut dxs = dx_g.chunks_exact_mut(L);
            let mut ws = w_g.chunks_exact_mut(L);
            let mut vs = v_g.chunks_exact_mut(L);
            for ((((dxo, xi), dyi), wo), vo) in (&mut dxs)
                .zip(&mut xs)
                .zip(&mut dys)
                .zip(&mut ws)
                .zip(&mut vs)
            {
                let (d, w, v) = backward_lanes::<L, FMA>(g, (m, n), &load(xi), &load(dyi));
                store(dxo, &d);
                store(wo, &w);
                store(vo, &v);
            }
            let (dxo, xi, dyi) = (dxs.into_remainder(), xs.remainder(), dys.remainder());
            let (wo, vo) = (ws.into_remainder(), vs.into_remainder());
            if !xi.is_empty() {
                let (x, dy) = (load_partial(xi), load_partial(dyi));
                let (d, w, v) = backward_lanes::<L, FMA>(g, (m, n), &x, &dy);
                store_partial(dxo, &d);
                store_partial(wo, &w);
                store_partial(vo, &v);
            }
            let mut local = acc.clone();
            let mut xs = x_g.chunks_exact(L);
            let mut ws = w_g.chunks_exact(L);
            let mut vs = v_g.chunks_exact(L);
            for ((xi, wi), vi) in (&mut xs).zip(&mut ws).zip(&mut vs) {
                accumulate::<L, FMA>((m, n), &load(xi), &load(wi), &load(vi), &mut local);
            }
            if !xs.remainder().is_empty() {
                let x = load_partial(xs.remainder());
                let (w, v) = (load_partial(ws.remainder()), load_partial(vs.remainder()));
                accumulate::<L, FMA>((m, n), &x, &w, &v, &mut local);
            }
            *acc = local;
        }
    }
    let mut part = vec![0.0f64; a_len + groups.len() * n];
    for (gi, acc) in accs.iter().enumerate() {
        for i in 0..=m {
            part[gi * (m + 1) + i] = lane_sum(&acc.da[i]);
        }
        for j in 0..n {
            part[a_len + gi * n + j] = lane_sum(&acc.db[j]);
        }
    }
    part
}

/// One backward tile as a dispatchable [`Task`]; `part` receives the tile's partials.
struct BackwardTile<'a, T, const M: usize, const N: usize> {
    p: &'a GrKanParams,
    groups: &'a [Group],
    x: &'a [T],
    dy: &'a [T],
    dx: &'a mut [T],
    part: Vec<f64>,
}

impl<T: Element, const M: usize, const N: usize> Task for BackwardTile<'_, T, M, N> {
    #[inline(always)]
    fn run<const FMA: bool>(&mut self) {
        let Self {
            p, groups, x, dy, ..
        } = *self;
        self.part = if FMA {
            backward_tile::<T, M, N, AVX2_LANES, true>(p, groups, (x, dy), self.dx)
        } else {
            backward_tile::<T, M, N, PORTABLE_LANES, false>(p, groups, (x, dy), self.dx)
        };
    }
}

/// The fused backward over all tiles with one kernel instance: the partials of each tile, in
/// tile order.
fn backward_with<T: Element, const M: usize, const N: usize>(
    p: &GrKanParams,
    groups: &[Group],
    x: &[T],
    dy: &[T],
    dx: &mut [T],
) -> Vec<Vec<f64>> {
    let isa = Isa::detect();
    let tile = tile_rows(p.channels) * p.channels;
    dx.par_chunks_mut(tile)
        .zip(x.par_chunks(tile).zip(dy.par_chunks(tile)))
        .map(|(dx, (x, dy))| {
            let mut task = BackwardTile::<T, M, N> {
                p,
                groups,
                x,
                dy,
                dx,
                part: Vec::new(),
            };
            isa.run(&mut task);
            task.part
        })
        .collect()
}

/// Backward (SPEC §3): `dx`, and `da`, `db` reduced per tile then in tile order.
#[allow(clippy::too_many_arguments)]
pub fn backward<T: Element>(
    p: &GrKanParams,
    x: &[T],
    a: &[f32],
    b: &[f32],
    dy: &[T],
    dx: &mut [T],
    da: &mut [f32],
    db: &mut [f32],
) {
    let groups = Group::all(p, a, b);
    let partials = match (p.num_degree, p.den_degree) {
        (5, 4) => backward_with::<T, 5, 4>(p, &groups, x, dy, dx),
        _ => backward_with::<T, DYN, DYN>(p, &groups, x, dy, dx),
    };
    // Fixed-order reduction over tiles: tile 0, 1, 2, …
    let mut total = vec![0.0f64; da.len() + db.len()];
    for part in &partials {
        for (t, v) in total.iter_mut().zip(part) {
            *t += v;
        }
    }
    for (o, t) in da.iter_mut().zip(&total) {
        *o = *t as f32;
    }
    for (k, o) in db.iter_mut().enumerate() {
        // sgn(b) with sgn(±0) = +1: a zero-initialised denominator still gets a gradient.
        let sgn = if b[k] < 0.0 { -1.0 } else { 1.0 };
        *o = (sgn * total[da.len() + k]) as f32;
    }
}
