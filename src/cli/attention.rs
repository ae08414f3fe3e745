//! `dino-stream attention`: the last block's CLS attention of a backbone on one image, as
//! PNGs (the figure of the DINO paper).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use dino_pipeline::augment::{CropBox, Rgb, ViewMaker};
use dino_pipeline::jpeg::{DEFAULT_MAX_PIXELS, JpegDecoder};
use plotters::prelude::{Color, ColorMap, ViridisRGB};

use crate::checkpoint::Which;
use crate::device::{self, BackendJob, DeviceChoice, InferenceBackend};
use crate::eval::Weights;
use crate::eval::attention::{AttentionMaps, cls_attention, threshold_mask};
use crate::images;
use crate::model::{BackboneKind, VisionTransformer};

/// Attention maps of a checkpoint's backbone on one image (DINO's visualize_attention.py).
///
/// The image is resized to SIZE x SIZE (bicubic) and cut to a multiple of the patch size;
/// the last block's attention of the CLS query over the patch tokens is taken for every head
/// and upsampled to the image (nearest, one patch = patch-size pixels). Written to OUT:
///   img.png                the resized input
///   attn-head{H}.png       each head's map (viridis, min to max)
///   attn-mean.png          the heads' mean
///   overlay.png            the mean map blended over the image
///   mask-head{H}.png       with --threshold: the image where the head keeps that share of
///                          its attention mass, the rest darkened
/// The patch grid is SIZE / patch per side, and attention memory grows with its fourth
/// power: for a model trained on small images, pick a SIZE near its training resolution.
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// A checkpoint folder (RUN/checkpoints/step-N) or a run folder (its newest checkpoint)
    #[arg(long, value_name = "PATH")]
    checkpoint: PathBuf,
    /// The image (JPEG, PNG, BMP, GIF, TIFF or WebP)
    #[arg(long, value_name = "FILE")]
    image: PathBuf,
    /// Output folder
    #[arg(long, default_value = "attention", value_name = "DIR")]
    out: PathBuf,
    /// Side the image is resized to, in pixels
    #[arg(long, default_value_t = 480, value_parser = clap::value_parser!(u32).range(1..=4096))]
    size: u32,
    /// Also write masks keeping this share of each head's attention mass (the paper: 0.6)
    #[arg(long, value_name = "SHARE", value_parser = parse_share)]
    threshold: Option<f32>,
    /// Which network of the checkpoint
    #[arg(long, value_enum, default_value_t = Which::Teacher)]
    which: Which,
    /// cpu, cuda or cuda:N
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    device: DeviceChoice,
}

fn parse_share(text: &str) -> Result<f32, String> {
    match text.parse::<f32>() {
        Ok(v) if v > 0.0 && v <= 1.0 => Ok(v),
        _ => Err(format!("`{text}`: expected a share in (0, 1], e.g. 0.6")),
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let weights = Weights::open(&args.checkpoint, args.which, false)?;
    if weights.config.model.kind() != BackboneKind::Vit {
        anyhow::bail!(
            "{}: attention maps need a ViT backbone; model.arch `{}` has no attention",
            weights.dir.display(),
            weights.config.model.arch
        );
    }
    let patch = weights.config.model.patch_size;
    let side = args.size as usize - args.size as usize % patch;
    if side == 0 {
        anyhow::bail!(
            "--size {} is smaller than the patch size {patch}",
            args.size
        );
    }
    let image = read_image(&args.image, args.size, side)?;
    let maps = device::run_on_backend(
        args.device,
        Job {
            weights: &weights,
            image: &image,
            side,
        },
    )??;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let scale = side / maps.grid_h;
    let write = |name: &str, rgb: &[u8]| -> anyhow::Result<()> {
        let path = args.out.join(name);
        image::save_buffer(&path, rgb, side as u32, side as u32, image::ColorType::Rgb8)
            .with_context(|| format!("writing {}", path.display()))
    };
    write("img.png", &image)?;
    for h in 0..maps.heads {
        write(
            &format!("attn-head{h}.png"),
            &heatmap(maps.head(h), maps.grid_w, scale),
        )?;
    }
    let mean = maps.mean();
    let mean_rgb = heatmap(&mean, maps.grid_w, scale);
    write("attn-mean.png", &mean_rgb)?;
    let overlay: Vec<u8> = image
        .iter()
        .zip(&mean_rgb)
        .map(|(&a, &b)| ((u16::from(a) + u16::from(b)) / 2) as u8)
        .collect();
    write("overlay.png", &overlay)?;
    if let Some(share) = args.threshold {
        for h in 0..maps.heads {
            let keep = threshold_mask(maps.head(h), share);
            write(
                &format!("mask-head{h}.png"),
                &masked(&image, &keep, maps.grid_w, scale, side),
            )?;
        }
    }
    println!(
        "{} heads on a {}x{} patch grid ({side} px, {}) -> {}",
        maps.heads,
        maps.grid_h,
        maps.grid_w,
        weights.describe(),
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

struct Job<'a> {
    weights: &'a Weights,
    image: &'a [u8],
    side: usize,
}

impl BackendJob for Job<'_> {
    type Output = anyhow::Result<AttentionMaps>;
    fn run<B: InferenceBackend>(self, device: B::Device) -> Self::Output {
        maps::<B>(self, &device)
    }
}

/// Attention maps are the ViT's own: this is the one job that names its backbone.
fn maps<B: InferenceBackend>(job: Job<'_>, device: &B::Device) -> anyhow::Result<AttentionMaps> {
    let vit = job.weights.build::<B, VisionTransformer<B>>(device)?;
    let x = images::to_device::<B>(job.image, [1, job.side, job.side, 3], device);
    Ok(cls_attention(&vit, x, job.weights.config.model.patch_size))
}

/// The file resized to `size` x `size` (bicubic, antialiased), then its top-left
/// `side` x `side` (a multiple of the patch size), as packed RGB.
fn read_image(path: &Path, size: u32, side: usize) -> anyhow::Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let (pixels, width, height) = if bytes.starts_with(&[0xFF, 0xD8]) {
        let mut out = Vec::new();
        let decoded = JpegDecoder::new()?
            .decode_rgb(&bytes, &mut out, &mut Vec::new())
            .with_context(|| format!("{}: not a decodable JPEG", path.display()))?;
        if let Some(warning) = decoded.warning {
            log::warn!(
                "{}: {warning}; the decoder made up the damaged part of the image",
                path.display()
            );
        }
        (out, decoded.width, decoded.height)
    } else {
        let reader = image::ImageReader::new(std::io::Cursor::new(&bytes))
            .with_guessed_format()
            .with_context(|| format!("reading {}", path.display()))?;
        let (w, h) = reader
            .into_dimensions()
            .with_context(|| format!("{}: not a readable image", path.display()))?;
        if u64::from(w) * u64::from(h) > DEFAULT_MAX_PIXELS {
            anyhow::bail!(
                "{}: {w}x{h} is over the limit of {DEFAULT_MAX_PIXELS} pixels",
                path.display()
            );
        }
        let rgb = image::load_from_memory(&bytes)
            .with_context(|| format!("{}: not a readable image", path.display()))?
            .to_rgb8();
        let (w, h) = rgb.dimensions();
        (rgb.into_raw(), w, h)
    };
    let mut resized = vec![0u8; size as usize * size as usize * 3];
    let whole = CropBox {
        top: 0,
        left: 0,
        height,
        width,
    };
    let src = Rgb {
        pixels: &pixels,
        width,
        height,
    };
    ViewMaker::new().resized_crop(src, whole, 1, (size, size), &mut resized)?;
    let row = side * 3;
    Ok(resized
        .chunks_exact(size as usize * 3)
        .take(side)
        .flat_map(|r| &r[..row])
        .copied()
        .collect())
}

/// A map on the patch grid as a viridis image, min to max, each patch `scale` pixels wide.
fn heatmap(map: &[f32], grid_w: usize, scale: usize) -> Vec<u8> {
    let (lo, hi) = map
        .iter()
        .fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let side = grid_w * scale;
    let mut out = Vec::with_capacity(side * side * 3);
    for y in 0..side {
        for x in 0..side {
            let v = map[(y / scale) * grid_w + x / scale];
            let t = if hi > lo { (v - lo) / (hi - lo) } else { 0.0 };
            let (r, g, b) = ViridisRGB.get_color(t).rgb();
            out.extend([r, g, b]);
        }
    }
    out
}

/// The image with the patches outside `keep` darkened to a quarter.
fn masked(image: &[u8], keep: &[bool], grid_w: usize, scale: usize, side: usize) -> Vec<u8> {
    image
        .chunks_exact(3)
        .enumerate()
        .flat_map(|(i, px)| {
            let (y, x) = (i / side, i % side);
            let kept = keep[(y / scale) * grid_w + x / scale];
            px.iter().map(move |&c| if kept { c } else { c / 4 })
        })
        .collect()
}
