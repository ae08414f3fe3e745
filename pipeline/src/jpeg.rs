//! JPEG decoding and encoding on libjpeg-turbo (the `turbojpeg` crate's vendored build).
//!
//! Decoding goes through the raw TurboJPEG 3 API rather than `turbojpeg::Decompressor`
//! because ingest must tell a fatal error from a warning: libjpeg-turbo reports a truncated
//! file only as a warning ("Premature end of JPEG file") and fills the missing rows with gray,
//! so a decoder that hides the difference would store broken images as valid.

use std::ffi::{CStr, c_int, c_void};
use std::ptr::NonNull;

use turbojpeg::raw;

/// A libjpeg-turbo failure: the library's own message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct JpegError(pub String);

/// The colour model of the compressed data, as the JPEG header declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JpegColor {
    YCbCr,
    Gray,
    Rgb,
    Cmyk,
    Ycck,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JpegHeader {
    pub width: u32,
    pub height: u32,
    pub color: JpegColor,
    pub lossless: bool,
}

/// Pixel layouts the decoder writes (interleaved, rows packed without padding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pixels {
    Rgb,
    Gray,
    Cmyk,
}

impl Pixels {
    pub fn channels(self) -> usize {
        match self {
            Pixels::Rgb => 3,
            Pixels::Gray => 1,
            Pixels::Cmyk => 4,
        }
    }

    fn tj_format(self) -> c_int {
        (match self {
            Pixels::Rgb => raw::TJPF_TJPF_RGB,
            Pixels::Gray => raw::TJPF_TJPF_GRAY,
            Pixels::Cmyk => raw::TJPF_TJPF_CMYK,
        }) as c_int
    }
}

/// A decode that completed. `warning` holds libjpeg's message when the data was damaged
/// but decoding went on (the pixels of the damaged part are then made up by the library).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub width: u32,
    pub height: u32,
    pub warning: Option<String>,
}

/// PIL's decompression-bomb limit: the default cap on an image's pixels.
pub const DEFAULT_MAX_PIXELS: u64 = 178_956_970;

/// Progressive scans after which a decode is abandoned: a crafted progressive file can make
/// libjpeg-turbo run thousands of scans over one small image (its own tools use 500).
const SCAN_LIMIT: c_int = 500;

/// The beginnings of libjpeg's warning messages (`JWRN_*` in its `jerror.h`): a call that
/// reports one of these completed, with the damaged part of the image made up by the
/// library. TurboJPEG's error code cannot tell this alone: once a call warned it reports
/// "warning" even when a fatal error followed, and then the message is the fatal one.
const WARNINGS: [&str; 7] = [
    "Corrupt JPEG data:",
    "Premature end of JPEG file",
    "Unknown Adobe color transform code",
    "Inconsistent progression sequence",
    "Warning: unknown JFIF revision number",
    "Invalid SOS parameters for sequential JPEG",
    "Application transferred too many scanlines",
];

/// A TurboJPEG decompressor that starts every image on a fresh instance.
///
/// A TurboJPEG instance must not be reused after trouble: `tj3DecompressHeader` returns from
/// its error branch without aborting the decompressor, so the next file inherits a
/// half-read marker stream, and a stream that ends before any frame returns success
/// without setting the header fields, so the previous file's size and colour space would
/// be read back. Each [`header`](Self::header) call (and so each decode) therefore begins on
/// a new instance; that costs an allocation, not a decode. Not shareable across threads.
pub struct JpegDecoder {
    handle: NonNull<c_void>,
    /// The instance has parsed a header since it was made.
    used: bool,
    max_pixels: u64,
}

// SAFETY: a TurboJPEG instance may move between threads; it is only never used by two at once,
// which `&mut self` on every call guarantees.
unsafe impl Send for JpegDecoder {}

/// A new decompression instance with the scan limit set.
fn new_instance() -> Result<NonNull<c_void>, JpegError> {
    // SAFETY: tj3Init has no preconditions; a null return is handled.
    let ptr = unsafe { raw::tj3Init(raw::TJINIT_TJINIT_DECOMPRESS as c_int) };
    let handle = NonNull::new(ptr).ok_or_else(|| JpegError("tj3Init failed".into()))?;
    // SAFETY: valid handle; SCANLIMIT takes any non-negative value.
    unsafe {
        raw::tj3Set(
            handle.as_ptr(),
            raw::TJPARAM_TJPARAM_SCANLIMIT as c_int,
            SCAN_LIMIT,
        )
    };
    Ok(handle)
}

/// How a TurboJPEG call that did not return 0 went.
enum Trouble {
    /// It completed; the message says what the library made up.
    Warning(String),
    Fatal(String),
}

impl JpegDecoder {
    pub fn new() -> Result<Self, JpegError> {
        Ok(Self {
            handle: new_instance()?,
            used: false,
            max_pixels: DEFAULT_MAX_PIXELS,
        })
    }

    /// Refuses to decode images of more than `max_pixels` pixels (default
    /// [`DEFAULT_MAX_PIXELS`]); the header alone tells the size, so nothing is allocated.
    pub fn set_max_pixels(&mut self, max_pixels: u64) {
        self.max_pixels = max_pixels;
    }

    /// Replaces a used instance by a fresh one.
    fn fresh(&mut self) -> Result<(), JpegError> {
        if self.used {
            let handle = new_instance()?;
            // SAFETY: the old handle came from tj3Init and is destroyed once; it is replaced
            // before any further use.
            unsafe { raw::tj3Destroy(self.handle.as_ptr()) };
            self.handle = handle;
        }
        self.used = true;
        Ok(())
    }

    fn message(&self) -> String {
        // SAFETY: the handle is valid for self's lifetime; the string is owned by the
        // instance (or the thread) and copied out before any other call.
        unsafe { CStr::from_ptr(raw::tj3GetErrorStr(self.handle.as_ptr())) }
            .to_string_lossy()
            .into_owned()
    }

    fn trouble(&self) -> Trouble {
        let message = self.message();
        // SAFETY: valid handle.
        let code = unsafe { raw::tj3GetErrorCode(self.handle.as_ptr()) };
        if code == raw::TJERR_TJERR_WARNING as c_int
            && WARNINGS.iter().any(|w| message.starts_with(w))
        {
            Trouble::Warning(message)
        } else {
            Trouble::Fatal(message)
        }
    }

    fn get(&self, param: raw::TJPARAM) -> c_int {
        // SAFETY: valid handle; tj3Get only reads.
        unsafe { raw::tj3Get(self.handle.as_ptr(), param as c_int) }
    }

    /// Parses the header only (dimensions, colour model), on a fresh instance; cheap,
    /// nothing is decoded. A header that parses with a warning is accepted: the decode
    /// reports the warning.
    pub fn header(&mut self, data: &[u8]) -> Result<JpegHeader, JpegError> {
        self.fresh()?;
        // SAFETY: data is a valid slice for the duration of the call.
        let rc = unsafe {
            raw::tj3DecompressHeader(self.handle.as_ptr(), data.as_ptr(), data.len() as _)
        };
        if rc != 0
            && let Trouble::Fatal(message) = self.trouble()
        {
            return Err(JpegError(message));
        }
        // A fresh instance holds -1 until a frame header is read: a stream without one
        // ("tables only", or cut before its frame) leaves it so.
        let (width, height) = (
            self.get(raw::TJPARAM_TJPARAM_JPEGWIDTH),
            self.get(raw::TJPARAM_TJPARAM_JPEGHEIGHT),
        );
        if width < 1 || height < 1 {
            return Err(JpegError("JPEG datastream contains no image".into()));
        }
        let color = match self.get(raw::TJPARAM_TJPARAM_COLORSPACE) as raw::TJCS {
            raw::TJCS_TJCS_YCbCr => JpegColor::YCbCr,
            raw::TJCS_TJCS_GRAY => JpegColor::Gray,
            raw::TJCS_TJCS_RGB => JpegColor::Rgb,
            raw::TJCS_TJCS_CMYK => JpegColor::Cmyk,
            raw::TJCS_TJCS_YCCK => JpegColor::Ycck,
            other => return Err(JpegError(format!("unknown JPEG colorspace {other}"))),
        };
        Ok(JpegHeader {
            width: width as u32,
            height: height as u32,
            color,
            lossless: self.get(raw::TJPARAM_TJPARAM_LOSSLESS) != 0,
        })
    }

    /// Decodes the whole image into `out` (resized to fit), as `pixels`.
    pub fn decode(
        &mut self,
        data: &[u8],
        pixels: Pixels,
        out: &mut Vec<u8>,
    ) -> Result<Decoded, JpegError> {
        self.decode_scaled(data, pixels, 1, out)
    }

    /// Decodes any JPEG that ingest accepts to packed RGB: YCbCr, gray and RGB directly,
    /// CMYK and YCCK as PIL converts them (Adobe's inversion undone). `cmyk` is scratch.
    pub fn decode_rgb(
        &mut self,
        data: &[u8],
        out: &mut Vec<u8>,
        cmyk: &mut Vec<u8>,
    ) -> Result<Decoded, JpegError> {
        match self.header(data)?.color {
            JpegColor::Cmyk | JpegColor::Ycck => {
                let decoded = self.decode(data, Pixels::Cmyk, cmyk)?;
                cmyk_to_rgb(cmyk, has_adobe_marker(data), out);
                Ok(decoded)
            }
            _ => self.decode(data, Pixels::Rgb, out),
        }
    }

    /// Decodes at 1/`denom` of the size (1, 2, 4 or 8), scaling in the DCT domain, which
    /// skips most of the work of a full decode. Sizes round up: `ceil(width / denom)`.
    pub fn decode_scaled(
        &mut self,
        data: &[u8],
        pixels: Pixels,
        denom: u32,
        out: &mut Vec<u8>,
    ) -> Result<Decoded, JpegError> {
        assert!(
            matches!(denom, 1 | 2 | 4 | 8),
            "unsupported DCT scale 1/{denom}"
        );
        let header = self.header(data)?;
        let area = u64::from(header.width) * u64::from(header.height);
        if area > self.max_pixels {
            return Err(JpegError(format!(
                "{}x{} is over the limit of {} pixels",
                header.width, header.height, self.max_pixels
            )));
        }
        let factor = raw::tjscalingfactor {
            num: 1,
            denom: denom as c_int,
        };
        // SAFETY: valid handle; 1/1, 1/2, 1/4 and 1/8 are supported scaling factors.
        if unsafe { raw::tj3SetScalingFactor(self.handle.as_ptr(), factor) } != 0 {
            return Err(JpegError(self.message()));
        }
        let (width, height) = (header.width.div_ceil(denom), header.height.div_ceil(denom));
        let len = width as usize * height as usize * pixels.channels();
        out.clear();
        out.resize(len, 0);
        // SAFETY: `out` holds width*height*channels bytes of the scaled size, which is what a
        // pitch of 0 (packed rows) writes; cropping is never set on this handle.
        let rc = unsafe {
            raw::tj3Decompress8(
                self.handle.as_ptr(),
                data.as_ptr(),
                data.len() as _,
                out.as_mut_ptr(),
                0,
                pixels.tj_format(),
            )
        };
        let warning = match rc {
            0 => None,
            _ => match self.trouble() {
                Trouble::Warning(message) => Some(message),
                Trouble::Fatal(message) => return Err(JpegError(message)),
            },
        };
        Ok(Decoded {
            width,
            height,
            warning,
        })
    }
}

impl Drop for JpegDecoder {
    fn drop(&mut self) {
        // SAFETY: the handle came from tj3Init and is destroyed once.
        unsafe { raw::tj3Destroy(self.handle.as_ptr()) }
    }
}

/// Baseline JPEG encoder: YCbCr 4:2:0 for colour, single-channel for gray.
pub struct JpegEncoder {
    inner: turbojpeg::Compressor,
}

impl JpegEncoder {
    pub fn new(quality: u8) -> Result<Self, JpegError> {
        let err = |e: turbojpeg::Error| JpegError(e.to_string());
        let mut inner = turbojpeg::Compressor::new().map_err(err)?;
        inner.set_quality(i32::from(quality)).map_err(err)?;
        Ok(Self { inner })
    }

    /// Encodes packed RGB (3 channels) or gray (1 channel) pixels.
    pub fn encode(
        &mut self,
        pixels: &[u8],
        width: u32,
        height: u32,
        gray: bool,
    ) -> Result<Vec<u8>, JpegError> {
        let err = |e: turbojpeg::Error| JpegError(e.to_string());
        let (format, subsamp, channels) = if gray {
            (turbojpeg::PixelFormat::GRAY, turbojpeg::Subsamp::Gray, 1)
        } else {
            (turbojpeg::PixelFormat::RGB, turbojpeg::Subsamp::Sub2x2, 3)
        };
        self.inner.set_subsamp(subsamp).map_err(err)?;
        let image = turbojpeg::Image {
            pixels,
            width: width as usize,
            pitch: width as usize * channels,
            height: height as usize,
            format,
        };
        self.inner.compress_to_vec(image).map_err(err)
    }
}

/// Whether the file carries an Adobe APP14 segment. Adobe applications (and so nearly every
/// CMYK JPEG in the wild) store CMYK inverted, and readers such as PIL invert on that marker.
pub fn has_adobe_marker(data: &[u8]) -> bool {
    let mut i = 2; // after SOI
    while i + 4 <= data.len() && data[i] == 0xFF {
        let marker = data[i + 1];
        if marker == 0xDA || marker == 0xD9 {
            break; // start of scan / end of image: no more header segments
        }
        let len = usize::from(u16::from_be_bytes([data[i + 2], data[i + 3]]));
        if marker == 0xEE && data.get(i + 4..i + 9) == Some(b"Adobe".as_slice()) {
            return true;
        }
        i += 2 + len;
    }
    false
}

/// CMYK to RGB exactly as PIL converts (`R = (255 - K) - (C * (255 - K)) / 255`, with PIL's
/// rounding), after undoing Adobe's inversion when the file says it is inverted.
pub fn cmyk_to_rgb(cmyk: &[u8], adobe_inverted: bool, rgb: &mut Vec<u8>) {
    fn muldiv255(a: u32, b: u32) -> u32 {
        let t = a * b + 128;
        ((t >> 8) + t) >> 8
    }
    let ink = |v: u8| u32::from(if adobe_inverted { 255 - v } else { v });
    rgb.clear();
    rgb.reserve(cmyk.len() / 4 * 3);
    for px in cmyk.chunks_exact(4) {
        let not_black = 255 - ink(px[3]);
        for &c in &px[..3] {
            rgb.push((not_black - muldiv255(ink(c), not_black)) as u8);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: u32, h: u32) -> Vec<u8> {
        (0..w * h * 3).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn encode_decode_round_trip_keeps_size_and_is_close() {
        let (w, h) = (48, 32);
        let px = gradient(w, h);
        let jpeg = JpegEncoder::new(100)
            .unwrap()
            .encode(&px, w, h, false)
            .unwrap();
        let mut dec = JpegDecoder::new().unwrap();
        let header = dec.header(&jpeg).unwrap();
        assert_eq!(
            (header.width, header.height, header.color),
            (w, h, JpegColor::YCbCr)
        );
        let mut out = Vec::new();
        let d = dec.decode(&jpeg, Pixels::Rgb, &mut out).unwrap();
        assert_eq!((d.width, d.height, d.warning), (w, h, None));
        assert_eq!(out.len(), px.len());
    }

    #[test]
    fn scaled_decoding_halves_and_rounds_up() {
        let (w, h) = (65, 33);
        let jpeg = JpegEncoder::new(95)
            .unwrap()
            .encode(&gradient(w, h), w, h, false)
            .unwrap();
        let mut dec = JpegDecoder::new().unwrap();
        let mut out = Vec::new();
        let d = dec.decode_scaled(&jpeg, Pixels::Rgb, 2, &mut out).unwrap();
        assert_eq!((d.width, d.height, out.len()), (33, 17, 33 * 17 * 3));
        let d = dec.decode(&jpeg, Pixels::Rgb, &mut out).unwrap();
        assert_eq!(
            (d.width, d.height),
            (65, 33),
            "full scale again after a scaled decode"
        );
    }

    #[test]
    fn truncation_is_a_warning_and_garbage_is_an_error() {
        let (w, h) = (64, 64);
        let jpeg = JpegEncoder::new(90)
            .unwrap()
            .encode(&gradient(w, h), w, h, false)
            .unwrap();
        let mut dec = JpegDecoder::new().unwrap();
        let mut out = Vec::new();
        let d = dec
            .decode(&jpeg[..jpeg.len() / 2], Pixels::Rgb, &mut out)
            .unwrap();
        assert!(d.warning.unwrap().contains("Premature end"));
        assert!(
            dec.decode(b"\xFF\xD8\xFFnot a jpeg", Pixels::Rgb, &mut out)
                .is_err()
        );
    }

    #[test]
    fn cmyk_conversion_matches_pil_formula() {
        let mut rgb = Vec::new();
        // stored inverted: 255 means no ink
        cmyk_to_rgb(&[255, 0, 128, 255, 255, 255, 255, 0], true, &mut rgb);
        assert_eq!(rgb, vec![255, 0, 128, 0, 0, 0]);
        cmyk_to_rgb(&[0, 255, 127, 0], false, &mut rgb);
        assert_eq!(rgb, vec![255, 0, 128]);
    }
}
