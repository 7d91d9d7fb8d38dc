//! `report.html`: one self-contained page (inline CSS and SVG, no script, nothing fetched),
//! written as well-formed XHTML so that tests can parse it as XML.

use super::svg::{esc, peer_bars, roofline};
use super::{COLUMNS, limits_line, row};
use crate::results::{Results, Status};

const STYLE: &str = "
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { margin-bottom: 0.2em; }
dl.meta { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; }
dl.meta dt { font-weight: bold; }
table { border-collapse: collapse; font-size: 13px; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 3px 7px; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.unsupported td { color: #888; }
tr.failed td { background: #fdd; }
tr.out-of-time td { color: #a60; font-style: italic; }
svg { display: block; margin: 1em 0; font-family: system-ui, sans-serif; }
p.note { color: #555; font-size: 13px; }
";

/// The whole page.
pub fn html(res: &Results) -> String {
    let mut s = String::new();
    s.push_str("<!DOCTYPE html>\n<html xmlns=\"http://www.w3.org/1999/xhtml\" lang=\"en\">\n<head>\n<meta charset=\"utf-8\"/>\n");
    s.push_str(&format!(
        "<title>flashneck bench {}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
        esc(&res.date)
    ));
    s.push_str("<h1>flashneck bench</h1>\n<dl class=\"meta\">");
    for (k, v) in [
        ("commit", res.commit.clone()),
        ("date", res.date.clone()),
        ("machine", res.machine.clone()),
        (
            "profile",
            format!("{}, {} CPU threads", res.profile.name(), res.threads),
        ),
        ("peer", res.peer.clone()),
    ] {
        s.push_str(&format!("<dt>{k}</dt><dd>{}</dd>", esc(&v)));
    }
    s.push_str("</dl>\n");
    s.push_str(
        "<p class=\"note\">Median time over the runs after warm-up; spread is half the \
         10th&#8211;90th percentile range. GB/s and TFLOP/s come from the median and the work \
         model of docs/bench.md. % copy and % compute are the shares of the copy bandwidth \
         and the compute ceiling (a GEMM rate, cuBLAS f32 for CUDA&#8217;s f32 cases, or on wgpu \
         the f32 FMA peak) measured in the same run, starred (*) for the ceiling that binds under the \
         roofline model. Speedup is the \
         peer&#8217;s median over ours: above 1, flashneck is faster.</p>\n",
    );
    for b in &res.backends {
        s.push_str(&format!(
            "<h2>{} &#8212; {}</h2>\n<p>Limits measured in this run: {}. <span class=\"note\">{}</span></p>\n",
            esc(&b.name),
            esc(&b.device),
            esc(&limits_line(b)),
            esc(&b.limits.method)
        ));
        match roofline(b) {
            Some(svg) => {
                s.push_str("<h3>Roofline</h3>\n");
                s.push_str(&svg);
                s.push('\n');
            }
            None => s.push_str("<p>No op ran: no roofline.</p>\n"),
        }
        s.push_str("<h3>Results</h3>\n<table>\n<thead><tr>");
        for c in COLUMNS {
            s.push_str(&format!("<th>{}</th>", esc(c)));
        }
        s.push_str("</tr></thead>\n<tbody>\n");
        for (i, r) in b.cases.iter().enumerate() {
            let class = match r.status {
                Status::Ok => "ok",
                Status::Unsupported => "unsupported",
                Status::Failed => "failed",
                Status::OutOfTime => "out-of-time",
            };
            let title = r.message.as_deref().map(esc).unwrap_or_default();
            s.push_str(&format!("<tr class=\"{class}\" title=\"{title}\">"));
            for (k, cell) in row(i + 1, r).iter().enumerate() {
                let cls = if (1..=3).contains(&k) {
                    ""
                } else {
                    " class=\"num\""
                };
                s.push_str(&format!("<td{cls}>{}</td>", esc(cell)));
            }
            s.push_str("</tr>\n");
        }
        s.push_str("</tbody>\n</table>\n");
        let notes = super::case_notes(b);
        if !notes.is_empty() {
            s.push_str("<ul class=\"note\">");
            for n in notes {
                s.push_str(&format!("<li>{}</li>", esc(&n)));
            }
            s.push_str("</ul>\n");
        }
        if let Some(svg) = peer_bars(b) {
            s.push_str("<h3>Against the peer</h3>\n");
            s.push_str(&svg);
            s.push('\n');
        }
    }
    s.push_str("</body>\n</html>\n");
    s
}
