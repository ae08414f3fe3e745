//! Each augmentation op against torchvision + PIL on the same input and parameters, from the
//! fixtures `tools/gen-augment-fixtures.py` generated (tests/fixtures/augment/index.json).
//!
//! Colour ops, flip, grayscale, solarize and blur reproduce PIL's integer and float steps and
//! must match exactly; the bicubic resize uses a SIMD resampler whose rounding differs from
//! PIL's, so it is held to a mean absolute difference of at most 1.0 level. That includes the
//! evaluation transform (`center_crop`: torchvision's `Resize` then `CenterCrop`), which is the
//! same resampler followed by an exact crop.

use std::path::{Path, PathBuf};

use dino_pipeline::augment::{CropBox, Rgb, ViewMaker, blur, color};
use dino_pipeline::eval;
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/augment")
}

fn load_png(name: &str) -> (Vec<u8>, u32, u32) {
    let img = image::open(fixtures().join(name))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .into_rgb8();
    let (w, h) = img.dimensions();
    (img.into_raw(), w, h)
}

struct Diff {
    mean: f64,
    max: u8,
}

fn diff(a: &[u8], b: &[u8]) -> Diff {
    assert_eq!(a.len(), b.len());
    let mut sum = 0u64;
    let mut max = 0u8;
    for (&x, &y) in a.iter().zip(b) {
        let d = x.abs_diff(y);
        sum += u64::from(d);
        max = max.max(d);
    }
    Diff {
        mean: sum as f64 / a.len() as f64,
        max,
    }
}

fn f32_of(step: &Value, key: &str) -> f32 {
    step[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{step}: no {key}")) as f32
}

fn u32_of(step: &Value, key: &str) -> u32 {
    step[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{step}: no {key}")) as u32
}

/// Runs a case's steps; returns the result and whether a resize was involved.
fn run_steps(steps: &[Value], mut px: Vec<u8>, mut w: u32, mut h: u32) -> (Vec<u8>, bool) {
    let mut maker = ViewMaker::new();
    let mut scratch = Vec::new();
    let mut resized = false;
    for step in steps {
        match step["op"].as_str().unwrap() {
            "resized_crop" => {
                let crop = CropBox {
                    top: u32_of(step, "top"),
                    left: u32_of(step, "left"),
                    height: u32_of(step, "height"),
                    width: u32_of(step, "width"),
                };
                let (oh, ow) = (
                    step["size_hw"][0].as_u64().unwrap() as u32,
                    step["size_hw"][1].as_u64().unwrap() as u32,
                );
                let mut out = vec![0u8; (ow * oh * 3) as usize];
                let src = Rgb {
                    pixels: &px,
                    width: w,
                    height: h,
                };
                maker
                    .resized_crop(src, crop, 1, (ow, oh), &mut out)
                    .unwrap();
                (px, w, h, resized) = (out, ow, oh, true);
            }
            "center_crop" => {
                let size = u32_of(step, "size");
                assert_eq!(u32_of(step, "resize_side"), eval::resize_side(size));
                let mut out = vec![0u8; (size * size * 3) as usize];
                let src = Rgb {
                    pixels: &px,
                    width: w,
                    height: h,
                };
                eval::center_crop(&mut maker, src, size, &mut scratch, &mut out).unwrap();
                (px, w, h, resized) = (out, size, size, true);
            }
            "hflip" => color::hflip(&mut px, w as usize),
            "brightness" => {
                color::apply_lut(&mut px, &color::brightness_lut(f32_of(step, "factor")))
            }
            "contrast" => {
                let lut = color::contrast_lut(color::mean_luma(&px), f32_of(step, "factor"));
                color::apply_lut(&mut px, &lut);
            }
            "saturation" => color::saturation(&mut px, f32_of(step, "factor")),
            "hue" => color::hue(&mut px, f32_of(step, "factor")),
            "grayscale" => color::grayscale(&mut px),
            "solarize" => {
                assert_eq!(step["threshold"], 128);
                color::apply_lut(&mut px, &color::solarize_lut());
            }
            "gaussian_blur" => blur::gaussian_blur(
                &mut px,
                w as usize,
                h as usize,
                3,
                f32_of(step, "sigma"),
                &mut scratch,
            ),
            other => panic!("unknown op {other}"),
        }
    }
    (px, resized)
}

#[test]
fn every_op_matches_torchvision_and_pil() {
    let path = fixtures().join("index.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; the committed fixtures are missing (tools/gen-augment-fixtures.py writes them)",
            path.display()
        )
    });
    let index: Value = serde_json::from_str(&text).unwrap();
    let cases = index["cases"].as_array().unwrap();
    assert!(cases.len() >= 60, "{} cases", cases.len());
    let mut failures = Vec::new();
    let mut worst_resize = 0.0f64;
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let (input, w, h) = load_png(case["input"].as_str().unwrap());
        let (want, ..) = load_png(case["output"].as_str().unwrap());
        let (got, resized) = run_steps(case["steps"].as_array().unwrap(), input, w, h);
        let d = diff(&got, &want);
        println!("{name:45} mean {:.4} max {}", d.mean, d.max);
        if resized {
            worst_resize = worst_resize.max(d.mean);
            if d.mean > 1.0 {
                failures.push(format!("{name}: mean abs diff {:.3} > 1.0", d.mean));
            }
        } else if d.max != 0 {
            failures.push(format!(
                "{name}: not exact (mean {:.4}, max {})",
                d.mean, d.max
            ));
        }
    }
    println!("worst mean abs diff of a case with a resize: {worst_resize:.4}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
