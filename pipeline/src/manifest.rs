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
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: not a dino-stream manifest ({why}); use another output directory")]
    Foreign { path: PathBuf, why: String },
    #[error(
        "{path}: schema version {found}, this build handles version {SCHEMA_VERSION}; \
         re-ingest into a new directory"
    )]
    Version { path: PathBuf, found: u32 },
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
            Err(source) => return Err(ManifestError::Io { path, source }),
        };
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ManifestError::Foreign {
                path: path.clone(),
                why: format!("invalid JSON: {e}"),
            })?;
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
        serde_json::from_value(value)
            .map(Some)
            .map_err(|e| ManifestError::Foreign {
                path,
                why: format!("malformed: {e}"),
            })
    }

    /// Writes `dir/manifest.json` atomically (temporary file, fsync, rename, fsync dir).
    pub fn save(&self, dir: &Path) -> Result<(), ManifestError> {
        let mut text = serde_json::to_string_pretty(self).expect("manifest serializes");
        text.push('\n');
        let path = Self::path(dir);
        write_atomic(&path, text.as_bytes()).map_err(|source| ManifestError::Io { path, source })
    }
}

/// Replaces `path` with `bytes` so that readers see either the old or the new content, also
/// across a crash.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    sync_dir(dir)
}

/// Makes a rename in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}
