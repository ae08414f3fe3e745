//! The trainer's DINO step (`train::step::dino_step`), timed per phase: forward (teacher +
//! student + loss), backward, optimizer (gradient transforms + AdamW), EMA (teacher +
//! centre). Medians over `--steps` after 5 warmup steps, on synthetic crops of the config's
//! sizes, with the config's seed, temperatures, lr, weight decay and momentum as its
//! schedules give them from step `--at-step` on (at `--steps-per-epoch` steps per epoch). The default config is
//! configs/quickstart.toml (the fixed CPU benchmark); tools/gpu-check.sh passes the ViT-S/16
//! recipe and `--device cuda`. With `--data DIR` it also runs the trainer itself on DIR and
//! reports the share of step time spent waiting for the pipeline.
//!
//! With `--check` it instead runs one teacher forward and two training steps from the
//! config's seed on the same crops on the CPU and on `--device`, and compares them
//! (tools/gpu-check.sh: CUDA against the CPU).
//!
//! cargo bench --bench train_step -- [--config FILE] [--device cpu|cuda[:N]] [--steps 30]
//!                                   [--at-step 0] [--steps-per-epoch 1000] [--data DIR]
//!                                   [--train-steps 60] [--set KEY=VALUE]... [--json]
//!                                   [--check]

use burn::tensor::{Distribution, Tensor, TensorData};
use dino_pipeline::batch::Position;
use dino_stream::config::Config;
use dino_stream::device::{self, DeviceChoice, TrainableBackbone, TrainingBackend, TrainingJob};
use dino_stream::images::Images;
use dino_stream::model::{BatchStats, Norm};
use dino_stream::train::bench::{self, PHASES};
use dino_stream::train::{self, Event, Resume, RunOptions};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Bench {
    cfg: Config,
    at_step: u64,
    per_epoch: u64,
    steps: usize,
    data: Option<std::path::PathBuf>,
    train_steps: u64,
}

impl TrainingJob for Bench {
    /// per-phase times in ms, and the trainer's (data-wait share, images/s) when --data
    type Output = (Vec<Vec<f64>>, Option<(f64, f64)>);
    fn run<A: TrainingBackend, M: TrainableBackbone<A>>(
        self,
        devices: Vec<A::Device>,
    ) -> Self::Output {
        let device = devices.into_iter().next().expect("one device");
        let d = &self.cfg.data;
        let (b, g, l) = (
            d.batch_size,
            d.global_crop_size as usize,
            d.local_crop_size as usize,
        );
        let n_locals = d.local_crops_number * b;
        let noise = |n: usize, side: usize| {
            Tensor::random([n, 3, side, side], Distribution::Normal(0.0, 1.0), &device)
        };
        let (globals, locals) = (noise(2 * b, g), (n_locals > 0).then(|| noise(n_locals, l)));
        let images = || Images {
            globals: globals.clone(),
            locals: locals.clone(),
            n_globals: 2 * b,
            n_locals,
            next: Position::default(),
        };
        let timings = bench::time_steps::<A, M>(
            &self.cfg,
            self.at_step,
            self.per_epoch,
            (5, self.steps),
            images,
            &device,
        );
        let wait = self
            .data
            .map(|dir| data_wait::<A, M>(&self.cfg, &dir, self.train_steps, &device));
        (timings.phases, wait)
    }
}

/// One teacher forward and two training steps on crops drawn on the host: the teacher's
/// output [2B, K] and the two losses (the second shows the first update).
struct Check {
    cfg: Config,
}

impl TrainingJob for Check {
    type Output = (Vec<f32>, Vec<f64>);
    fn run<A: TrainingBackend, M: TrainableBackbone<A>>(
        self,
        devices: Vec<A::Device>,
    ) -> Self::Output {
        let device = devices.into_iter().next().expect("one device");
        let d = &self.cfg.data;
        let (b, g, l) = (
            d.batch_size,
            d.global_crop_size as usize,
            d.local_crop_size as usize,
        );
        let n_locals = d.local_crops_number * b;
        let host = |n: usize, side: usize, seed: u64| {
            let mut state = seed;
            let values: Vec<f32> = (0..n * 3 * side * side)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (state >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
                })
                .collect();
            Tensor::from_data(TensorData::new(values, [n, 3, side, side]), &device)
        };
        let (globals, locals) = (
            host(2 * b, g, 1),
            (n_locals > 0).then(|| host(n_locals, l, 2)),
        );
        let teacher = dino_stream::train::step::Models::<A, M>::new(&self.cfg, &device).teacher;
        let out = teacher.forward(
            vec![(globals.clone(), None)],
            &mut Norm::Batch(&mut BatchStats::default()),
        );
        let out = out
            .into_data()
            .convert::<f32>()
            .into_vec()
            .expect("f32 values");
        let images = || Images {
            globals: globals.clone(),
            locals: locals.clone(),
            n_globals: 2 * b,
            n_locals,
            next: Position::default(),
        };
        let losses = bench::time_steps::<A, M>(&self.cfg, 0, 1000, (0, 2), images, &device).losses;
        (out, losses)
    }
}

/// `--check`: the device against the CPU; the largest differences, relative to the CPU's
/// largest magnitude (forward) or value (losses), and whether they are within tolerance.
fn check(cfg: &Config, choice: DeviceChoice, json: bool) {
    let kind = cfg.model.kind();
    let job = || Check { cfg: cfg.clone() };
    let (cpu_out, cpu_losses) =
        device::run_training(&[DeviceChoice::Cpu], kind, job()).unwrap_or_else(|e| panic!("{e}"));
    let (out, losses) =
        device::run_training(&[choice], kind, job()).unwrap_or_else(|e| panic!("{e}"));
    let scale = cpu_out.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
    let forward = cpu_out
        .iter()
        .zip(&out)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale;
    let loss = cpu_losses
        .iter()
        .zip(&losses)
        .map(|(a, b)| ((a - b) / a).abs())
        .fold(0.0, f64::max);
    // a GPU's fp32 matmuls may round differently (and accumulate in another order)
    let (forward_tol, loss_tol) = (1e-3, 1e-3);
    let pass = forward as f64 <= forward_tol && loss <= loss_tol;
    println!(
        "{choice} against the CPU: teacher output max diff {forward:.2e} of its scale \
         (tolerance {forward_tol:e}), losses {losses:?} against {cpu_losses:?}: max relative \
         diff {loss:.2e} (tolerance {loss_tol:e}): {}",
        if pass { "PASS" } else { "FAIL" }
    );
    if json {
        let out = serde_json::json!({
            "check": choice.to_string(),
            "forward_max_rel_diff": forward,
            "losses": losses,
            "cpu_losses": cpu_losses,
            "loss_max_rel_diff": loss,
            "pass": pass,
        });
        println!("{out}");
    }
    if !pass {
        std::process::exit(1);
    }
}

/// The trainer on `data` for `steps` steps: median data-wait share per log line.
fn data_wait<A: TrainingBackend, M: TrainableBackbone<A>>(
    cfg: &Config,
    data: &std::path::Path,
    steps: u64,
    device: &A::Device,
) -> (f64, f64) {
    let out = tempfile::tempdir().expect("temp dir");
    let mut cfg = cfg.clone();
    cfg.run.max_steps = steps;
    cfg.run.log_every = 5;
    let opts = RunOptions {
        data: data.to_path_buf(),
        out: out.path().join("run"),
        resume: Resume::No,
        checkpoints: false,
    };
    let mut fractions = Vec::new();
    let mut rates = Vec::new();
    let mut on_event = |e: Event| {
        if let Event::Log(line) = e {
            fractions.push(line.data_wait_fraction);
            rates.push(line.images_per_sec);
        }
    };
    train::train::<A, M>(&cfg, &opts, std::slice::from_ref(device), &mut on_event)
        .expect("the trainer runs");
    // the first window includes the pipeline's start
    (
        median(&mut fractions[1..].to_vec()),
        median(&mut rates[1..].to_vec()),
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
    };
    let steps = value("--steps").map_or(30, |s| s.parse().expect("--steps N"));
    let json = args.iter().any(|a| a == "--json");
    let config = value("--config").map_or(
        concat!(env!("CARGO_MANIFEST_DIR"), "/configs/quickstart.toml"),
        String::as_str,
    );
    // --set SECTION.KEY=VALUE, as `train` takes them
    let overrides: Vec<String> = args
        .windows(2)
        .filter(|w| w[0] == "--set")
        .map(|w| w[1].clone())
        .collect();
    let cfg =
        Config::load(Some(std::path::Path::new(config)), &overrides).expect("the config loads");
    // as `train` does: the config's run.threads size the compute pool
    rayon::ThreadPoolBuilder::new()
        .num_threads(cfg.threads())
        .build_global()
        .expect("the compute thread pool starts");
    let choice: DeviceChoice = value("--device")
        .map_or(Ok(DeviceChoice::Cpu), |d| d.parse())
        .expect("--device");
    if args.iter().any(|a| a == "--check") {
        return check(&cfg, choice, json);
    }
    let at_step = value("--at-step").map_or(0, |s| s.parse().expect("--at-step N"));
    let per_epoch =
        value("--steps-per-epoch").map_or(1000, |s| s.parse().expect("--steps-per-epoch N"));
    let bench = Bench {
        cfg: cfg.clone(),
        at_step,
        per_epoch,
        steps,
        data: value("--data").map(Into::into),
        train_steps: value("--train-steps").map_or(60, |s| s.parse().expect("--train-steps N")),
    };
    let kind = cfg.model.kind();
    let (mut times, wait) =
        device::run_training(&[choice], kind, bench).unwrap_or_else(|e| panic!("{e}"));
    let medians: Vec<f64> = times.iter_mut().map(|t| median(t)).collect();
    let images_per_sec = cfg.data.batch_size as f64 / (medians[4] / 1e3);
    println!(
        "train step on {choice}, {config}, batch {}, {} threads, {steps} steps from step \
         {at_step} of {per_epoch} per epoch (median ms):",
        cfg.data.batch_size,
        cfg.threads()
    );
    for (name, ms) in PHASES.iter().zip(&medians) {
        println!("  {name:<10} {ms:9.2}");
    }
    println!("  images/s   {images_per_sec:9.1}");
    if let Some((fraction, rate)) = wait {
        println!(
            "trainer on {}: data wait {:.2}% of step time, {rate:.1} images/s",
            value("--data").unwrap(),
            100.0 * fraction
        );
    }
    if json {
        let phases: serde_json::Map<String, serde_json::Value> = PHASES
            .iter()
            .zip(&medians)
            .map(|(k, v)| (k.to_string(), (*v).into()))
            .collect();
        let out = serde_json::json!({
            "framework": "burn",
            "device": choice.to_string(),
            "config": config,
            "steps": steps,
            "at_step": at_step,
            "steps_per_epoch": per_epoch,
            "median_ms": phases,
            "images_per_sec": images_per_sec,
            "data_wait_fraction": wait.map(|w| w.0),
            "train_images_per_sec": wait.map(|w| w.1),
            "precision": cfg.run.precision.to_string(),
        });
        println!("{out}");
    }
}
