//! `ingest`: an image folder to Parquet shards and a manifest.
//!
//! The inputs are sorted by key and put in a seeded shuffled order; workers validate them in
//! parallel and a single writer consumes the results in that order, so the bytes written depend
//! only on the inputs and the options, never on `workers` or scheduling. Shards are written
//! under a temporary name and renamed when complete; each records in its footer which input
//! positions it covers, so a run that was killed resumes after its last complete shard.

mod scan;
mod validate;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crossbeam_channel::bounded;
use serde::Serialize;
use sha2::{Digest, Sha256};

pub use scan::{InputFile, Inputs, scan};
pub use validate::{Limits, Outcome, Validator, fit_within};

use crate::manifest::{
    Counts, IngestOptions, InputNote, Manifest, ManifestError, ShardEntry, SplitEntry, TempFile,
    sync_dir, try_lock_dir,
};
use crate::rng;
use crate::shard::{self, Row, SCHEMA_VERSION, ShardError, ShardRecord, ShardWriter};

/// Defaults chosen for ImageNet-scale data: ~256 MiB shards of 64 MiB row groups.
pub const DEFAULT_SHARD_BYTES: u64 = 256 << 20;
pub const DEFAULT_ROW_GROUP_BYTES: u64 = 64 << 20;
/// Larger images are rejected as absurd.
pub use crate::jpeg::DEFAULT_MAX_PIXELS;
pub const DEFAULT_QUALITY: u8 = 90;
/// Stream id of the ingest shuffle in [`rng::rng`].
const SHUFFLE_STREAM: u64 = 0x1_0000;

#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub src: PathBuf,
    pub out: PathBuf,
    pub split: String,
    pub labels: Option<PathBuf>,
    pub max_side: Option<u32>,
    pub quality: u8,
    pub workers: usize,
    pub seed: u64,
    pub shard_bytes: u64,
    pub row_group_bytes: u64,
    pub max_pixels: u64,
    pub strict: bool,
    pub overwrite: bool,
}

impl IngestConfig {
    pub fn new(src: impl Into<PathBuf>, out: impl Into<PathBuf>) -> Self {
        Self {
            src: src.into(),
            out: out.into(),
            split: "train".into(),
            labels: None,
            max_side: None,
            quality: DEFAULT_QUALITY,
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            seed: 0,
            shard_bytes: DEFAULT_SHARD_BYTES,
            row_group_bytes: DEFAULT_ROW_GROUP_BYTES,
            max_pixels: DEFAULT_MAX_PIXELS,
            strict: false,
            overwrite: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("{path}: {why}")]
    Source { path: PathBuf, why: String },
    #[error("--labels {path}: {why}")]
    Labels { path: PathBuf, why: String },
    #[error("invalid option {option}: {why}")]
    Option { option: &'static str, why: String },
    // `err`, not `source`: the message holds the cause, and a source would print it twice
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: io::Error },
    #[error("output folder {path}: {why}")]
    Output { path: PathBuf, why: String },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Shard(#[from] ShardError),
    #[error("{0}")]
    Conflict(String),
    #[error("--strict: {key} rejected: {reason}")]
    StrictReject { key: String, reason: String },
    #[error("no image could be stored from {src}: all {count} input files were rejected ({first})")]
    NothingStored {
        src: PathBuf,
        count: usize,
        first: String,
    },
}

impl IngestError {
    pub(crate) fn io(path: &Path, err: io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            err,
        }
    }
}

/// Progress callbacks, called from the writing thread.
pub trait Observer: Sync {
    /// `total` input files, of which `already_done` are covered by shards of an earlier run.
    fn begin(&self, _total: u64, _already_done: u64) {}
    fn file_done(&self, _input_bytes: u64, _output_bytes: u64) {}
    fn shard_done(&self, _file: &str) {}
}

/// An observer that ignores everything.
pub struct Quiet;
impl Observer for Quiet {}

#[derive(Debug, Clone)]
pub struct IngestReport {
    pub split: SplitEntry,
    /// The manifest already held this exact split; nothing was written.
    pub up_to_date: bool,
    /// Shards kept from an interrupted earlier run.
    pub resumed_shards: usize,
    pub empty_classes: Vec<String>,
    pub labels_without_file: Vec<String>,
}

fn check_config(cfg: &IngestConfig) -> Result<(), IngestError> {
    let opt = |option, why: &str| {
        Err(IngestError::Option {
            option,
            why: why.into(),
        })
    };
    let split_ok = !cfg.split.is_empty()
        && cfg
            .split
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !split_ok {
        return opt(
            "--split",
            "use letters, digits, '-' and '_' only (it names files)",
        );
    }
    if !(1..=100).contains(&cfg.quality) {
        return opt("--quality", "must be 1..=100");
    }
    if cfg.max_side == Some(0) {
        return opt("--max-side", "must be at least 1");
    }
    if cfg.shard_bytes == 0 || cfg.row_group_bytes == 0 {
        return opt("--shard-bytes/--row-group-bytes", "must be positive");
    }
    if cfg.workers == 0 {
        return opt("--workers", "must be at least 1");
    }
    Ok(())
}

/// An output folder inside the input would be read as a class folder by the next run.
fn check_out_outside_src(cfg: &IngestConfig) -> Result<(), IngestError> {
    let Ok(src) = fs::canonicalize(&cfg.src) else {
        return Ok(()); // the scan reports a missing input
    };
    // the output may not exist yet: resolve its deepest existing ancestor
    let mut existing = cfg.out.as_path();
    let mut rest = Vec::new();
    let out = loop {
        match fs::canonicalize(existing) {
            Ok(found) => break rest.iter().rev().fold(found, |p, part| p.join(part)),
            Err(_) => match (existing.parent(), existing.file_name()) {
                (Some(parent), Some(name)) => {
                    rest.push(name.to_owned());
                    existing = if parent.as_os_str().is_empty() {
                        Path::new(".")
                    } else {
                        parent
                    };
                }
                _ => return Ok(()),
            },
        }
    };
    if out.starts_with(&src) {
        return Err(IngestError::Option {
            option: "--out",
            why: format!(
                "{} is inside --src {}: the next ingest would read its shards as input \
                 images; choose a folder outside the input",
                cfg.out.display(),
                cfg.src.display()
            ),
        });
    }
    Ok(())
}

/// The fingerprint of everything that determines a split's bytes.
fn plan_fingerprint(cfg: &IngestConfig, inputs: &Inputs, options: &IngestOptions) -> String {
    #[derive(Serialize)]
    struct Plan<'a> {
        schema_version: u32,
        split: &'a str,
        options: &'a IngestOptions,
        classes: &'a [String],
        files: Vec<(&'a str, u64, i32)>,
    }
    let plan = Plan {
        schema_version: SCHEMA_VERSION,
        split: &cfg.split,
        options,
        classes: &inputs.classes,
        files: inputs
            .files
            .iter()
            .map(|f| (f.key.as_str(), f.size, f.label))
            .collect(),
    };
    let json = serde_json::to_vec(&plan).expect("plan serializes");
    shard::hex(&Sha256::digest(&json))
}

/// Takes an exclusive lock on the output folder for the life of the returned file, so two
/// ingests cannot interleave their shards or manifests.
fn lock_output(out: &Path) -> Result<fs::File, IngestError> {
    match try_lock_dir(out) {
        Ok(Some(file)) => Ok(file),
        Ok(None) => Err(IngestError::Output {
            path: out.to_owned(),
            why: "another ingest is writing here; wait for it to finish".into(),
        }),
        Err(e) => Err(IngestError::Output {
            path: out.to_owned(),
            why: format!("not writable: {e}"),
        }),
    }
}

/// Shard files of `split` in `out`, by index.
fn existing_shards(out: &Path, split: &str) -> Result<BTreeMap<usize, PathBuf>, IngestError> {
    let mut found = BTreeMap::new();
    let prefix = format!("{split}-");
    for entry in fs::read_dir(out).map_err(|e| IngestError::io(out, e))? {
        let entry = entry.map_err(|e| IngestError::io(out, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let index = name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(".parquet"))
            .filter(|digits| digits.len() == 5)
            .and_then(|digits| digits.parse::<usize>().ok());
        if let Some(index) = index {
            found.insert(index, entry.path());
        } else if name.starts_with(&format!(".{prefix}")) && name.ends_with(".tmp") {
            // a shard that was being written when an earlier run died
            fs::remove_file(entry.path()).map_err(|e| IngestError::io(&entry.path(), e))?;
        }
    }
    Ok(found)
}

fn remove_files<'a>(paths: impl IntoIterator<Item = &'a PathBuf>) -> Result<(), IngestError> {
    for path in paths {
        fs::remove_file(path).map_err(|e| IngestError::io(path, e))?;
    }
    Ok(())
}

/// Runs an ingest of one split into `cfg.out`.
pub fn ingest(cfg: &IngestConfig, observer: &dyn Observer) -> Result<IngestReport, IngestError> {
    check_config(cfg)?;
    check_out_outside_src(cfg)?;
    let inputs = scan(&cfg.src, cfg.labels.as_deref())?;
    if inputs.files.is_empty() {
        return Err(IngestError::Source {
            path: cfg.src.clone(),
            why: "no input files found".into(),
        });
    }
    fs::create_dir_all(&cfg.out).map_err(|e| IngestError::Output {
        path: cfg.out.clone(),
        why: format!("cannot create: {e}"),
    })?;
    let _lock = lock_output(&cfg.out)?;

    let mut manifest = Manifest::load(&cfg.out)?.unwrap_or_default();
    if inputs.labeled {
        if manifest.classes.is_empty() {
            manifest.classes = inputs.classes.clone();
        } else if manifest.classes != inputs.classes {
            return Err(IngestError::Conflict(class_mismatch(
                &cfg.out,
                &manifest.classes,
                &inputs.classes,
            )));
        }
    }
    let labels_sha256 = match &cfg.labels {
        Some(p) => Some(shard::sha256_file(p)?.0),
        None => None,
    };
    let options = IngestOptions {
        max_side: cfg.max_side,
        quality: cfg.quality,
        seed: cfg.seed,
        shard_bytes: cfg.shard_bytes,
        row_group_bytes: cfg.row_group_bytes,
        max_pixels: cfg.max_pixels,
        labels_sha256,
    };
    let plan = plan_fingerprint(cfg, &inputs, &options);
    let report = |split: SplitEntry, up_to_date, resumed_shards| IngestReport {
        split,
        up_to_date,
        resumed_shards,
        empty_classes: inputs.empty_classes.clone(),
        labels_without_file: inputs.labels_without_file.clone(),
    };

    // A split that is replaced keeps its shards and its manifest entry until the new one is
    // complete: the new shards are written into a staging folder and moved in at the end,
    // so a replacement that fails (or stores nothing) leaves the old split as it was.
    let staging = cfg.out.join(format!(".overwrite-{}", cfg.split));
    let replacing = match manifest.splits.get(&cfg.split) {
        Some(done) if done.plan == plan && !cfg.overwrite => {
            return Ok(report(done.clone(), true, 0));
        }
        Some(done) if !cfg.overwrite => {
            return Err(IngestError::Conflict(format!(
                "{}: split '{}' was already ingested from {} with other inputs or options; \
                 pass --overwrite to replace it, or use another --split or --out",
                Manifest::path(&cfg.out).display(),
                cfg.split,
                done.source
            )));
        }
        Some(_) => true,
        None => false,
    };
    let shard_dir = if replacing {
        fs::create_dir_all(&staging).map_err(|e| IngestError::io(&staging, e))?;
        staging.clone()
    } else {
        // left by a replacement that died while moving its shards in
        if staging.exists() {
            fs::remove_dir_all(&staging).map_err(|e| IngestError::io(&staging, e))?;
        }
        cfg.out.clone()
    };
    let mut existing = existing_shards(&shard_dir, &cfg.split)?;

    // Resume: keep the leading run of shards that this very plan wrote.
    let mut resumed: Vec<(ShardEntry, ShardRecord)> = Vec::new();
    let mut covered = 0;
    for (&index, path) in &existing {
        let footer =
            shard::read_footer(path).and_then(|meta| Ok((shard::read_record(path, &meta)?, meta)));
        match footer {
            Ok((r, meta)) if r.plan == plan && r.index == index && r.input_start == covered => {
                if index != resumed.len() {
                    break;
                }
                let (sha256, bytes) = shard::sha256_file(path)?;
                covered = r.input_end;
                let entry = ShardEntry {
                    file: shard::shard_file_name(&cfg.split, index),
                    rows: r.rows,
                    bytes,
                    row_groups: meta.num_row_groups(),
                    sha256,
                };
                resumed.push((entry, r));
            }
            Ok((r, _)) if r.plan == plan => break,
            _ if cfg.overwrite => break,
            Ok(_) => {
                return Err(IngestError::Conflict(format!(
                    "{}: left by an unfinished ingest of split '{}' with other inputs or \
                     options; pass --overwrite to replace it",
                    path.display(),
                    cfg.split
                )));
            }
            Err(e) => {
                return Err(IngestError::Conflict(format!(
                    "{e}; this file is in the way of split '{}': pass --overwrite to replace it",
                    cfg.split
                )));
            }
        }
    }
    let stale: Vec<PathBuf> = existing.split_off(&resumed.len()).into_values().collect();
    remove_files(&stale)?;

    let order = {
        let mut order: Vec<usize> = (0..inputs.files.len()).collect();
        rng::shuffle(&mut order, &mut rng::rng(cfg.seed, SHUFFLE_STREAM));
        order
    };
    observer.begin(order.len() as u64, covered as u64);
    let resumed_shards = resumed.len();
    let mut writer = SplitWriter {
        cfg,
        dir: &shard_dir,
        plan: &plan,
        shards: resumed,
        open: None,
        covered,
        pending: Notes::default(),
        observer,
    };
    if covered < order.len() {
        run_workers(cfg, &inputs.files, &order, covered, &mut writer)?;
    }
    let shards = writer.finish(order.len())?;
    if shards.iter().all(|(_, r)| r.rows == 0) {
        let first = shards
            .iter()
            .flat_map(|(_, r)| &r.rejected)
            .next()
            .map(|n| format!("first: {}: {}", n.key, n.reason))
            .unwrap_or_default();
        let paths: Vec<PathBuf> = shards
            .iter()
            .map(|(e, _)| shard_dir.join(&e.file))
            .collect();
        remove_files(&paths)?;
        if replacing {
            fs::remove_dir(&staging).map_err(|e| IngestError::io(&staging, e))?;
        }
        return Err(IngestError::NothingStored {
            src: cfg.src.clone(),
            count: order.len(),
            first,
        });
    }

    if replacing {
        // The manifest lets go of the old split before its shards are removed; a crash
        // from here on leaves no split listed, and the next run finds the moved shards
        // (they record this plan) and resumes with them.
        manifest.splits.remove(&cfg.split);
        manifest.save(&cfg.out)?;
        let old: Vec<PathBuf> = existing_shards(&cfg.out, &cfg.split)?
            .into_values()
            .collect();
        remove_files(&old)?;
        for (entry, _) in &shards {
            let (from, to) = (staging.join(&entry.file), cfg.out.join(&entry.file));
            fs::rename(&from, &to).map_err(|e| IngestError::io(&to, e))?;
        }
        fs::remove_dir(&staging).map_err(|e| IngestError::io(&staging, e))?;
        sync_dir(&cfg.out).map_err(|e| IngestError::io(&cfg.out, e))?;
    }
    let split = split_entry(cfg, &inputs, plan, options, shards);
    manifest.splits.insert(cfg.split.clone(), split.clone());
    manifest.save(&cfg.out)?;
    Ok(report(split, false, resumed_shards))
}

fn class_mismatch(out: &Path, have: &[String], new: &[String]) -> String {
    let only_have: Vec<_> = have.iter().filter(|c| !new.contains(c)).take(3).collect();
    let only_new: Vec<_> = new.iter().filter(|c| !have.contains(c)).take(3).collect();
    format!(
        "{}: its {} classes differ from the {} classes of this input (only in the manifest: \
         {only_have:?}, only in the input: {only_new:?}); labels would not mean the same \
         class across splits, so use another --out",
        Manifest::path(out).display(),
        have.len(),
        new.len()
    )
}

fn split_entry(
    cfg: &IngestConfig,
    inputs: &Inputs,
    plan: String,
    options: IngestOptions,
    shards: Vec<(ShardEntry, ShardRecord)>,
) -> SplitEntry {
    let mut converted = Vec::new();
    let mut rejected = Vec::new();
    let mut entries = Vec::new();
    for (entry, record) in shards {
        converted.extend(record.converted);
        rejected.extend(record.rejected);
        entries.push(entry);
    }
    converted.sort();
    rejected.sort();
    let rows: u64 = entries.iter().map(|e| e.rows).sum();
    let counts = Counts {
        found: (inputs.files.len() + inputs.hidden.len()) as u64,
        stored: rows - converted.len() as u64,
        converted: converted.len() as u64,
        rejected: rejected.len() as u64,
        skipped_hidden: inputs.hidden.len() as u64,
    };
    let source = fs::canonicalize(&cfg.src).unwrap_or_else(|_| cfg.src.clone());
    SplitEntry {
        source: source.display().to_string(),
        plan,
        labeled: inputs.labeled,
        rows,
        bytes: entries.iter().map(|e| e.bytes).sum(),
        options,
        counts,
        shards: entries,
        converted,
        rejected,
        skipped: inputs.hidden.clone(),
    }
}

/// Validates `order[start..]` on `cfg.workers` threads and hands the outcomes to `writer` in
/// order. At most `window` files are between dispatch and writing, which bounds memory however
/// uneven the per-file work is.
fn run_workers(
    cfg: &IngestConfig,
    files: &[InputFile],
    order: &[usize],
    start: usize,
    writer: &mut SplitWriter<'_>,
) -> Result<(), IngestError> {
    let limits = Limits {
        max_side: cfg.max_side,
        max_pixels: cfg.max_pixels,
        quality: cfg.quality,
    };
    let window = cfg.workers * 4;
    let (job_tx, job_rx) = bounded::<usize>(window);
    let (done_tx, done_rx) = bounded::<(usize, Outcome)>(window);
    let (slot_tx, slot_rx) = bounded::<()>(window);
    std::thread::scope(|scope| {
        scope.spawn(move || {
            for position in start..order.len() {
                if slot_tx.send(()).is_err() || job_tx.send(position).is_err() {
                    return; // the writer stopped
                }
            }
        });
        let mut workers = Vec::new();
        for _ in 0..cfg.workers {
            let (job_rx, done_tx) = (job_rx.clone(), done_tx.clone());
            workers.push(scope.spawn(move || -> Result<(), IngestError> {
                let mut validator = Validator::new(limits).map_err(|e| IngestError::Output {
                    path: cfg.out.clone(),
                    why: format!("cannot start a JPEG codec: {e}"),
                })?;
                for position in job_rx {
                    let input = &files[order[position]];
                    let outcome = match &input.problem {
                        Some(problem) => Outcome::Rejected(problem.clone()),
                        None => validator.check_file(&input.path),
                    };
                    if done_tx.send((position, outcome)).is_err() {
                        break;
                    }
                }
                Ok(())
            }));
        }
        drop((job_rx, done_tx));
        let written = (move || {
            let mut early = BTreeMap::new();
            let mut next = start;
            for (position, outcome) in done_rx {
                early.insert(position, outcome);
                while let Some(outcome) = early.remove(&next) {
                    writer.add(next, &files[order[next]], outcome)?;
                    let _ = slot_rx.recv();
                    next += 1;
                }
            }
            Ok(())
        })();
        for worker in workers {
            worker.join().expect("ingest worker panicked")?;
        }
        written
    })
}

#[derive(Default)]
struct Notes {
    converted: Vec<InputNote>,
    rejected: Vec<InputNote>,
}

struct OpenShard {
    index: usize,
    /// removed if the shard is never finished (an error, a full disk)
    tmp: TempFile,
    writer: ShardWriter,
    input_start: usize,
    bytes: u64,
}

/// Consumes outcomes in input order and cuts them into shards.
struct SplitWriter<'a> {
    cfg: &'a IngestConfig,
    /// where the shards are written: the output folder, or the staging folder of a
    /// replacement
    dir: &'a Path,
    plan: &'a str,
    shards: Vec<(ShardEntry, ShardRecord)>,
    open: Option<OpenShard>,
    /// Input positions below this are accounted for by closed shards.
    covered: usize,
    /// Notes for inputs after `covered` and not in the open shard (rejects that come before
    /// the next shard's first row).
    pending: Notes,
    observer: &'a dyn Observer,
}

impl SplitWriter<'_> {
    fn add(
        &mut self,
        position: usize,
        input: &InputFile,
        outcome: Outcome,
    ) -> Result<(), IngestError> {
        self.observer.file_done(input.size, outcome.output_bytes());
        let note = |reason: String| InputNote {
            key: input.key.clone(),
            reason,
        };
        match outcome {
            Outcome::Rejected(reason) => {
                if self.cfg.strict {
                    return Err(IngestError::StrictReject {
                        key: input.key.clone(),
                        reason,
                    });
                }
                self.pending.rejected.push(note(reason));
            }
            Outcome::Image {
                jpeg,
                width,
                height,
                note: converted,
            } => {
                let size = jpeg.len() as u64;
                if let Some(open) = &self.open
                    && open.bytes > 0
                    && open.bytes + size > self.cfg.shard_bytes
                {
                    self.close(position)?;
                }
                if self.open.is_none() {
                    self.open_next()?;
                }
                if let Some(reason) = converted {
                    self.pending.converted.push(note(reason));
                }
                let open = self.open.as_mut().expect("a shard is open");
                open.writer.push(&Row {
                    key: input.key.clone(),
                    label: input.label,
                    jpeg,
                    width,
                    height,
                })?;
                open.bytes += size;
            }
        }
        Ok(())
    }

    fn open_next(&mut self) -> Result<(), IngestError> {
        let index = self.shards.len();
        let name = shard::shard_file_name(&self.cfg.split, index);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let tmp = TempFile(tmp);
        let writer = ShardWriter::create(&tmp.0, self.cfg.row_group_bytes as usize)?;
        self.open = Some(OpenShard {
            index,
            tmp,
            writer,
            input_start: self.covered,
            bytes: 0,
        });
        Ok(())
    }

    /// Closes the open shard as covering inputs up to `input_end` (exclusive).
    fn close(&mut self, input_end: usize) -> Result<(), IngestError> {
        let open = self.open.take().expect("close needs an open shard");
        let notes = std::mem::take(&mut self.pending);
        let record = ShardRecord {
            plan: self.plan.to_owned(),
            index: open.index,
            input_start: open.input_start,
            input_end,
            rows: open.writer.rows(),
            converted: notes.converted,
            rejected: notes.rejected,
        };
        let written = open.writer.finish(&record)?;
        let name = shard::shard_file_name(&self.cfg.split, open.index);
        let path = self.dir.join(&name);
        fs::rename(&open.tmp.0, &path).map_err(|e| IngestError::io(&path, e))?;
        sync_dir(self.dir).map_err(|e| IngestError::io(self.dir, e))?;
        self.observer.shard_done(&name);
        self.shards.push((
            ShardEntry {
                file: name,
                rows: written.rows,
                bytes: written.bytes,
                row_groups: written.row_groups,
                sha256: written.sha256,
            },
            record,
        ));
        self.covered = input_end;
        Ok(())
    }

    /// Closes the last shard. Inputs after the last stored image (all rejected) still need a
    /// shard to account for them; a run that stored nothing writes one empty shard, which the
    /// caller turns into an error.
    fn finish(mut self, total: usize) -> Result<Vec<(ShardEntry, ShardRecord)>, IngestError> {
        let unaccounted = self.covered < total;
        if self.open.is_none() && unaccounted {
            self.open_next()?;
        }
        if self.open.is_some() {
            self.close(total)?;
        }
        Ok(self.shards)
    }
}
