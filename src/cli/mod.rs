//! Command-line interface: argument parsing and output only; the work lives in the library.

mod ask;
mod batch;
mod depth;
mod download;
mod eval;
mod report;
mod runtime;
mod segment;
mod serve;
mod trace;

use crate::error::{exit, Result};
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "perceptio", version, about = "Spatial grounding with vision-language models: segment, depth, ask, and benchmark scoring", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Score benchmark predictions (RefCOCO/+/g cIoU, HardBLINK, MMBench).
    Eval(eval::EvalArgs),
    /// Download model repos from the Hugging Face hub into the cache Python tools share.
    Download(download::DownloadArgs),
    /// Segment what a referring expression names (Sa2VA-style model), or a --point/--box (SAM2).
    Segment(segment::SegmentArgs),
    /// A depth map from the model's depth tokens, or the Depth Anything V2 teacher, or the
    /// teacher's map as depth tokens.
    Depth(depth::DepthArgs),
    /// Answer a question about an image with an InternVL2.5 / Sa2VA model.
    Ask(ask::AskArgs),
    /// Serve segment / ask / depth over local HTTP with the model loaded once (see docs/serve.md).
    Serve(serve::ServeArgs),
    /// A self-contained HTML report of a per-sample file (RefCOCO, MMBench, HardBLINK), or the
    /// comparison of two runs.
    Report(report::ReportArgs),
}

/// Print one compact JSON value as a line on stdout.
fn print_json_line(v: &serde_json::Value) -> Result<()> {
    use std::io::Write;
    writeln!(std::io::stdout().lock(), "{v}").map_err(|e| crate::error::Error::io("<stdout>", e))
}

/// Run the CLI and return the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return e.exit_code();
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) if e.is_broken_pipe() => exit::OK,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

/// Compute commands run on a rayon worker ([`crate::util::on_compute_pool`]); the server
/// only on its model thread, as its accept loop would hold one of the pool's workers.
fn run(cli: Cli) -> Result<i32> {
    use crate::util::on_compute_pool;
    // Before the pool's threads exist: a thread takes its malloc arena at its first allocation.
    crate::util::tune_allocator();
    match cli.command {
        Command::Eval(args) => on_compute_pool(|| eval::run(args)).map(|_| exit::OK),
        Command::Download(args) => download::run(args).map(|_| exit::OK),
        Command::Segment(args) => on_compute_pool(|| segment::run(args)),
        Command::Depth(args) => on_compute_pool(|| depth::run(args)),
        Command::Ask(args) => on_compute_pool(|| ask::run(args)).map(|_| exit::OK),
        Command::Serve(args) => serve::run(args).map(|_| exit::OK),
        Command::Report(args) => report::run(args).map(|_| exit::OK),
    }
}
