//! Shared helpers of the integration tests: the CLI binary, and the test data of
//! [`data`] (real sample photos, shard reading).
#![allow(dead_code)] // each test module uses a different subset

pub mod corrupt;
pub mod data;

use std::path::Path;
use std::process::{Command, Output};

use dino_pipeline::manifest::{Manifest, SplitEntry};

pub use data::*;

pub fn dino_stream(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dino-stream"))
        .args(args)
        .output()
        .expect("dino-stream runs")
}

/// Runs the CLI and asserts success, returning stdout.
pub fn dino_stream_ok(args: &[&str]) -> String {
    let out = dino_stream(args);
    assert!(
        out.status.success(),
        "dino-stream {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs the CLI, asserts failure, returns stderr.
pub fn dino_stream_err(args: &[&str]) -> String {
    let out = dino_stream(args);
    assert!(
        !out.status.success(),
        "dino-stream {args:?} should have failed:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).unwrap()
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 test path")
}

/// The lines of a run's `metrics.jsonl`, in order.
pub fn metrics_lines(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .expect("the run wrote metrics.jsonl")
        .lines()
        .map(|line| serde_json::from_str(line).expect("a metrics line is JSON"))
        .collect()
}

/// `dino-stream ingest --src SRC --out OUT EXTRA...` into split `train`; its manifest entry.
pub fn ingest_train(src: &Path, out: &Path, extra: &[&str]) -> SplitEntry {
    let mut args = vec!["ingest", "--src", path_str(src), "--out", path_str(out)];
    args.extend_from_slice(extra);
    dino_stream_ok(&args);
    let mut manifest = Manifest::load(out)
        .expect("a readable manifest")
        .expect("ingest wrote a manifest");
    manifest.splits.remove("train").expect("split train")
}
