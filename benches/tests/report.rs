//! The report generator on a recorded `results.json` (`tests/data/results.json`, a real CPU run
//! with the PyTorch peer, plus an unsupported and a failed case): the HTML is well-formed
//! XHTML, every figure of the results appears in it and in `report.md`, and the SVG charts are
//! well-formed with one point per case that ran.

use flashneck_benches::report::{self, fmt_pct, fmt_ratio, fmt_time, sig3};
use flashneck_benches::results::{Results, Status};

fn recorded() -> Results {
    let text = include_str!("data/results.json");
    serde_json::from_str(text).expect("the recorded results.json parses")
}

/// Every figure a reader needs, as the reports print it.
fn figures(res: &Results) -> Vec<String> {
    let mut v = Vec::new();
    for b in &res.backends {
        v.push(b.name.clone());
        v.extend(b.limits.copy_gbs.map(sig3));
        v.extend(b.limits.gemm_tflops.map(sig3));
        for c in &b.cases {
            v.push(c.case.op.clone());
            v.push(c.case.problem.label());
            match c.status {
                Status::Ok => {
                    let t = c.time.as_ref().expect("a case that ran has times");
                    v.push(fmt_time(t.median_s));
                    v.push(format!("±{}", fmt_pct(t.spread() / 2.0)));
                    v.push(sig3(c.gbs.unwrap()));
                    v.push(sig3(c.tflops.unwrap()));
                    v.extend(c.fraction_of_copy.map(fmt_pct));
                    v.extend(c.fraction_of_gemm.map(fmt_pct));
                }
                Status::Unsupported => v.push("unsupported".into()),
                Status::Failed => v.push("FAILED".into()),
                Status::OutOfTime => v.push("out of time".into()),
            }
            if let Some(p) = &c.peer {
                if let Some(t) = &p.time {
                    v.push(fmt_time(t.median_s));
                }
                v.extend(p.speedup.map(fmt_ratio));
            }
        }
    }
    v.push(res.commit.clone());
    v
}

#[test]
fn recorded_results_cover_every_status_and_a_peer() {
    let res = recorded();
    let cases: Vec<_> = res.backends.iter().flat_map(|b| &b.cases).collect();
    assert!(cases.iter().any(|c| c.status == Status::Ok));
    assert!(cases.iter().any(|c| c.status == Status::Unsupported));
    assert!(cases.iter().any(|c| c.status == Status::Failed));
    assert!(cases.iter().any(|c| c.status == Status::OutOfTime));
    assert!(
        cases
            .iter()
            .any(|c| c.peer.as_ref().is_some_and(|p| p.speedup.is_some()))
    );
}

#[test]
fn html_is_well_formed_and_holds_every_figure() {
    let res = recorded();
    let html = report::html(&res);
    // The page is XHTML: it parses as XML once the HTML5 doctype is set aside.
    let body = html
        .strip_prefix("<!DOCTYPE html>")
        .expect("the page starts with a doctype");
    let doc = roxmltree::Document::parse(body).expect("report.html is well-formed XHTML");
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "html");
    let text: String = doc
        .descendants()
        .filter(|n| n.is_text())
        .filter_map(|n| n.text())
        .collect::<Vec<_>>()
        .join("\n");
    for f in figures(&res) {
        assert!(text.contains(&f), "report.html lacks {f:?}");
    }
    // Self-contained: nothing is fetched.
    for attr in ["src=", "href=", "<script", "<link"] {
        assert!(!html.contains(attr), "report.html has {attr}");
    }
}

#[test]
fn svg_charts_are_well_formed_with_a_point_per_case() {
    let res = recorded();
    let html = report::html(&res);
    let mut rooflines = 0;
    let mut bars = 0;
    let mut rest = html.as_str();
    while let Some(start) = rest.find("<svg") {
        let end = rest[start..].find("</svg>").expect("every svg is closed") + start + 6;
        let svg = &rest[start..end];
        let doc = roxmltree::Document::parse(svg).expect("each SVG is well-formed on its own");
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "svg");
        assert_eq!(
            root.tag_name().namespace(),
            Some("http://www.w3.org/2000/svg")
        );
        let class = root.attribute("class").unwrap_or("");
        let groups = |c: &str| {
            doc.descendants()
                .filter(|n| n.attribute("class") == Some(c))
                .count()
        };
        if class == "roofline" {
            rooflines += 1;
            let ran = res.backends[rooflines - 1]
                .cases
                .iter()
                .filter(|c| c.status == Status::Ok)
                .count();
            assert_eq!(groups("point"), ran, "one roofline point per case that ran");
            assert_eq!(groups("ceiling"), 2, "bandwidth and compute ceilings");
            // Every coordinate is a finite number inside the chart.
            for n in doc.descendants().filter(|n| n.has_tag_name("circle")) {
                for a in ["cx", "cy"] {
                    let v: f64 = n.attribute(a).unwrap().parse().unwrap();
                    assert!(v.is_finite() && (0.0..=720.0).contains(&v), "{a}={v}");
                }
            }
        } else if class == "bars" {
            bars += 1;
            assert!(groups("bar-row") > 0);
        }
        rest = &rest[end..];
    }
    assert_eq!(rooflines, res.backends.len());
    assert!(bars >= 1, "the recorded run has peer timings: a bar chart");
}

#[test]
fn markdown_and_text_hold_every_figure() {
    let res = recorded();
    let md = report::markdown(&res);
    let txt = report::text_table(&res);
    for f in figures(&res) {
        assert!(md.contains(&f), "report.md lacks {f:?}");
        if f != res.commit {
            assert!(txt.contains(&f), "the stdout table lacks {f:?}");
        }
    }
    // One markdown row per case, each with the same number of cells as the header.
    let header_cells = md
        .lines()
        .find(|l| l.starts_with("| #"))
        .unwrap()
        .matches('|')
        .count();
    let rows: Vec<_> = md
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| #"))
        .collect();
    let cases: usize = res.backends.iter().map(|b| b.cases.len()).sum();
    assert_eq!(rows.len(), cases);
    for r in rows {
        assert_eq!(r.matches('|').count(), header_cells, "{r}");
    }
}

#[test]
fn results_json_round_trips() {
    let res = recorded();
    let again: Results = serde_json::from_str(&serde_json::to_string(&res).unwrap()).unwrap();
    assert_eq!(res, again);
}

/// Each report (stdout table, report.md, report.html) with its name.
fn every_report(res: &Results) -> [(&'static str, String); 3] {
    [
        ("stdout", report::text_table(res)),
        ("report.md", report::markdown(res)),
        ("report.html", report::html(res)),
    ]
}

/// The first roofline SVG of the HTML report.
fn first_roofline(res: &Results) -> String {
    let html = report::html(res);
    let start = html.find("<svg").unwrap();
    let svg = &html[start..start + html[start..].find("</svg>").unwrap() + 6];
    assert!(svg.contains(r#"class="roofline""#));
    svg.to_string()
}

/// Every report names what the compute ceiling is: results recorded before the field existed
/// read as a GEMM; wgpu's FMA peak is labelled as such in the text, markdown, HTML and SVG.
#[test]
fn the_compute_ceiling_is_named() {
    let mut res = recorded();
    assert!(
        res.backends
            .iter()
            .all(|b| b.limits.compute_ceiling == "GEMM")
    );
    assert!(report::text_table(&res).contains("f32 GEMM"));
    res.backends[0].limits.compute_ceiling = "FMA peak".into();
    for (what, text) in every_report(&res) {
        assert!(
            text.contains("f32 FMA peak"),
            "{what} does not name the FMA peak"
        );
    }
    assert!(first_roofline(&res).contains("f32 FMA peak"));
}

/// CUDA's f32 cases have their own ceiling (cuBLAS f32): every report names it, and the
/// roofline draws it as a third ceiling.
#[test]
fn the_f32_ceiling_is_named_and_drawn() {
    let mut res = recorded();
    res.backends[0].limits.f32_gemm_tflops = Some(0.0123);
    for (what, text) in every_report(&res) {
        assert!(
            text.contains("f32 GEMM 0.0123 TFLOP/s"),
            "{what} does not name the f32 ceiling"
        );
    }
    let svg = first_roofline(&res);
    let doc = roxmltree::Document::parse(&svg).expect("the roofline is well-formed");
    let ceilings = doc
        .descendants()
        .filter(|n| n.attribute("class") == Some("ceiling"))
        .count();
    assert_eq!(ceilings, 3, "copy, the device's GEMM and the f32 GEMM");
    assert!(svg.contains("f32 GEMM 12.3 GFLOP/s (f32 cases)"));
}
