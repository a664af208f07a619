//! `perceptio report`: an HTML report of one per-sample file, or the comparison of two.

use crate::error::{Error, Result};
use crate::report;
use clap::Args;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Per-sample files: `eval refcoco --per-sample`, `eval mmbench --per-question`,
    /// `eval hardblink --per-sample`, or a `--log-samples` file of `eval ... --model`. With two,
    /// the report compares them (A = first, B = second). `-` reads one from stdin.
    #[arg(required = true, num_args = 1..=2, value_name = "PER_SAMPLE.jsonl")]
    pub inputs: Vec<PathBuf>,
    /// The HTML file to write; `-` writes it to stdout.
    #[arg(short = 'o', long = "output", value_name = "FILE.html")]
    pub output: PathBuf,
    /// RefCOCO: the image directory holding each sample's `file_name`, for a gallery of the
    /// worst and median samples (and photos of the biggest changes in a comparison).
    #[arg(long, value_name = "DIR")]
    pub images: Option<PathBuf>,
    /// RefCOCO: how many worst and how many median samples to show.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub k: usize,
    /// Comparison: list at most N improved and N worsened samples.
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub max_changes: usize,
}

pub fn run(a: ReportArgs) -> Result<()> {
    if a.inputs.iter().filter(|p| p.as_os_str() == "-").count() > 1 {
        return Err(Error::Usage("only one input can be `-` (stdin)".into()));
    }
    if let Some(d) = &a.images {
        if !d.is_dir() {
            return Err(Error::input(d, "--images is not a directory"));
        }
    }
    let mut runs = Vec::new();
    for p in &a.inputs {
        let inp = super::eval::input(p, ".jsonl")?;
        runs.push(report::load(&inp.path, &inp.shown)?);
    }
    let opts = report::Options {
        images: a.images.clone(),
        k: a.k,
        max_changes: a.max_changes,
    };
    write_html(&a.output, &report::render(&runs, &opts)?)
}

/// Write a report atomically, or to stdout for `-`.
pub(super) fn write_html(path: &Path, html: &str) -> Result<()> {
    if path.as_os_str() == "-" {
        let mut out = std::io::stdout().lock();
        out.write_all(html.as_bytes())
            .and_then(|_| out.flush())
            .map_err(|e| Error::io("<stdout>", e))
    } else {
        crate::util::atomic::write(path, html.as_bytes())
    }
}
