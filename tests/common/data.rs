//! Test data shared by the integration tests of both crates (`pipeline/tests` includes this
//! file by path): real sample photos, shard rows, byte comparisons.
#![allow(dead_code)] // each test binary uses a different subset

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use arrow_array::{Array, BinaryArray, Int32Array, StringArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// Real photographs from `tools/fetch-sample-data.sh`, materialised once per machine under
/// the cache (`$DINO_STREAM_CACHE`, default `~/.cache/dino-stream`) and reused.
pub fn samples(set: &str, count: usize) -> PathBuf {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let cache = std::env::var_os("DINO_STREAM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/dino-stream")
        });
    let root = cache.join("test-samples");
    fs::create_dir_all(&root).unwrap();
    // Test binaries may run concurrently (nextest): serialize fetches across processes too.
    let lock = fs::File::create(root.join(".lock")).unwrap();
    lock.lock().unwrap();
    let dir = root.join(format!("{set}-{count}"));
    let script = repo_root().join("tools/fetch-sample-data.sh");
    let status = Command::new("bash")
        .arg(&script)
        .arg(&dir)
        .arg(set)
        .arg(count.to_string())
        .status()
        .expect("bash runs");
    assert!(
        status.success(),
        "{} {} {set} {count} failed: the tests need its real photos",
        script.display(),
        dir.display()
    );
    dir
}

/// The repository's root: the manifest folder of the crate under test or its parent.
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .find(|dir| dir.join("tools/fetch-sample-data.sh").exists())
        .unwrap_or(manifest)
        .to_path_buf()
}

/// The JPEG files of a sample set, sorted.
pub fn jpeg_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for class in fs::read_dir(dir).unwrap() {
        let class = class.unwrap().path();
        if class.is_dir() {
            for f in fs::read_dir(&class).unwrap() {
                files.push(f.unwrap().path());
            }
        }
    }
    files.sort();
    files
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardRow {
    pub key: String,
    pub label: i32,
    pub jpeg: Vec<u8>,
    pub width: i32,
    pub height: i32,
}

/// Every row of one shard, in file order.
pub fn read_shard(path: &Path) -> Vec<ShardRow> {
    let file = fs::File::open(path).unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        let col = |name: &str| batch.column_by_name(name).unwrap().clone();
        let keys = col("key");
        let keys = keys.as_any().downcast_ref::<StringArray>().unwrap();
        let labels = col("label");
        let labels = labels.as_any().downcast_ref::<Int32Array>().unwrap();
        let jpegs = col("jpeg");
        let jpegs = jpegs.as_any().downcast_ref::<BinaryArray>().unwrap();
        let widths = col("width");
        let widths = widths.as_any().downcast_ref::<Int32Array>().unwrap();
        let heights = col("height");
        let heights = heights.as_any().downcast_ref::<Int32Array>().unwrap();
        for i in 0..batch.num_rows() {
            rows.push(ShardRow {
                key: keys.value(i).to_owned(),
                label: labels.value(i),
                jpeg: jpegs.value(i).to_vec(),
                width: widths.value(i),
                height: heights.value(i),
            });
        }
        assert_eq!(keys.null_count() + jpegs.null_count(), 0);
    }
    rows
}

/// All files of a folder (names and bytes), for byte-identity comparisons.
pub fn dir_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

/// Mean absolute difference of two equally sized u8 buffers.
pub fn mean_abs_diff(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    let sum: u64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| u64::from(x.abs_diff(y)))
        .sum();
    sum as f64 / a.len() as f64
}
