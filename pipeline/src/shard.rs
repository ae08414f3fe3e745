//! The shard format, version 1: Parquet files `{split}-{index:05}.parquet` with the columns
//! `key` (Utf8), `label` (Int32, -1 when unlabeled), `jpeg` (Binary), `width`, `height` (Int32).
//!
//! The `jpeg` column is written uncompressed, without dictionary and without statistics: JPEG
//! is already entropy-coded, and min/max over image bytes is meaningless. Row groups are bounded
//! in bytes so the writer's memory stays bounded and readers can shuffle at a fine grain.
//! Each file's key-value metadata carries the schema version and a [`ShardRecord`] that says
//! which inputs the shard accounts for, which makes an interrupted ingest resumable from the
//! shards alone.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{ArrayBuilder, BinaryBuilder, Int32Builder, StringBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;
use parquet::file::metadata::{KeyValue, ParquetMetaData};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::manifest::InputNote;

pub const SCHEMA_VERSION: u32 = 1;
pub const COL_KEY: &str = "key";
pub const COL_LABEL: &str = "label";
pub const COL_JPEG: &str = "jpeg";
pub const COL_WIDTH: &str = "width";
pub const COL_HEIGHT: &str = "height";
/// Parquet key-value metadata keys written into every shard.
pub const META_SCHEMA_VERSION: &str = "dino_stream.schema_version";
pub const META_RECORD: &str = "dino_stream.shard";

#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    // `err`, not `source`: the message holds the cause, and a source would print it twice
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: io::Error },
    #[error("{path}: {err}")]
    Parquet {
        path: PathBuf,
        err: parquet::errors::ParquetError,
    },
    #[error("{path}: {what}")]
    Format { path: PathBuf, what: String },
}

impl ShardError {
    pub(crate) fn io(path: &Path, err: io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            err,
        }
    }
    fn parquet(path: &Path, err: parquet::errors::ParquetError) -> Self {
        Self::Parquet {
            path: path.to_owned(),
            err,
        }
    }
    fn format(path: &Path, what: impl Into<String>) -> Self {
        Self::Format {
            path: path.to_owned(),
            what: what.into(),
        }
    }
}

/// The Arrow schema of version 1.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(COL_KEY, DataType::Utf8, false),
        Field::new(COL_LABEL, DataType::Int32, false),
        Field::new(COL_JPEG, DataType::Binary, false),
        Field::new(COL_WIDTH, DataType::Int32, false),
        Field::new(COL_HEIGHT, DataType::Int32, false),
    ]))
}

pub fn shard_file_name(split: &str, index: usize) -> String {
    format!("{split}-{index:05}.parquet")
}

/// What a shard accounts for, stored in its footer: the inputs at positions
/// `input_start..input_end` of the split's shuffled input order, of which `rows` were written
/// and the notes list the converted and rejected ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRecord {
    /// Fingerprint of the ingest plan (inputs and output-affecting options).
    pub plan: String,
    pub index: usize,
    pub input_start: usize,
    pub input_end: usize,
    pub rows: u64,
    pub converted: Vec<InputNote>,
    pub rejected: Vec<InputNote>,
}

/// One sample as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub key: String,
    pub label: i32,
    pub jpeg: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

/// A `Write` that hashes and counts what passes through, so a shard's checksum costs no
/// second read.
struct HashingWriter {
    file: File,
    hasher: Sha256,
    bytes: u64,
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Writes one shard file; rows are buffered into small Arrow batches, and a row group is cut
/// as soon as its JPEG and key bytes reach `row_group_bytes` (so a row group is at most that
/// plus one image).
pub struct ShardWriter {
    path: PathBuf,
    writer: ArrowWriter<HashingWriter>,
    keys: StringBuilder,
    labels: Int32Builder,
    jpegs: BinaryBuilder,
    widths: Int32Builder,
    heights: Int32Builder,
    row_group_bytes: usize,
    buffered_bytes: usize,
    row_group_filled: usize,
    rows: u64,
}

/// Rows are handed to the Parquet writer in Arrow batches of about this size, which bounds the
/// builders' memory independently of the row group size.
const BATCH_BYTES: usize = 4 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenShard {
    pub bytes: u64,
    pub sha256: String,
    pub rows: u64,
    pub row_groups: usize,
}

impl ShardWriter {
    pub fn create(path: &Path, row_group_bytes: usize) -> Result<Self, ShardError> {
        let file = File::create(path).map_err(|e| ShardError::io(path, e))?;
        let jpeg = ColumnPath::from(COL_JPEG);
        let props = WriterProperties::builder()
            .set_compression(Compression::UNCOMPRESSED)
            .set_dictionary_enabled(false)
            .set_column_statistics_enabled(jpeg, EnabledStatistics::None)
            // Values are checked against the page size limit every `write_batch_size` rows;
            // with images of ~100 KB the default of 1024 would make 100 MB pages.
            .set_write_batch_size(8)
            .set_max_row_group_row_count(None)
            .set_key_value_metadata(Some(vec![KeyValue::new(
                META_SCHEMA_VERSION.to_owned(),
                SCHEMA_VERSION.to_string(),
            )]))
            .build();
        let sink = HashingWriter {
            file,
            hasher: Sha256::new(),
            bytes: 0,
        };
        let writer = ArrowWriter::try_new(sink, schema(), Some(props))
            .map_err(|e| ShardError::parquet(path, e))?;
        Ok(Self {
            path: path.to_owned(),
            writer,
            keys: StringBuilder::new(),
            labels: Int32Builder::new(),
            jpegs: BinaryBuilder::new(),
            widths: Int32Builder::new(),
            heights: Int32Builder::new(),
            row_group_bytes: row_group_bytes.max(1),
            buffered_bytes: 0,
            row_group_filled: 0,
            rows: 0,
        })
    }

    pub fn push(&mut self, row: &Row) -> Result<(), ShardError> {
        self.keys.append_value(&row.key);
        self.labels.append_value(row.label);
        self.jpegs.append_value(&row.jpeg);
        self.widths.append_value(row.width as i32);
        self.heights.append_value(row.height as i32);
        let size = row.jpeg.len() + row.key.len();
        self.buffered_bytes += size;
        self.row_group_filled += size;
        self.rows += 1;
        if self.row_group_filled >= self.row_group_bytes {
            self.write_buffered()?;
            self.writer
                .flush()
                .map_err(|e| ShardError::parquet(&self.path, e))?;
            self.row_group_filled = 0;
        } else if self.buffered_bytes >= BATCH_BYTES {
            self.write_buffered()?;
        }
        Ok(())
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    fn write_buffered(&mut self) -> Result<(), ShardError> {
        if self.keys.is_empty() {
            return Ok(());
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.keys.finish()),
            Arc::new(self.labels.finish()),
            Arc::new(self.jpegs.finish()),
            Arc::new(self.widths.finish()),
            Arc::new(self.heights.finish()),
        ];
        let batch = RecordBatch::try_new(schema(), columns)
            .map_err(|e| ShardError::format(&self.path, e.to_string()))?;
        self.writer
            .write(&batch)
            .map_err(|e| ShardError::parquet(&self.path, e))?;
        self.buffered_bytes = 0;
        Ok(())
    }

    /// Writes the footer with `record`, syncs the file to disk and returns its size and hash.
    pub fn finish(mut self, record: &ShardRecord) -> Result<WrittenShard, ShardError> {
        self.write_buffered()?;
        let json = serde_json::to_string(record).expect("shard record serializes");
        self.writer
            .append_key_value_metadata(KeyValue::new(META_RECORD.to_owned(), json));
        let path = self.path;
        self.writer
            .flush()
            .map_err(|e| ShardError::parquet(&path, e))?;
        let row_groups = self.writer.flushed_row_groups().len();
        // into_inner writes the footer; ArrowWriter::finish would write a second one.
        let sink = self
            .writer
            .into_inner()
            .map_err(|e| ShardError::parquet(&path, e))?;
        sink.file.sync_all().map_err(|e| ShardError::io(&path, e))?;
        Ok(WrittenShard {
            bytes: sink.bytes,
            sha256: hex(&sink.hasher.finalize()),
            rows: self.rows,
            row_groups,
        })
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a whole file, streamed.
pub fn sha256_file(path: &Path) -> Result<(String, u64), ShardError> {
    let mut file = File::open(path).map_err(|e| ShardError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(|e| ShardError::io(path, e))?;
        if n == 0 {
            return Ok((hex(&hasher.finalize()), bytes));
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
}

/// Reads a shard's footer and checks it is a version-1 shard: the schema version key and the
/// exact column names and types.
pub fn read_footer(path: &Path) -> Result<ParquetMetaData, ShardError> {
    let file = File::open(path).map_err(|e| ShardError::io(path, e))?;
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| ShardError::parquet(path, e))?;
    let found = builder.schema().fields().clone();
    let expected = schema().fields().clone();
    let shape = |fields: &arrow_schema::Fields| {
        fields
            .iter()
            .map(|f| format!("{}: {}", f.name(), f.data_type()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if shape(&found) != shape(&expected) {
        return Err(ShardError::format(
            path,
            format!(
                "columns are [{}], schema version {SCHEMA_VERSION} needs [{}]",
                shape(&found),
                shape(&expected)
            ),
        ));
    }
    let meta = builder.metadata().as_ref().clone();
    match key_value(&meta, META_SCHEMA_VERSION) {
        Some(v) if v == SCHEMA_VERSION.to_string() => Ok(meta),
        Some(v) => Err(ShardError::format(
            path,
            format!("shard schema version {v}, this build reads version {SCHEMA_VERSION}"),
        )),
        None => Err(ShardError::format(
            path,
            format!("no {META_SCHEMA_VERSION} key: not a dino-stream shard"),
        )),
    }
}

fn key_value<'a>(meta: &'a ParquetMetaData, key: &str) -> Option<&'a str> {
    meta.file_metadata()
        .key_value_metadata()?
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_deref()
}

/// The [`ShardRecord`] stored in the footer `meta` of the shard at `path`.
pub fn read_record(path: &Path, meta: &ParquetMetaData) -> Result<ShardRecord, ShardError> {
    let json = key_value(meta, META_RECORD)
        .ok_or_else(|| ShardError::format(path, format!("no {META_RECORD} key in the footer")))?;
    serde_json::from_str(json)
        .map_err(|e| ShardError::format(path, format!("bad {META_RECORD} record: {e}")))
}
