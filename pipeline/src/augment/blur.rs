//! PIL's `GaussianBlur(radius=sigma)`, which DINO uses: not a sampled Gaussian kernel but
//! three passes of a box blur with fractional ends (Gwosdek et al., "Theoretical foundations
//! of Gaussian convolution by extended box filtering"), first along rows, then along columns,
//! in 24-bit fixed point with edge pixels repeated. Box blurs cost O(1) per pixel whatever
//! sigma is, which is also why this is fast.
//!
//! Every output value is PIL's `(inner * sum of the 2r+1 values around it + outer * the two
//! just beyond + 2^23) >> 24`, rounded to u8 after each pass. The passes here compute it for
//! whole rows at once, in loops the compiler vectorises (compiled for AVX2 too, chosen at
//! run time); integer arithmetic makes every path exact, and the tests compare them with
//! PIL's running-sum formulation.

/// PIL blurs with this many box passes per direction.
const PASSES: u32 = 3;

/// The extended-box radius whose `PASSES`-fold repetition has variance `sigma^2`, computed in
/// the precisions PIL uses (single, with a double square root).
pub fn box_radius(sigma: f32) -> f32 {
    let sigma2 = sigma * sigma / PASSES as f32;
    let length = (12.0 * f64::from(sigma2) + 1.0).sqrt() as f32;
    let l = ((f64::from(length) - 1.0) / 2.0).floor() as f32;
    let mut a = (2.0 * l + 1.0) * (l * (l + 1.0) - 3.0 * sigma2);
    a /= 6.0 * (sigma2 - (l + 1.0) * (l + 1.0));
    l + a
}

/// Fixed-point weights of one box: `inner` for each of the 2r+1 pixels, `outer` for the two
/// pixels just beyond, summing to at most 2^24.
#[derive(Debug, Clone, Copy)]
struct BoxWeights {
    radius: usize,
    inner: u32,
    outer: u32,
}

impl BoxWeights {
    fn new(radius: f32) -> Self {
        let r = radius as usize;
        let inner = ((1u32 << 24) as f32 / (radius * 2.0 + 1.0)) as u32;
        let outer = ((1u32 << 24) - (r as u32 * 2 + 1) * inner) / 2;
        Self {
            radius: r,
            inner,
            outer,
        }
    }

    /// One output value from the sum of the 2r+1 inner values and of the two outer ones.
    /// The weights sum to at most 2^24, so the total stays below 255 * 2^24 + 2^23 < 2^32.
    #[inline(always)]
    fn apply(self, inner: u32, outer: u32) -> u8 {
        ((inner * self.inner + outer * self.outer + (1 << 23)) >> 24) as u8
    }
}

/// Output values from their taps: `far_lo[j]`, the 2r+1 `inner[k][j]` and `far_hi[j]`
/// (written out for up to [`MAX_TAPS`] inner taps, so that each loop vectorises).
#[inline(always)]
fn apply_taps(out: &mut [u8], far_lo: &[u8], inner: &[&[u8]], far_hi: &[u8], w: BoxWeights) {
    let n = out.len();
    let (far_lo, far_hi) = (&far_lo[..n], &far_hi[..n]);
    let far = |j: usize| u32::from(far_lo[j]) + u32::from(far_hi[j]);
    match *inner {
        [t0] => {
            let t0 = &t0[..n];
            for (j, out) in out.iter_mut().enumerate() {
                *out = w.apply(t0[j].into(), far(j));
            }
        }
        [t0, t1, t2] => {
            let (t0, t1, t2) = (&t0[..n], &t1[..n], &t2[..n]);
            for (j, out) in out.iter_mut().enumerate() {
                let inner = u32::from(t0[j]) + u32::from(t1[j]) + u32::from(t2[j]);
                *out = w.apply(inner, far(j));
            }
        }
        [t0, t1, t2, t3, t4] => {
            let (t0, t1, t2, t3, t4) = (&t0[..n], &t1[..n], &t2[..n], &t3[..n], &t4[..n]);
            for (j, out) in out.iter_mut().enumerate() {
                let inner = u32::from(t0[j])
                    + u32::from(t1[j])
                    + u32::from(t2[j])
                    + u32::from(t3[j])
                    + u32::from(t4[j]);
                *out = w.apply(inner, far(j));
            }
        }
        _ => {
            for (j, out) in out.iter_mut().enumerate() {
                let inner = inner.iter().map(|t| u32::from(t[j])).sum();
                *out = w.apply(inner, far(j));
            }
        }
    }
}

/// The most inner taps for which [`apply_taps`] beats running sums.
const MAX_TAPS: usize = 5;

/// A horizontal pass over one row, `line` (`channels` interleaved values per pixel), in
/// place. `pad` is scratch; the row is copied into it with `r + 1` edge pixels repeated on
/// each side, so that every value's taps are at fixed offsets.
#[inline(always)]
fn box_row(line: &mut [u8], channels: usize, w: BoxWeights, pad: &mut Vec<u8>) {
    let r = w.radius;
    pad.clear();
    for _ in 0..=r {
        pad.extend_from_slice(&line[..channels]);
    }
    pad.extend_from_slice(line);
    for _ in 0..=r {
        pad.extend_from_slice(&line[line.len() - channels..]);
    }
    let tap = |k: usize| &pad[k * channels..];
    if 2 * r < MAX_TAPS {
        let mut inner = [&pad[..]; MAX_TAPS];
        for (k, t) in inner[..2 * r + 1].iter_mut().enumerate() {
            *t = tap(k + 1);
        }
        apply_taps(line, tap(0), &inner[..2 * r + 1], tap(2 * r + 2), w);
        return;
    }
    // running sums per channel, starting with the window of pixel -1
    for c in 0..channels {
        let at = |k: usize| u32::from(pad[k * channels + c]);
        let mut acc: u32 = (0..2 * r + 1).map(at).sum();
        for x in 0..line.len() / channels {
            acc += at(x + 2 * r + 1);
            acc -= at(x);
            line[x * channels + c] = w.apply(acc, at(x) + at(x + 2 * r + 2));
        }
    }
}

/// A vertical pass from `src` to `dst` (rows of `row` values), over whole rows at once.
#[inline(always)]
fn box_columns(src: &[u8], dst: &mut [u8], row: usize, w: BoxWeights, acc: &mut Vec<u32>) {
    let height = src.len() / row;
    let last = height - 1;
    let r = w.radius;
    let at = |y: isize| {
        let y = y.clamp(0, last as isize) as usize;
        &src[y * row..(y + 1) * row]
    };
    if 2 * r < MAX_TAPS {
        let mut inner = [src; MAX_TAPS];
        for (y, out) in dst.chunks_exact_mut(row).enumerate() {
            let y = y as isize;
            let r = r as isize;
            for (k, t) in inner[..2 * r as usize + 1].iter_mut().enumerate() {
                *t = at(y - r + k as isize);
            }
            apply_taps(
                out,
                at(y - r - 1),
                &inner[..2 * r as usize + 1],
                at(y + r + 1),
                w,
            );
        }
        return;
    }
    // running sums of the 2r+1 rows around each output row, from the window of row -1
    acc.clear();
    acc.resize(row, 0);
    for k in -(r as isize) - 1..r as isize {
        for (a, &v) in acc.iter_mut().zip(at(k)) {
            *a += u32::from(v);
        }
    }
    for (y, out) in dst.chunks_exact_mut(row).enumerate() {
        let y = y as isize;
        let (enter, leave, beyond) = (
            at(y + r as isize),
            at(y - r as isize - 1),
            at(y + r as isize + 1),
        );
        for j in 0..row {
            acc[j] = acc[j] + u32::from(enter[j]) - u32::from(leave[j]);
            out[j] = w.apply(acc[j], u32::from(leave[j]) + u32::from(beyond[j]));
        }
    }
}

#[inline(always)]
fn blur(pixels: &mut [u8], width: usize, channels: usize, w: BoxWeights, scratch: &mut Vec<u8>) {
    let row = width * channels;
    let mut pad = Vec::with_capacity(row + 2 * (w.radius + 1) * channels);
    // the horizontal passes of a row need only that row
    for line in pixels.chunks_exact_mut(row) {
        for _ in 0..PASSES {
            box_row(line, channels, w, &mut pad);
        }
    }
    scratch.resize(pixels.len(), 0);
    let mut acc = Vec::new();
    for pass in 0..PASSES {
        if pass % 2 == 0 {
            box_columns(pixels, scratch, row, w, &mut acc);
        } else {
            box_columns(scratch, pixels, row, w, &mut acc);
        }
    }
    if PASSES % 2 == 1 {
        pixels.copy_from_slice(scratch);
    }
}

/// Blurs packed pixels (`channels` per pixel) in place; `scratch` is reused between calls.
pub fn gaussian_blur(
    pixels: &mut [u8],
    width: usize,
    height: usize,
    channels: usize,
    sigma: f32,
    scratch: &mut Vec<u8>,
) {
    if width == 0 || height == 0 || channels == 0 {
        return;
    }
    assert_eq!(pixels.len(), width * height * channels);
    let weights = BoxWeights::new(box_radius(sigma));
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        #[target_feature(enable = "avx2")]
        fn blur_avx2(px: &mut [u8], width: usize, ch: usize, w: BoxWeights, s: &mut Vec<u8>) {
            blur(px, width, ch, w, s);
        }
        // SAFETY: the CPU has AVX2.
        return unsafe { blur_avx2(pixels, width, channels, weights, scratch) };
    }
    blur(pixels, width, channels, weights, scratch);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::noise;

    /// PIL's box pass over `len` pixels of `channels` interleaved values, read at `stride`
    /// apart in `src` and written the same way to `dst`.
    fn box_line(
        src: &[u8],
        dst: &mut [u8],
        len: usize,
        stride: usize,
        channels: usize,
        w: BoxWeights,
    ) {
        let last = len - 1;
        let r = w.radius;
        let at = |i: usize, c: usize| u32::from(src[i * stride + c]);
        for c in 0..channels {
            // Running sum of the 2r+1 inner pixels around x, edges repeated: start at x = -1.
            let mut acc = at(0, c) * (r as u32 + 1);
            for i in 0..r {
                acc += at(i.min(last), c);
            }
            for x in 0..len {
                acc += at((x + r).min(last), c);
                acc -= at(x.saturating_sub(r + 1), c);
                let far = at(x.saturating_sub(r + 1), c) + at((x + r + 1).min(last), c);
                let sum = u64::from(acc) * u64::from(w.inner) + u64::from(far) * u64::from(w.outer);
                dst[x * stride + c] = ((sum + (1 << 23)) >> 24) as u8;
            }
        }
    }

    /// PIL's blur as PIL runs it: each pass over the whole image, rows then columns.
    fn blur_reference(pixels: &mut [u8], width: usize, height: usize, channels: usize, sigma: f32) {
        let weights = BoxWeights::new(box_radius(sigma));
        let mut scratch = vec![0; pixels.len()];
        let row = width * channels;
        for _ in 0..PASSES {
            for y in 0..height {
                let span = y * row..(y + 1) * row;
                box_line(
                    &pixels[span.clone()],
                    &mut scratch[span],
                    width,
                    channels,
                    channels,
                    weights,
                );
            }
            pixels.copy_from_slice(&scratch);
        }
        for _ in 0..PASSES {
            for x in 0..width {
                let start = x * channels;
                box_line(
                    &pixels[start..],
                    &mut scratch[start..],
                    height,
                    row,
                    channels,
                    weights,
                );
            }
            pixels.copy_from_slice(&scratch);
        }
    }

    #[test]
    fn matches_pils_passes_for_every_radius_and_shape() {
        // sigmas giving radius 0, 1, 2 (the direct taps) and 3, 6 (the running sums)
        let sigmas = [0.1f32, 0.55, 1.0, 1.37, 1.99, 2.0, 3.0, 4.2, 10.0];
        let radii: Vec<usize> = sigmas.iter().map(|&s| box_radius(s) as usize).collect();
        for r in 0..=3 {
            assert!(radii.contains(&r), "{radii:?}");
        }
        let mut scratch = Vec::new();
        for (width, height) in [
            (1, 1),
            (1, 7),
            (7, 1),
            (2, 3),
            (5, 3),
            (17, 9),
            (96, 96),
            (33, 64),
        ] {
            for channels in [1, 3] {
                let px = noise(width * height * channels, (width * 31 + height) as u64);
                for sigma in sigmas {
                    let mut want = px.clone();
                    blur_reference(&mut want, width, height, channels, sigma);
                    let mut got = px.clone();
                    gaussian_blur(&mut got, width, height, channels, sigma, &mut scratch);
                    assert_eq!(got, want, "{width}x{height}x{channels} sigma {sigma}");
                    // the same code compiled for the baseline target
                    let mut got = px.clone();
                    let weights = BoxWeights::new(box_radius(sigma));
                    blur(&mut got, width, channels, weights, &mut scratch);
                    assert_eq!(got, want, "{width}x{height}x{channels} sigma {sigma}");
                }
            }
        }
    }

    #[test]
    fn a_flat_image_stays_flat() {
        let mut px = vec![77u8; 20 * 10 * 3];
        gaussian_blur(&mut px, 20, 10, 3, 1.7, &mut Vec::new());
        assert!(px.iter().all(|&v| v == 77));
    }

    #[test]
    fn the_variance_of_a_blurred_impulse_is_sigma_squared() {
        // An impulse of 255 in a dark 1-D line spreads into the kernel itself.
        for sigma in [0.8f32, 1.3, 2.0] {
            let len = 101;
            let mut px = vec![0u8; len];
            let mut line = vec![0u8; len];
            line[50] = 255;
            px.copy_from_slice(&line);
            gaussian_blur(&mut px, len, 1, 1, sigma, &mut Vec::new());
            let total: f64 = px.iter().map(|&v| f64::from(v)).sum();
            let var: f64 = px
                .iter()
                .enumerate()
                .map(|(i, &v)| f64::from(v) * (i as f64 - 50.0).powi(2))
                .sum::<f64>()
                / total;
            let want = f64::from(sigma).powi(2);
            // u8 rounding of a 255-high impulse costs a few percent of the variance
            assert!(
                (var - want).abs() < 0.12 * want + 0.05,
                "sigma {sigma}: var {var}"
            );
        }
    }
}
