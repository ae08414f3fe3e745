//! Reading official DINO and timm weights: the released backbone-only `.pth`, the full
//! training checkpoint of main_dino.py (`student` wrapped as `module.`, `teacher` not, each
//! `backbone.` + `head.`), and timm safetensors. PyTorch pickles are read here and nowhere
//! else; everything else in the project reads safetensors.

mod pickle;

use std::path::{Path, PathBuf};

use crate::checkpoint::{self, HostTensors};

pub use pickle::PickleError;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Pytorch(#[from] PickleError),
    #[error(transparent)]
    Safetensors(#[from] checkpoint::CheckpointError),
    #[error(
        "{path}: has `teacher.*` tensors but no `student.*` ones (or the reverse); a full \
         training checkpoint holds both"
    )]
    HalfCheckpoint { path: PathBuf },
    #[error("{path}: no tensors found")]
    Empty { path: PathBuf },
}

/// What a weights file held, under the project's names (`backbone.*`, `head.*`).
#[derive(Debug)]
pub struct Imported {
    pub format: Format,
    pub teacher: HostTensors,
    /// only a full training checkpoint has a student
    pub student: Option<HostTensors>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `torch.save(backbone.state_dict())`, as the released `dino_*_pretrain.pth`
    BackbonePth,
    /// main_dino.py's `checkpoint.pth`
    FullCheckpoint,
    /// a backbone as safetensors: timm's `model.safetensors`, or an `export`
    Safetensors,
}

impl Format {
    pub fn describe(self) -> &'static str {
        match self {
            Format::BackbonePth => "backbone state dict (.pth)",
            Format::FullCheckpoint => "full DINO training checkpoint (.pth)",
            Format::Safetensors => "backbone safetensors",
        }
    }
}

/// Reads `path`, recognizing the format by content (safetensors by its JSON header, else a
/// PyTorch zip or legacy pickle).
pub fn read(path: &Path) -> Result<Imported, ImportError> {
    let head = read_head(path)?;
    if is_safetensors(&head) {
        let tensors = zero_d_as_one(checkpoint::read_tensors(path)?);
        return backbone_only(path, Format::Safetensors, tensors);
    }
    let tensors = zero_d_as_one(pickle::read(path)?);
    let has = |prefix: &str| tensors.keys().any(|k| k.starts_with(prefix));
    match (has("teacher."), has("student.")) {
        (true, true) => Ok(Imported {
            format: Format::FullCheckpoint,
            teacher: network(&tensors, "teacher."),
            student: Some(network(&tensors, "student.")),
        }),
        (false, false) => backbone_only(path, Format::BackbonePth, tensors),
        _ => Err(ImportError::HalfCheckpoint {
            path: path.to_path_buf(),
        }),
    }
}

/// PyTorch's 0-d tensors (batch norms' `num_batches_tracked`) are [1] here.
fn zero_d_as_one(mut tensors: HostTensors) -> HostTensors {
    for (shape, _) in tensors.values_mut() {
        if shape.is_empty() {
            shape.push(1);
        }
    }
    tensors
}

fn read_head(path: &Path) -> Result<Vec<u8>, ImportError> {
    use std::io::Read;
    let io = |e: std::io::Error| {
        ImportError::Safetensors(checkpoint::CheckpointError::Io {
            path: path.to_path_buf(),
            err: e,
        })
    };
    let mut head = Vec::with_capacity(9);
    std::fs::File::open(path)
        .map_err(io)?
        .take(9)
        .read_to_end(&mut head)
        .map_err(io)?;
    Ok(head)
}

/// safetensors: a little-endian u64 header length, then the JSON header.
fn is_safetensors(head: &[u8]) -> bool {
    head.len() == 9 && head[8] == b'{'
}

/// A plain backbone state dict (timm names, maybe DDP's `module.`): the teacher only, as
/// the official release (the released weights are the teacher).
fn backbone_only(
    path: &Path,
    format: Format,
    tensors: HostTensors,
) -> Result<Imported, ImportError> {
    if tensors.is_empty() {
        return Err(ImportError::Empty {
            path: path.to_path_buf(),
        });
    }
    let teacher = tensors
        .into_iter()
        .map(|(name, t)| {
            let name = name.strip_prefix("module.").unwrap_or(&name);
            (format!("backbone.{name}"), t)
        })
        .collect();
    Ok(Imported {
        format,
        teacher,
        student: None,
    })
}

/// The tensors under `prefix` (`teacher.` / `student.`), renamed from the official
/// `MultiCropWrapper` layout to the project's: DDP's `module.` dropped (main_dino.py wraps
/// a teacher with batch norms too), the head's `nn.Sequential` indices 0/2/4 (GELUs
/// between) as `mlp.0/1/2`, or with `use_bn_in_head` 0/3/6 as `mlp.0/1/2` and the batch
/// norms 1/4 as `norms.0/1`, and the parametrized weight norm's `original0/1` as
/// `weight_g/v`. Other names stay as they are, for the strict load to report.
fn network(tensors: &HostTensors, prefix: &str) -> HostTensors {
    let strip = |name: &str| -> Option<String> {
        let name = name.strip_prefix(prefix)?;
        Some(name.strip_prefix("module.").unwrap_or(name).to_string())
    };
    let with_bn = tensors
        .keys()
        .filter_map(|k| strip(k))
        .any(|k| k.starts_with("head.mlp.6."));
    tensors
        .iter()
        .filter_map(|(name, t)| Some((rename_head(&strip(name)?, with_bn), t.clone())))
        .collect()
}

fn rename_head(name: &str, with_bn: bool) -> String {
    if let Some(rest) = name.strip_prefix("head.mlp.") {
        let (index, param) = rest.split_once('.').unwrap_or((rest, ""));
        let ours = match (index, with_bn) {
            ("0", _) => "mlp.0",
            ("2", false) | ("3", true) => "mlp.1",
            ("4", false) | ("6", true) => "mlp.2",
            ("1", true) => "norms.0",
            ("4", true) => "norms.1",
            // A layer the official head does not have: renamed apart, so that it cannot
            // collide with a mapped one and the strict load names it.
            (other, _) => return format!("head.mlp.unmapped_{other}.{param}"),
        };
        return format!("head.{ours}.{param}");
    }
    match name {
        "head.last_layer.parametrizations.weight.original0" => "head.last_layer.weight_g".into(),
        "head.last_layer.parametrizations.weight.original1" => "head.last_layer.weight_v".into(),
        _ => name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::rename_head;

    #[test]
    fn head_indices_follow_the_official_sequential() {
        let plain = |name| rename_head(name, false);
        assert_eq!(plain("head.mlp.0.weight"), "head.mlp.0.weight");
        assert_eq!(plain("head.mlp.2.bias"), "head.mlp.1.bias");
        assert_eq!(plain("head.mlp.4.weight"), "head.mlp.2.weight");
        assert_eq!(plain("head.mlp.1.weight"), "head.mlp.unmapped_1.weight");
        assert_eq!(
            plain("head.last_layer.parametrizations.weight.original1"),
            "head.last_layer.weight_v"
        );
        assert_eq!(plain("backbone.norm.bias"), "backbone.norm.bias");
    }

    #[test]
    fn a_head_with_batch_norms_maps_them_apart_from_the_linears() {
        let bn = |name| rename_head(name, true);
        assert_eq!(bn("head.mlp.0.bias"), "head.mlp.0.bias");
        assert_eq!(bn("head.mlp.1.running_var"), "head.norms.0.running_var");
        assert_eq!(bn("head.mlp.3.weight"), "head.mlp.1.weight");
        assert_eq!(
            bn("head.mlp.4.num_batches_tracked"),
            "head.norms.1.num_batches_tracked"
        );
        assert_eq!(bn("head.mlp.6.weight"), "head.mlp.2.weight");
        assert_eq!(bn("head.mlp.2.weight"), "head.mlp.unmapped_2.weight");
    }
}
