//! `dino-stream export`: a checkpoint's backbone as timm-compatible safetensors.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::checkpoint::{self, HostTensors, Which};
use crate::device::{self, DeviceChoice, InferenceBackend, InferenceJob};
use crate::eval::{Weights, WeightsError};
use crate::model::{Backbone, is_counter};

/// Write a checkpoint's backbone as safetensors with its reference implementation's key
/// names and shapes (timm's for a ViT, torchvision's for a ResNet).
///
/// A ViT's file loads with strict key matching into
/// `timm.create_model('vit_small_patch16_224', num_classes=0)` (or the matching arch; for
/// a custom size, `timm.models.vision_transformer.VisionTransformer(...)` with the run's
/// embed_dim/depth/num_heads/patch_size/img_size). A ResNet's (parameters and batch-norm
/// buffers) loads into `torchvision.models.resnet50()` with `fc` replaced by
/// `torch.nn.Identity()`, `load_state_dict(strict=True)`. The DINO head is not exported.
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// A checkpoint folder (RUN/checkpoints/step-N) or a run folder (its newest checkpoint)
    #[arg(long, value_name = "PATH")]
    checkpoint: PathBuf,
    /// Output file
    #[arg(long, value_name = "FILE.safetensors")]
    out: PathBuf,
    /// Which network
    #[arg(long, value_enum, default_value_t = Which::Teacher)]
    which: Which,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    refuse_checkpoint_file(&args.out)?;
    let weights = Weights::open(&args.checkpoint, args.which, false)?;
    let kind = weights.config.model.kind();
    // on the CPU: the strict load checks the tensors against the config's backbone
    let (tensors, layout) = device::run_inference(DeviceChoice::Cpu, kind, Export(&weights))??;
    // the error names the file; batch counters as PyTorch's int64
    checkpoint::write_tensors_as(&args.out, &tensors, is_counter)?;
    println!(
        "exported {}: {} tensors in {layout}'s layout to {}",
        weights.describe(),
        tensors.len(),
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

struct Export<'a>(&'a Weights);

impl InferenceJob for Export<'_> {
    type Output = Result<(HostTensors, &'static str), WeightsError>;
    fn run<B: InferenceBackend, M: Backbone<B>>(self, device: B::Device) -> Self::Output {
        let backbone = self.0.build::<B, M>(&device)?;
        Ok((backbone.export(), M::EXPORT_LAYOUT))
    }
}

/// `out` must not be a file of a checkpoint (or import) folder: exporting onto a network's
/// own weights would replace them with the backbone alone.
fn refuse_checkpoint_file(out: &Path) -> anyhow::Result<()> {
    if out.is_dir() {
        anyhow::bail!("--out {} is a folder; give a file name", out.display());
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if parent.join("state.json").exists() {
        anyhow::bail!(
            "--out {} is inside the checkpoint folder {}; write the export elsewhere",
            out.display(),
            parent.display()
        );
    }
    Ok(())
}
