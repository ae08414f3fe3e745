//! Checkpoints: everything a run needs to continue exactly.
//!
//! `RUN/checkpoints/step-NNNNNNNN/` holds `student.safetensors`, `teacher.safetensors`,
//! `optimizer.safetensors` (AdamW's moments `m.NAME`/`v.NAME`, or SGD's and LARS's momentum
//! buffer `m.NAME`, and the loss `center`) and
//! `state.json` (step, pipeline position, per-tensor optimizer steps, config). A checkpoint is
//! written into a hidden temporary folder, fsynced, then renamed: a crash leaves either the
//! previous checkpoints or a complete new one. The stochastic-depth draws are a function of
//! (seed, step), so the step is the whole random state.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use dino_pipeline::batch::Position;
use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};

/// Named f32 tensors on the host: shape and values.
pub type HostTensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub format: String,
    /// optimizer steps done
    pub step: u64,
    /// where the pipeline continues
    pub position: PositionRecord,
    /// the ingest plan fingerprint of the split trained on (manifest.json): the position
    /// only means something in that data's epoch order
    pub data_plan: String,
    /// the optimizer's per-tensor step counts
    pub optimizer_steps: BTreeMap<String, u64>,
    /// the effective config, TOML
    pub config: String,
    /// the devices the run trained on (all nodes); the global batch is `data.batch_size`
    /// times this. Absent (1) in checkpoints written before runs had several.
    #[serde(default = "one_device")]
    pub world: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PositionRecord {
    pub epoch: u64,
    pub consumed: u64,
}

impl From<Position> for PositionRecord {
    fn from(p: Position) -> Self {
        Self {
            epoch: p.epoch,
            consumed: p.consumed,
        }
    }
}

impl From<PositionRecord> for Position {
    fn from(p: PositionRecord) -> Self {
        Position {
            epoch: p.epoch,
            consumed: p.consumed,
        }
    }
}

pub const FORMAT: &str = "dino-stream-checkpoint-v1";

pub struct Checkpoint {
    pub state: State,
    pub student: HostTensors,
    pub teacher: HostTensors,
    /// `m.NAME`, `v.NAME` and `center`
    pub optimizer: HostTensors,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    // `err`, not `source`: the message holds the cause, and a source would print it twice
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("{path}: not a readable safetensors file: {why}")]
    Tensors { path: PathBuf, why: String },
    #[error("{path}: {why}")]
    State { path: PathBuf, why: String },
}

fn one_device() -> usize {
    1
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |err| CheckpointError::Io {
        path: path.to_path_buf(),
        err,
    }
}

pub fn dir_name(step: u64) -> String {
    format!("step-{step:08}")
}

/// Writes a safetensors file of f32 tensors atomically (temporary name, fsync, rename): a
/// reader sees the old file or the new one, and a full disk leaves no partial file.
pub fn write_tensors(path: &Path, tensors: &HostTensors) -> Result<(), CheckpointError> {
    write_tensors_as(path, tensors, |_| false)
}

/// As [`write_tensors`], the tensors `int64` names as I64 (whole-valued counters, as
/// PyTorch's `num_batches_tracked`).
pub fn write_tensors_as(
    path: &Path,
    tensors: &HostTensors,
    int64: impl Fn(&str) -> bool,
) -> Result<(), CheckpointError> {
    let bytes: Vec<(String, Dtype, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(name, (shape, values))| {
            let (dtype, raw) = if int64(name) {
                let raw = values.iter().flat_map(|&v| (v as i64).to_le_bytes());
                (Dtype::I64, raw.collect())
            } else {
                let raw = values.iter().flat_map(|v| v.to_le_bytes());
                (Dtype::F32, raw.collect())
            };
            (name.clone(), dtype, raw, shape.clone())
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(name, dtype, raw, shape)| {
            let view = TensorView::new(*dtype, shape.clone(), raw).expect("shape matches data");
            (name.as_str(), view)
        })
        .collect::<Vec<_>>();
    let data = safetensors::serialize(views, None).map_err(|e| CheckpointError::Tensors {
        path: path.to_path_buf(),
        why: e.to_string(),
    })?;
    dino_pipeline::manifest::write_atomic(path, &data).map_err(io(path))
}

/// Reads every tensor of a safetensors file as f32 (F32, and I64 counters).
pub fn read_tensors(path: &Path) -> Result<HostTensors, CheckpointError> {
    let data = fs::read(path).map_err(io(path))?;
    let bad = |why: String| CheckpointError::Tensors {
        path: path.to_path_buf(),
        why,
    };
    let file = safetensors::SafeTensors::deserialize(&data).map_err(|e| bad(e.to_string()))?;
    let mut out = HostTensors::new();
    for (name, view) in file.tensors() {
        let values = match view.dtype() {
            Dtype::F32 => (view.data().chunks_exact(4))
                .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                .collect(),
            Dtype::I64 => (view.data().chunks_exact(8))
                .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
                .collect(),
            other => {
                return Err(bad(format!(
                    "tensor `{name}` is {other:?}, expected F32 (or an I64 counter)"
                )));
            }
        };
        out.insert(name, (view.shape().to_vec(), values));
    }
    Ok(out)
}

/// The backbone of a network's tensors under the backbone's own parameter paths (the
/// `backbone.` prefix dropped, the head left out).
pub fn backbone(network: &HostTensors) -> HostTensors {
    network
        .iter()
        .filter_map(|(name, t)| Some((name.strip_prefix("backbone.")?.to_string(), t.clone())))
        .collect()
}

impl Checkpoint {
    /// Writes `dir/step-NNNNNNNN` atomically and removes all but the newest `keep`.
    pub fn save(&self, dir: &Path, keep: usize) -> Result<PathBuf, CheckpointError> {
        fs::create_dir_all(dir).map_err(io(dir))?;
        let name = dir_name(self.state.step);
        let tmp = dir.join(format!(".{name}.tmp"));
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
        }
        fs::create_dir(&tmp).map_err(io(&tmp))?;
        write_tensors(&tmp.join(Which::Student.file()), &self.student)?;
        write_tensors(&tmp.join(Which::Teacher.file()), &self.teacher)?;
        write_tensors(&tmp.join("optimizer.safetensors"), &self.optimizer)?;
        let state_path = tmp.join("state.json");
        let json = serde_json::to_vec_pretty(&self.state).expect("state serializes");
        let mut file = fs::File::create(&state_path).map_err(io(&state_path))?;
        file.write_all(&json).map_err(io(&state_path))?;
        file.sync_all().map_err(io(&state_path))?;
        sync_dir(&tmp)?;
        let dest = dir.join(&name);
        if dest.exists() {
            fs::remove_dir_all(&dest).map_err(io(&dest))?;
        }
        fs::rename(&tmp, &dest).map_err(io(&dest))?;
        sync_dir(dir)?;
        for old in list(dir)?.into_iter().rev().skip(keep) {
            fs::remove_dir_all(&old).map_err(io(&old))?;
        }
        Ok(dest)
    }

    pub fn load(path: &Path) -> Result<Self, CheckpointError> {
        Ok(Self {
            state: load_state(path)?,
            student: read_tensors(&path.join(Which::Student.file()))?,
            teacher: read_tensors(&path.join(Which::Teacher.file()))?,
            optimizer: read_tensors(&path.join("optimizer.safetensors"))?,
        })
    }
}

/// One of the two networks of a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Which {
    /// The EMA teacher: what DINO evaluates and releases.
    Teacher,
    Student,
}

impl Which {
    pub fn file(self) -> &'static str {
        match self {
            Which::Teacher => "teacher.safetensors",
            Which::Student => "student.safetensors",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Which::Teacher => "teacher",
            Which::Student => "student",
        }
    }
}

/// The `state.json` of the checkpoint folder `path`.
pub fn load_state(path: &Path) -> Result<State, CheckpointError> {
    let state_path = path.join("state.json");
    let text = fs::read(&state_path).map_err(io(&state_path))?;
    let state: State = serde_json::from_slice(&text).map_err(|e| CheckpointError::State {
        path: state_path.clone(),
        why: e.to_string(),
    })?;
    if state.format != FORMAT {
        return Err(CheckpointError::State {
            path: state_path,
            why: format!("format `{}` is not `{FORMAT}`", state.format),
        });
    }
    Ok(state)
}

/// The state and one network of a checkpoint, without the optimizer: what evaluation and
/// export read.
pub fn load_network(dir: &Path, which: Which) -> Result<(State, HostTensors), CheckpointError> {
    Ok((load_state(dir)?, read_tensors(&dir.join(which.file()))?))
}

/// `path` itself when it is a checkpoint folder (holds state.json), else the newest
/// checkpoint of the run folder `path`.
pub fn resolve(path: &Path) -> Result<PathBuf, CheckpointError> {
    if path.join("state.json").exists() {
        return Ok(path.to_path_buf());
    }
    latest(&path.join("checkpoints"))?.ok_or_else(|| CheckpointError::State {
        path: path.to_path_buf(),
        why: "neither a checkpoint folder (no state.json) nor a run folder with checkpoints".into(),
    })
}

fn sync_dir(dir: &Path) -> Result<(), CheckpointError> {
    fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io(dir))
}

/// Complete checkpoints in `dir` (`step-N` folders holding a state.json; anything else, a
/// stray folder or a temporary one, is not a checkpoint), oldest first.
pub fn list(dir: &Path) -> Result<Vec<PathBuf>, CheckpointError> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut found: Vec<(u64, PathBuf)> = fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let step = name.strip_prefix("step-")?.parse::<u64>().ok()?;
            let path = entry.path();
            path.join("state.json").is_file().then_some((step, path))
        })
        .collect();
    found.sort();
    Ok(found.into_iter().map(|(_, p)| p).collect())
}

/// The newest complete checkpoint in `dir`.
pub fn latest(dir: &Path) -> Result<Option<PathBuf>, CheckpointError> {
    Ok(list(dir)?.pop())
}
