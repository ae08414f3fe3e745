//! A split of a shard directory, opened for reading: every shard checked against the
//! manifest up front, and row groups read with only the columns the pipeline needs.

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::{Array, BinaryArray, Int32Array, RecordBatch, StringArray};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::manifest::{Manifest, ManifestError, SplitEntry};
use crate::shard::{self, COL_JPEG, COL_KEY, COL_LABEL, ShardError};

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Shard(#[from] ShardError),
    #[error("{dir}: no manifest.json; run `dino-stream ingest` into it first")]
    NoManifest { dir: PathBuf },
    #[error("{dir}: no split '{split}' (the manifest has: {available})")]
    NoSplit {
        dir: PathBuf,
        split: String,
        available: String,
    },
    #[error("{path}: {what}; re-run the ingest (--overwrite) to rebuild it")]
    Mismatch { path: PathBuf, what: String },
}

/// Whether opening re-hashes every shard (reads all the data once) or trusts sizes, footers
/// and provenance records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    Checksums,
    Footers,
}

/// One row group: where it is and which global sample indices it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowGroup {
    pub shard: usize,
    pub index: usize,
    pub rows: u32,
    /// Global index of its first row: samples are numbered through the shards in manifest
    /// order.
    pub first: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone)]
pub struct Dataset {
    pub dir: PathBuf,
    pub split: String,
    pub classes: Vec<String>,
    pub shards: Vec<PathBuf>,
    pub row_groups: Vec<RowGroup>,
    pub len: u64,
}

/// The needed columns of one row group, as Arrow arrays; cloning shares the buffers.
#[derive(Debug, Clone)]
pub struct Columns {
    pub keys: StringArray,
    pub labels: Int32Array,
    pub jpegs: BinaryArray,
}

/// The manifest's entry for `split` of the shard folder `dir` (what a run's checkpoints
/// record of its data, and what [`Dataset::open`] reads).
pub fn split_entry(dir: &Path, split: &str) -> Result<SplitEntry, DatasetError> {
    manifest_split(dir, split).map(|(_, entry)| entry)
}

/// The manifest of `dir` and, taken out of it, the entry for `split`.
fn manifest_split(dir: &Path, split: &str) -> Result<(Manifest, SplitEntry), DatasetError> {
    let mut manifest = Manifest::load(dir)?.ok_or_else(|| DatasetError::NoManifest {
        dir: dir.to_owned(),
    })?;
    let available = manifest
        .splits
        .keys()
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    let entry = manifest
        .splits
        .remove(split)
        .ok_or_else(|| DatasetError::NoSplit {
            dir: dir.to_owned(),
            split: split.to_owned(),
            available,
        })?;
    Ok((manifest, entry))
}

impl Dataset {
    pub fn open(dir: &Path, split: &str, verify: Verify) -> Result<Self, DatasetError> {
        let (manifest, entry) = manifest_split(dir, split)?;
        let mut shards = Vec::new();
        let mut row_groups = Vec::new();
        let mut first = 0u64;
        for (shard_index, shard) in entry.shards.iter().enumerate() {
            let path = shard.path(dir)?;
            let mismatch = |what: String| DatasetError::Mismatch {
                path: path.clone(),
                what,
            };
            let size = std::fs::metadata(&path)
                .map_err(|e| mismatch(format!("cannot open: {e}")))?
                .len();
            if size != shard.bytes {
                return Err(mismatch(format!(
                    "{size} bytes, the manifest says {}",
                    shard.bytes
                )));
            }
            if verify == Verify::Checksums {
                let (sha256, _) = shard::sha256_file(&path)?;
                if sha256 != shard.sha256 {
                    return Err(mismatch(format!(
                        "SHA-256 {sha256} differs from the manifest's {}",
                        shard.sha256
                    )));
                }
            }
            let footer = shard::read_footer(&path)?;
            let record = shard::read_record(&path, &footer)?;
            if record.plan != entry.plan {
                return Err(mismatch(
                    "written by another ingest than the manifest's".into(),
                ));
            }
            let rows = footer.file_metadata().num_rows() as u64;
            if rows != shard.rows {
                return Err(mismatch(format!(
                    "{rows} rows, the manifest says {}",
                    shard.rows
                )));
            }
            for (index, rg) in footer.row_groups().iter().enumerate() {
                row_groups.push(RowGroup {
                    shard: shard_index,
                    index,
                    rows: rg.num_rows() as u32,
                    first,
                    bytes: rg.compressed_size() as u64,
                });
                first += rg.num_rows() as u64;
            }
            shards.push(path);
        }
        Ok(Self {
            dir: dir.to_owned(),
            split: split.to_owned(),
            classes: manifest.classes,
            shards,
            row_groups,
            len: first,
        })
    }

    /// Reads the key, label and jpeg columns of one row group (width and height stay on
    /// disk).
    pub fn read(&self, row_group: &RowGroup) -> Result<Columns, ShardError> {
        let path = &self.shards[row_group.shard];
        let fail = |what: String| ShardError::Format {
            path: path.clone(),
            what,
        };
        let file = File::open(path).map_err(|e| ShardError::io(path, e))?;
        let builder =
            ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| fail(e.to_string()))?;
        let mask =
            ProjectionMask::columns(builder.parquet_schema(), [COL_KEY, COL_LABEL, COL_JPEG]);
        let reader = builder
            .with_projection(mask)
            .with_row_groups(vec![row_group.index])
            .with_batch_size(row_group.rows.max(1) as usize)
            .build()
            .map_err(|e| fail(e.to_string()))?;
        let batches: Vec<RecordBatch> = reader
            .collect::<Result<_, _>>()
            .map_err(|e| fail(e.to_string()))?;
        // With the batch size set to the row count the reader yields exactly one batch.
        let [batch] = <[RecordBatch; 1]>::try_from(batches)
            .map_err(|b| fail(format!("row group read as {} batches, not 1", b.len())))?;
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .cloned()
                .ok_or_else(|| fail(format!("no column {name}")))
        };
        let keys = column(COL_KEY)?;
        let labels = column(COL_LABEL)?;
        let jpegs = column(COL_JPEG)?;
        let cols = Columns {
            keys: downcast::<StringArray>(&keys).ok_or_else(|| fail("key is not Utf8".into()))?,
            labels: downcast::<Int32Array>(&labels)
                .ok_or_else(|| fail("label is not Int32".into()))?,
            jpegs: downcast::<BinaryArray>(&jpegs)
                .ok_or_else(|| fail("jpeg is not Binary".into()))?,
        };
        if cols.jpegs.len() != row_group.rows as usize {
            return Err(fail(format!(
                "row group {} has {} rows, its footer says {}",
                row_group.index,
                cols.jpegs.len(),
                row_group.rows
            )));
        }
        Ok(cols)
    }
}

fn downcast<T: Array + Clone + 'static>(array: &arrow_array::ArrayRef) -> Option<T> {
    array.as_any().downcast_ref::<T>().cloned()
}
