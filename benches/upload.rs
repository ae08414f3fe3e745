//! One recipe batch from the pipeline to the device: u8 NHWC crops (B = 64: 2 x 224² globals
//! and 8 x 96² locals by default) -> normalized f32 NCHW. The trainer's path
//! (`images::to_device`: u8 on the wire, cast and normalization on the device) against the
//! one it replaced (a float tensor from the bytes, which Burn converts to f32 on the host).
//! Prints, per path, the host time of the call (what the training loop waits for), the time
//! until the device has the result, and the bytes sent; medians over --rounds.
//!
//! cargo bench --bench upload -- [--device cpu|cuda[:N]] [--rounds 20] [--batch 64] [--json]

use std::time::Instant;

use burn::tensor::{Tensor, TensorData};
use dino_stream::device::{self, BackendJob, DeviceChoice, InferenceBackend};
use dino_stream::images;

struct Upload {
    batch: usize,
    rounds: usize,
}

/// (path, host ms, ready ms, bytes)
type Row = (&'static str, f64, f64, usize);

impl BackendJob for Upload {
    type Output = Vec<Row>;
    fn run<B: InferenceBackend>(self, device: B::Device) -> Vec<Row> {
        let crops = [(2 * self.batch, 224), (8 * self.batch, 96)];
        let batches: Vec<(Vec<u8>, [usize; 4])> = crops
            .iter()
            .map(|&(n, side)| {
                let bytes = (0..n * side * side * 3)
                    .map(|i| (i * 131 % 251) as u8)
                    .collect();
                (bytes, [n, side, side, 3])
            })
            .collect();
        let values: usize = batches.iter().map(|(b, _)| b.len()).sum();
        let u8_path =
            |bytes: &[u8], shape: [usize; 4]| images::to_device::<B>(bytes, shape, &device);
        let f32_path = |bytes: &[u8], shape: [usize; 4]| {
            images::normalize(Tensor::<B, 4>::from_data(
                TensorData::new(bytes.to_vec(), shape),
                &device,
            ))
        };
        let mut rows = Vec::new();
        for (name, path, bytes_per_value) in [
            (
                "u8, cast on the device",
                &u8_path as &dyn Fn(&[u8], [usize; 4]) -> Tensor<B, 4>,
                1,
            ),
            ("f32, converted on the host", &f32_path, 4),
        ] {
            let (mut host, mut ready) = (Vec::new(), Vec::new());
            for _ in 0..self.rounds + 2 {
                let started = Instant::now();
                let out: Vec<Tensor<B, 4>> =
                    batches.iter().map(|(b, shape)| path(b, *shape)).collect();
                host.push(started.elapsed().as_secs_f64() * 1e3);
                B::sync(&device).expect("device sync");
                ready.push(started.elapsed().as_secs_f64() * 1e3);
                drop(out);
            }
            // the first two rounds warm the allocator and the device's kernels up
            rows.push((
                name,
                median(&mut host[2..]),
                median(&mut ready[2..]),
                values * bytes_per_value,
            ));
        }
        rows
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
    };
    let choice: DeviceChoice = value("--device")
        .map_or(Ok(DeviceChoice::Cpu), |d| d.parse())
        .expect("--device");
    let rounds = value("--rounds").map_or(20, |s| s.parse().expect("--rounds N"));
    let batch = value("--batch").map_or(64, |s| s.parse().expect("--batch N"));
    let rows =
        device::run_on_backend(choice, Upload { batch, rounds }).unwrap_or_else(|e| panic!("{e}"));
    println!(
        "upload of one batch on {choice}: B = {batch}, 2 x 224² + 8 x 96² crops, {rounds} rounds \
         (median):"
    );
    for &(name, host, ready, bytes) in &rows {
        println!(
            "  {name:<28} host {host:8.2} ms   ready {ready:8.2} ms   {:7.1} MB sent",
            bytes as f64 / 1e6
        );
    }
    if args.iter().any(|a| a == "--json") {
        let paths: Vec<_> = rows
            .iter()
            .map(|&(name, host, ready, bytes)| {
                serde_json::json!({"path": name, "host_ms": host, "ready_ms": ready, "bytes": bytes})
            })
            .collect();
        let out = serde_json::json!({"device": choice.to_string(), "batch": batch, "paths": paths});
        println!("{out}");
    }
}
