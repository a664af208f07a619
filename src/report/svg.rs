//! Small inline SVG charts drawn by hand (plain SVG elements, no script, no external font), so a
//! report renders the same in any browser and offline: horizontal bars and a histogram.

use super::html::{esc, pct};
use std::fmt::Write;

/// The colour of the first and second run in every chart (blue / orange: colour-blind safe).
pub const COLORS: [&str; 2] = ["#2f6fd0", "#e07b22"];

/// Characters of a bar label shown before it is cut (the full text is in its tooltip).
const LABEL_CHARS: usize = 46;

fn cut(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}

/// A horizontal bar chart of fractions in [0, 1]: one row per label, one bar per series
/// (`values[row][series]`, `None` = no value). Bars are labelled in percent; `notes[row]`
/// (e.g. "n=12") is appended to the row's label.
pub fn hbars(labels: &[String], notes: &[String], values: &[Vec<Option<f64>>], series: &[&str]) -> String {
    let ns = series.len().max(1);
    let shown: Vec<String> = labels
        .iter()
        .zip(notes.iter().chain(std::iter::repeat(&String::new())))
        .map(|(l, n)| {
            let l = cut(l, LABEL_CHARS);
            if n.is_empty() {
                l
            } else {
                format!("{l} ({n})")
            }
        })
        .collect();
    let longest = shown.iter().map(|s| s.chars().count()).max().unwrap_or(4);
    let label_w = (longest as f64 * 6.6 + 12.0).clamp(70.0, 380.0);
    let (bar_w, bar_h, gap, top) = (440.0, 14.0, 8.0, if ns > 1 { 22.0 } else { 6.0 });
    let row_h = bar_h * ns as f64 + gap;
    let width = label_w + bar_w + 64.0;
    let height = top + row_h * labels.len() as f64 + 18.0;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="chart" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" role="img">"#
    );
    if ns > 1 {
        let mut x = label_w;
        for (k, name) in series.iter().enumerate() {
            let _ = write!(
                s,
                r#"<rect x="{x:.1}" y="4" width="12" height="12" fill="{}"/><text x="{:.1}" y="14" class="t">{}</text>"#,
                COLORS[k % 2],
                x + 16.0,
                esc(&cut(name, 40))
            );
            x += 40.0 + 7.0 * cut(name, 40).chars().count() as f64;
        }
    }
    let y_end = top + row_h * labels.len() as f64;
    for q in 0..=4 {
        let x = label_w + bar_w * q as f64 / 4.0;
        let _ = write!(
            s,
            r##"<line x1="{x:.1}" y1="{top:.1}" x2="{x:.1}" y2="{y_end:.1}" stroke="#d8d8d8"/><text x="{x:.1}" y="{:.1}" class="t s" text-anchor="middle">{}%</text>"##,
            y_end + 13.0,
            q * 25
        );
    }
    for (i, (label, full)) in shown.iter().zip(labels).enumerate() {
        let y0 = top + row_h * i as f64;
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" class="t" text-anchor="end"><title>{}</title>{}</text>"#,
            label_w - 6.0,
            y0 + row_h / 2.0 - gap / 2.0 + 4.0,
            esc(full),
            esc(label)
        );
        for k in 0..ns {
            let y = y0 + bar_h * k as f64;
            match values.get(i).and_then(|v| v.get(k)).copied().flatten() {
                Some(v) if v.is_finite() => {
                    let w = bar_w * v.clamp(0.0, 1.0);
                    let _ = write!(
                        s,
                        r#"<rect x="{label_w:.1}" y="{y:.1}" width="{w:.1}" height="{:.1}" fill="{}"><title>{}: {}%</title></rect><text x="{:.1}" y="{:.1}" class="t s">{}</text>"#,
                        bar_h - 2.0,
                        COLORS[k % 2],
                        esc(full),
                        pct(v),
                        label_w + w + 4.0,
                        y + bar_h - 4.0,
                        pct(v)
                    );
                }
                _ => {
                    let _ = write!(
                        s,
                        r#"<text x="{:.1}" y="{:.1}" class="t s">–</text>"#,
                        label_w + 4.0,
                        y + bar_h - 4.0
                    );
                }
            }
        }
    }
    s.push_str("</svg>");
    s
}

/// A histogram of counts per bin over [0, 1] (`counts[series][bin]`), bars of several series
/// side by side within a bin, with a count axis and the bin edges at 0, 0.25, ..., 1.
pub fn histogram(counts: &[Vec<u64>], series: &[&str], x_label: &str) -> String {
    let bins = counts.first().map_or(0, Vec::len).max(1);
    let ns = counts.len().max(1);
    let (left, right, top, bottom) = (52.0, 16.0, if ns > 1 { 26.0 } else { 10.0 }, 40.0);
    let (pw, ph) = (680.0, 200.0);
    let (width, height) = (left + pw + right, top + ph + bottom);
    let (step, ticks) = count_ticks(counts.iter().flatten().copied().max().unwrap_or(0));
    let max = step * ticks;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="chart" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" role="img">"#
    );
    if ns > 1 {
        let mut x = left;
        for (k, name) in series.iter().enumerate() {
            let _ = write!(
                s,
                r#"<rect x="{x:.1}" y="6" width="12" height="12" fill="{}"/><text x="{:.1}" y="16" class="t">{}</text>"#,
                COLORS[k % 2],
                x + 16.0,
                esc(&cut(name, 40))
            );
            x += 40.0 + 7.0 * cut(name, 40).chars().count() as f64;
        }
    }
    for q in 0..=ticks {
        let y = top + ph - ph * q as f64 / ticks as f64;
        let _ = write!(
            s,
            r##"<line x1="{left:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e2e2e2"/><text x="{:.1}" y="{:.1}" class="t s" text-anchor="end">{}</text>"##,
            left + pw,
            left - 6.0,
            y + 4.0,
            q * step
        );
    }
    let bw = pw / bins as f64;
    for (k, c) in counts.iter().enumerate() {
        for (b, &n) in c.iter().enumerate() {
            if n == 0 {
                continue;
            }
            let h = ph * n as f64 / max as f64;
            let x = left + bw * b as f64 + 1.0 + (bw - 2.0) / ns as f64 * k as f64;
            let (lo, hi) = (b as f64 / bins as f64, (b + 1) as f64 / bins as f64);
            let _ = write!(
                s,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{}"><title>{}{lo:.2}–{hi:.2}: {n}</title></rect>"#,
                top + ph - h,
                (bw - 2.0) / ns as f64,
                COLORS[k % 2],
                series.get(k).map(|n| format!("{} ", esc(n))).unwrap_or_default()
            );
        }
    }
    let _ = write!(
        s,
        r##"<line x1="{left:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#888"/>"##,
        top + ph,
        left + pw,
        top + ph
    );
    for q in 0..=4 {
        let x = left + pw * q as f64 / 4.0;
        let _ = write!(
            s,
            r#"<text x="{x:.1}" y="{:.1}" class="t s" text-anchor="middle">{:.2}</text>"#,
            top + ph + 14.0,
            q as f64 / 4.0
        );
    }
    let _ = write!(
        s,
        r#"<text x="{:.1}" y="{:.1}" class="t" text-anchor="middle">{}</text></svg>"#,
        left + pw / 2.0,
        top + ph + 32.0,
        esc(x_label)
    );
    s
}

/// A count axis: a round step (1, 2 or 5 × 10^k) and how many steps reach `max` (at most 5).
fn count_ticks(max: u64) -> (u64, u64) {
    let max = max.max(1);
    let mut step = 1u64;
    loop {
        for m in [1, 2, 5] {
            let s = step * m;
            if max.div_ceil(s) <= 5 {
                return (s, max.div_ceil(s));
            }
        }
        step *= 10;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_plain_svg_without_urls() {
        let b = hbars(
            &["a <b>".into(), "c".into()],
            &["n=1".into(), String::new()],
            &[vec![Some(0.5), None], vec![Some(1.0), Some(0.25)]],
            &["A", "B"],
        );
        assert!(b.starts_with("<svg") && b.ends_with("</svg>"));
        assert!(b.contains("a &lt;b&gt; (n=1)") && b.contains("50.0%") && b.contains("25.0%"));
        let h = histogram(&[vec![0, 3, 1]], &["run"], "IoU");
        assert_eq!(h.matches("<rect").count(), 2);
        assert!(!b.contains("http") && !h.contains("http"));
        assert_eq!(count_ticks(1), (1, 1));
        assert_eq!(count_ticks(7), (2, 4));
        assert_eq!(count_ticks(2301), (500, 5));
    }
}
