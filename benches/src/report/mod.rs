//! Reports of a [`Results`]: the stdout table, `report.md` and the self-contained
//! `report.html` (with its SVG roofline and bar charts). Every figure goes through the
//! formatters here, so the same text appears in all three.

mod html;
mod svg;

pub use html::html;

use crate::results::{BackendResults, CaseResult, Results, Status};

/// `1.23 s`, `45.6 ms`, `789 µs`, `12.3 ns`: three significant digits.
pub fn fmt_time(s: f64) -> String {
    if !s.is_finite() {
        return "-".into();
    }
    let (v, unit) = if s >= 1.0 {
        (s, "s")
    } else if s >= 1e-3 {
        (s * 1e3, "ms")
    } else if s >= 1e-6 {
        (s * 1e6, "µs")
    } else {
        (s * 1e9, "ns")
    };
    format!("{} {unit}", sig3(v))
}

/// Three significant digits without exponent (`0.00123`, `12.3`, `4560`).
pub fn sig3(v: f64) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    if v == 0.0 {
        return "0".into();
    }
    let digits = v.abs().log10().floor() as i32;
    let decimals = (2 - digits).max(0) as usize;
    format!("{v:.decimals$}")
}

/// A fraction as a percentage: `45.6%`.
pub fn fmt_pct(f: f64) -> String {
    format!("{}%", sig3(f * 100.0))
}

/// A ratio: `1.23x`.
pub fn fmt_ratio(r: f64) -> String {
    format!("{}x", sig3(r))
}

/// The columns of the results table.
pub const COLUMNS: [&str; 12] = [
    "#",
    "op",
    "dtype",
    "problem",
    "median",
    "spread",
    "GB/s",
    "TFLOP/s",
    "% copy",
    "% compute",
    "peer",
    "speedup",
];

/// One row of the results table, as text (shared by every report).
pub fn row(index: usize, r: &CaseResult) -> [String; 12] {
    let dash = || "-".to_string();
    let (median, spread) = match (&r.status, &r.time) {
        (Status::Ok, Some(t)) => (
            fmt_time(t.median_s),
            format!("±{}", fmt_pct(t.spread() / 2.0)),
        ),
        (Status::Ok, None) => (dash(), dash()),
        (Status::Unsupported, _) => ("unsupported".into(), dash()),
        (Status::Failed, _) => ("FAILED".into(), dash()),
        (Status::OutOfTime, _) => ("out of time".into(), dash()),
    };
    // The binding ceiling's share is starred.
    let share = |f: Option<f64>, ceiling: &str| match f {
        Some(f) if r.bound.as_deref() == Some(ceiling) => format!("*{}", fmt_pct(f)),
        Some(f) => fmt_pct(f),
        None => dash(),
    };
    let (peer, speedup) = match &r.peer {
        Some(p) => match (&p.time, p.speedup, &p.error) {
            (Some(t), Some(s), _) => (fmt_time(t.median_s), fmt_ratio(s)),
            (_, _, Some(_)) => ("error".into(), dash()),
            _ => (dash(), dash()),
        },
        None => (dash(), dash()),
    };
    [
        index.to_string(),
        r.case.op.clone(),
        r.case.dtype.clone(),
        r.case.problem.label(),
        median,
        spread,
        r.gbs.map_or_else(dash, sig3),
        r.tflops.map_or_else(dash, sig3),
        share(r.fraction_of_copy, "memory"),
        share(r.fraction_of_gemm, "compute"),
        peer,
        speedup,
    ]
}

/// The limits of a backend in one line.
pub fn limits_line(b: &BackendResults) -> String {
    let copy = match b.limits.copy_gbs {
        Some(v) => format!("copy {} GB/s", sig3(v)),
        None => "no copy bandwidth".into(),
    };
    let f32_line = match b.limits.f32_gemm_tflops {
        Some(v) => format!(" (f32 cases: f32 GEMM {} TFLOP/s)", sig3(v)),
        None => String::new(),
    };
    match b.limits.gemm_tflops {
        Some(v) => format!(
            "{copy}, {} {} {} TFLOP/s{f32_line}",
            b.limits.gemm_dtype,
            b.limits.compute_ceiling,
            sig3(v)
        ),
        None => format!("{copy}, no compute ceiling{f32_line}"),
    }
}

/// The plain-text table printed on stdout.
pub fn text_table(res: &Results) -> String {
    let mut out = String::new();
    for b in &res.backends {
        out.push_str(&format!(
            "\n{} — {} — limits: {}\n",
            b.name,
            b.device,
            limits_line(b)
        ));
        let rows: Vec<[String; 12]> = b
            .cases
            .iter()
            .enumerate()
            .map(|(i, r)| row(i + 1, r))
            .collect();
        let mut widths = COLUMNS.map(|c| c.chars().count());
        for r in &rows {
            for (w, cell) in widths.iter_mut().zip(r) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let mut s = String::new();
            for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
                let pad = w - cell.chars().count();
                // Text columns left-aligned, figures right-aligned.
                if (1..=3).contains(&i) {
                    s.push_str(cell);
                    s.push_str(&" ".repeat(pad));
                } else {
                    s.push_str(&" ".repeat(pad));
                    s.push_str(cell);
                }
                s.push_str("  ");
            }
            s.trim_end().to_string() + "\n"
        };
        out.push_str(&line(&COLUMNS.map(String::from)));
        for r in &rows {
            out.push_str(&line(r));
        }
        for r in &b.cases {
            if r.status == Status::Failed {
                out.push_str(&format!(
                    "FAILED {}: {}\n",
                    r.case.id(),
                    r.message.as_deref().unwrap_or("")
                ));
            }
        }
    }
    out
}

/// `report.md`.
pub fn markdown(res: &Results) -> String {
    let mut out = String::new();
    out.push_str("# flashneck bench\n\n");
    out.push_str(&format!(
        "- commit: `{}`\n- date: {}\n- machine: {}\n- profile: {}, {} CPU threads\n- peer: {}\n",
        res.commit,
        res.date,
        res.machine,
        res.profile.name(),
        res.threads,
        res.peer
    ));
    out.push_str(
        "\nMedian time over the runs after warm-up, spread = half the 10th–90th percentile range; \
         rates from the median; % copy and % compute are the shares of the copy bandwidth and the \
         compute ceiling (a GEMM rate, cuBLAS f32 for CUDA's f32 cases, or on wgpu the f32 FMA peak) \
         measured in the same run, starred for the ceiling that binds under the roofline \
         model; speedup = peer median / our median (above 1: flashneck is faster).\n",
    );
    for b in &res.backends {
        out.push_str(&format!(
            "\n## {} — {}\n\nLimits: {} ({}).\n\n",
            b.name,
            b.device,
            limits_line(b),
            b.limits.method
        ));
        out.push_str(&format!("| {} |\n", COLUMNS.join(" | ")));
        out.push_str(&format!("|{}\n", "---|".repeat(COLUMNS.len())));
        for (i, r) in b.cases.iter().enumerate() {
            out.push_str(&format!("| {} |\n", row(i + 1, r).join(" | ")));
        }
        let notes: Vec<String> = case_notes(b).iter().map(|n| format!("- {n}")).collect();
        if !notes.is_empty() {
            out.push_str("\nNotes:\n\n");
            out.push_str(&notes.join("\n"));
            out.push('\n');
        }
    }
    out
}

/// One line per case with a message (why unsupported, failed or not run) or a peer error,
/// numbered like the table's rows: `#3: ...`, `#5: peer: ...`.
pub(crate) fn case_notes(b: &BackendResults) -> Vec<String> {
    b.cases
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let peer_err = r.peer.as_ref().and_then(|p| p.error.as_ref());
            match (&r.message, peer_err) {
                (Some(m), _) => Some(format!("#{}: {m}", i + 1)),
                (None, Some(e)) => Some(format!("#{}: peer: {e}", i + 1)),
                _ => None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting() {
        assert_eq!(fmt_time(1.234), "1.23 s");
        assert_eq!(fmt_time(0.0456), "45.6 ms");
        assert_eq!(fmt_time(0.000789), "789 µs");
        assert_eq!(sig3(4567.0), "4567");
        assert_eq!(sig3(0.001234), "0.00123");
        assert_eq!(fmt_pct(0.456), "45.6%");
        assert_eq!(fmt_ratio(1.5), "1.50x");
    }
}
