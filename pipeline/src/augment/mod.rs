//! DINO's per-view augmentation (`dino-recipe.md` §1.2): random resized crop with bicubic
//! resampling, horizontal flip, colour jitter in random order, grayscale, Gaussian blur and
//! solarization, on packed RGB u8 (HWC), matching torchvision + PIL on the same parameters.

pub mod blur;
pub mod color;
pub mod params;

use fast_image_resize::images::{TypedCroppedImage, TypedImage, TypedImageRef};
use fast_image_resize::pixels::U8x3;
use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};

pub use params::{CropBox, Jitter, JitterOp, ViewParams, ViewSpec, draw_view};

/// A source image: packed RGB rows.
#[derive(Debug, Clone, Copy)]
pub struct Rgb<'a> {
    pub pixels: &'a [u8],
    pub width: u32,
    pub height: u32,
}

#[derive(Debug, thiserror::Error)]
#[error("resize failed: {0}")]
pub struct AugmentError(String);

/// Per-thread state for making views: the resizer's buffers and the blur's scratch.
#[derive(Default)]
pub struct ViewMaker {
    resizer: Resizer,
    scratch: Vec<u8>,
}

impl ViewMaker {
    pub fn new() -> Self {
        Self::default()
    }

    /// torchvision's `resized_crop(..., BICUBIC)` on a PIL image: the box is cut out first
    /// (the filter never reads outside it), then resampled with the a = -0.5 cubic, widened
    /// when downscaling (antialiased), into `out` (`width` x `height` x 3).
    ///
    /// When `src` was decoded at 1/`denom` of the size `crop` refers to (DCT scaling), the box
    /// scales down with it to fractional coordinates, and the resampler then reads the
    /// neighbours of the box's edges, which the full-size path never does.
    pub fn resized_crop(
        &mut self,
        src: Rgb<'_>,
        crop: CropBox,
        denom: u32,
        (width, height): (u32, u32),
        out: &mut [u8],
    ) -> Result<(), AugmentError> {
        let err = |e: &dyn std::fmt::Display| AugmentError(e.to_string());
        // The typed API instantiates the resampler for RGB only; the untyped `resize` would
        // compile it into this crate for all 13 pixel types.
        let image = TypedImageRef::<U8x3>::from_buffer(src.width, src.height, src.pixels)
            .map_err(|e| err(&e))?;
        let mut dst = TypedImage::<U8x3>::from_buffer(width, height, out).map_err(|e| err(&e))?;
        let options =
            ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::CatmullRom));
        if denom == 1 {
            let boxed =
                TypedCroppedImage::from_ref(&image, crop.left, crop.top, crop.width, crop.height)
                    .map_err(|e| err(&e))?;
            self.resizer.resize_typed(&boxed, &mut dst, &options)
        } else {
            let f = |v: u32| f64::from(v) / f64::from(denom);
            let options = options.crop(f(crop.left), f(crop.top), f(crop.width), f(crop.height));
            self.resizer.resize_typed(&image, &mut dst, &options)
        }
        .map_err(|e| err(&e))
    }

    /// Makes one view of `src` into `out` (`size` x `size` x 3, packed RGB).
    pub fn make_view(
        &mut self,
        src: Rgb<'_>,
        view: &ViewParams,
        size: u32,
        out: &mut [u8],
    ) -> Result<(), AugmentError> {
        self.make_view_scaled(src, view, 1, size, out)
    }

    /// [`make_view`](Self::make_view) from a source decoded at 1/`denom` of the size the
    /// view's crop box refers to.
    pub fn make_view_scaled(
        &mut self,
        src: Rgb<'_>,
        view: &ViewParams,
        denom: u32,
        size: u32,
        out: &mut [u8],
    ) -> Result<(), AugmentError> {
        self.resized_crop(src, view.crop, denom, (size, size), out)?;
        if view.flip {
            color::hflip(out, size as usize);
        }
        if let Some(jitter) = &view.jitter {
            apply_jitter(out, jitter);
        }
        if view.grayscale {
            color::grayscale(out);
        }
        if let Some(sigma) = view.blur_sigma {
            let side = size as usize;
            blur::gaussian_blur(out, side, side, 3, sigma, &mut self.scratch);
        }
        if view.solarize {
            color::apply_lut(out, &color::solarize_lut());
        }
        Ok(())
    }
}

/// The largest DCT scale-down (1, 2, 4 or 8) after which every view's crop box still has at
/// least its output size in pixels, so decoding smaller loses no resolution any view uses.
pub fn dct_denominator<'a>(views: impl IntoIterator<Item = (&'a ViewParams, u32)>) -> u32 {
    let smallest_ratio = views
        .into_iter()
        .map(|(v, size)| v.crop.width.min(v.crop.height) / size.max(1))
        .min()
        .unwrap_or(1);
    [8, 4, 2]
        .into_iter()
        .find(|&d| smallest_ratio >= d)
        .unwrap_or(1)
}

/// The four jitter operations in the drawn order, as torchvision's `ColorJitter` applies them.
pub fn apply_jitter(rgb: &mut [u8], jitter: &Jitter) {
    for op in jitter.order {
        match op {
            JitterOp::Brightness => {
                color::apply_lut(rgb, &color::brightness_lut(jitter.brightness));
            }
            JitterOp::Contrast => {
                let lut = color::contrast_lut(color::mean_luma(rgb), jitter.contrast);
                color::apply_lut(rgb, &lut);
            }
            JitterOp::Saturation => color::saturation(rgb, jitter.saturation),
            JitterOp::Hue => color::hue(rgb, jitter.hue),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(width: u32, height: u32) -> ViewParams {
        ViewParams {
            crop: CropBox {
                top: 0,
                left: 0,
                height,
                width,
            },
            flip: false,
            jitter: None,
            grayscale: false,
            blur_sigma: None,
            solarize: false,
        }
    }

    #[test]
    fn dct_scale_is_limited_by_the_tightest_view() {
        let (big, small) = (view(900, 700), view(200, 390));
        assert_eq!(dct_denominator([(&big, 224)]), 2); // 700 / 224 = 3.1
        assert_eq!(dct_denominator([(&big, 96)]), 4); // 700 / 96 = 7.3
        assert_eq!(dct_denominator([(&big, 80)]), 8);
        assert_eq!(dct_denominator([(&big, 96), (&small, 96)]), 2);
        assert_eq!(dct_denominator([(&big, 224), (&small, 224)]), 1);
    }
}
