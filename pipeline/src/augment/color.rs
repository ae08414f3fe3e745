//! Pixel operations of the recipe on packed RGB u8, reproducing PIL's arithmetic (which
//! torchvision uses on PIL images) so that a view matches the reference to the level.
//!
//! - Brightness, contrast and saturation are PIL `ImageEnhance` blends: `out = trunc(a +
//!   f * (b - a))` in single precision, clipped to 0..=255, where `a` is black, the mean gray
//!   level, or the pixel's own gray level. The first two are per-value maps, so they run as
//!   a 256-entry table.
//! - Gray levels are PIL's `L` conversion: `(19595 R + 38470 G + 7471 B + 2^15) >> 16`.
//! - Hue goes through PIL's 8-bit HSV, as torchvision's PIL path does, shifting H by
//!   `trunc(h * 255)` with wrap-around.

/// A 256-entry value map.
pub type Lut = [u8; 256];

/// PIL's blend of a constant or per-pixel `a` towards `b` by `f`, for one value.
#[inline]
fn blend(a: u8, b: u8, f: f32) -> u8 {
    let v = f32::from(a) + f * (i32::from(b) - i32::from(a)) as f32;
    // `as u8` saturates in Rust, and truncates towards zero as C's cast does inside 0..=255
    v as u8
}

/// PIL's `L` value of one RGB pixel.
#[inline]
pub fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((u32::from(r) * 19595 + u32::from(g) * 38470 + u32::from(b) * 7471 + 0x8000) >> 16) as u8
}

/// The mean gray level as `ImageEnhance.Contrast` computes it: mean of `L`, rounded half up.
pub fn mean_luma(rgb: &[u8]) -> u8 {
    let sum: u64 = rgb
        .chunks_exact(3)
        .map(|p| u64::from(luma(p[0], p[1], p[2])))
        .sum();
    let count = (rgb.len() / 3).max(1) as f64;
    (sum as f64 / count + 0.5) as u8
}

pub fn brightness_lut(factor: f32) -> Lut {
    std::array::from_fn(|v| blend(0, v as u8, factor))
}

pub fn contrast_lut(mean: u8, factor: f32) -> Lut {
    std::array::from_fn(|v| blend(mean, v as u8, factor))
}

pub fn solarize_lut() -> Lut {
    std::array::from_fn(|v| if v < 128 { v as u8 } else { 255 - v as u8 })
}

pub fn apply_lut(rgb: &mut [u8], lut: &Lut) {
    for v in rgb {
        *v = lut[usize::from(*v)];
    }
}

/// `ImageEnhance.Color`: blend each pixel with its own gray level.
pub fn saturation(rgb: &mut [u8], factor: f32) {
    for p in rgb.chunks_exact_mut(3) {
        let gray = luma(p[0], p[1], p[2]);
        for c in p {
            *c = blend(gray, *c, factor);
        }
    }
}

/// `rgb_to_grayscale(num_output_channels=3)`: `L` copied to the three channels.
pub fn grayscale(rgb: &mut [u8]) {
    for p in rgb.chunks_exact_mut(3) {
        let gray = luma(p[0], p[1], p[2]);
        p.fill(gray);
    }
}

/// PIL's RGB to 8-bit HSV (it follows Python's colorsys, with its float/double mix).
#[inline]
fn rgb_to_hsv(r: u8, g: u8, b: u8) -> (u8, u8, u8) {
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    if max == min {
        return (0, 0, max);
    }
    let cr = f32::from(max - min);
    let s = cr / f32::from(max);
    let rc = f32::from(max - r) / cr;
    let gc = f32::from(max - g) / cr;
    let bc = f32::from(max - b) / cr;
    // C promotes to double where a double literal takes part, and stores back in a float
    let h = if r == max {
        bc - gc
    } else if g == max {
        (2.0 + f64::from(rc) - f64::from(bc)) as f32
    } else {
        (4.0 + f64::from(gc) - f64::from(rc)) as f32
    };
    let h = ((f64::from(h) / 6.0 + 1.0) % 1.0) as f32;
    let clip = |v: f64| (v as i32).clamp(0, 255) as u8;
    (clip(f64::from(h) * 255.0), clip(f64::from(s) * 255.0), max)
}

/// PIL's 8-bit HSV to RGB.
#[inline]
fn hsv_to_rgb(h: u8, s: u8, v: u8) -> (u8, u8, u8) {
    if s == 0 {
        return (v, v, v);
    }
    let h6 = f64::from(h) * 6.0 / 255.0;
    let i = h6.floor() as i32;
    let f = (h6 - f64::from(i)) as f32;
    let fs = (f64::from(s) / 255.0) as f32;
    let v64 = f64::from(v);
    let clip = |x: f64| (x.round() as i32).clamp(0, 255) as u8;
    let p = clip(v64 * (1.0 - f64::from(fs)));
    let q = clip(v64 * (1.0 - f64::from(fs) * f64::from(f)));
    let t = clip(v64 * (1.0 - f64::from(fs) * (1.0 - f64::from(f))));
    match i % 6 {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    }
}

/// torchvision's `adjust_hue` on a PIL image.
pub fn hue(rgb: &mut [u8], factor: f32) {
    let shift = (factor * 255.0) as i32 as u8; // numpy: int32 then uint8, wrapping
    for p in rgb.chunks_exact_mut(3) {
        let (h, s, v) = rgb_to_hsv(p[0], p[1], p[2]);
        let (r, g, b) = hsv_to_rgb(h.wrapping_add(shift), s, v);
        p.copy_from_slice(&[r, g, b]);
    }
}

/// Mirrors packed RGB rows left to right.
pub fn hflip(rgb: &mut [u8], width: usize) {
    for row in rgb.chunks_exact_mut(width * 3) {
        let (mut l, mut r) = (0, width - 1);
        while l < r {
            for c in 0..3 {
                row.swap(l * 3 + c, r * 3 + c);
            }
            l += 1;
            r -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blend_truncates_and_clips_like_pil() {
        assert_eq!(blend(0, 100, 0.87), 87);
        assert_eq!(blend(0, 201, 1.4), 255); // 281.4 clipped
        assert_eq!(blend(100, 0, 1.4), 0); // -40 clipped
        assert_eq!(blend(0, 3, 0.6), 1); // 1.8 truncated
    }

    #[test]
    fn hsv_round_trip_keeps_grays_and_primaries() {
        for (r, g, b) in [
            (0, 0, 0),
            (255, 255, 255),
            (255, 0, 0),
            (0, 255, 0),
            (0, 0, 255),
        ] {
            let (h, s, v) = rgb_to_hsv(r, g, b);
            assert_eq!(hsv_to_rgb(h, s, v), (r, g, b));
        }
        assert_eq!(rgb_to_hsv(0, 255, 0), (85, 255, 255));
    }

    #[test]
    fn flip_mirrors_rows() {
        let mut px = vec![1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 5, 6, 6, 6];
        hflip(&mut px, 3);
        assert_eq!(
            px,
            vec![3, 3, 3, 2, 2, 2, 1, 1, 1, 6, 6, 6, 5, 5, 5, 4, 4, 4]
        );
    }
}
