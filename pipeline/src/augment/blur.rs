//! PIL's `GaussianBlur(radius=sigma)`, which DINO uses: not a sampled Gaussian kernel but
//! three passes of a box blur with fractional ends (Gwosdek et al., "Theoretical foundations
//! of Gaussian convolution by extended box filtering"), first along rows, then along columns,
//! in 24-bit fixed point with edge pixels repeated. Box blurs cost O(1) per pixel whatever
//! sigma is, which is also why this is fast.

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
}

/// One box pass over `len` pixels of `channels` interleaved values, read at `stride` apart
/// in `src` and written the same way to `dst`.
fn box_line(src: &[u8], dst: &mut [u8], len: usize, stride: usize, channels: usize, w: BoxWeights) {
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

/// Blurs packed pixels (`channels` per pixel) in place; `scratch` is reused between calls.
pub fn gaussian_blur(
    pixels: &mut [u8],
    width: usize,
    height: usize,
    channels: usize,
    sigma: f32,
    scratch: &mut Vec<u8>,
) {
    let weights = BoxWeights::new(box_radius(sigma));
    scratch.resize(pixels.len(), 0);
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
        pixels.copy_from_slice(scratch);
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
        pixels.copy_from_slice(scratch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
