//! Deciding what becomes of one input file: stored as is, converted, or rejected with a reason.
//! Every image is decoded fully, because only a full decode finds a truncated JPEG whose
//! header parses.

use std::fs;
use std::io::Cursor;
use std::path::Path;

use fast_image_resize::images::{TypedImage, TypedImageRef};
use fast_image_resize::pixels::{U8, U8x3};
use fast_image_resize::{FilterType, PixelTrait, ResizeAlg, ResizeOptions, Resizer};
use image::{ImageFormat, ImageReader};

use crate::jpeg::{JpegColor, JpegDecoder, JpegEncoder, Pixels, cmyk_to_rgb, has_adobe_marker};

/// How every JPEG begins: start of image, then a marker.
const JPEG_START: [u8; 3] = [0xFF, 0xD8, 0xFF];
/// Enough of a file for every format signature `image` knows.
const SNIFF_BYTES: usize = 64;
const NOT_AN_IMAGE: &str = "not an image (content is no known image format)";

/// Limits and encoding settings shared by all workers.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_side: Option<u32>,
    pub max_pixels: u64,
    pub quality: u8,
}

/// What happens to one input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A JPEG to store; `note` says why it is not the input's own bytes.
    Image {
        jpeg: Vec<u8>,
        width: u32,
        height: u32,
        note: Option<String>,
    },
    Rejected(String),
}

impl Outcome {
    pub fn output_bytes(&self) -> u64 {
        match self {
            Outcome::Image { jpeg, .. } => jpeg.len() as u64,
            Outcome::Rejected(_) => 0,
        }
    }
}

/// Per-worker state: codec instances and scratch buffers reused across files.
pub struct Validator {
    limits: Limits,
    decoder: JpegDecoder,
    encoder: JpegEncoder,
    resizer: Resizer,
    pixels: Vec<u8>,
    converted: Vec<u8>,
}

/// Decoded pixels on their way to the encoder.
struct Raster<'a> {
    pixels: &'a [u8],
    width: u32,
    height: u32,
    gray: bool,
}

impl Validator {
    pub fn new(limits: Limits) -> Result<Self, crate::jpeg::JpegError> {
        let mut decoder = JpegDecoder::new()?;
        decoder.set_max_pixels(limits.max_pixels);
        Ok(Self {
            limits,
            decoder,
            encoder: JpegEncoder::new(limits.quality)?,
            resizer: Resizer::new(),
            pixels: Vec::new(),
            converted: Vec::new(),
        })
    }

    /// Reads and checks one input. Only regular files are read (a FIFO would block, a
    /// device never end), their first bytes are sniffed before the rest is read, and a file
    /// larger than any image within the pixel limit can be is not read at all.
    pub fn check_file(&mut self, path: &Path) -> Outcome {
        match self.read_input(path) {
            Ok(data) => self.check(data),
            Err(reason) => Outcome::Rejected(reason),
        }
    }

    fn read_input(&self, path: &Path) -> Result<Vec<u8>, String> {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let unreadable = |e: std::io::Error| format!("unreadable: {e}");
        // O_NONBLOCK: opening a FIFO for reading must not wait for a writer
        let mut file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(unreadable)?;
        let meta = file.metadata().map_err(unreadable)?;
        if !meta.is_file() {
            return Err("not a regular file (a device, FIFO or socket)".into());
        }
        let len = meta.len();
        if len == 0 {
            return Err("empty file (0 bytes)".into());
        }
        let mut data = Vec::with_capacity(SNIFF_BYTES);
        file.by_ref()
            .take(SNIFF_BYTES as u64)
            .read_to_end(&mut data)
            .map_err(unreadable)?;
        if !data.starts_with(&JPEG_START) && image::guess_format(&data).is_err() {
            return Err(NOT_AN_IMAGE.into());
        }
        let max_bytes = self.max_input_bytes();
        if len > max_bytes {
            return Err(format!(
                "{len} bytes: larger than any image within the pixel limit can be \
                 ({max_bytes} bytes at {} pixels, --max-pixels)",
                self.limits.max_pixels
            ));
        }
        data.reserve(len as usize - data.len());
        file.read_to_end(&mut data).map_err(unreadable)?;
        Ok(data)
    }

    /// An uncompressed 16-bit RGBA image at the pixel limit, and a megabyte of metadata.
    fn max_input_bytes(&self) -> u64 {
        self.limits
            .max_pixels
            .saturating_mul(8)
            .saturating_add(1 << 20)
    }

    pub fn check(&mut self, data: Vec<u8>) -> Outcome {
        if data.is_empty() {
            return Outcome::Rejected("empty file (0 bytes)".into());
        }
        if data.starts_with(&JPEG_START) {
            return self.check_jpeg(data);
        }
        match image::guess_format(&data) {
            Ok(format) => self.check_other(&data, format),
            Err(_) => Outcome::Rejected(NOT_AN_IMAGE.into()),
        }
    }

    fn dimension_problem(&self, width: u32, height: u32) -> Option<String> {
        let pixels = u64::from(width) * u64::from(height);
        (width == 0 || height == 0 || pixels > self.limits.max_pixels).then(|| {
            format!(
                "absurd dimensions {width}x{height} (limit {} pixels, --max-pixels)",
                self.limits.max_pixels
            )
        })
    }

    fn check_jpeg(&mut self, data: Vec<u8>) -> Outcome {
        let header = match self.decoder.header(&data) {
            Ok(h) => h,
            Err(e) => return Outcome::Rejected(format!("corrupt JPEG: {e}")),
        };
        if let Some(problem) = self.dimension_problem(header.width, header.height) {
            return Outcome::Rejected(problem);
        }
        let mut notes = Vec::new();
        let layout = match header.color {
            JpegColor::YCbCr => Pixels::Rgb,
            JpegColor::Gray => Pixels::Gray,
            JpegColor::Rgb => {
                notes.push("RGB-colorspace JPEG re-encoded as YCbCr".to_owned());
                Pixels::Rgb
            }
            JpegColor::Cmyk | JpegColor::Ycck => {
                notes.push("CMYK JPEG converted to RGB".to_owned());
                Pixels::Cmyk
            }
        };
        if header.lossless {
            notes.push("lossless JPEG re-encoded".to_owned());
        }
        let decoded = match self.decoder.decode(&data, layout, &mut self.pixels) {
            Ok(d) => d,
            Err(e) => return Outcome::Rejected(format!("corrupt JPEG: {e}")),
        };
        if let Some(warning) = decoded.warning {
            if warning.to_ascii_lowercase().contains("premature end") {
                return Outcome::Rejected(format!("truncated JPEG: {warning}"));
            }
            notes.push(format!("re-encoded after decoder warning: {warning}"));
        }
        let pixels = if layout == Pixels::Cmyk {
            cmyk_to_rgb(&self.pixels, has_adobe_marker(&data), &mut self.converted);
            std::mem::take(&mut self.converted)
        } else {
            std::mem::take(&mut self.pixels)
        };
        let raster = Raster {
            pixels: &pixels,
            width: decoded.width,
            height: decoded.height,
            gray: layout == Pixels::Gray,
        };
        let outcome = self.finish(raster, notes, Some(data));
        self.pixels = pixels; // keep the allocation for the next file
        outcome
    }

    fn check_other(&mut self, data: &[u8], format: ImageFormat) -> Outcome {
        let name = format!("{format:?}").to_uppercase();
        // `image` refuses allocations over 512 MiB by default: a valid 13000x13000 RGBA PNG,
        // within the pixel limit, would be called corrupt. The pixel limit is checked below,
        // from the header alone, before anything is decoded.
        let max_alloc = self.max_input_bytes();
        let reader = || {
            let mut reader = ImageReader::with_format(Cursor::new(data), format);
            let mut limits = image::Limits::default();
            limits.max_alloc = Some(max_alloc);
            reader.limits(limits);
            reader
        };
        let (width, height) = match reader().into_dimensions() {
            Ok(d) => d,
            Err(e) => return Outcome::Rejected(format!("corrupt {name}: {e}")),
        };
        if let Some(problem) = self.dimension_problem(width, height) {
            return Outcome::Rejected(problem);
        }
        let image = match reader().decode() {
            Ok(i) => i,
            Err(e) => return Outcome::Rejected(format!("corrupt {name}: {e}")),
        };
        // Alpha is dropped, not composited, as PIL's convert("RGB") does.
        let gray = !image.color().has_color();
        let pixels = if gray {
            image.into_luma8().into_raw()
        } else {
            image.into_rgb8().into_raw()
        };
        let raster = Raster {
            pixels: &pixels,
            width,
            height,
            gray,
        };
        self.finish(raster, vec![format!("{name} converted to JPEG")], None)
    }

    /// Downscales when over `max_side`, then stores `original` untouched when nothing needed
    /// changing, else encodes the pixels.
    fn finish(
        &mut self,
        raster: Raster<'_>,
        mut notes: Vec<String>,
        original: Option<Vec<u8>>,
    ) -> Outcome {
        let Raster {
            width,
            height,
            gray,
            ..
        } = raster;
        let resized;
        let (pixels, out_w, out_h) = match self.limits.max_side {
            Some(max) if width.max(height) > max => {
                let (w, h) = fit_within(width, height, max);
                resized = match self.resize(&raster, w, h) {
                    Ok(px) => px,
                    Err(e) => return Outcome::Rejected(format!("cannot resize: {e}")),
                };
                notes.push(format!("downscaled from {width}x{height}"));
                (resized.as_slice(), w, h)
            }
            _ => (raster.pixels, width, height),
        };
        if notes.is_empty()
            && let Some(jpeg) = original
        {
            return Outcome::Image {
                jpeg,
                width,
                height,
                note: None,
            };
        }
        match self.encoder.encode(pixels, out_w, out_h, gray) {
            Ok(jpeg) => Outcome::Image {
                jpeg,
                width: out_w,
                height: out_h,
                note: Some(notes.join("; ")),
            },
            Err(e) => Outcome::Rejected(format!("cannot re-encode: {e}")),
        }
    }

    fn resize(&mut self, raster: &Raster<'_>, w: u32, h: u32) -> Result<Vec<u8>, String> {
        // Typed per layout: the untyped `resize` would compile the resampler into this crate
        // for all 13 pixel types.
        if raster.gray {
            resample::<U8>(&mut self.resizer, raster, w, h)
        } else {
            resample::<U8x3>(&mut self.resizer, raster, w, h)
        }
    }
}

/// `raster` resampled to `w` x `h` with Lanczos3 convolution, which widens its support when
/// downscaling: antialiased, like PIL.
fn resample<P: PixelTrait>(
    resizer: &mut Resizer,
    raster: &Raster<'_>,
    w: u32,
    h: u32,
) -> Result<Vec<u8>, String> {
    let src = TypedImageRef::<P>::from_buffer(raster.width, raster.height, raster.pixels)
        .map_err(|e| e.to_string())?;
    let mut out = vec![0; w as usize * h as usize * P::size()];
    let mut dst = TypedImage::<P>::from_buffer(w, h, &mut out).map_err(|e| e.to_string())?;
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3));
    resizer
        .resize_typed(&src, &mut dst, &options)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

/// The size that fits `width` x `height` within `max` on its longer side, aspect kept.
pub fn fit_within(width: u32, height: u32, max: u32) -> (u32, u32) {
    let long = width.max(height);
    let scale = |v: u32| {
        ((u64::from(v) * u64::from(max) + u64::from(long) / 2) / u64::from(long)).max(1) as u32
    };
    (scale(width), scale(height))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downscaling_averages_away_detail_finer_than_the_output_grid() {
        // 1-pixel black/white stripes, 4x down: point sampling would keep one colour, an
        // antialiased filter gives mid-gray.
        let (w, h) = (256u32, 64u32);
        let stripes: Vec<u8> = (0..w * h)
            .flat_map(|i| [if i % 2 == 0 { 0 } else { 255 }; 3])
            .collect();
        let mut v = Validator::new(Limits {
            max_side: Some(64),
            max_pixels: u64::MAX,
            quality: 100,
        })
        .unwrap();
        let raster = Raster {
            pixels: &stripes,
            width: w,
            height: h,
            gray: false,
        };
        let small = v.resize(&raster, 64, 16).unwrap();
        // away from the borders, where the filter is cut
        for y in 2..14 {
            for x in 2..62 {
                let p = small[(y * 64 + x) * 3];
                assert!((120..=135).contains(&p), "pixel ({x},{y}) = {p}");
            }
        }
    }

    #[test]
    fn fit_within_keeps_aspect_and_hits_the_bound() {
        assert_eq!(fit_within(1000, 500, 500), (500, 250));
        assert_eq!(fit_within(375, 500, 256), (192, 256));
        assert_eq!(fit_within(10_000, 3, 100), (100, 1));
    }
}
