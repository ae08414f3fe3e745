//! `dino-stream train`: DINO pre-training of a ViT or a ResNet on ingested shards.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::config::Config;
use crate::device::{self, DeviceChoice, TrainableBackbone, TrainingBackend, TrainingJob};
use crate::train::{self, Event, Resume, RunOptions, Summary};

/// Pre-train a ViT or a ResNet with DINO on shards written by `ingest`.
///
/// The backbone is model.arch: vit_tiny, vit_small, vit_base or custom; resnet50 (see
/// configs/resnet50_imagenet.toml for its recipe: optim.optimizer = "sgd") or resnet.
/// The config (TOML; every key defaults to the official recipe, see configs/) is saved as
/// RUN/config.toml. RUN/metrics.jsonl gets one line per run.log_every steps (loss, lr, weight
/// decay, teacher momentum and temperature, images/s, data wait, teacher entropy, samples
/// that failed to decode so far); RUN/train.log keeps the warnings (each undecodable sample
/// with its key; collapse);
/// RUN/checkpoints/ keeps the newest checkpoints (at each epoch end, every
/// run.checkpoint_every steps, and at the end). --resume continues the run in RUN exactly
/// where its newest checkpoint left it; --resume-from CKPT from that checkpoint.
///
/// Overrides: --set SECTION.KEY=VALUE (repeatable), e.g. --set optim.epochs=5
/// --set data.batch_size=32 --set model.arch=vit_tiny --set optim.optimizer=lars.
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Run config (TOML); without it, the official recipe (ViT-S/16, ImageNet settings)
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Shard folder written by `ingest` (holds manifest.json)
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// Run folder: config.toml, metrics.jsonl, checkpoints/
    #[arg(long, value_name = "RUN")]
    out: PathBuf,
    /// Continue the run in RUN from its newest checkpoint that loads (a damaged newer one is
    /// reported and skipped)
    #[arg(long, conflicts_with = "resume_from")]
    resume: bool,
    /// Continue the run in RUN from this checkpoint folder (RUN/checkpoints/step-N)
    #[arg(long, value_name = "CKPT")]
    resume_from: Option<PathBuf>,
    /// cpu, cuda or cuda:N (cuda needs a build with --features cuda); a list trains on each
    /// (data parallel, one rank per device: --devices cuda:0,cuda:1), with data.batch_size
    /// per device and the learning rate scaled by the global batch. `cpu,cpu` runs two ranks
    /// on the one CPU (they share its cores: for tests, not for speed)
    #[arg(
        long,
        visible_alias = "device",
        default_value = "cpu",
        value_delimiter = ',',
        value_name = "DEVICE,..."
    )]
    devices: Vec<DeviceChoice>,
    /// Machines in the run (run.nodes); start `train` on each with the same config, --data
    /// (the same shards), --out (a folder all of them see) and --coordinator
    #[arg(long, value_name = "N")]
    nodes: Option<usize>,
    /// This machine's index, 0..N (run.node_rank); node 0 coordinates and writes the run
    #[arg(long, value_name = "R")]
    node_rank: Option<usize>,
    /// HOST:PORT of node 0, where every rank meets the others (run.coordinator; the port
    /// must be open to all nodes)
    #[arg(long, value_name = "HOST:PORT")]
    coordinator: Option<String>,

    /// Override a config key: SECTION.KEY=VALUE (repeatable)
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Serve the training and pipeline metrics for Prometheus: a port (on 127.0.0.1) or
    /// ADDR:PORT to listen beyond this machine
    #[arg(long, value_name = "[ADDR:]PORT", value_parser = parse_metrics_addr)]
    metrics_addr: Option<std::net::SocketAddr>,
}

/// A bare port binds the loopback interface: metrics stay on this machine unless asked.
fn parse_metrics_addr(text: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    }
    text.parse()
        .map_err(|_| format!("`{text}`: expected a port (9464) or ADDR:PORT (0.0.0.0:9464)"))
}

struct Job {
    cfg: Config,
    opts: RunOptions,
}

impl TrainingJob for Job {
    type Output = Result<Summary, train::TrainError>;
    fn run<A: TrainingBackend, M: TrainableBackbone<A>>(
        self,
        devices: Vec<A::Device>,
    ) -> Self::Output {
        let bar = super::progress_bar(
            Some(0),
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps ({per_sec}, eta {eta}) {msg}",
        );
        super::logger::attach_bar(Some(bar.clone()));
        let plain = bar.is_hidden();
        // a hidden bar swallows println: without a terminal, lines go straight to stderr
        let say = |text: String| {
            if plain {
                eprintln!("{text}");
            } else {
                bar.println(text);
            }
        };
        let mut on_event = |event: Event| match event {
            Event::Start {
                first_step,
                total_steps,
                steps_per_epoch,
                ranks,
                all_reduce_bytes,
            } => {
                bar.set_length(total_steps);
                bar.set_position(first_step);
                let parallel = match ranks {
                    1 => String::new(),
                    n => format!(
                        ", {n} ranks (each all-reduces {:.1} MB per step)",
                        all_reduce_bytes as f64 / 1e6
                    ),
                };
                eprintln!(
                    "training: steps {first_step}..{total_steps}, {steps_per_epoch} per \
                     epoch{parallel}"
                );
            }
            Event::Step { step, loss } => {
                bar.set_position(step);
                bar.set_message(format!("loss {loss:.4}"));
            }
            Event::Log(line) => {
                if plain {
                    eprintln!(
                        "step {} epoch {} loss {:.4} lr {:.3e} wd {:.4} momentum {:.5} \
                         teacher_temp {:.4} {:.1} img/s data_wait {:.1}% entropy {:.3}",
                        line.step,
                        line.epoch,
                        line.loss,
                        line.lr,
                        line.wd,
                        line.momentum,
                        line.teacher_temp,
                        line.images_per_sec,
                        100.0 * line.data_wait_fraction,
                        line.teacher_entropy
                    );
                }
            }
            Event::Checkpoint(path) => say(format!("checkpoint: {}", path.display())),
            // through the logger: the terminal and RUN/train.log
            Event::Warning(text) => log::warn!("{text}"),
        };
        let result = train::train::<A, M>(&self.cfg, &self.opts, &devices, &mut on_event);
        bar.finish_and_clear();
        super::logger::attach_bar(None);
        super::logger::close_file();
        result
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    // the node flags are overrides of their [run] keys, applied after any --set
    let mut overrides = args.overrides.clone();
    let flags = [
        ("nodes", args.nodes.map(|n| n.to_string())),
        ("node_rank", args.node_rank.map(|n| n.to_string())),
        (
            "coordinator",
            args.coordinator.as_ref().map(|a| format!("{a:?}")),
        ),
    ];
    for (key, value) in flags {
        if let Some(value) = value {
            overrides.push(format!("run.{key}={value}"));
        }
    }
    let cfg = Config::load(args.config.as_deref(), &overrides)?;
    // the CPU kernels' pool, before anything starts it with a thread per core
    rayon::ThreadPoolBuilder::new()
        .num_threads(cfg.threads())
        .build_global()
        .with_context(|| {
            format!(
                "cannot start {} compute threads (run.threads)",
                cfg.threads()
            )
        })?;
    if let Some(addr) = args.metrics_addr {
        let bound = super::metrics_endpoint::serve(addr)
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
        eprintln!("metrics: http://{bound}/metrics");
    }
    // the pipeline's and the trainer's warnings (bad samples, collapse) go to RUN/train.log
    // too; the other nodes write nothing to RUN (node 0's), only to their terminal
    if cfg.run.node_rank == 0 {
        let log_file = args.out.join("train.log");
        std::fs::create_dir_all(&args.out)
            .and_then(|()| super::logger::tee_to(&log_file))
            .with_context(|| format!("cannot write {}", log_file.display()))?;
    }
    let job = Job {
        cfg,
        opts: RunOptions {
            data: args.data.clone(),
            out: args.out.clone(),
            resume: match (args.resume, args.resume_from) {
                (_, Some(path)) => Resume::From(path),
                (true, None) => Resume::Latest,
                (false, None) => Resume::No,
            },
            checkpoints: true,
        },
    };
    // every error names its file, folder or setting already
    let kind = job.cfg.model.kind();
    let summary = device::run_training(&args.devices, kind, job)??;
    let checkpoint = summary
        .checkpoint
        .map_or("none".into(), |p| p.display().to_string());
    if summary.ran == 0 {
        println!(
            "nothing to do: the run is complete at step {} (checkpoint {checkpoint})",
            summary.steps
        );
    } else {
        println!(
            "done: {} steps ({} now), last loss {:.4}, checkpoint {checkpoint}",
            summary.steps, summary.ran, summary.last_loss
        );
    }
    Ok(ExitCode::SUCCESS)
}
