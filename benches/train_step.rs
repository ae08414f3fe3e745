//! One DINO training step, timed per phase: forward (teacher + student + loss), backward,
//! optimizer (clipping + AdamW), EMA (teacher + centre). Medians over `--steps` after 5
//! warmup steps, on synthetic crops of the config's sizes. The default config is
//! configs/quickstart.toml (the fixed CPU benchmark); tools/gpu-check.sh passes the ViT-S/16
//! recipe and `--device cuda`. With `--data DIR` it also runs the trainer itself on DIR and
//! reports the share of step time spent waiting for the pipeline.
//!
//! cargo bench --bench train_step -- [--config FILE] [--device cpu|cuda[:N]] [--steps 30]
//!                                   [--data DIR] [--json]

use std::time::Instant;

use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Distribution, ElementConversion, Tensor};
use dino_stream::config::Config;
use dino_stream::device::{self, BackendJob, DeviceChoice};
use dino_stream::loss::DinoLoss;
use dino_stream::model::Dino;
use dino_stream::optim::{AdamW, Step};
use dino_stream::train::{self, Event, Resume, RunOptions, drop_path_factors, ema};

const PHASES: [&str; 5] = ["forward", "backward", "optimizer", "ema", "step"];

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Bench {
    cfg: Config,
    steps: usize,
    data: Option<std::path::PathBuf>,
}

impl BackendJob for Bench {
    /// per-phase times in ms, and the trainer's (data-wait share, images/s) when --data
    type Output = (Vec<Vec<f64>>, Option<(f64, f64)>);
    fn run<A: AutodiffBackend>(self, device: A::Device) -> Self::Output {
        let times = time_steps::<A>(&self.cfg, self.steps, &device);
        let wait = self
            .data
            .map(|dir| data_wait::<A>(&self.cfg, &dir, 60, &device));
        (times, wait)
    }
}

/// Per-phase step times in ms, `steps` timed after 5 warmup steps.
fn time_steps<A: AutodiffBackend>(cfg: &Config, steps: usize, device: &A::Device) -> Vec<Vec<f64>> {
    type Inner<A> = <A as AutodiffBackend>::InnerBackend;
    let device = device.clone();
    let vit = cfg.vit();
    let d = &cfg.data;
    let b = d.batch_size;
    let mut student = Dino::<A>::new(&vit, &cfg.head(), 0, &device);
    let mut teacher = student.valid();
    let mut loss_fn = DinoLoss::<Inner<A>>::new(cfg.model.out_dim, 0.1, 0.9, &device);
    let mut optimizer = AdamW::default();
    let (g, l) = (d.global_crop_size as usize, d.local_crop_size as usize);
    let globals =
        Tensor::<Inner<A>, 4>::random([2 * b, 3, g, g], Distribution::Normal(0.0, 1.0), &device);
    let locals = Tensor::<Inner<A>, 4>::random(
        [d.local_crops_number * b, 3, l, l],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    let mut times = vec![Vec::new(); PHASES.len()];
    let sync = || Inner::<A>::sync(&device).expect("device sync");
    for it in 0..steps + 5 {
        let t0 = Instant::now();
        let teacher_out = teacher.forward(vec![(globals.clone(), None)]);
        let targets = loss_fn.teacher_targets(teacher_out.clone(), 0.04);
        let depth = vit.depth;
        let dpr = cfg.model.drop_path_rate;
        let groups = vec![
            (
                Tensor::from_inner(globals.clone()),
                drop_path_factors::<A>(0, it as u64, 0, depth, dpr, 2 * b, &device),
            ),
            (
                Tensor::from_inner(locals.clone()),
                drop_path_factors::<A>(
                    0,
                    it as u64,
                    1,
                    depth,
                    dpr,
                    d.local_crops_number * b,
                    &device,
                ),
            ),
        ];
        let student_out = student.forward(groups);
        let loss = loss_fn.forward(student_out, Tensor::from_inner(targets));
        let _: f64 = loss.clone().into_scalar().elem();
        sync();
        let t1 = Instant::now();
        let grads = loss.backward();
        sync();
        let t2 = Instant::now();
        let step = Step {
            lr: 2.5e-4,
            weight_decay: 0.04,
            clip: 3.0,
            freeze_last_layer: false,
        };
        student = optimizer.step(student, &grads, step);
        sync();
        let t3 = Instant::now();
        teacher = ema(teacher, &student, 0.996);
        loss_fn.update_center(teacher_out);
        sync();
        let t4 = Instant::now();
        if it >= 5 {
            let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
            for (i, v) in [ms(t0, t1), ms(t1, t2), ms(t2, t3), ms(t3, t4), ms(t0, t4)]
                .into_iter()
                .enumerate()
            {
                times[i].push(v);
            }
        }
    }
    times
}

/// The quickstart trainer on `data` for `steps` steps: median data-wait share per log line.
fn data_wait<A: AutodiffBackend>(
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
    };
    let mut fractions = Vec::new();
    let mut rates = Vec::new();
    let mut on_event = |e: Event| {
        if let Event::Log(line) = e {
            fractions.push(line.data_wait_fraction);
            rates.push(line.images_per_sec);
        }
    };
    train::train::<A>(&cfg, &opts, device, &mut on_event).expect("quickstart trains");
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
    let cfg = Config::load(Some(std::path::Path::new(config)), &[]).expect("the config loads");
    let choice: DeviceChoice = value("--device")
        .map_or(Ok(DeviceChoice::Cpu), |d| d.parse())
        .expect("--device");
    let bench = Bench {
        cfg: cfg.clone(),
        steps,
        data: value("--data").map(Into::into),
    };
    let (mut times, wait) = device::dispatch(choice, bench).expect("the device is available");
    let medians: Vec<f64> = times.iter_mut().map(|t| median(t)).collect();
    let images_per_sec = cfg.data.batch_size as f64 / (medians[4] / 1e3);
    println!(
        "train step on {choice}, {config}, batch {}, {steps} steps (median ms):",
        cfg.data.batch_size
    );
    for (name, ms) in PHASES.iter().zip(&medians) {
        println!("  {name:<10} {ms:9.2}");
    }
    println!("  images/s   {images_per_sec:9.1}");
    if let Some((fraction, rate)) = wait {
        println!(
            "quickstart trainer on {}: data wait {:.2}% of step time, {rate:.1} images/s",
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
            "median_ms": phases,
            "images_per_sec": images_per_sec,
            "data_wait_fraction": wait.map(|w| w.0),
        });
        println!("{out}");
    }
}
