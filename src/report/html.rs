//! HTML pieces shared by the reports: escaping (which also breaks `://` so that no URL from a
//! model's output can appear in the file), number formatting, the page with its inline CSS, and
//! the UTC date.

use std::fmt::Write;

/// Escape text for HTML content and attribute values. `://` is written `:&#47;&#47;` (the same on
/// screen), so the file never contains an `http://` or `https://` even if a model wrote one.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    if out.contains("://") {
        out = out.replace("://", ":&#47;&#47;");
    }
    out
}

/// A fraction as a percentage with one decimal, as the papers and the CLI tables print it.
pub fn pct(x: f64) -> String {
    if x.is_finite() {
        format!("{:.1}", x * 100.0)
    } else {
        "–".into()
    }
}

/// A signed difference of fractions in percentage points ("+1.5", "−0.3", "0.0").
pub fn delta_pp(d: f64) -> String {
    if !d.is_finite() {
        return "–".into();
    }
    let v = d * 100.0;
    if format!("{:.1}", v.abs()) == "0.0" {
        "0.0".into()
    } else if v > 0.0 {
        format!("+{v:.1}")
    } else {
        format!("−{:.1}", -v)
    }
}

/// Text cut to `n` characters (with an ellipsis), for long model outputs in tables.
pub fn cut(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n).collect();
        t.push('…');
        t
    }
}

/// A `<section>` with a heading and an optional one-line explanation.
pub fn section(out: &mut String, id: &str, title: &str, what: &str, body: &str) {
    let _ = write!(out, r#"<section id="{}"><h2>{}</h2>"#, esc(id), esc(title));
    if !what.is_empty() {
        let _ = write!(out, r#"<p class="what">{}</p>"#, esc(what));
    }
    out.push_str(body);
    out.push_str("</section>\n");
}

/// A table from a header row and rows of already-escaped cell HTML.
pub fn table(class: &str, header: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = format!(r#"<table class="{class}"><thead><tr>"#);
    for h in header {
        let _ = write!(s, "<th>{}</th>", esc(h));
    }
    s.push_str("</tr></thead><tbody>");
    for r in rows {
        s.push_str("<tr>");
        for c in r {
            let _ = write!(s, "<td>{c}</td>");
        }
        s.push_str("</tr>");
    }
    s.push_str("</tbody></table>");
    s
}

const CSS: &str = r#"
:root{--fg:#1d2330;--muted:#5d6675;--line:#dde1e8;--bg:#ffffff;--card:#f5f7fa;--a:#2f6fd0;--b:#e07b22;--good:#1f8a4c;--bad:#c0392b}
*{box-sizing:border-box}
body{margin:0;padding:24px 32px 48px;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:var(--fg);background:var(--bg);max-width:1240px}
h1{font-size:24px;margin:0 0 4px}
h2{font-size:18px;margin:28px 0 6px;padding-top:10px;border-top:1px solid var(--line)}
h3{font-size:15px;margin:16px 0 6px}
p.what{color:var(--muted);margin:0 0 10px;max-width:900px}
.sub{color:var(--muted);margin:0 0 16px}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:8px 0}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:10px 14px;min-width:130px}
.card .v{font-size:26px;font-weight:600;font-variant-numeric:tabular-nums}
.card .k{color:var(--muted);font-size:12px}
.card .v2{font-size:13px;color:var(--muted)}
table{border-collapse:collapse;margin:6px 0 12px;font-variant-numeric:tabular-nums}
th,td{border:1px solid var(--line);padding:3px 8px;text-align:left;vertical-align:top}
th{background:var(--card);font-weight:600}
td.n,th.n{text-align:right}
table.prov td:first-child{color:var(--muted);white-space:nowrap}
table.prov td{max-width:1000px;word-break:break-all}
table.conf td{text-align:right;min-width:44px}
table.conf td.diag{outline:2px solid var(--good);outline-offset:-2px}
td.out{max-width:520px;white-space:pre-wrap;word-break:break-word;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
.good{color:var(--good)}.bad{color:var(--bad)}
.muted{color:var(--muted)}
code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
.chart{display:block;margin:6px 0 10px;max-width:100%;height:auto}
.chart .t{font-size:12px;fill:var(--fg)}.chart .s{font-size:11px;fill:var(--muted)}
.cols{display:flex;flex-wrap:wrap;gap:24px}.cols>div{flex:1 1 480px;min-width:0}
.row{display:flex;flex-wrap:wrap;gap:28px;align-items:flex-start}
.row table{margin-top:0}
.gallery{display:flex;flex-wrap:wrap;gap:12px}
figure.item{margin:0;width:336px;background:var(--card);border:1px solid var(--line);border-radius:8px;padding:8px}
figure.item img{display:block;max-width:320px;max-height:320px;margin:0 auto 6px}
figure.item figcaption{font-size:12px}
figure.item .out{display:block;white-space:pre-wrap;word-break:break-word;font-family:ui-monospace,Menlo,Consolas,monospace;color:var(--muted);max-height:90px;overflow:auto}
.sw{display:inline-block;width:12px;height:12px;border-radius:2px;vertical-align:-1px;margin:0 4px 0 10px}
.note{background:#fff8e1;border:1px solid #f0dca0;border-radius:6px;padding:6px 10px;margin:8px 0}
footer{margin-top:32px;color:var(--muted);font-size:12px}
"#;

/// The whole document: inline CSS, no script, no external resource.
pub fn page(title: &str, subtitle: &str, body: &str) -> String {
    let mut s = String::with_capacity(body.len() + CSS.len() + 512);
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"generator\" content=\"perceptio {}\"><title>{}</title><style>{}</style></head>\n<body>\
         <h1>{}</h1><p class=\"sub\">{}</p>\n{}<footer>Made by perceptio {} (<code>perceptio report</code>); \
         a single self-contained file: styles, charts and images are inline.</footer></body></html>\n",
        env!("CARGO_PKG_VERSION"),
        esc(title),
        CSS,
        esc(title),
        esc(subtitle),
        body,
        env!("CARGO_PKG_VERSION")
    );
    s
}

/// The current UTC time as `YYYY-MM-DD HH:MM UTC` (`SOURCE_DATE_EPOCH`, when set, wins, for
/// reproducible files).
pub fn now_utc() -> String {
    let secs = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64)
        });
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = crate::util::civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02} UTC", rem / 3600, rem % 3600 / 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_breaks_urls_and_dates_are_civil() {
        assert_eq!(esc("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
        assert_eq!(esc("see https://x.org"), "see https:&#47;&#47;x.org");
        assert_eq!(crate::util::civil_from_days(0), (1970, 1, 1));
        assert_eq!(crate::util::civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(crate::util::civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(delta_pp(0.015), "+1.5");
        assert_eq!(delta_pp(-0.0001), "0.0");
        assert_eq!(pct(0.61118930330753), "61.1");
    }
}
