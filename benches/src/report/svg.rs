//! Inline SVG charts: the roofline of a backend (log-log: arithmetic intensity against achieved
//! GFLOP/s, under the measured bandwidth and compute (GEMM or FMA-peak) ceilings) and the bars against the peer.
//! Output is well-formed XML (every element closed, every text escaped).

use super::{fmt_time, sig3};
use crate::results::{BackendResults, Status};

/// Escape text for XML (element content and attribute values).
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            _ => o.push(c),
        }
    }
    o
}

/// Colour of an op family (by the op's name).
pub fn colour(op: &str) -> &'static str {
    if op.starts_with("sparse") || op == "block_topk" {
        "#2ca02c"
    } else if op.starts_with("attention") {
        "#1f77b4"
    } else if op.starts_with("grkan") {
        "#d62728"
    } else {
        "#9467bd"
    }
}

/// A log10 axis over whole decades.
struct LogAxis {
    lo: f64,
    hi: f64,
    px_lo: f64,
    px_hi: f64,
}

impl LogAxis {
    fn new(min: f64, max: f64, px_lo: f64, px_hi: f64) -> Self {
        let lo = min.log10().floor();
        let mut hi = max.log10().ceil();
        if hi <= lo {
            hi = lo + 1.0;
        }
        LogAxis {
            lo,
            hi,
            px_lo,
            px_hi,
        }
    }

    fn px(&self, v: f64) -> f64 {
        let t = (v.log10() - self.lo) / (self.hi - self.lo);
        self.px_lo + t * (self.px_hi - self.px_lo)
    }

    fn decades(&self) -> impl Iterator<Item = f64> {
        (self.lo as i32..=self.hi as i32).map(|e| 10f64.powi(e))
    }

    fn contains(&self, v: f64) -> bool {
        v > 0.0 && v.log10() >= self.lo - 1e-9 && v.log10() <= self.hi + 1e-9
    }
}

/// A decade label: `0.01`, `1`, `1000`, `1e6`.
fn decade_label(v: f64) -> String {
    if (1e-3..1.0).contains(&v) {
        format!("{v:.*}", (-v.log10()).round() as usize)
    } else if (1.0..=1e4).contains(&v) {
        format!("{}", v.round() as u64)
    } else {
        format!("1e{}", v.log10().round() as i32)
    }
}

/// The roofline of one backend, or `None` when nothing ran.
pub fn roofline(b: &BackendResults) -> Option<String> {
    // (index in the table, intensity FLOP/B, achieved GFLOP/s, op, tooltip)
    let points: Vec<(usize, f64, f64, &str, String)> = b
        .cases
        .iter()
        .enumerate()
        .filter(|(_, r)| r.status == Status::Ok)
        .filter_map(|(i, r)| {
            let g = r.tflops? * 1e3;
            let x = r.intensity();
            (g > 0.0 && x > 0.0 && g.is_finite()).then(|| {
                let tip = format!(
                    "#{} {}: {} FLOP/B, {} GFLOP/s, {} GB/s, median {}",
                    i + 1,
                    r.case.id(),
                    sig3(x),
                    sig3(g),
                    sig3(r.gbs.unwrap_or(0.0)),
                    r.time.as_ref().map_or("-".into(), |t| fmt_time(t.median_s))
                );
                (i + 1, x, g, r.case.op.as_str(), tip)
            })
        })
        .collect();
    if points.is_empty() {
        return None;
    }
    let bw = b.limits.copy_gbs.filter(|v| *v > 0.0);
    let peak = b.limits.gemm_tflops.filter(|v| *v > 0.0).map(|t| t * 1e3);
    // CUDA's f32 cases have their own, lower roof (cuBLAS f32 on the CUDA cores).
    let f32_peak = b
        .limits
        .f32_gemm_tflops
        .filter(|v| *v > 0.0)
        .map(|t| t * 1e3);
    let ridge_of = |pk: Option<f64>| match (bw, pk) {
        (Some(bw), Some(pk)) => Some(pk / bw),
        _ => None,
    };
    let (ridge, f32_ridge) = (ridge_of(peak), ridge_of(f32_peak));
    let (w, h) = (720.0, 440.0);
    let (left, right, top, bottom) = (70.0, 20.0, 30.0, 50.0);
    let xs = points.iter().map(|p| p.1).chain(ridge).chain(f32_ridge);
    let (xmin, xmax) = xs.fold((f64::INFINITY, 0f64), |(a, b), v| (a.min(v), b.max(v)));
    let x = LogAxis::new(xmin / 2.0, xmax * 2.0, left, w - right);
    let ys = points
        .iter()
        .map(|p| p.2)
        .chain(peak)
        .chain(f32_peak)
        .chain(bw.map(|bw| bw * 10f64.powf(x.lo)));
    let (ymin, ymax) = ys.fold((f64::INFINITY, 0f64), |(a, b), v| (a.min(v), b.max(v)));
    let y = LogAxis::new(ymin / 2.0, ymax * 2.0, h - bottom, top);

    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="roofline" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="roofline of {name}">"#,
        name = esc(&b.name)
    );
    s.push_str(&format!(
        r##"<rect x="{left}" y="{top}" width="{}" height="{}" fill="#fafafa" stroke="#999"/>"##,
        w - left - right,
        h - top - bottom
    ));
    for v in x.decades() {
        let px = x.px(v);
        s.push_str(&format!(
            r##"<line x1="{px:.1}" y1="{top}" x2="{px:.1}" y2="{}" stroke="#ddd"/><text x="{px:.1}" y="{}" text-anchor="middle" font-size="11">{}</text>"##,
            h - bottom,
            h - bottom + 15.0,
            decade_label(v)
        ));
    }
    for v in y.decades() {
        let py = y.px(v);
        s.push_str(&format!(
            r##"<line x1="{left}" y1="{py:.1}" x2="{}" y2="{py:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end" font-size="11">{}</text>"##,
            w - right,
            left - 5.0,
            py + 4.0,
            decade_label(v)
        ));
    }
    s.push_str(&format!(
        r#"<text x="{:.1}" y="{}" text-anchor="middle" font-size="12">arithmetic intensity (FLOP/byte)</text>"#,
        (left + w - right) / 2.0,
        h - 12.0
    ));
    s.push_str(&format!(
        r#"<text x="16" y="{:.1}" text-anchor="middle" font-size="12" transform="rotate(-90 16 {:.1})">achieved GFLOP/s</text>"#,
        (top + h - bottom) / 2.0,
        (top + h - bottom) / 2.0
    ));
    // Ceilings: min(bw · I, peak), drawn over the x range.
    let x_lo = 10f64.powf(x.lo);
    let x_hi = 10f64.powf(x.hi);
    let clip = |v: f64| v.clamp(10f64.powf(y.lo), 10f64.powf(y.hi));
    if let Some(bw) = bw {
        let x_end = ridge.unwrap_or(x_hi).min(x_hi);
        let (y0, y1) = (clip(bw * x_lo), clip(bw * x_end));
        // Start where the bandwidth line enters the plot.
        let x0 = (y0 / bw).max(x_lo);
        let (px0, py0, px1, py1) = (x.px(x0), y.px(y0), x.px(x_end), y.px(y1));
        // The label sits above the middle of the line, along its slope.
        let angle = (py1 - py0).atan2(px1 - px0).to_degrees();
        let (mx, my) = ((px0 + px1) / 2.0, (py0 + py1) / 2.0 - 6.0);
        s.push_str(&format!(
            r##"<line class="ceiling" x1="{px0:.1}" y1="{py0:.1}" x2="{px1:.1}" y2="{py1:.1}" stroke="#444" stroke-width="2"/><text x="{mx:.1}" y="{my:.1}" text-anchor="middle" font-size="11" fill="#444" transform="rotate({angle:.1} {mx:.1} {my:.1})">copy {} GB/s</text>"##,
            sig3(bw)
        ));
    }
    if let Some(pk) = peak {
        let x_start = ridge.unwrap_or(x_lo).max(x_lo);
        s.push_str(&format!(
            r##"<line class="ceiling" x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#444" stroke-width="2"/><text x="{:.1}" y="{:.1}" text-anchor="end" font-size="11" fill="#444">{} {} {} GFLOP/s</text>"##,
            x.px(x_start),
            y.px(pk),
            x.px(x_hi),
            y.px(pk),
            w - right - 4.0,
            y.px(pk) - 6.0,
            esc(&b.limits.gemm_dtype),
            esc(&b.limits.compute_ceiling),
            sig3(pk)
        ));
    }
    if let Some(pk) = f32_peak {
        // Dashed, labelled under the line so it never sits on the main roof's label.
        let x_start = f32_ridge.unwrap_or(x_lo).max(x_lo);
        s.push_str(&format!(
            r##"<line class="ceiling" x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#444" stroke-width="1.5" stroke-dasharray="6 4"/><text x="{:.1}" y="{:.1}" text-anchor="end" font-size="11" fill="#444">f32 GEMM {} GFLOP/s (f32 cases)</text>"##,
            x.px(x_start),
            y.px(pk),
            x.px(x_hi),
            y.px(pk),
            w - right - 4.0,
            y.px(pk) + 14.0,
            sig3(pk)
        ));
    }
    for (i, px, gy, op, tip) in &points {
        if !(x.contains(*px) && y.contains(*gy)) {
            continue;
        }
        let (cx, cy) = (x.px(*px), y.px(*gy));
        s.push_str(&format!(
            r##"<g class="point"><title>{}</title><circle cx="{cx:.1}" cy="{cy:.1}" r="5" fill="{}" fill-opacity="0.8" stroke="#000" stroke-width="0.5"/><text x="{:.1}" y="{:.1}" font-size="10">{i}</text></g>"##,
            esc(tip),
            colour(op),
            cx + 6.0,
            cy - 4.0
        ));
    }
    // Legend of the families.
    let mut ly = top + 14.0;
    for (name, op) in [
        ("attention", "attention_forward"),
        ("sparse attention", "sparse_attention_forward"),
        ("GR-KAN", "grkan_forward"),
        ("Gumbel-Softmax", "gumbel_softmax_forward"),
    ] {
        s.push_str(&format!(
            r##"<circle cx="{:.1}" cy="{ly:.1}" r="5" fill="{}"/><text x="{:.1}" y="{:.1}" font-size="11">{name}</text>"##,
            left + 14.0,
            colour(op),
            left + 24.0,
            ly + 4.0
        ));
        ly += 16.0;
    }
    s.push_str("</svg>");
    Some(s)
}

/// Bars of our median time against the peer's for every case with both, or `None`.
pub fn peer_bars(b: &BackendResults) -> Option<String> {
    let rows: Vec<(usize, String, f64, f64, f64)> = b
        .cases
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let ours = r.time.as_ref()?.median_s;
            let p = r.peer.as_ref()?;
            let theirs = p.time.as_ref()?.median_s;
            Some((i + 1, r.case.id(), ours, theirs, p.speedup?))
        })
        .collect();
    if rows.is_empty() {
        return None;
    }
    let (w, label_w, row_h, top) = (720.0, 300.0, 46.0, 24.0);
    let h = top + row_h * rows.len() as f64 + 10.0;
    let bar_max = w - label_w - 150.0;
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="bars" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="time against the peer on {}">"#,
        esc(&b.name)
    );
    s.push_str(&format!(
        r##"<rect x="{label_w}" y="4" width="12" height="10" fill="#1f77b4"/><text x="{}" y="13" font-size="11">flashneck</text><rect x="{}" y="4" width="12" height="10" fill="#ff7f0e"/><text x="{}" y="13" font-size="11">PyTorch peer (median time, shorter is faster)</text>"##,
        label_w + 16.0,
        label_w + 90.0,
        label_w + 106.0
    ));
    for (k, (i, id, ours, theirs, speedup)) in rows.iter().enumerate() {
        let y0 = top + row_h * k as f64;
        let longest = ours.max(*theirs);
        let (wo, wt) = (bar_max * ours / longest, bar_max * theirs / longest);
        s.push_str(&format!(
            r##"<g class="bar-row"><text x="{:.1}" y="{:.1}" text-anchor="end" font-size="11">#{i} {}</text><rect x="{label_w}" y="{:.1}" width="{wo:.1}" height="16" fill="#1f77b4"/><text x="{:.1}" y="{:.1}" font-size="11">{}</text><rect x="{label_w}" y="{:.1}" width="{wt:.1}" height="16" fill="#ff7f0e"/><text x="{:.1}" y="{:.1}" font-size="11">{} ({} speedup)</text></g>"##,
            label_w - 8.0,
            y0 + 22.0,
            esc(id),
            y0 + 4.0,
            label_w + wo + 4.0,
            y0 + 16.0,
            fmt_time(*ours),
            y0 + 22.0,
            label_w + wt + 4.0,
            y0 + 34.0,
            fmt_time(*theirs),
            super::fmt_ratio(*speedup)
        ));
    }
    s.push_str("</svg>");
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decade_labels() {
        let labels: Vec<String> = [1e-2, 0.1, 1.0, 10.0, 100.0, 1e4, 1e6]
            .into_iter()
            .map(decade_label)
            .collect();
        assert_eq!(labels, ["0.01", "0.1", "1", "10", "100", "10000", "1e6"]);
    }

    #[test]
    fn escaping() {
        assert_eq!(
            esc("a<b & \"c\" 'd'>"),
            "a&lt;b &amp; &quot;c&quot; &#39;d&#39;&gt;"
        );
    }
}
