//! `manifest.json`: the commit point of a shard directory. It is written last and atomically,
//! so a directory whose manifest lists a split holds that split complete.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::shard::SCHEMA_VERSION;

pub const MANIFEST_FILE: &str = "manifest.json";
/// Identifies our manifests among other `manifest.json` files a directory might hold.
pub const FORMAT: &str = "dino-stream-shards";

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    // `err`, not `source`: the message holds the cause, and a source would print it twice
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: io::Error },
    #[error("{path}: not a dino-stream manifest ({why}); use another output directory")]
    Foreign { path: PathBuf, why: String },
    #[error(
        "{path}: a damaged dino-stream manifest ({why}); ingest again into a new folder, or \
         remove this folder and ingest again"
    )]
    Corrupt { path: PathBuf, why: String },
    #[error("{path}: {why}")]
    Shard { path: PathBuf, why: String },
    #[error(
        "{path}: schema version {found}, this build handles version {SCHEMA_VERSION}; \
         re-ingest into a new directory"
    )]
    Version { path: PathBuf, found: u32 },
}

/// `text` (a key, a file name) safe to print on a terminal: control characters and the
/// invisible format characters that reorder or hide text (bidi overrides, zero-width) are
/// escaped as `\u{..}`, so a crafted name can neither move the cursor nor forge a line.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| {
        c.is_control()
            || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
    };
    if !text.chars().any(unsafe_char) {
        return text.into();
    }
    text.chars()
        .map(|c| {
            if unsafe_char(c) {
                format!("\\u{{{:x}}}", c as u32)
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

/// A converted or rejected input, and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct InputNote {
    pub key: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    pub file: String,
    pub rows: u64,
    pub bytes: u64,
    pub row_groups: usize,
    pub sha256: String,
}

/// How the inputs of a split were accounted for; `found` is the sum of the others.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub found: u64,
    pub stored: u64,
    pub converted: u64,
    pub rejected: u64,
    /// Hidden files and folders (names starting with '.') are not inputs.
    pub skipped_hidden: u64,
}

/// The ingest options that determine a split's bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestOptions {
    pub max_side: Option<u32>,
    pub quality: u8,
    pub seed: u64,
    pub shard_bytes: u64,
    pub row_group_bytes: u64,
    pub max_pixels: u64,
    /// SHA-256 of the `--labels` CSV, when labels came from one.
    pub labels_sha256: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitEntry {
    /// The input root, as given on the command line (canonicalized).
    pub source: String,
    /// Fingerprint of the inputs (keys, sizes, labels) and options; equal fingerprints mean an
    /// identical split.
    pub plan: String,
    pub labeled: bool,
    pub rows: u64,
    pub bytes: u64,
    pub options: IngestOptions,
    pub counts: Counts,
    pub shards: Vec<ShardEntry>,
    pub converted: Vec<InputNote>,
    pub rejected: Vec<InputNote>,
    pub skipped: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub schema_version: u32,
    /// Sorted class names; a label is an index into this list.
    pub classes: Vec<String>,
    pub splits: BTreeMap<String, SplitEntry>,
}

impl Default for Manifest {
    fn default() -> Self {
        Self {
            format: FORMAT.to_owned(),
            schema_version: SCHEMA_VERSION,
            classes: Vec::new(),
            splits: BTreeMap::new(),
        }
    }
}

impl Manifest {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(MANIFEST_FILE)
    }

    /// Loads `dir/manifest.json`; `Ok(None)` when there is none.
    pub fn load(dir: &Path) -> Result<Option<Self>, ManifestError> {
        let path = Self::path(dir);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(ManifestError::Io { path, err }),
        };
        let value: serde_json::Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            // a file that names our format but does not parse is ours, damaged
            Err(e) if text.contains(FORMAT) => {
                return Err(ManifestError::Corrupt {
                    path,
                    why: format!("invalid JSON: {e}"),
                });
            }
            Err(e) => {
                return Err(ManifestError::Foreign {
                    path,
                    why: format!("invalid JSON: {e}"),
                });
            }
        };
        let format = value.get("format").and_then(|f| f.as_str());
        if format != Some(FORMAT) {
            return Err(ManifestError::Foreign {
                path,
                why: format!("its \"format\" is {format:?}, expected {FORMAT:?}"),
            });
        }
        let found = value
            .get("schema_version")
            .and_then(|v| v.as_u64())
            .unwrap_or(0) as u32;
        if found != SCHEMA_VERSION {
            return Err(ManifestError::Version { path, found });
        }
        let manifest: Manifest =
            serde_json::from_value(value).map_err(|e| ManifestError::Corrupt {
                path: path.clone(),
                why: e.to_string(),
            })?;
        manifest
            .check()
            .map_err(|why| ManifestError::Corrupt { path, why })?;
        Ok(Some(manifest))
    }

    /// What every reader relies on: shard files are plain names inside the folder (never a
    /// path that leads out of it), and each split's row count is its shards' sum.
    fn check(&self) -> Result<(), String> {
        for (name, split) in &self.splits {
            for shard in &split.shards {
                if !is_plain_file_name(&shard.file) {
                    return Err(format!(
                        "split '{name}' lists shard {:?}, which is not a plain file name in \
                         this folder",
                        shard.file
                    ));
                }
            }
            let rows: u64 = split.shards.iter().map(|s| s.rows).sum();
            if rows != split.rows {
                return Err(format!(
                    "split '{name}' has {} rows, but its shards add up to {rows}",
                    split.rows
                ));
            }
        }
        Ok(())
    }

    /// Writes `dir/manifest.json` atomically (temporary file, fsync, rename, fsync dir).
    pub fn save(&self, dir: &Path) -> Result<(), ManifestError> {
        let mut text = serde_json::to_string_pretty(self).expect("manifest serializes");
        text.push('\n');
        let path = Self::path(dir);
        write_atomic(&path, text.as_bytes()).map_err(|err| ManifestError::Io { path, err })
    }
}

/// A name that stays in its folder: no separator, not `.` or `..`, no NUL.
fn is_plain_file_name(name: &str) -> bool {
    !(name.is_empty() || name == "." || name == ".." || name.contains(['/', '\\', '\0']))
}

impl ShardEntry {
    /// The shard's file in `dir`, which must be a regular file (a device or FIFO would be
    /// read forever).
    pub fn path(&self, dir: &Path) -> Result<PathBuf, ManifestError> {
        let path = dir.join(&self.file);
        let meta = fs::metadata(&path).map_err(|e| ManifestError::Shard {
            path: path.clone(),
            why: format!("cannot open: {e}"),
        })?;
        if !meta.is_file() {
            return Err(ManifestError::Shard {
                path,
                why: "not a regular file".into(),
            });
        }
        Ok(path)
    }
}

/// Replaces `path` with `bytes` so that readers see either the old or the new content, also
/// across a crash.
/// A failed write (a full disk) leaves nothing behind.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = TempFile(dir.join(format!(".{name}.tmp")));
    {
        let mut f = fs::File::create(&tmp.0)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp.0, path)?;
    sync_dir(dir)
}

/// A file being written under a temporary name: removed when dropped unless it was renamed
/// into place, so that an error (a full disk) leaves no partial file behind.
#[derive(Debug)]
pub struct TempFile(pub PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        // after a rename there is nothing left to remove
        let _ = fs::remove_file(&self.0);
    }
}

/// An exclusive lock on `dir` for one writer, held for the life of the returned file (the OS
/// drops it when the process dies): `Ok(None)` when another process holds it.
pub fn try_lock_dir(dir: &Path) -> io::Result<Option<fs::File>> {
    let file = fs::File::create(dir.join(".dino-stream.lock"))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(fs::TryLockError::WouldBlock) => Ok(None),
        Err(fs::TryLockError::Error(e)) => Err(e),
    }
}

/// Makes a rename in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}
