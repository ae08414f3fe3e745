//! `dino-stream knn`: the recipe's weighted k-NN evaluation of a backbone.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use dino_pipeline::eval::{EvalConfig, EvalReader};
use dino_pipeline::manifest::printable;
use serde::Serialize;

use super::progress_bar;
use crate::checkpoint::Which;
use crate::device::{self, DeviceChoice, InferenceBackend, InferenceJob};
use crate::eval::Weights;
use crate::eval::knn::{self, Features, KnnResult};
use crate::model::Backbone;

/// Weighted k-NN classification with a checkpoint's backbone (DINO's eval_knn.py).
///
/// Both splits go through the evaluation transform (resize the shorter side to
/// img_size * 256/224, bicubic, then center crop img_size), one pass, no augmentation. The
/// feature is the CLS token after the final norm, L2-normalized; each val image's k nearest
/// train images (cosine similarity) vote for their label with weight exp(sim / T). Top-1 and
/// top-5 accuracy are printed per k. Similarities are computed in chunks of val images, never
/// as the whole train x val matrix.
///
/// Baselines: --baseline init uses the run's network at its random initialization (same
/// config and seed, the starting point training must improve on); --baseline pixels uses the
/// normalized pixels of the evaluation crop.
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// A checkpoint folder (RUN/checkpoints/step-N) or a run folder (its newest checkpoint)
    #[arg(long, value_name = "PATH")]
    checkpoint: PathBuf,
    /// Shard folder of the labeled images the neighbours come from
    #[arg(long, value_name = "DIR")]
    train: PathBuf,
    /// Shard folder of the images to classify
    #[arg(long, value_name = "DIR")]
    val: PathBuf,
    /// Split of --train to use
    #[arg(long, default_value = "train", value_name = "SPLIT")]
    train_split: String,
    /// Split of --val to use
    #[arg(long, default_value = "val", value_name = "SPLIT")]
    val_split: String,
    /// Numbers of neighbours, comma-separated
    #[arg(long, value_delimiter = ',', default_value = "10,20,100,200", value_parser = clap::value_parser!(u32).range(1..))]
    k: Vec<u32>,
    /// Temperature of the vote weights exp(sim / T)
    #[arg(long, default_value_t = 0.07, value_parser = parse_temperature)]
    temperature: f32,
    /// Which network of the checkpoint
    #[arg(long, value_enum, default_value_t = Which::Teacher)]
    which: Which,
    /// Evaluate a baseline instead of the trained weights
    #[arg(long, value_enum, value_name = "BASELINE")]
    baseline: Option<Baseline>,
    /// Images per forward pass
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    batch_size: u32,
    /// Decoding threads [default: all cores]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    workers: Option<u16>,
    /// cpu, cuda or cuda:N
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    device: DeviceChoice,
    /// Print the results as one JSON object on stdout
    #[arg(long)]
    json: bool,
}

fn parse_temperature(text: &str) -> Result<f32, String> {
    match text.parse::<f32>() {
        Ok(t) if t.is_finite() && t > 0.0 => Ok(t),
        _ => Err(format!(
            "`{text}`: the temperature must be a positive number (the recipe's is 0.07)"
        )),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Baseline {
    /// The run's network at its random initialization
    Init,
    /// The evaluation crop's normalized pixels
    Pixels,
}

#[derive(Serialize)]
struct Report {
    features: String,
    checkpoint: PathBuf,
    step: u64,
    train: String,
    val: String,
    train_samples: usize,
    val_samples: usize,
    classes: usize,
    image_size: usize,
    temperature: f32,
    results: Vec<KnnResult>,
    /// samples of either split that did not decode cleanly and were left out
    skipped: Vec<SkippedSample>,
    seconds: f64,
}

#[derive(Serialize)]
struct SkippedSample {
    split: String,
    key: String,
    why: String,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let weights = Weights::open(
        &args.checkpoint,
        args.which,
        args.baseline == Some(Baseline::Init),
    )?;
    let (device, json) = (args.device, args.json);
    let kind = weights.config.model.kind();
    let report = device::run_inference(device, kind, Job { args, weights })??;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("report serializes")
        );
    } else {
        print_table(&report);
    }
    Ok(ExitCode::SUCCESS)
}

struct Job {
    args: Args,
    weights: Weights,
}

impl InferenceJob for Job {
    type Output = anyhow::Result<Report>;
    fn run<B: InferenceBackend, M: Backbone<B>>(self, device: B::Device) -> Self::Output {
        evaluate::<B, M>(self.args, self.weights, &device)
    }
}

fn evaluate<B: InferenceBackend, M: Backbone<B>>(
    args: Args,
    weights: Weights,
    device: &B::Device,
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let size = weights.config.model.img_size;
    let (features, described) = match args.baseline {
        Some(Baseline::Pixels) => (
            Features::Pixels,
            format!("pixels ({size} px evaluation crop)"),
        ),
        _ => (
            Features::Backbone(Box::new(weights.build::<B, M>(device)?)),
            weights.describe(),
        ),
    };
    let open = |dir: &PathBuf, split: &str| {
        EvalReader::start(EvalConfig {
            dir: dir.clone(),
            split: split.to_owned(),
            size: size as u32,
            batch_size: args.batch_size as usize,
            workers: args.workers.map_or_else(
                || std::thread::available_parallelism().map_or(1, |n| n.get()),
                usize::from,
            ),
        })
        .with_context(|| format!("opening split '{split}' of {}", dir.display()))
    };
    let train = open(&args.train, &args.train_split)?;
    let val = open(&args.val, &args.val_split)?;
    if train.classes != val.classes {
        anyhow::bail!(
            "{} and {} have different class lists ({} vs {} classes); k-NN needs the same labels",
            args.train.display(),
            args.val.display(),
            train.classes.len(),
            val.classes.len()
        );
    }
    let classes = train.classes.len();
    let bar = progress_bar(
        Some(train.len + val.len),
        "{bar:30} {pos}/{len} images (features)  {per_sec}  ETA {eta}",
    );
    let train_bank = knn::extract(&features, train, &args.train_split, size, device, |n| {
        bar.inc(n)
    })?;
    let val_bank = knn::extract(&features, val, &args.val_split, size, device, |n| {
        bar.inc(n)
    })?;
    bar.finish_and_clear();
    let mut skipped = Vec::new();
    for (split, bank) in [
        (&args.train_split, &train_bank),
        (&args.val_split, &val_bank),
    ] {
        for s in &bank.skipped {
            log::warn!(
                "split '{split}': sample {} left out: {}",
                printable(&s.key),
                s.why
            );
            skipped.push(SkippedSample {
                split: split.clone(),
                key: s.key.clone(),
                why: s.why.clone(),
            });
        }
    }
    let n_train = train_bank.labels.len();
    if let Some(&k) = args.k.iter().find(|&&k| k as usize > n_train) {
        anyhow::bail!(
            "--k {k} exceeds the {n_train} train samples the neighbours come from; use a k of \
             at most {n_train}"
        );
    }
    let ks: Vec<usize> = args.k.iter().map(|&k| k as usize).collect();
    let bar = progress_bar(
        Some(val_bank.labels.len() as u64),
        "{bar:30} {pos}/{len} images (neighbours)  {per_sec}  ETA {eta}",
    );
    let results = knn::classify(
        &train_bank,
        &val_bank,
        classes,
        &ks,
        args.temperature,
        |n| bar.inc(n),
    );
    bar.finish_and_clear();
    Ok(Report {
        features: described,
        checkpoint: weights.dir.clone(),
        step: weights.step,
        train: format!("{}:{}", args.train.display(), args.train_split),
        val: format!("{}:{}", args.val.display(), args.val_split),
        train_samples: train_bank.labels.len(),
        val_samples: val_bank.labels.len(),
        classes,
        image_size: size,
        temperature: args.temperature,
        results,
        skipped,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn print_table(report: &Report) {
    println!("k-NN with {}", report.features);
    println!(
        "  {} val images ({}) against {} train images ({}), {} classes, {} px, T {}, {:.1} s",
        report.val_samples,
        report.val,
        report.train_samples,
        report.train,
        report.classes,
        report.image_size,
        report.temperature,
        report.seconds
    );
    if !report.skipped.is_empty() {
        println!(
            "  {} sample(s) left out: they do not decode cleanly (listed above)",
            report.skipped.len()
        );
    }
    println!("  {:>5}  {:>7}  {:>7}", "k", "top-1", "top-5");
    for r in &report.results {
        println!("  {:>5}  {:>7.2}  {:>7.2}", r.k, r.top1, r.top5);
    }
}
