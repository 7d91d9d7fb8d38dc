//! f64 oracle of GR-KAN (SPEC §3), written straight from the formulas with `powi`.

use flashneck_core::GrKanParams;

/// `sgn(v) = −1` if `v < 0`, else `+1` (so `sgn(±0) = +1`, SPEC §3).
fn sgn(v: f64) -> f64 {
    if v < 0.0 { -1.0 } else { 1.0 }
}

/// `P(x)`, `P'(x)`, `Q(x)`, `Q'(x)` of group `g` at `x`.
fn pq(p: &GrKanParams, a: &[f64], b: &[f64], g: usize, x: f64) -> (f64, f64, f64, f64) {
    let (m, n) = (p.num_degree, p.den_degree);
    let a = &a[g * (m + 1)..(g + 1) * (m + 1)];
    let b = &b[g * n..(g + 1) * n];
    let pv: f64 = (0..=m).map(|i| a[i] * x.powi(i as i32)).sum();
    let pd: f64 = (1..=m)
        .map(|i| i as f64 * a[i] * x.powi(i as i32 - 1))
        .sum();
    let qv: f64 = 1.0
        + (1..=n)
            .map(|j| b[j - 1].abs() * x.abs().powi(j as i32))
            .sum::<f64>();
    let qd: f64 = sgn(x)
        * (1..=n)
            .map(|j| j as f64 * b[j - 1].abs() * x.abs().powi(j as i32 - 1))
            .sum::<f64>();
    (pv, pd, qv, qd)
}

/// `y = P(x) / Q(x)` for `x [R, C]`, `a [G, M+1]`, `b [G, N]`.
pub fn grkan_forward(p: &GrKanParams, x: &[f64], a: &[f64], b: &[f64]) -> Vec<f64> {
    let w = p.group_width();
    x.iter()
        .enumerate()
        .map(|(e, &xv)| {
            let (pv, _, qv, _) = pq(p, a, b, (e % p.channels) / w, xv);
            pv / qv
        })
        .collect()
}

/// `(dx, da, db)` given `dy` (SPEC §3's formulas, summed in f64 in element order).
pub fn grkan_backward(
    p: &GrKanParams,
    x: &[f64],
    a: &[f64],
    b: &[f64],
    dy: &[f64],
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (m, n) = (p.num_degree, p.den_degree);
    let w = p.group_width();
    let mut dx = vec![0.0; x.len()];
    let mut da = vec![0.0; p.a_len()];
    let mut db = vec![0.0; p.b_len()];
    for (e, (&xv, &d)) in x.iter().zip(dy).enumerate() {
        let g = (e % p.channels) / w;
        let (pv, pd, qv, qd) = pq(p, a, b, g, xv);
        dx[e] = d * (pd / qv - pv * qd / (qv * qv));
        for i in 0..=m {
            da[g * (m + 1) + i] += d * xv.powi(i as i32) / qv;
        }
        for j in 1..=n {
            db[g * n + j - 1] +=
                -d * (pv / (qv * qv)) * sgn(b[g * n + j - 1]) * xv.abs().powi(j as i32);
        }
    }
    (dx, da, db)
}
