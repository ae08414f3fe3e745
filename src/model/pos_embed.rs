//! Positional embeddings for crops of another size than the one the ViT was built for.
//!
//! DINO resizes the learned `n0 x n0` grid with PyTorch's bicubic `interpolate`
//! (A = -0.75, half-pixel centres, no antialias) called with a *scale factor* of
//! `(n + 0.1) / n0` (the "+0.1" avoids a floating-point off-by-one, dino issue #8). The scale
//! factor, not `n / n0`, sets the sampling positions, so it is reproduced exactly here. The
//! resize is linear in the grid, so it is built on the host as one `[h*w, n0*n0]` matrix and
//! applied as a matmul: differentiable, and the same on every backend.

/// PyTorch's cubic convolution weights (A = -0.75) for a sample at fractional offset `t`.
fn cubic_weights(t: f64) -> [f64; 4] {
    const A: f64 = -0.75;
    let near = |x: f64| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f64| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)]
}

/// `[out, n_in]`: row `i` holds the weights of the inputs that make output `i`, with
/// PyTorch's clamped border access.
fn axis_matrix(n_in: usize, out: usize, scale_factor: f64) -> Vec<f64> {
    let step = 1.0 / scale_factor;
    let mut m = vec![0.0; out * n_in];
    for i in 0..out {
        let src = step * (i as f64 + 0.5) - 0.5;
        let base = src.floor();
        let w = cubic_weights(src - base);
        for (k, wk) in w.iter().enumerate() {
            let j = (base as i64 - 1 + k as i64).clamp(0, n_in as i64 - 1) as usize;
            m[i * n_in + j] += wk;
        }
    }
    m
}

/// The `[h*w, n0*n0]` matrix taking a row-major `n0 x n0` grid to a row-major `h x w` grid.
/// The model only calls it when the grid differs, as DINO does.
pub fn resize_matrix(n0: usize, h: usize, w: usize) -> Vec<f32> {
    let rows = axis_matrix(n0, h, (h as f64 + 0.1) / n0 as f64);
    let cols = axis_matrix(n0, w, (w as f64 + 0.1) / n0 as f64);
    let mut m = vec![0.0f32; h * w * n0 * n0];
    for i in 0..h {
        for j in 0..w {
            let out = (i * w + j) * n0 * n0;
            for a in 0..n0 {
                for b in 0..n0 {
                    m[out + a * n0 + b] = (rows[i * n0 + a] * cols[j * n0 + b]) as f32;
                }
            }
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_and_an_equal_grid_stays_close_to_identity() {
        for &(n0, n) in &[(14, 6), (4, 2), (4, 6), (7, 7)] {
            let m = axis_matrix(n0, n, (n as f64 + 0.1) / n0 as f64);
            for row in m.chunks(n0) {
                assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12, "{row:?}");
            }
            if n0 == n {
                // (n + 0.1) / n is not 1, so an equal grid would shift by up to 0.1 cell,
                // which is why the model skips the resize then
                for (i, row) in m.chunks(n0).enumerate() {
                    assert!(row[i] > 0.9, "{row:?}");
                }
            }
        }
    }
}
