//! Pixel operations of the recipe on packed RGB u8, reproducing PIL's arithmetic (which
//! torchvision uses on PIL images) so that a view matches the reference to the level.
//!
//! - Brightness, contrast and saturation are PIL `ImageEnhance` blends: `out = trunc(a +
//!   f * (b - a))` in single precision, clipped to 0..=255, where `a` is black, the mean gray
//!   level, or the pixel's own gray level. The first two are per-value maps, so they run as
//!   a 256-entry table.
//! - Gray levels are PIL's `L` conversion: `(19595 R + 38470 G + 7471 B + 2^15) >> 16`.
//! - Hue goes through PIL's 8-bit HSV, as torchvision's PIL path does, shifting H by
//!   `trunc(h * 255)` with wrap-around; see [`hue`] for how it is computed.
//!
//! Speed: on x86-64 the per-pixel loops run as AVX2 code (and 256-entry tables as AVX-512
//! VBMI byte permutes) where the CPU has them, chosen at run time, and as scalar code
//! otherwise. The vector lanes do the same integer and IEEE single-precision steps as the
//! scalar code (never fused or reordered), so all paths give the same bytes; the unit tests
//! check every path against PIL's plain formulas over all colours.

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
    #[cfg(target_arch = "x86_64")]
    let sum = if x86::has_avx2() {
        // SAFETY: the CPU has AVX2.
        unsafe { x86::luma_sum(rgb) }
    } else {
        luma_sum(rgb)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let sum = luma_sum(rgb);
    let count = (rgb.len() / 3).max(1) as f64;
    (sum as f64 / count + 0.5) as u8
}

fn luma_sum(rgb: &[u8]) -> u64 {
    rgb.chunks_exact(3)
        .map(|p| u64::from(luma(p[0], p[1], p[2])))
        .sum()
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
    #[cfg(target_arch = "x86_64")]
    if x86::has_vbmi() {
        // SAFETY: the CPU has AVX-512 F, BW and VBMI.
        return unsafe { x86::apply_lut(rgb, lut) };
    }
    apply_lut_scalar(rgb, lut);
}

fn apply_lut_scalar(rgb: &mut [u8], lut: &Lut) {
    for v in rgb {
        *v = lut[usize::from(*v)];
    }
}

/// `ImageEnhance.Color`: blend each pixel with its own gray level.
pub fn saturation(rgb: &mut [u8], factor: f32) {
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx2() {
        // SAFETY: the CPU has AVX2.
        return unsafe { x86::saturation(rgb, factor) };
    }
    saturation_scalar(rgb, factor);
}

fn saturation_scalar(rgb: &mut [u8], factor: f32) {
    for p in rgb.chunks_exact_mut(3) {
        let gray = luma(p[0], p[1], p[2]);
        for c in p {
            *c = blend(gray, *c, factor);
        }
    }
}

/// `rgb_to_grayscale(num_output_channels=3)`: `L` copied to the three channels.
pub fn grayscale(rgb: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx2() {
        // SAFETY: the CPU has AVX2.
        return unsafe { x86::grayscale(rgb) };
    }
    grayscale_scalar(rgb);
}

fn grayscale_scalar(rgb: &mut [u8]) {
    for p in rgb.chunks_exact_mut(3) {
        let gray = luma(p[0], p[1], p[2]);
        p.fill(gray);
    }
}

/// Per comparison mask `(r >= g) | (g >= b) << 1 | (r >= b) << 2` (3 and 4 cannot occur),
/// `(a, b)` such that PIL's hue in sixths of a turn is `(a cr + b k) / cr`, with
/// `cr = max - min` and `k = max - mid`. PIL takes `(g - b) / cr` (plus 6 if negative) when
/// red is the largest, else `2 + (b - r) / cr` when green is, else `4 + (r - g) / cr`; the
/// masks follow its tie order.
const HUE_TERMS: [(i32, i32); 8] = [
    (3, 1),  // b > g > r: 4 + (r - g) / cr, r - g = k - cr
    (5, -1), // b > r >= g: 4 + (r - g) / cr, r - g = cr - k
    (3, -1), // g >= b > r: 2 + (b - r) / cr, b - r = cr - k
    (1, -1), // (cannot occur)
    (1, -1), // (cannot occur)
    (5, 1),  // r >= b > g: 6 + (g - b) / cr, g - b = k - cr
    (1, 1),  // g > r >= b: 2 + (b - r) / cr, b - r = k - cr
    (1, -1), // r >= g >= b: (g - b) / cr, g - b = cr - k
];

/// The H values at which PIL's float steps, for a hue of exactly `H / 255`, come out just
/// below `H` (so PIL gives `H - 1`), as a 256-bit set. Derived from PIL's formula by a unit
/// test, which also checks every colour.
const HUE_BELOW: [u32; 8] = [
    0xffff_fffe,
    0x0000_0000,
    0x1100_0000,
    0x0000_0111,
    0x222a_aaaa,
    0x2323_2222,
    0x0002_2222,
    0x0000_0000,
];

/// PIL's HSV of one pixel (see [`hue`]).
#[inline]
fn hsv_of(r: u8, g: u8, b: u8) -> (u8, u8, u8) {
    let (r32, g32, b32) = (i32::from(r), i32::from(g), i32::from(b));
    let max = r32.max(g32).max(b32);
    let min = r32.min(g32).min(b32);
    let (cr, k) = (max - min, 2 * max + min - r32 - g32 - b32); // k = max - mid
    let mask = usize::from(r >= g) | usize::from(g >= b) << 1 | usize::from(r >= b) << 2;
    let (a, b) = HUE_TERMS[mask];
    let num = 255 * (a * cr + b * k);
    let h = num / (6 * cr).max(1);
    let exact = num == h * 6 * cr;
    let h = h - i32::from(exact && HUE_BELOW[h as usize >> 5] >> (h & 31) & 1 == 1);
    (h as u8, (255 * cr / max.max(1)) as u8, max as u8)
}

/// PIL's RGB of one HSV triple (see [`hue`]).
#[inline]
fn rgb_of(h: u8, s: u8, v: u8) -> [u8; 3] {
    let (h6, s, v) = (6 * u32::from(h), u32::from(s), u32::from(v));
    let i = h6 / 255;
    let j = h6 - 255 * i;
    let sector = (i % 6) as usize;
    let g = if sector % 2 == 1 { j } else { 255 - j };
    let p = (2 * v * (255 - s) + 255) / 510;
    let w = (2 * v * (65025 - s * g) + 65025) / 130050;
    let x = v | w << 8 | p << 16;
    let [sr, sg, sb] = SECTOR_BYTES[sector];
    [
        (x >> (8 * sr)) as u8,
        (x >> (8 * sg)) as u8,
        (x >> (8 * sb)) as u8,
    ]
}

/// For each sector, which bytes of `v | w << 8 | p << 16` are R, G and B.
const SECTOR_BYTES: [[u8; 3]; 6] = [
    [0, 1, 2], // (v, t, p)
    [1, 0, 2], // (q, v, p)
    [2, 0, 1], // (p, v, t)
    [2, 1, 0], // (p, q, v)
    [1, 2, 0], // (t, p, v)
    [0, 2, 1], // (v, p, q)
];

/// torchvision's `adjust_hue` on a PIL image.
///
/// The result is PIL's `rgb2hsv` / `hsv2rgb` round trip, computed in integers; unit tests
/// check each half against PIL's float formulas over all inputs.
///
/// RGB to HSV: V is the largest channel. PIL's S, `trunc(255 f32(cr / max))` with
/// `cr = max - min`, always equals `floor(255 cr / max)`. PIL's H is `trunc(255 h)` for the
/// hue `h` in [0, 1), which is `(a cr + b k) / (6 cr)` with `k = max - mid` and `a`, `b` set
/// by which channels are the largest and smallest ([`HUE_TERMS`]). That is
/// `floor(255 (a cr + b k) / (6 cr))`, except that where the quotient is an exact integer
/// PIL's float steps land just below it for some values ([`HUE_BELOW`]).
///
/// HSV to RGB: PIL computes `p = V (1 - fs)`, `q = V (1 - fs f)` and `t = V (1 - fs (1 - f))`
/// in double with `fs = S / 255` and `f`, the fraction of `6 H / 255`, stored as floats, and
/// rounds half away from zero. Each equals the exactly rounded `V (65025 - S g) / 65025` with
/// `g = 255`, `j` or `255 - j` for the integer `j = 6 H - 255 i`. Each sector uses `p` and
/// one of `q` (odd sectors) and `t` (even ones), called `w` here. S = 0 gives `p = w = V`,
/// so grays come out as (V, V, V) as in PIL.
pub fn hue(rgb: &mut [u8], factor: f32) {
    let shift = (factor * 255.0) as i32 as u8; // numpy: int32 then uint8, wrapping
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx2() {
        // SAFETY: the CPU has AVX2.
        return unsafe { x86::hue(rgb, shift) };
    }
    hue_scalar(rgb, shift);
}

fn hue_scalar(rgb: &mut [u8], shift: u8) {
    for p in rgb.chunks_exact_mut(3) {
        let (h, s, v) = hsv_of(p[0], p[1], p[2]);
        p.copy_from_slice(&rgb_of(h.wrapping_add(shift), s, v));
    }
}

/// Mirrors packed RGB rows left to right.
pub fn hflip(rgb: &mut [u8], width: usize) {
    for row in rgb.chunks_exact_mut(width * 3) {
        row.as_chunks_mut::<3>().0.reverse();
    }
}

/// The vector paths. Each function handles whole groups of 8 pixels (64 bytes for tables)
/// and passes the rest to the scalar code.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{HUE_BELOW, HUE_TERMS, Lut, SECTOR_BYTES};

    pub fn has_avx2() -> bool {
        is_x86_feature_detected!("avx2")
    }

    pub fn has_vbmi() -> bool {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vbmi")
    }

    /// Eight packed RGB pixels as R, G and B in 32-bit lanes.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn load8(px: &[u8]) -> [__m256i; 3] {
        assert!(px.len() >= 24);
        // SAFETY: bytes 0..16 and 8..24 are inside `px`.
        let (lo, hi) = unsafe {
            (
                _mm_loadu_si128(px.as_ptr().cast()),
                _mm_loadu_si128(px.as_ptr().add(8).cast()),
            )
        };
        let planes_lo = _mm_setr_epi8(0, 3, 6, 9, 1, 4, 7, 10, 2, 5, 8, 11, -1, -1, -1, -1);
        let planes_hi = _mm_setr_epi8(4, 7, 10, 13, 5, 8, 11, 14, 6, 9, 12, 15, -1, -1, -1, -1);
        let a = _mm_shuffle_epi8(lo, planes_lo);
        let b = _mm_shuffle_epi8(hi, planes_hi);
        let rg = _mm_unpacklo_epi32(a, b); // r0..3 r4..7 g0..3 g4..7
        let bb = _mm_unpackhi_epi32(a, b); // b0..3 b4..7
        [
            _mm256_cvtepu8_epi32(rg),
            _mm256_cvtepu8_epi32(_mm_srli_si128::<8>(rg)),
            _mm256_cvtepu8_epi32(bb),
        ]
    }

    /// Stores 32-bit lanes `r | g << 8 | b << 16` as eight packed RGB pixels.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn store8(px: &mut [u8], rgb0: __m256i) {
        assert!(px.len() >= 24);
        let drop_fourth = _mm256_setr_epi8(
            0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1, //
            0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1,
        );
        let packed = _mm256_shuffle_epi8(rgb0, drop_fourth);
        let packed = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 1, 2, 4, 5, 6, 3, 7));
        // SAFETY: bytes 0..16 and 16..24 are inside `px`.
        unsafe {
            _mm_storeu_si128(px.as_mut_ptr().cast(), _mm256_castsi256_si128(packed));
            _mm_storel_epi64(
                px.as_mut_ptr().add(16).cast(),
                _mm256_extracti128_si256::<1>(packed),
            );
        }
    }

    /// PIL's `L` in 32-bit lanes.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn luma8([r, g, b]: [__m256i; 3]) -> __m256i {
        let c = _mm256_set1_epi32;
        let sum = _mm256_add_epi32(
            _mm256_add_epi32(
                _mm256_mullo_epi32(r, c(19595)),
                _mm256_mullo_epi32(g, c(38470)),
            ),
            _mm256_add_epi32(_mm256_mullo_epi32(b, c(7471)), c(0x8000)),
        );
        _mm256_srli_epi32::<16>(sum)
    }

    #[target_feature(enable = "avx2")]
    pub fn luma_sum(rgb: &[u8]) -> u64 {
        let mut total = 0;
        // runs short enough that no 32-bit lane sum can overflow, all but the last whole groups
        for run in rgb.chunks(24 << 16) {
            let mut groups = run.chunks_exact(24);
            let mut acc = _mm256_setzero_si256();
            for px in &mut groups {
                acc = _mm256_add_epi32(acc, luma8(load8(px)));
            }
            let mut lanes = [0u32; 8];
            // SAFETY: `lanes` has 32 bytes.
            unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), acc) };
            total += lanes.iter().map(|&v| u64::from(v)).sum::<u64>();
            total += super::luma_sum(groups.remainder());
        }
        total
    }

    #[target_feature(enable = "avx2")]
    pub fn grayscale(rgb: &mut [u8]) {
        let mut groups = rgb.chunks_exact_mut(24);
        for px in &mut groups {
            let l = luma8(load8(px));
            store8(px, _mm256_mullo_epi32(l, _mm256_set1_epi32(0x01_0101)));
        }
        super::grayscale_scalar(groups.into_remainder());
    }

    #[target_feature(enable = "avx2")]
    pub fn saturation(rgb: &mut [u8], factor: f32) {
        let f = _mm256_set1_ps(factor);
        let (zero, top) = (_mm256_setzero_ps(), _mm256_set1_ps(255.0));
        let mut groups = rgb.chunks_exact_mut(24);
        for px in &mut groups {
            let c = load8(px);
            let l = luma8(c);
            let lf = _mm256_cvtepi32_ps(l);
            // f32(l) + f * f32(c - l), then as `as u8`: NaN and negatives to 0, above to 255
            // (max and min return their second operand for NaN)
            let blend = |c: __m256i| {
                let d = _mm256_cvtepi32_ps(_mm256_sub_epi32(c, l));
                let v = _mm256_add_ps(lf, _mm256_mul_ps(f, d));
                _mm256_cvttps_epi32(_mm256_min_ps(_mm256_max_ps(v, zero), top))
            };
            let out = _mm256_or_si256(
                _mm256_or_si256(blend(c[0]), _mm256_slli_epi32::<8>(blend(c[1]))),
                _mm256_slli_epi32::<16>(blend(c[2])),
            );
            store8(px, out);
        }
        super::saturation_scalar(groups.into_remainder(), factor);
    }

    /// [`super::hsv_of`] in lanes: (H, S, V).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn hsv8([r, g, b]: [__m256i; 3]) -> [__m256i; 3] {
        let c = _mm256_set1_epi32;
        let max = _mm256_max_epi32(_mm256_max_epi32(r, g), b);
        let min = _mm256_min_epi32(_mm256_min_epi32(r, g), b);
        let cr = _mm256_sub_epi32(max, min);
        let k = _mm256_sub_epi32(
            _mm256_add_epi32(_mm256_add_epi32(max, max), min),
            _mm256_add_epi32(_mm256_add_epi32(r, g), b),
        );
        // (r >= g) | (g >= b) << 1 | (r >= b) << 2
        let mask = _mm256_or_si256(
            _mm256_andnot_si256(_mm256_cmpgt_epi32(g, r), c(1)),
            _mm256_or_si256(
                _mm256_andnot_si256(_mm256_cmpgt_epi32(b, g), c(2)),
                _mm256_andnot_si256(_mm256_cmpgt_epi32(b, r), c(4)),
            ),
        );
        const TERMS: [[i32; 8]; 2] = {
            let mut terms = [[0; 8]; 2];
            let mut i = 0;
            while i < 8 {
                (terms[0][i], terms[1][i]) = HUE_TERMS[i];
                i += 1;
            }
            terms
        };
        // SAFETY: each has 8 entries.
        let [a, b] = TERMS.map(|t| unsafe { _mm256_loadu_si256(t.as_ptr().cast()) });
        let (a, b) = (
            _mm256_permutevar8x32_epi32(a, mask),
            _mm256_permutevar8x32_epi32(b, mask),
        );
        let num = _mm256_add_epi32(_mm256_mullo_epi32(a, cr), _mm256_sign_epi32(k, b));
        let num = _mm256_sub_epi32(_mm256_slli_epi32::<8>(num), num); // 255 (a cr + b k)
        let den = _mm256_mullo_epi32(cr, c(6));
        // Both quotients below are floors of exact ones: numerators and denominators are exact
        // floats, and a float quotient (at most 255) is within 2^-16 of the true one, which is
        // an integer or at least 1/1530 below one. 0 / 0 (grays) truncates to i32::MIN,
        // clamped to 0.
        let floor_div = |n: __m256i, d: __m256i| {
            let q =
                _mm256_cvttps_epi32(_mm256_div_ps(_mm256_cvtepi32_ps(n), _mm256_cvtepi32_ps(d)));
            _mm256_max_epi32(q, _mm256_setzero_si256())
        };
        let h = floor_div(num, den);
        let exact = _mm256_cmpeq_epi32(num, _mm256_mullo_epi32(h, den));
        // SAFETY: HUE_BELOW has 8 entries.
        let below = unsafe { _mm256_loadu_si256(HUE_BELOW.as_ptr().cast()) };
        let word = _mm256_permutevar8x32_epi32(below, _mm256_srli_epi32::<5>(h));
        let bit = _mm256_and_si256(_mm256_srlv_epi32(word, _mm256_and_si256(h, c(31))), c(1));
        let h = _mm256_sub_epi32(h, _mm256_and_si256(bit, exact));
        let s = floor_div(_mm256_sub_epi32(_mm256_slli_epi32::<8>(cr), cr), max);
        [h, s, max]
    }

    /// [`super::rgb_of`] in lanes, as `r | g << 8 | b << 16`.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn rgb8([h, s, v]: [__m256i; 3]) -> __m256i {
        let c = _mm256_set1_epi32;
        // i = floor(6 H / 255) as (6 H * 0x8081) >> 23, 6 only for H = 255; j = 6 H - 255 i
        let h6 = _mm256_mullo_epi32(h, c(6));
        let i = _mm256_srli_epi32::<23>(_mm256_mullo_epi32(h6, c(0x8081)));
        let j = _mm256_sub_epi32(h6, _mm256_sub_epi32(_mm256_slli_epi32::<8>(i), i));
        let sector = _mm256_sub_epi32(i, _mm256_and_si256(_mm256_cmpeq_epi32(i, c(6)), c(6)));
        let odd = _mm256_cmpeq_epi32(_mm256_and_si256(sector, c(1)), c(1));
        let g = _mm256_blendv_epi8(_mm256_sub_epi32(c(255), j), j, odd);
        // p = round(V (255 - S) / 255) as (t + (t >> 8)) >> 8 with t = V (255 - S) + 128,
        // exact for all such products
        let p = _mm256_add_epi32(_mm256_mullo_epi32(v, _mm256_sub_epi32(c(255), s)), c(128));
        let p = _mm256_srli_epi32::<8>(_mm256_add_epi32(p, _mm256_srli_epi32::<8>(p)));
        // w = floor((2 V (65025 - S g) + 65025) / 130050), the division as (x m) >> 42 with
        // m = ceil(2^42 / 130050), exact for x < 2^25 (x m / 2^42 exceeds x / 130050 by less
        // than 2^-17, and a fraction of x / 130050 is at most 1 - 1/130050)
        let x = _mm256_mullo_epi32(
            _mm256_add_epi32(v, v),
            _mm256_sub_epi32(c(65025), _mm256_mullo_epi32(s, g)),
        );
        let x = _mm256_add_epi32(x, c(65025));
        let m = c((1u64 << 42).div_ceil(130_050) as i32);
        let even = _mm256_srli_epi64::<42>(_mm256_mul_epu32(x, m));
        let odd = _mm256_srli_epi64::<42>(_mm256_mul_epu32(_mm256_srli_epi64::<32>(x), m));
        let w = _mm256_blend_epi32::<0b1010_1010>(even, _mm256_slli_epi64::<32>(odd));
        // per sector, pshufb indexes of R, G, B in a lane of `v | w << 8 | p << 16`
        let ctrl = |i: usize| {
            let [r, g, b] = SECTOR_BYTES[i % 6].map(i32::from);
            r | g << 8 | b << 16 | (0x80 << 24)
        };
        let sector_ctrl =
            _mm256_setr_epi32(ctrl(0), ctrl(1), ctrl(2), ctrl(3), ctrl(4), ctrl(5), 0, 0);
        let lane_base = _mm256_setr_epi32(
            0, 0x04_0404, 0x08_0808, 0x0c_0c0c, 0, 0x04_0404, 0x08_0808, 0x0c_0c0c,
        );
        let vwp = _mm256_or_si256(
            v,
            _mm256_or_si256(_mm256_slli_epi32::<8>(w), _mm256_slli_epi32::<16>(p)),
        );
        let ctrl = _mm256_add_epi32(_mm256_permutevar8x32_epi32(sector_ctrl, sector), lane_base);
        _mm256_shuffle_epi8(vwp, ctrl)
    }

    #[target_feature(enable = "avx2")]
    pub fn hue(rgb: &mut [u8], shift: u8) {
        let (shift_v, byte) = (_mm256_set1_epi32(shift.into()), _mm256_set1_epi32(0xff));
        let mut groups = rgb.chunks_exact_mut(24);
        for px in &mut groups {
            let [h, s, v] = hsv8(load8(px));
            let h = _mm256_and_si256(_mm256_add_epi32(h, shift_v), byte);
            store8(px, rgb8([h, s, v]));
        }
        super::hue_scalar(groups.into_remainder(), shift);
    }

    /// [`hsv8`] on eight pixels, for tests.
    #[cfg(test)]
    #[target_feature(enable = "avx2")]
    pub fn hsv_lanes(px: &[u8; 24]) -> [[u32; 8]; 3] {
        hsv8(load8(px)).map(|x| {
            let mut lanes = [0u32; 8];
            // SAFETY: `lanes` has 32 bytes.
            unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), x) };
            lanes
        })
    }

    /// [`rgb8`] on eight HSV triples, for tests.
    #[cfg(test)]
    #[target_feature(enable = "avx2")]
    pub fn rgb_lanes(hsv: [[u32; 8]; 3]) -> [u8; 24] {
        // SAFETY: each array has 32 bytes.
        let hsv = hsv.map(|x| unsafe { _mm256_loadu_si256(x.as_ptr().cast()) });
        let mut out = [0u8; 24];
        store8(&mut out, rgb8(hsv));
        out
    }

    /// A 256-entry table through byte permutes: 64 values per step.
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    pub fn apply_lut(rgb: &mut [u8], lut: &Lut) {
        // SAFETY: `lut` has 4 x 64 bytes.
        let [t0, t1, t2, t3] =
            std::array::from_fn(|i| unsafe { _mm512_loadu_si512(lut.as_ptr().add(64 * i).cast()) });
        let mut blocks = rgb.chunks_exact_mut(64);
        for block in &mut blocks {
            // SAFETY: `block` has 64 bytes.
            let x = unsafe { _mm512_loadu_si512(block.as_ptr().cast()) };
            let low = _mm512_permutex2var_epi8(t0, x, t1); // entries 0..128 (bit 7 ignored)
            let high = _mm512_permutex2var_epi8(t2, x, t3); // entries 128..256
            let y = _mm512_mask_blend_epi8(_mm512_movepi8_mask(x), low, high);
            // SAFETY: as above.
            unsafe { _mm512_storeu_si512(block.as_mut_ptr().cast(), y) };
        }
        super::apply_lut_scalar(blocks.into_remainder(), lut);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::noise;

    /// PIL's RGB to 8-bit HSV, as written in `rgb2hsv` (it follows Python's colorsys, with
    /// its float/double mix).
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

    /// PIL's 8-bit HSV to RGB, as written in `hsv2rgb` (double, with float stores).
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

    /// torchvision's `adjust_hue` pixel by pixel through PIL's formulas.
    fn hue_reference(rgb: &mut [u8], factor: f32) {
        let shift = (factor * 255.0) as i32 as u8;
        for p in rgb.chunks_exact_mut(3) {
            let (h, s, v) = rgb_to_hsv(p[0], p[1], p[2]);
            let (r, g, b) = hsv_to_rgb(h.wrapping_add(shift), s, v);
            p.copy_from_slice(&[r, g, b]);
        }
    }

    /// Every colour once, packed.
    fn all_colours() -> Vec<u8> {
        (0..1u32 << 24)
            .flat_map(|c| [(c >> 16) as u8, (c >> 8) as u8, c as u8])
            .collect()
    }

    /// Lengths that leave every kind of tail after the vector groups.
    const LENGTHS: [usize; 8] = [0, 3, 21, 24, 27, 69, 3 * 1000 + 3, 3 * 96 * 96];

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
    fn hsv_of_every_colour_is_pils() {
        for c in 0..1u32 << 24 {
            let (r, g, b) = ((c >> 16) as u8, (c >> 8) as u8, c as u8);
            assert_eq!(hsv_of(r, g, b), rgb_to_hsv(r, g, b), "{r} {g} {b}");
        }
    }

    #[test]
    fn the_hues_pil_puts_below_come_from_its_formula() {
        // every pixel up to a common offset (which leaves H alone): min 0, max cr, any mid,
        // in each of the six orders
        let mut below = [0u32; 8];
        for cr in 1..=255u8 {
            for mid in 0..=cr {
                for (r, g, b) in [
                    (cr, mid, 0),
                    (cr, 0, mid),
                    (0, cr, mid),
                    (mid, cr, 0),
                    (0, mid, cr),
                    (mid, 0, cr),
                ] {
                    let (h, ..) = rgb_to_hsv(r, g, b);
                    let (max, min) = (r.max(g).max(b), r.min(g).min(b));
                    let mask =
                        usize::from(r >= g) | usize::from(g >= b) << 1 | usize::from(r >= b) << 2;
                    let (ta, tb) = HUE_TERMS[mask];
                    let k = i32::from(max) * 2 + i32::from(min)
                        - i32::from(r)
                        - i32::from(g)
                        - i32::from(b);
                    let num = 255 * (ta * i32::from(cr) + tb * k);
                    let den = 6 * i32::from(cr);
                    if num % den == 0 && i32::from(h) != num / den {
                        assert_eq!(i32::from(h), num / den - 1);
                        let h = h as usize + 1;
                        below[h >> 5] |= 1 << (h & 31);
                    }
                }
            }
        }
        assert_eq!(below, HUE_BELOW);
    }

    #[test]
    fn rgb_of_every_hsv_triple_is_pils() {
        for c in 0..1u32 << 24 {
            let (h, s, v) = ((c >> 16) as u8, (c >> 8) as u8, c as u8);
            let [r, g, b] = rgb_of(h, s, v);
            assert_eq!((r, g, b), hsv_to_rgb(h, s, v), "{h} {s} {v}");
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_hsv_halves_match_the_scalar_ones_everywhere() {
        if !x86::has_avx2() {
            return;
        }
        let colours = all_colours();
        for px in colours.chunks_exact(24) {
            // SAFETY: the CPU has AVX2.
            let [h, s, v] = unsafe { x86::hsv_lanes(px.try_into().unwrap()) };
            for (i, p) in px.chunks_exact(3).enumerate() {
                let want = hsv_of(p[0], p[1], p[2]);
                assert_eq!((h[i] as u8, s[i] as u8, v[i] as u8), want, "{p:?}");
                assert!(h[i] < 256 && s[i] < 256 && v[i] < 256);
            }
        }
        // every (H, S, V)
        for hs in 0..1u32 << 16 {
            let (h, s) = (hs >> 8, hs & 0xff);
            for v0 in (0..256).step_by(8) {
                let v: [u32; 8] = std::array::from_fn(|i| v0 + i as u32);
                // SAFETY: the CPU has AVX2.
                let out = unsafe { x86::rgb_lanes([[h; 8], [s; 8], v]) };
                for (i, p) in out.chunks_exact(3).enumerate() {
                    assert_eq!(p, rgb_of(h as u8, s as u8, v[i] as u8), "{h} {s} {}", v[i]);
                }
            }
        }
    }

    #[test]
    fn hue_matches_pil_on_every_colour_for_some_shifts() {
        let colours = all_colours();
        for factor in [-0.1f32, 0.0, 0.0437, 0.5] {
            let mut want = colours.clone();
            hue_reference(&mut want, factor);
            let mut got = colours.clone();
            hue(&mut got, factor);
            assert!(got == want, "hue {factor}");
            let mut got = colours.clone();
            hue_scalar(&mut got, (factor * 255.0) as i32 as u8);
            assert!(got == want, "scalar hue {factor}");
        }
    }

    #[test]
    fn hue_matches_pil_for_every_shift_and_length() {
        let px = noise(3 * 96 * 96, 1);
        for shift in 0..=255u8 {
            // trunc(factor * 255) is `shift` or `shift - 256`
            let shifted = f32::from(shift) - if shift < 128 { -0.5 } else { 256.5 };
            let factor = shifted / 255.0;
            assert_eq!((factor * 255.0) as i32 as u8, shift);
            for len in LENGTHS {
                let mut want = px[..len].to_vec();
                hue_reference(&mut want, factor);
                let mut got = px[..len].to_vec();
                hue(&mut got, factor);
                assert_eq!(got, want, "shift {shift} len {len}");
            }
        }
    }

    #[test]
    fn saturation_matches_the_scalar_blend_on_every_colour() {
        let colours = all_colours();
        for factor in [0.8f32, 0.93, 1.0, 1.2, 0.0, -2.5, 7.0, 1e30, f32::NAN] {
            let mut want = colours.clone();
            saturation_scalar(&mut want, factor);
            let mut got = colours.clone();
            saturation(&mut got, factor);
            assert!(got == want, "saturation {factor}");
        }
        let px = noise(3 * 96 * 96, 2);
        for len in LENGTHS {
            let mut want = px[..len].to_vec();
            saturation_scalar(&mut want, 1.13);
            let mut got = px[..len].to_vec();
            saturation(&mut got, 1.13);
            assert_eq!(got, want, "len {len}");
        }
    }

    #[test]
    fn grayscale_and_mean_luma_match_the_scalar_ones_on_every_colour() {
        let colours = all_colours();
        let mut want = colours.clone();
        grayscale_scalar(&mut want);
        let mut got = colours.clone();
        grayscale(&mut got);
        assert!(got == want);
        assert_eq!(
            mean_luma(&colours),
            (luma_sum(&colours) as f64 / (1u64 << 24) as f64 + 0.5) as u8
        );
        let px = noise(3 * 96 * 96, 3);
        for len in LENGTHS {
            let mut want = px[..len].to_vec();
            grayscale_scalar(&mut want);
            let mut got = px[..len].to_vec();
            grayscale(&mut got);
            assert_eq!(got, want, "len {len}");
            let count = (len / 3).max(1) as f64;
            let mean = (luma_sum(&px[..len]) as f64 / count + 0.5) as u8;
            assert_eq!(mean_luma(&px[..len]), mean, "len {len}");
        }
    }

    #[test]
    fn tables_apply_like_indexing() {
        let lut: Lut = noise(256, 4).try_into().unwrap();
        let px = noise(3 * 96 * 96, 5);
        for len in LENGTHS.into_iter().chain([64, 127, 128, 200]) {
            let mut got = px[..len].to_vec();
            apply_lut(&mut got, &lut);
            let want: Vec<u8> = px[..len].iter().map(|&v| lut[usize::from(v)]).collect();
            assert_eq!(got, want, "len {len}");
        }
        let mut all: Vec<u8> = (0..=255).collect();
        apply_lut(&mut all, &lut);
        assert_eq!(all, lut);
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
