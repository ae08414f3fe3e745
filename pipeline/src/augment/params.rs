//! The random draws of DINO's multi-crop augmentation: what each view does to a sample.
//!
//! The distributions are torchvision's (`RandomResizedCrop.get_params`, `ColorJitter.get_params`,
//! `RandomApply`, `RandomGrayscale`) and DINO's (`GaussianBlur`, `Solarization`); the random
//! stream is our own, seeded per sample so that a sample's views depend only on
//! (seed, epoch, global index).

use rand_core::Rng;

use crate::rng;

/// How one kind of view is drawn; the defaults are the recipe's (`dino-recipe.md` §1.2).
#[derive(Debug, Clone, PartialEq)]
pub struct ViewSpec {
    /// Output side in pixels (views are square).
    pub size: u32,
    /// Fraction of the source area, drawn uniformly.
    pub scale: (f64, f64),
    /// Width/height, drawn log-uniformly.
    pub ratio: (f64, f64),
    pub flip_p: f64,
    pub jitter_p: f64,
    pub brightness: f64,
    pub contrast: f64,
    pub saturation: f64,
    pub hue: f64,
    pub grayscale_p: f64,
    pub blur_p: f64,
    pub blur_sigma: (f64, f64),
    pub solarize_p: f64,
}

impl ViewSpec {
    fn recipe(size: u32, scale: (f64, f64), blur_p: f64, solarize_p: f64) -> Self {
        Self {
            size,
            scale,
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            flip_p: 0.5,
            jitter_p: 0.8,
            brightness: 0.4,
            contrast: 0.4,
            saturation: 0.2,
            hue: 0.1,
            grayscale_p: 0.2,
            blur_p,
            blur_sigma: (0.1, 2.0),
            solarize_p,
        }
    }

    /// First global view: always blurred, never solarized.
    pub fn global_1() -> Self {
        Self::recipe(224, (0.4, 1.0), 1.0, 0.0)
    }

    /// Second global view: blurred with p 0.1, solarized with p 0.2.
    pub fn global_2() -> Self {
        Self::recipe(224, (0.4, 1.0), 0.1, 0.2)
    }

    /// Each local view: 96 px, blurred with p 0.5.
    pub fn local() -> Self {
        Self::recipe(96, (0.05, 0.4), 0.5, 0.0)
    }
}

/// A crop box in source pixels (torchvision's `i, j, h, w`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropBox {
    pub top: u32,
    pub left: u32,
    pub height: u32,
    pub width: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JitterOp {
    Brightness,
    Contrast,
    Saturation,
    Hue,
}

/// Colour jitter factors, applied in `order` (torchvision draws a random permutation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Jitter {
    pub order: [JitterOp; 4],
    pub brightness: f32,
    pub contrast: f32,
    pub saturation: f32,
    pub hue: f32,
}

/// Everything one view does to the decoded source image, in the order it is applied.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ViewParams {
    pub crop: CropBox,
    pub flip: bool,
    pub jitter: Option<Jitter>,
    pub grayscale: bool,
    /// Gaussian blur radius (PIL's radius is the sigma).
    pub blur_sigma: Option<f32>,
    pub solarize: bool,
}

fn uniform(rng: &mut impl Rng, (lo, hi): (f64, f64)) -> f64 {
    lo + (hi - lo) * rng::unit(rng)
}

fn chance(rng: &mut impl Rng, p: f64) -> bool {
    rng::unit(rng) < p
}

/// torchvision's `RandomResizedCrop.get_params`: up to 10 tries of an area fraction and a
/// log-uniform aspect ratio, else the largest centred crop within the ratio range. Sizes are
/// rounded half to even, as Python's `round` does.
pub fn random_resized_crop(
    rng: &mut impl Rng,
    width: u32,
    height: u32,
    scale: (f64, f64),
    ratio: (f64, f64),
) -> CropBox {
    let area = f64::from(width) * f64::from(height);
    let log_ratio = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target = area * uniform(rng, scale);
        let aspect = uniform(rng, log_ratio).exp();
        let w = (target * aspect).sqrt().round_ties_even();
        let h = (target / aspect).sqrt().round_ties_even();
        if w > 0.0 && h > 0.0 && w <= f64::from(width) && h <= f64::from(height) {
            let (w, h) = (w as u32, h as u32);
            let top = rng::below(rng, u64::from(height - h) + 1) as u32;
            let left = rng::below(rng, u64::from(width - w) + 1) as u32;
            return CropBox {
                top,
                left,
                height: h,
                width: w,
            };
        }
    }
    let in_ratio = f64::from(width) / f64::from(height);
    let (w, h) = if in_ratio < ratio.0 {
        (width, (f64::from(width) / ratio.0).round_ties_even() as u32)
    } else if in_ratio > ratio.1 {
        (
            (f64::from(height) * ratio.1).round_ties_even() as u32,
            height,
        )
    } else {
        (width, height)
    };
    CropBox {
        top: (height - h) / 2,
        left: (width - w) / 2,
        height: h,
        width: w,
    }
}

fn jitter(rng: &mut impl Rng, spec: &ViewSpec) -> Jitter {
    let mut order = [
        JitterOp::Brightness,
        JitterOp::Contrast,
        JitterOp::Saturation,
        JitterOp::Hue,
    ];
    rng::shuffle(&mut order, rng);
    let factor = |rng: &mut _, strength: f64| {
        uniform(rng, ((1.0 - strength).max(0.0), 1.0 + strength)) as f32
    };
    Jitter {
        order,
        brightness: factor(rng, spec.brightness),
        contrast: factor(rng, spec.contrast),
        saturation: factor(rng, spec.saturation),
        hue: uniform(rng, (-spec.hue, spec.hue)) as f32,
    }
}

/// Draws one view of a `width` x `height` source. Every draw is made whether or not its
/// effect applies, so one view's choices never shift the random stream of the next.
pub fn draw_view(rng: &mut impl Rng, spec: &ViewSpec, width: u32, height: u32) -> ViewParams {
    let crop = random_resized_crop(rng, width, height, spec.scale, spec.ratio);
    let flip = chance(rng, spec.flip_p);
    let apply_jitter = chance(rng, spec.jitter_p);
    let jitter = jitter(rng, spec);
    let grayscale = chance(rng, spec.grayscale_p);
    let apply_blur = chance(rng, spec.blur_p);
    let sigma = uniform(rng, spec.blur_sigma) as f32;
    let solarize = chance(rng, spec.solarize_p);
    ViewParams {
        crop,
        flip,
        jitter: apply_jitter.then_some(jitter),
        grayscale,
        blur_sigma: apply_blur.then_some(sigma),
        solarize,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// |count - n p| within `sds` binomial standard deviations.
    fn assert_binomial(count: u64, n: u64, p: f64, sds: f64, what: &str) {
        let mean = n as f64 * p;
        let sd = (n as f64 * p * (1.0 - p)).sqrt();
        assert!(
            (count as f64 - mean).abs() <= sds * sd,
            "{what}: {count} of {n}, expected {mean:.0} +- {:.0}",
            sds * sd
        );
    }

    #[test]
    fn crop_area_is_uniform_over_the_scale_range() {
        // On a square source every try fits, so the area fraction is the uniform draw up to
        // rounding: 10 equal-width bins each hold n/10 within binomial bounds.
        let mut r = rng::rng(11, 0);
        let n = 50_000u64;
        let mut bins = [0u64; 10];
        for _ in 0..n {
            let b = random_resized_crop(&mut r, 1000, 1000, (0.05, 0.4), (0.75, 4.0 / 3.0));
            let fraction = f64::from(b.width * b.height) / 1e6;
            let bin = ((fraction - 0.05) / 0.035).floor().clamp(0.0, 9.0) as usize;
            bins[bin] += 1;
        }
        for (i, &count) in bins.iter().enumerate() {
            assert_binomial(count, n, 0.1, 5.0, &format!("area bin {i}"));
        }
    }

    #[test]
    fn aspect_ratio_is_log_uniform() {
        let mut r = rng::rng(12, 0);
        let n = 50_000u64;
        let (lo, hi) = ((3.0f64 / 4.0).ln(), (4.0f64 / 3.0).ln());
        let mut bins = [0u64; 8];
        for _ in 0..n {
            let b = random_resized_crop(&mut r, 2000, 2000, (0.3, 0.6), (0.75, 4.0 / 3.0));
            let log = (f64::from(b.width) / f64::from(b.height)).ln();
            let bin = ((log - lo) / (hi - lo) * 8.0).floor().clamp(0.0, 7.0) as usize;
            bins[bin] += 1;
        }
        for (i, &count) in bins.iter().enumerate() {
            assert_binomial(count, n, 1.0 / 8.0, 5.0, &format!("log-ratio bin {i}"));
        }
    }

    #[test]
    fn crops_fit_and_fall_back_to_a_centred_crop() {
        let mut r = rng::rng(13, 0);
        for _ in 0..20_000 {
            let b = random_resized_crop(&mut r, 500, 375, (0.4, 1.0), (0.75, 4.0 / 3.0));
            assert!(b.left + b.width <= 500 && b.top + b.height <= 375, "{b:?}");
            assert!(b.width > 0 && b.height > 0);
        }
        // A 10:1 strip never fits a 3/4..4/3 box of 40-100% area: centred fallback at 4/3.
        let b = random_resized_crop(&mut r, 1000, 100, (0.4, 1.0), (0.75, 4.0 / 3.0));
        assert_eq!(
            b,
            CropBox {
                top: 0,
                left: 433,
                height: 100,
                width: 133
            }
        );
    }

    #[test]
    fn each_probability_holds_within_binomial_bounds() {
        let n = 40_000u64;
        for (spec, name) in [
            (ViewSpec::global_1(), "global 1"),
            (ViewSpec::global_2(), "global 2"),
            (ViewSpec::local(), "local"),
        ] {
            let mut r = rng::rng(14, 0);
            let (mut flip, mut jitter, mut gray, mut blur, mut solarize) = (0, 0, 0, 0, 0);
            for _ in 0..n {
                let v = draw_view(&mut r, &spec, 500, 375);
                flip += u64::from(v.flip);
                jitter += u64::from(v.jitter.is_some());
                gray += u64::from(v.grayscale);
                blur += u64::from(v.blur_sigma.is_some());
                solarize += u64::from(v.solarize);
            }
            assert_binomial(flip, n, 0.5, 5.0, &format!("{name} flip"));
            assert_binomial(jitter, n, 0.8, 5.0, &format!("{name} jitter"));
            assert_binomial(gray, n, 0.2, 5.0, &format!("{name} grayscale"));
            assert_binomial(blur, n, spec.blur_p, 5.0, &format!("{name} blur"));
            assert_binomial(
                solarize,
                n,
                spec.solarize_p,
                5.0,
                &format!("{name} solarize"),
            );
        }
    }

    #[test]
    fn jitter_orders_are_uniform_and_factors_in_range() {
        let spec = ViewSpec::global_1();
        let mut r = rng::rng(15, 0);
        let n = 48_000u64;
        let mut orders = std::collections::BTreeMap::new();
        let (mut b_sum, mut h_min, mut h_max) = (0.0f64, 1.0f32, -1.0f32);
        for _ in 0..n {
            let j = jitter(&mut r, &spec);
            *orders.entry(format!("{:?}", j.order)).or_insert(0u64) += 1;
            assert!((0.6..=1.4).contains(&j.brightness) && (0.6..=1.4).contains(&j.contrast));
            assert!((0.8..=1.2).contains(&j.saturation) && (-0.1..=0.1).contains(&j.hue));
            b_sum += f64::from(j.brightness);
            h_min = h_min.min(j.hue);
            h_max = h_max.max(j.hue);
        }
        assert_eq!(orders.len(), 24, "all permutations occur");
        for (order, &count) in &orders {
            assert_binomial(count, n, 1.0 / 24.0, 5.0, order);
        }
        // U(0.6, 1.4): mean 1, sd 0.231; the mean of n draws has sd 0.231/sqrt(n).
        let mean = b_sum / n as f64;
        assert!(
            (mean - 1.0).abs() < 5.0 * 0.231 / (n as f64).sqrt(),
            "{mean}"
        );
        assert!(h_min < -0.099 && h_max > 0.099);
    }

    #[test]
    fn the_blur_sigma_is_uniform_in_its_range() {
        let spec = ViewSpec::global_1();
        let mut r = rng::rng(16, 0);
        let n = 40_000u64;
        let mut bins = [0u64; 4];
        for _ in 0..n {
            let s = f64::from(draw_view(&mut r, &spec, 500, 375).blur_sigma.unwrap());
            assert!((0.1..2.0).contains(&s));
            bins[((s - 0.1) / 0.475).floor().min(3.0) as usize] += 1;
        }
        for (i, &count) in bins.iter().enumerate() {
            assert_binomial(count, n, 0.25, 5.0, &format!("sigma bin {i}"));
        }
    }
}
