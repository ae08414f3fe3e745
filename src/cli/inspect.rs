//! `dino-stream inspect`: what a shard directory holds, and whether its shards are intact.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use dino_pipeline::manifest::{Manifest, ShardEntry, SplitEntry, printable};
use dino_pipeline::shard;

use super::bytes;

/// Print a shard directory's manifest summary; with --verify, re-check every shard.
#[derive(clap::Args)]
pub struct Args {
    /// Folder written by `dino-stream ingest`
    #[arg(value_name = "DIR")]
    dir: PathBuf,
    /// Re-check each shard's size, SHA-256, schema, row count and provenance
    #[arg(long)]
    verify: bool,
    /// List every converted and rejected input with its reason
    #[arg(long)]
    list: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let manifest = Manifest::load(&args.dir)?.with_context(|| {
        format!(
            "{} has no manifest.json: not an ingest output, or its ingest has not finished",
            args.dir.display()
        )
    })?;
    println!(
        "{}: schema version {}, {} classes, {} split(s)",
        Manifest::path(&args.dir).display(),
        manifest.schema_version,
        manifest.classes.len(),
        manifest.splits.len()
    );
    let mut failures = 0;
    for (name, split) in &manifest.splits {
        print_split(name, split, args.list);
        if args.verify {
            for entry in &split.shards {
                match verify_shard(&args.dir, split, entry) {
                    Ok(()) => println!("    ok      {}", entry.file),
                    Err(e) => {
                        failures += 1;
                        println!("    FAILED  {}: {e:#}", entry.file);
                    }
                }
            }
        }
    }
    if failures > 0 {
        bail!(
            "{failures} shard(s) failed verification; re-run the ingest (--overwrite) to rebuild them"
        );
    }
    if args.verify {
        println!("all shards verified");
    }
    Ok(ExitCode::SUCCESS)
}

fn print_split(name: &str, split: &SplitEntry, list: bool) {
    let c = &split.counts;
    println!(
        "split '{name}': {} rows in {} shard(s), {}, {}; from {}",
        split.rows,
        split.shards.len(),
        bytes(split.bytes),
        if split.labeled {
            "labeled"
        } else {
            "unlabeled"
        },
        split.source
    );
    println!(
        "  {} files found: {} stored as is, {} converted, {} rejected, {} hidden skipped",
        c.found, c.stored, c.converted, c.rejected, c.skipped_hidden
    );
    let o = &split.options;
    println!(
        "  options: seed {}, quality {}, max side {}, shard {}, row group {}",
        o.seed,
        o.quality,
        o.max_side.map_or("none".into(), |m| m.to_string()),
        bytes(o.shard_bytes),
        bytes(o.row_group_bytes)
    );
    if list {
        for note in &split.converted {
            println!(
                "  converted {}: {}",
                printable(&note.key),
                printable(&note.reason)
            );
        }
        for note in &split.rejected {
            println!(
                "  rejected  {}: {}",
                printable(&note.key),
                printable(&note.reason)
            );
        }
    }
}

fn verify_shard(dir: &Path, split: &SplitEntry, entry: &ShardEntry) -> anyhow::Result<()> {
    let path = entry.path(dir)?;
    let (sha256, size) = shard::sha256_file(&path)?;
    if size != entry.bytes {
        bail!("{size} bytes, the manifest says {}", entry.bytes);
    }
    if sha256 != entry.sha256 {
        bail!(
            "SHA-256 {sha256} differs from the manifest's {}",
            entry.sha256
        );
    }
    let footer = shard::read_footer(&path)?;
    let rows = footer.file_metadata().num_rows() as u64;
    if rows != entry.rows {
        bail!("{rows} rows, the manifest says {}", entry.rows);
    }
    let record = shard::read_record(&path, &footer)?;
    if record.plan != split.plan {
        bail!(
            "written by another ingest (plan {}), not this split's",
            record.plan
        );
    }
    Ok(())
}
