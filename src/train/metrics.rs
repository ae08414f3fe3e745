//! `RUN/metrics.jsonl` and the same figures as `metrics` gauges (the Prometheus endpoint).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::step::Hyper;
use super::{LogLine, TrainError};
use crate::loss::TeacherStats;

/// `RUN/metrics.jsonl`, one line per logging window.
pub struct MetricsLog {
    file: fs::File,
    path: PathBuf,
    losses: f64,
    waits: f64,
    times: f64,
    images: usize,
    steps: u64,
}

impl MetricsLog {
    /// Opens for appending; on resume, lines past `step` (written after the checkpoint the
    /// run continues from) are dropped so the file reads as one run.
    pub fn open(path: &Path, step: u64) -> Result<Self, TrainError> {
        let io = |err| TrainError::Io {
            path: path.to_path_buf(),
            err,
        };
        let kept: String = match fs::read_to_string(path) {
            Ok(text) => text
                .lines()
                .filter(|line| {
                    serde_json::from_str::<serde_json::Value>(line)
                        .ok()
                        .and_then(|v| v["step"].as_u64())
                        .is_some_and(|s| s <= step)
                })
                .map(|line| format!("{line}\n"))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io(e)),
        };
        fs::write(path, kept).map_err(io)?;
        let file = fs::OpenOptions::new().append(true).open(path).map_err(io)?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            losses: 0.0,
            waits: 0.0,
            times: 0.0,
            images: 0,
            steps: 0,
        })
    }

    pub fn add(&mut self, loss: f64, data_wait: f64, step_time: f64, images: usize) {
        self.losses += loss;
        self.waits += data_wait;
        self.times += step_time;
        self.images += images;
        self.steps += 1;
    }

    /// The window's line, closed after `steps_done` steps; the schedule values are those of
    /// its last step, `h`.
    pub fn line(
        &mut self,
        h: &Hyper,
        steps_done: u64,
        stats: &TeacherStats,
        decode_failures: u64,
    ) -> Result<LogLine, TrainError> {
        let n = self.steps.max(1) as f64;
        let line = LogLine {
            step: steps_done,
            epoch: h.epoch,
            loss: self.losses / n,
            lr: h.lr,
            wd: h.weight_decay,
            momentum: h.momentum,
            teacher_temp: h.teacher_temp,
            images_per_sec: self.images as f64 / self.times.max(1e-9),
            data_wait: self.waits / n,
            data_wait_fraction: self.waits / self.times.max(1e-9),
            step_time: self.times / n,
            teacher_entropy: stats.entropy,
            teacher_marginal_entropy: stats.marginal_entropy,
            decode_failures,
        };
        let mut json = serde_json::to_string(&line).expect("a log line serializes");
        json.push('\n');
        self.file
            .write_all(json.as_bytes())
            .map_err(|err| TrainError::Io {
                path: self.path.clone(),
                err,
            })?;
        publish(&line);
        (self.losses, self.waits, self.times, self.images, self.steps) = (0.0, 0.0, 0.0, 0, 0);
        Ok(line)
    }
}

/// The same figures through the `metrics` crate (and so the Prometheus endpoint).
fn publish(line: &LogLine) {
    metrics::gauge!("train_step").set(line.step as f64);
    metrics::gauge!("train_epoch").set(line.epoch as f64);
    metrics::gauge!("train_loss").set(line.loss);
    metrics::gauge!("train_lr").set(line.lr);
    metrics::gauge!("train_weight_decay").set(line.wd);
    metrics::gauge!("train_teacher_momentum").set(line.momentum);
    metrics::gauge!("train_teacher_temp").set(line.teacher_temp);
    metrics::gauge!("train_images_per_sec").set(line.images_per_sec);
    metrics::gauge!("train_data_wait_seconds").set(line.data_wait);
    metrics::gauge!("train_data_wait_fraction").set(line.data_wait_fraction);
    metrics::gauge!("train_step_seconds").set(line.step_time);
    metrics::gauge!("train_teacher_entropy").set(line.teacher_entropy);
    metrics::gauge!("train_teacher_marginal_entropy").set(line.teacher_marginal_entropy);
}
