//! `dino-stream import`: official DINO or timm weights as a checkpoint folder that `knn`,
//! `attention` and `export` read.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::checkpoint::{self, Checkpoint, FORMAT, HostTensors, PositionRecord, State};
use crate::config::Config;
use crate::device::{self, DeviceChoice, InferenceBackend, InferenceJob};
use crate::interop::{self, Format, Imported};
use crate::model::{Backbone, Dino, Init, RESNETS};
use crate::params::{self, LoadError};

/// Import official DINO weights (or timm's) into a checkpoint folder.
///
/// Accepted files, recognized by content:
///   * the released backbone-only state dict, e.g. dino_deitsmall16_pretrain.pth or
///     dino_resnet50_pretrain.pth (the teacher's backbone; no head);
///   * main_dino.py's full training checkpoint (checkpoint.pth): its `teacher` and
///     `student` networks, backbone and DINO head (the optimizer state is not imported).
///     A head that is not a DINOHead (the released ResNet-50 full checkpoint's: two layers
///     and a plain last layer) is skipped with a note, and the backbones imported;
///   * backbone safetensors: timm's of a ViT (e.g. vit_small_patch16_224.dino's
///     model.safetensors), or an `export`.
///
/// Loading is strict: a missing, unexpected or misshapen tensor is an error that names it.
/// The architecture comes from --arch/--patch (or a --config whose [model] section
/// describes it); without either, a ResNet's shape is read from its tensors and anything
/// else is taken for the recipe's vit_small. The head's sizes are read from the file.
///
/// The folder (CKPT) holds state.json, teacher.safetensors and student.safetensors (the
/// teacher again when the file has no student); use it as --checkpoint of knn, attention
/// and export. It cannot be resumed: it has no optimizer state.
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The weights file (.pth or .safetensors)
    #[arg(long, value_name = "FILE")]
    weights: PathBuf,
    /// The checkpoint folder to write
    #[arg(long, value_name = "CKPT")]
    out: PathBuf,
    /// vit_tiny, vit_small or vit_base (or custom, with embed_dim/depth/num_heads from
    /// --config or --set); resnet50 (or resnet, with resnet_layers/resnet_width)
    #[arg(long, value_name = "ARCH")]
    arch: Option<String>,
    /// Patch size (16 or 8 for the official weights)
    #[arg(long, value_name = "P")]
    patch: Option<usize>,
    /// The resolution the positional grid was learned at
    #[arg(long, value_name = "PX")]
    img_size: Option<usize>,
    /// A run config whose [model] section describes the network
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Override a config key: SECTION.KEY=VALUE (repeatable)
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.out.exists() {
        anyhow::bail!(
            "{} exists; choose a new folder for the import",
            args.out.display()
        );
    }
    let mut imported = interop::read(&args.weights)?;
    skip_foreign_head(&mut imported, &args.weights);
    let mut overrides = Vec::new();
    let guessed = (args.arch.is_none() && args.config.is_none())
        .then(|| resnet_overrides(&imported.teacher))
        .flatten();
    if let Some(resnet) = &guessed {
        overrides.extend(resnet.iter().cloned());
    }
    if let Some(arch) = &args.arch {
        overrides.push(format!("model.arch={arch}"));
    }
    if let Some(patch) = args.patch {
        overrides.push(format!("model.patch_size={patch}"));
    }
    if let Some(size) = args.img_size {
        overrides.push(format!("model.img_size={size}"));
    }
    let has_head = imported.teacher.keys().any(|k| k.starts_with("head."));
    if has_head {
        overrides.extend(head_overrides(&imported.teacher));
    }
    overrides.extend(args.overrides.iter().cloned());
    let config = Config::load(args.config.as_deref(), &overrides)?;
    if args.arch.is_none() && args.config.is_none() {
        match guessed {
            Some(_) => eprintln!(
                "note: no --arch or --config: the tensors are a {}",
                config.model.describe()
            ),
            None => eprintln!(
                "note: no --arch or --config: assuming the recipe's {} with patch {}",
                config.model.arch, config.model.patch_size
            ),
        }
    }

    let student = imported
        .student
        .clone()
        .unwrap_or_else(|| imported.teacher.clone());
    for (which, network) in [("teacher", &imported.teacher), ("student", &student)] {
        check_strict(&config, network, has_head).with_context(|| {
            format!(
                "{}: the {which} does not match {}",
                args.weights.display(),
                config.model.describe()
            )
        })?;
    }

    let state = State {
        format: FORMAT.into(),
        step: 0,
        position: PositionRecord {
            epoch: 0,
            consumed: 0,
        },
        data_plan: format!("imported from {}", args.weights.display()),
        optimizer_steps: BTreeMap::new(),
        config: config.to_toml(),
        world: 1,
    };
    write(&args.out, &state, &imported.teacher, &student)?;
    println!(
        "imported {} ({}: teacher {} tensors{}) as {} -> {}",
        args.weights.display(),
        imported.format.describe(),
        imported.teacher.len(),
        match imported.format {
            Format::FullCheckpoint => format!(", student {}", student.len()),
            _ => String::new(),
        },
        config.model.describe(),
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// A head without the DINOHead's weight-normalized last layer cannot load into this
/// project's head: dropped (from both networks), with a note saying what and why.
fn skip_foreign_head(imported: &mut Imported, path: &std::path::Path) {
    let has_head = imported.teacher.keys().any(|k| k.starts_with("head."));
    if !has_head || imported.teacher.contains_key("head.last_layer.weight_v") {
        return;
    }
    let head: Vec<String> = (imported.teacher.iter())
        .filter(|(k, _)| k.starts_with("head."))
        .map(|(k, (shape, _))| format!("{k} {shape:?}"))
        .collect();
    eprintln!(
        "note: {}: its head is not a DINO head (no weight-normalized `head.last_layer`; it \
         has {}); importing the backbones only, without a head (k-NN, export and attention \
         need none)",
        path.display(),
        head.join(", ")
    );
    imported.teacher.retain(|k, _| !k.starts_with("head."));
    if let Some(student) = &mut imported.student {
        student.retain(|k, _| !k.starts_with("head."));
    }
}

/// A ResNet's shape read off its tensors (the stem's width, the blocks of each stage), as
/// config overrides; `None` when the tensors are not a ResNet's.
fn resnet_overrides(network: &HostTensors) -> Option<Vec<String>> {
    let (stem, _) = network.get("backbone.conv1.weight")?;
    if stem.len() != 4 || stem[1] != 3 {
        return None;
    }
    let blocks = |stage: usize| {
        (0..)
            .take_while(|b| {
                network.contains_key(&format!("backbone.layer{stage}.{b}.conv1.weight"))
            })
            .count()
    };
    let layers = [blocks(1), blocks(2), blocks(3), blocks(4)];
    let named = RESNETS
        .iter()
        .find(|(_, l)| *l == layers && stem[0] == 64)
        .map(|(name, _)| *name);
    Some(match named {
        Some(name) => vec![format!("model.arch={name}")],
        None => vec![
            "model.arch=resnet".into(),
            format!("model.resnet_layers={layers:?}"),
            format!("model.resnet_width={}", stem[0]),
        ],
    })
}

/// The DINO head's sizes, from the weight-normalized last layer ([K, bottleneck]) and the
/// first MLP layer ([hidden, D]); `norm_last_layer` when its gain is fixed at 1.
fn head_overrides(network: &HostTensors) -> Vec<String> {
    let mut out = Vec::new();
    if let Some((shape, _)) = network.get("head.last_layer.weight_v") {
        out.push(format!("model.out_dim={}", shape[0]));
        out.push(format!("model.head_bottleneck_dim={}", shape[1]));
    }
    if let Some((shape, _)) = network.get("head.mlp.0.weight") {
        out.push(format!("model.head_hidden_dim={}", shape[0]));
    }
    out.push(format!(
        "model.use_bn_in_head={}",
        network.contains_key("head.norms.0.weight")
    ));
    if let Some((_, g)) = network.get("head.last_layer.weight_g") {
        out.push(format!(
            "model.norm_last_layer={}",
            g.iter().all(|&v| v == 1.0)
        ));
    }
    out
}

/// Loads `network` into the config's model on the CPU, which names any missing, unexpected
/// or misshapen tensor.
fn check_strict(config: &Config, network: &HostTensors, has_head: bool) -> anyhow::Result<()> {
    if !has_head && let Some(stray) = network.keys().find(|k| !k.starts_with("backbone.")) {
        anyhow::bail!("unexpected tensor `{stray}`");
    }
    let check = Check {
        config,
        network,
        has_head,
    };
    Ok(device::run_inference(
        DeviceChoice::Cpu,
        config.model.kind(),
        check,
    )??)
}

struct Check<'a> {
    config: &'a Config,
    network: &'a HostTensors,
    has_head: bool,
}

impl InferenceJob for Check<'_> {
    type Output = Result<(), LoadError>;
    fn run<B: InferenceBackend, M: Backbone<B>>(self, device: B::Device) -> Self::Output {
        let model = &self.config.model;
        if self.has_head {
            let dino = Dino::<B, M>::new(model, 0, &device);
            params::load(dino, self.network, &device).map(drop)
        } else {
            let backbone = M::from_config(model, &mut Init::new(0), &device);
            params::load(backbone, &checkpoint::backbone(self.network), &device).map(drop)
        }
    }
}

/// A checkpoint folder with empty optimizer state, written as a run's checkpoints are
/// (temporary folder, fsync, rename).
fn write(
    out: &std::path::Path,
    state: &State,
    teacher: &HostTensors,
    student: &HostTensors,
) -> anyhow::Result<()> {
    let ckpt = Checkpoint {
        state: state.clone(),
        student: student.clone(),
        teacher: teacher.clone(),
        optimizer: HostTensors::new(),
    };
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let staging = parent.join(format!(".import-{}", std::process::id()));
    let written = ckpt
        .save(&staging, 1)
        .map_err(anyhow::Error::from)
        .and_then(|saved| {
            std::fs::rename(&saved, out)
                .with_context(|| format!("moving {} to {}", saved.display(), out.display()))
        });
    // also after a failure (a full disk): nothing half-written stays behind
    let removed = std::fs::remove_dir_all(&staging);
    written?;
    removed.with_context(|| format!("removing {}", staging.display()))
}
