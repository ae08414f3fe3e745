//! The CPU kernels of the fused ops, on contiguous f32 rows: exact GELU, layer norm and
//! softmax over the last dimension, each with its backward; batch norm over the channels.
//!
//! Vectorized: every kernel body is written once over plain slices and compiled twice, with
//! AVX2 + FMA (multiply-adds fused, one rounding) and without (separate multiply and add),
//! the variant picked at run time. Parallel: rows are cut into blocks of a fixed size that
//! rayon spreads over its threads; a row's reductions run in a fixed order (8 lanes, then a
//! fixed tree), and sums across rows (the layer norm's weight and bias gradients) add the
//! blocks' partial sums in block order. So the same inputs give the same bits whatever the
//! thread count.

use rayon::prelude::*;

/// Elements per parallel task of an elementwise kernel.
const CHUNK: usize = 1 << 14;

/// Rows per parallel task of a row kernel (and per partial sum of the layer norm's weight
/// and bias gradients).
const ROWS: usize = 32;

/// `a * b + c`, with one rounding where the CPU fuses it.
trait Madd: Copy + Send + Sync {
    fn madd(a: f32, b: f32, c: f32) -> f32;
}

#[derive(Clone, Copy)]
struct Fused;
impl Madd for Fused {
    #[inline(always)]
    fn madd(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

#[derive(Clone, Copy)]
struct Separate;
impl Madd for Separate {
    #[inline(always)]
    fn madd(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// Whether this CPU runs the AVX2 + FMA variant.
pub fn vectorized() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Defines `$name(args)`, which runs `$body::<M>(args)` compiled for AVX2 + FMA when the CPU
/// has them, and the portable build of it otherwise.
macro_rules! dispatch {
    ($name:ident, $body:ident, ($($arg:ident: $ty:ty),*) $(-> $ret:ty)?) => {
        fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $body::<Fused>($($arg),*)
                }
                if vectorized() {
                    // SAFETY: the CPU has AVX2 and FMA (checked just above)
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body::<Separate>($($arg),*)
        }
    };
}

// ---------------------------------------------------------------------------------------
// exp and erfc, branch-free so that the loops around them vectorize

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split in two (Cody-Waite): `n * LN2_HI` is exact for the n that occur.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Adding and subtracting 1.5 * 2^23 rounds an f32 below 2^22 to the nearest integer.
const ROUND: f32 = 12_582_912.0;

/// e^x, within 2 ulp on [-87.3, 88] (Cephes' `expf` polynomial), clamped to that range.
#[inline(always)]
fn exp<M: Madd>(x: f32) -> f32 {
    let x = x.clamp(-87.336_54, 88.0);
    let biased = M::madd(x, LOG2E, ROUND);
    let n = biased - ROUND;
    let r = M::madd(n, -LN2_HI, x);
    let r = M::madd(n, -LN2_LO, r);
    let mut p = 1.987_569_1e-4;
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_65,
        0.5,
    ] {
        p = M::madd(p, r, c);
    }
    let y = M::madd(p, r * r, r) + 1.0;
    // 2^n through the exponent bits, n in [-126, 127]: the low bits of `biased` hold
    // ROUND's bits + n (an `as i32` cast would not vectorize)
    let exponent = biased
        .to_bits()
        .wrapping_sub(ROUND.to_bits())
        .wrapping_add(127);
    y * f32::from_bits(exponent << 23)
}

/// erfc(z) for z >= 0 with a relative error below 1.2e-7 (Numerical Recipes' Chebyshev
/// fit), computed directly rather than as 1 - erf, so no digits cancel in the tail.
#[inline(always)]
fn erfc_nonneg<M: Madd>(z: f32) -> f32 {
    let t = 1.0 / M::madd(0.5, z, 1.0);
    let mut p = 0.170_872_77;
    for c in [
        -0.822_152_23,
        1.488_515_9,
        -1.135_204,
        0.278_868_07,
        -0.186_288_06,
        0.096_784_18,
        0.374_091_96,
        1.000_023_7,
        -1.265_512_2,
    ] {
        p = M::madd(p, t, c);
    }
    // exp(-z^2 + p) as exp(-s^2) exp((s - z)(s + z) + p) with s = z cut to 12 bits: s^2 is
    // exact, and the rounding of z^2 (an ulp of 36 is 4e-6) does not reach the result
    let s = f32::from_bits(z.to_bits() & 0xffff_f000);
    t * exp::<M>(-s * s) * exp::<M>(M::madd(s - z, s + z, p))
}

/// Φ(x), the standard normal CDF: erfc(-x / √2) / 2.
#[inline(always)]
fn normal_cdf<M: Madd>(x: f32) -> f32 {
    let e = erfc_nonneg::<M>(x.abs() * std::f32::consts::FRAC_1_SQRT_2);
    0.5 * if x < 0.0 { e } else { 2.0 - e }
}

// ---------------------------------------------------------------------------------------
// GELU (exact, with erf): x Φ(x); its derivative Φ(x) + x φ(x)

const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

#[inline(always)]
fn gelu_body<M: Madd>(x: &[f32], y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = x * normal_cdf::<M>(x);
    }
}
dispatch!(gelu_chunk, gelu_body, (x: &[f32], y: &mut [f32]));

#[inline(always)]
fn gelu_backward_body<M: Madd>(x: &[f32], dy: &[f32], dx: &mut [f32]) {
    for ((dx, &x), &dy) in dx.iter_mut().zip(x).zip(dy) {
        let pdf = exp::<M>(-0.5 * x * x) * FRAC_1_SQRT_2PI;
        *dx = dy * M::madd(x, pdf, normal_cdf::<M>(x));
    }
}
dispatch!(gelu_backward_chunk, gelu_backward_body, (x: &[f32], dy: &[f32], dx: &mut [f32]));

pub fn gelu(x: &[f32]) -> Vec<f32> {
    let mut y = vec![0.0; x.len()];
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(y, x)| gelu_chunk(x, y));
    y
}

pub fn gelu_backward(x: &[f32], dy: &[f32]) -> Vec<f32> {
    let mut dx = vec![0.0; x.len()];
    dx.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK)))
        .for_each(|(dx, (x, dy))| gelu_backward_chunk(x, dy, dx));
    dx
}

// ---------------------------------------------------------------------------------------
// reductions in a fixed order

// Written over slice chunks, not indices: no bounds or overflow checks stand in the way of
// vectorization (the project's own crates keep overflow checks in the test profile).

/// The fixed order of every sum: 8 lanes (lane j takes elements j, j + 8, ...), the lanes
/// added as a fixed tree, then the tail in order.
#[inline(always)]
fn fold8(acc: [f32; 8], tail: impl Iterator<Item = f32>) -> f32 {
    let total = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    tail.fold(total, |t, v| t + v)
}

/// Σ f(a_i, b_i, c_i) in the fixed order of [`fold8`].
#[inline(always)]
fn sum8_zip3(a: &[f32], b: &[f32], c: &[f32], f: impl Fn(f32, f32, f32) -> f32) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb, cc) = (a.chunks_exact(8), b.chunks_exact(8), c.chunks_exact(8));
    let tail = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .zip(cc.remainder());
    for ((ca, cb), cc) in ca.zip(cb).zip(cc) {
        let ca: &[f32; 8] = ca.try_into().unwrap();
        let cb: &[f32; 8] = cb.try_into().unwrap();
        let cc: &[f32; 8] = cc.try_into().unwrap();
        for j in 0..8 {
            acc[j] += f(ca[j], cb[j], cc[j]);
        }
    }
    fold8(acc, tail.map(|((&a, &b), &c)| f(a, b, c)))
}

/// Σ f(a_i, b_i) in the fixed order of [`fold8`].
#[inline(always)]
fn sum8_zip(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    sum8_zip3(a, b, b, |a, b, _| f(a, b))
}

/// Σ f(a_i) in the fixed order of [`fold8`].
#[inline(always)]
fn sum8(a: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    sum8_zip(a, a, |v, _| f(v))
}

/// max a_i (any order gives the same max; the lanes let it vectorize).
#[inline(always)]
fn max8(a: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = a.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        let c: &[f32; 8] = c.try_into().unwrap();
        for j in 0..8 {
            acc[j] = acc[j].max(c[j]);
        }
    }
    acc.iter()
        .chain(tail)
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v))
}

// ---------------------------------------------------------------------------------------
// layer norm over rows of width d: y = (x - mean) / sqrt(var + eps) * w + b (biased var)

/// The forward's outputs: y, and per row the mean and 1 / sqrt(var + eps) the backward uses.
pub struct LayerNormOut {
    pub y: Vec<f32>,
    pub mean: Vec<f32>,
    pub rstd: Vec<f32>,
}

#[inline(always)]
fn layer_norm_body<M: Madd>(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    eps: f32,
    y: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
) {
    let d = w.len();
    for (r, (x, y)) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)).enumerate() {
        let m = sum8(x, |v| v) / d as f32;
        let var = sum8(x, |v| (v - m) * (v - m)) / d as f32;
        let s = 1.0 / (var + eps).sqrt();
        for (((y, &x), &w), &b) in y.iter_mut().zip(x).zip(w).zip(b) {
            *y = M::madd((x - m) * s, w, b);
        }
        (mean[r], rstd[r]) = (m, s);
    }
}
dispatch!(layer_norm_rows, layer_norm_body, (x: &[f32], w: &[f32], b: &[f32], eps: f32, y: &mut [f32], mean: &mut [f32], rstd: &mut [f32]));

/// `x` holds rows of `w.len()` values.
pub fn layer_norm(x: &[f32], w: &[f32], b: &[f32], eps: f32) -> LayerNormOut {
    let d = w.len();
    let rows = x.len() / d;
    let mut out = LayerNormOut {
        y: vec![0.0; x.len()],
        mean: vec![0.0; rows],
        rstd: vec![0.0; rows],
    };
    out.y
        .par_chunks_mut(ROWS * d)
        .zip(out.mean.par_chunks_mut(ROWS))
        .zip(out.rstd.par_chunks_mut(ROWS))
        .zip(x.par_chunks(ROWS * d))
        .for_each(|(((y, mean), rstd), x)| layer_norm_rows(x, w, b, eps, y, mean, rstd));
    out
}

/// `stats`: the rows' mean and rstd; `partial`: this block's dw then db, added to.
#[inline(always)]
fn layer_norm_backward_body<M: Madd>(
    x: &[f32],
    w: &[f32],
    (mean, rstd): (&[f32], &[f32]),
    dy: &[f32],
    dx: &mut [f32],
    partial: &mut [f32],
) {
    let d = w.len();
    let (dw, db) = partial.split_at_mut(d);
    for (r, ((x, dy), dx)) in x
        .chunks_exact(d)
        .zip(dy.chunks_exact(d))
        .zip(dx.chunks_exact_mut(d))
        .enumerate()
    {
        let (m, s) = (mean[r], rstd[r]);
        // g = dy * w; a = mean of g, c = mean of g * xhat, xhat = (x - m) * s
        let g = |dy: f32, w: f32| dy * w;
        let a = sum8_zip(dy, w, g) / d as f32;
        let c = sum8_zip3(dy, w, x, |dy, w, x| g(dy, w) * ((x - m) * s)) / d as f32;
        for (((((dx, dw), db), &x), &dy), &w) in dx
            .iter_mut()
            .zip(dw.iter_mut())
            .zip(db.iter_mut())
            .zip(x)
            .zip(dy)
            .zip(w)
        {
            let h = (x - m) * s;
            // g rounded as in `a`: a one-value row gives exactly 0
            *dx = s * ((g(dy, w) - a) - h * c);
            *dw = M::madd(dy, h, *dw);
            *db += dy;
        }
    }
}
dispatch!(layer_norm_backward_rows, layer_norm_backward_body, (x: &[f32], w: &[f32], stats: (&[f32], &[f32]), dy: &[f32], dx: &mut [f32], partial: &mut [f32]));

/// The gradients of [`layer_norm`] for the output gradient `dy`: (dx, dw, db).
pub fn layer_norm_backward(
    x: &[f32],
    w: &[f32],
    mean: &[f32],
    rstd: &[f32],
    dy: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let d = w.len();
    let mut dx = vec![0.0; x.len()];
    // one partial (dw, db) per block of rows, added in block order below
    let blocks = x.len().div_ceil(ROWS * d);
    let mut partial = vec![0.0; blocks * 2 * d];
    dx.par_chunks_mut(ROWS * d)
        .zip(partial.par_chunks_mut(2 * d))
        .zip(x.par_chunks(ROWS * d).zip(dy.par_chunks(ROWS * d)))
        .zip(mean.par_chunks(ROWS).zip(rstd.par_chunks(ROWS)))
        .for_each(|(((dx, part), (x, dy)), stats)| {
            layer_norm_backward_rows(x, w, stats, dy, dx, part)
        });
    let (mut dw, mut db) = (vec![0.0; d], vec![0.0; d]);
    for part in partial.chunks_exact(2 * d) {
        for i in 0..d {
            dw[i] += part[i];
            db[i] += part[d + i];
        }
    }
    (dx, dw, db)
}

// ---------------------------------------------------------------------------------------
// softmax over rows of width d of s x (s > 0): y = exp(s (x - max)) / Σ exp(s (x - max));
// dx = s y (dy - Σ y dy)

/// In place: each row of `d` values of `y` becomes its softmax.
#[inline(always)]
fn softmax_body<M: Madd>(y: &mut [f32], d: usize, scale: f32) {
    for y in y.chunks_exact_mut(d) {
        let m = max8(y);
        for y in y.iter_mut() {
            *y = exp::<M>((*y - m) * scale);
        }
        let total = sum8(y, |v| v);
        for v in y.iter_mut() {
            *v /= total;
        }
    }
}
dispatch!(softmax_rows, softmax_body, (y: &mut [f32], d: usize, scale: f32));

#[inline(always)]
fn softmax_backward_body<M: Madd>(y: &[f32], dy: &[f32], d: usize, scale: f32, dx: &mut [f32]) {
    for ((y, dy), dx) in y
        .chunks_exact(d)
        .zip(dy.chunks_exact(d))
        .zip(dx.chunks_exact_mut(d))
    {
        let dot = sum8_zip(y, dy, |y, dy| y * dy);
        for ((dx, &y), &dy) in dx.iter_mut().zip(y).zip(dy) {
            *dx = scale * (y * (dy - dot));
        }
    }
}
dispatch!(softmax_backward_rows, softmax_backward_body, (y: &[f32], dy: &[f32], d: usize, scale: f32, dx: &mut [f32]));

/// Softmax of `scale` (> 0) times each row of `d` values of `x`.
pub fn softmax(x: &[f32], d: usize, scale: f32) -> Vec<f32> {
    let mut y = x.to_vec();
    y.par_chunks_mut(ROWS * d)
        .for_each(|y| softmax_rows(y, d, scale));
    y
}

/// The gradient of [`softmax`] from its output `y` and the output gradient `dy`.
pub fn softmax_backward(y: &[f32], dy: &[f32], d: usize, scale: f32) -> Vec<f32> {
    let mut dx = vec![0.0; y.len()];
    dx.par_chunks_mut(ROWS * d)
        .zip(y.par_chunks(ROWS * d).zip(dy.par_chunks(ROWS * d)))
        .for_each(|(dx, (y, dy))| softmax_backward_rows(y, dy, d, scale, dx));
    dx
}

// ---------------------------------------------------------------------------------------
// log-softmax over rows of s x (s > 0): y = s (x - max) - ln Σ exp(s (x - max));
// dx = s (dy - exp(y) Σ dy)

#[inline(always)]
fn log_softmax_body<M: Madd>(y: &mut [f32], d: usize, scale: f32) {
    for y in y.chunks_exact_mut(d) {
        let m = max8(y);
        for y in y.iter_mut() {
            *y = (*y - m) * scale;
        }
        let log_total = sum8(y, |t| exp::<M>(t)).ln();
        for v in y.iter_mut() {
            *v -= log_total;
        }
    }
}
dispatch!(log_softmax_rows, log_softmax_body, (y: &mut [f32], d: usize, scale: f32));

#[inline(always)]
fn log_softmax_backward_body<M: Madd>(y: &[f32], dy: &[f32], d: usize, scale: f32, dx: &mut [f32]) {
    for ((y, dy), dx) in y
        .chunks_exact(d)
        .zip(dy.chunks_exact(d))
        .zip(dx.chunks_exact_mut(d))
    {
        let total = sum8(dy, |v| v);
        for ((dx, &y), &dy) in dx.iter_mut().zip(y).zip(dy) {
            *dx = scale * (dy - exp::<M>(y) * total);
        }
    }
}
dispatch!(log_softmax_backward_rows, log_softmax_backward_body, (y: &[f32], dy: &[f32], d: usize, scale: f32, dx: &mut [f32]));

/// Log-softmax of `scale` (> 0) times each row of `d` values of `x`.
pub fn log_softmax(x: &[f32], d: usize, scale: f32) -> Vec<f32> {
    let mut y = x.to_vec();
    y.par_chunks_mut(ROWS * d)
        .for_each(|y| log_softmax_rows(y, d, scale));
    y
}

/// The gradient of [`log_softmax`] from its output `y` and the output gradient `dy`.
pub fn log_softmax_backward(y: &[f32], dy: &[f32], d: usize, scale: f32) -> Vec<f32> {
    let mut dx = vec![0.0; y.len()];
    dx.par_chunks_mut(ROWS * d)
        .zip(y.par_chunks(ROWS * d).zip(dy.par_chunks(ROWS * d)))
        .for_each(|(dx, (y, dy))| log_softmax_backward_rows(y, dy, d, scale, dx));
    dx
}

// batch norm over the channels (dimension 1) of [N, C, S]: per channel c, the statistics of
// its N * S values; rows of C * S values (one sample) are the parallel tasks of the
// elementwise passes, channels those of the reductions, each summed in sample order in f64.

/// The training forward's outputs: y, and per channel the batch mean, the biased variance
/// and 1 / sqrt(var + eps).
pub struct BatchNormOut {
    pub y: Vec<f32>,
    pub mean: Vec<f32>,
    pub var: Vec<f32>,
    pub rstd: Vec<f32>,
}

/// Σ over the samples of `f(x value, channel)` for each channel of `x` [N, C, S].
fn per_channel(x: &[f32], c: usize, s: usize, f: impl Fn(f32, usize) -> f64 + Sync) -> Vec<f64> {
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let mut total = 0.0;
            for row in x.chunks_exact(c * s) {
                for &v in &row[ch * s..(ch + 1) * s] {
                    total += f(v, ch);
                }
            }
            total
        })
        .collect()
}

/// Σ over the samples of `f(x, dy, channel)` for each channel.
fn per_channel2(
    x: &[f32],
    dy: &[f32],
    c: usize,
    s: usize,
    f: impl Fn(f32, f32, usize) -> f64 + Sync,
) -> Vec<f64> {
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let mut total = 0.0;
            for (x, dy) in x.chunks_exact(c * s).zip(dy.chunks_exact(c * s)) {
                let at = ch * s..(ch + 1) * s;
                for (&x, &g) in x[at.clone()].iter().zip(&dy[at]) {
                    total += f(x, g, ch);
                }
            }
            total
        })
        .collect()
}

/// `out[n, c, s] = f(x[n, c, s], c)`, one parallel task per sample.
fn map_channels(x: &[f32], c: usize, s: usize, f: impl Fn(f32, usize) -> f32 + Sync) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    out.par_chunks_mut(c * s)
        .zip(x.par_chunks(c * s))
        .for_each(|(out, x)| {
            for (ch, (out, x)) in out.chunks_exact_mut(s).zip(x.chunks_exact(s)).enumerate() {
                for (o, &v) in out.iter_mut().zip(x) {
                    *o = f(v, ch);
                }
            }
        });
    out
}

/// `x` [N, C, S] normalized with its batch statistics, times `w` plus `b` ([C]).
pub fn batch_norm(x: &[f32], w: &[f32], b: &[f32], s: usize, eps: f32) -> BatchNormOut {
    let c = w.len();
    let m = (x.len() / c) as f64;
    let mean: Vec<f32> = (per_channel(x, c, s, |v, _| v as f64).into_iter())
        .map(|t| (t / m) as f32)
        .collect();
    let var: Vec<f32> = per_channel(x, c, s, |v, ch| ((v - mean[ch]) as f64).powi(2))
        .into_iter()
        .map(|t| (t / m) as f32)
        .collect();
    let rstd: Vec<f32> = var.iter().map(|&v| 1.0 / (v + eps).sqrt()).collect();
    let y = map_channels(x, c, s, |v, ch| (v - mean[ch]) * rstd[ch] * w[ch] + b[ch]);
    BatchNormOut { y, mean, var, rstd }
}

/// (dx, dw, db) of [`batch_norm`] for the output gradient `dy`.
pub fn batch_norm_backward(
    x: &[f32],
    w: &[f32],
    mean: &[f32],
    rstd: &[f32],
    dy: &[f32],
    s: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let c = w.len();
    let m = (x.len() / c) as f32;
    let xhat = |x: f32, ch: usize| (x - mean[ch]) * rstd[ch];
    let db: Vec<f32> = (per_channel(dy, c, s, |g, _| g as f64).into_iter())
        .map(|t| t as f32)
        .collect();
    let dw: Vec<f32> = per_channel2(x, dy, c, s, |x, g, ch| (g * xhat(x, ch)) as f64)
        .into_iter()
        .map(|t| t as f32)
        .collect();
    // dx = w rstd (dy - db / M - xhat dw / M)
    let mut dx = vec![0.0; x.len()];
    dx.par_chunks_mut(c * s)
        .zip(x.par_chunks(c * s).zip(dy.par_chunks(c * s)))
        .for_each(|(dx, (x, dy))| {
            for (ch, ((dx, x), dy)) in dx
                .chunks_exact_mut(s)
                .zip(x.chunks_exact(s))
                .zip(dy.chunks_exact(s))
                .enumerate()
            {
                let k = w[ch] * rstd[ch];
                let (a, d) = (db[ch] / m, dw[ch] / m);
                for ((o, &x), &g) in dx.iter_mut().zip(x).zip(dy) {
                    *o = k * (g - a - xhat(x, ch) * d);
                }
            }
        });
    (dx, dw, db)
}

/// `x` [N, C, S] times `scale` plus `shift` per channel (a batch norm on given statistics).
pub fn channel_affine(x: &[f32], scale: &[f32], shift: &[f32], s: usize) -> Vec<f32> {
    map_channels(x, scale.len(), s, |v, ch| v * scale[ch] + shift[ch])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// erfc against libm's (through f64) on a dense grid: the relative error the GELU
    /// inherits, in both compiled variants.
    #[test]
    fn erfc_and_exp_are_accurate() {
        let mut worst = (0.0f64, 0.0f64);
        for i in 0..=20_000 {
            let z = i as f32 * 6.0 / 20_000.0;
            let want = libm_erfc(z as f64);
            for got in [erfc_nonneg::<Separate>(z), erfc_nonneg::<Fused>(z)] {
                let rel = ((got as f64 - want) / want).abs();
                worst.0 = worst.0.max(rel);
            }
            let x = -87.0 + i as f32 * 175.0 / 20_000.0;
            let want = (x as f64).exp();
            for got in [exp::<Separate>(x), exp::<Fused>(x)] {
                worst.1 = worst.1.max(((got as f64 - want) / want).abs());
            }
        }
        assert!(worst.0 < 1e-6, "erfc: worst relative error {:e}", worst.0);
        assert!(worst.1 < 3e-7, "exp: worst relative error {:e}", worst.1);
    }

    /// erfc(z) = 1 - erf(z) in f64 where that does not cancel, its continued fraction
    /// (Lentz) beyond.
    fn libm_erfc(z: f64) -> f64 {
        if z < 2.0 {
            return 1.0 - erf_series(z);
        }
        // erfc(z) = exp(-z^2)/sqrt(pi) * 1/(z + 1/2/(z + 1/(z + 3/2/(z + ...))))
        let mut f = z;
        for k in (1..200).rev() {
            f = z + (k as f64 / 2.0) / f;
        }
        (-z * z).exp() / std::f64::consts::PI.sqrt() / f
    }

    fn erf_series(z: f64) -> f64 {
        // erf(z) = 2/sqrt(pi) * Σ (-1)^n z^(2n+1) / (n! (2n+1))
        let mut term = z;
        let mut sum = z;
        for n in 1..200 {
            term *= -z * z / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }
}

// ---------------------------------------------------------------------------------------
// matrix products on strided views (the gemm crate, which Flex's matmul runs on): linear
// layers, and the attention core straight from the qkv projection's rows

/// Multiply-adds from which one product is spread over all threads (Flex's threshold);
/// below it runs on the calling thread. The gemm crate splits the output, never the inner
/// dimension, so each value is summed in the same order on any number of threads.
const GEMM_PARALLEL: usize = 192 * 192 * 192;

/// A read-only matrix view: element (i, j) at `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
struct View<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

impl<'a> View<'a> {
    fn rows(data: &'a [f32], offset: usize, rs: usize) -> Self {
        Self::new(&data[offset..], rs, 1)
    }
    fn new(data: &'a [f32], rs: usize, cs: usize) -> Self {
        Self { data, rs, cs }
    }
    /// The transpose, without a copy.
    fn t(self) -> Self {
        Self::new(self.data, self.cs, self.rs)
    }
    /// Whether an `m x n` matrix fits in `data`.
    fn holds(&self, m: usize, n: usize, len: usize) -> bool {
        m == 0 || n == 0 || (m - 1) * self.rs + (n - 1) * self.cs < len
    }
}

/// dst = a · b (or dst += a · b with `accumulate`), a [m, k], b [k, n], dst [m, n] with
/// row stride `dst_rs` from the start of `dst`.
fn gemm(
    [m, n, k]: [usize; 3],
    a: View,
    b: View,
    (dst, dst_rs): (&mut [f32], usize),
    accumulate: bool,
) {
    assert!(
        a.holds(m, k, a.data.len())
            && b.holds(k, n, b.data.len())
            && View::new(dst, dst_rs, 1).holds(m, n, dst.len()),
        "gemm: a {m}x{k} · {k}x{n} product outside its buffers"
    );
    let parallelism = if m * n * k >= GEMM_PARALLEL && rayon::current_num_threads() > 1 {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: every index the product reads or writes lies within its slice (asserted just
    // above), `dst` is borrowed mutably and so overlaps neither input
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Rows per partial sum of a bias gradient.
const BIAS_ROWS: usize = 256;

#[inline(always)]
fn column_sums_body<M: Madd>(x: &[f32], d: usize, sums: &mut [f32]) {
    for row in x.chunks_exact(d) {
        for (s, &v) in sums.iter_mut().zip(row) {
            *s += v;
        }
    }
}
dispatch!(column_sums, column_sums_body, (x: &[f32], d: usize, sums: &mut [f32]));

/// Σ over the rows of `x` [rows, d]: blocks of rows summed in row order, then the blocks'
/// sums in block order (the same bits on any number of threads).
fn sum_rows(x: &[f32], d: usize) -> Vec<f32> {
    let blocks = x.len().div_ceil(BIAS_ROWS * d).max(1);
    let mut partial = vec![0.0; blocks * d];
    partial
        .par_chunks_mut(d)
        .zip(x.par_chunks(BIAS_ROWS * d))
        .for_each(|(sums, x)| column_sums(x, d, sums));
    let mut total = vec![0.0; d];
    for part in partial.chunks_exact(d) {
        for (t, &p) in total.iter_mut().zip(part) {
            *t += p;
        }
    }
    total
}

/// x Wᵀ + b: x [rows, d_in], W [d_out, d_in] (PyTorch's layout), b [d_out]; the bias is
/// the product's starting value, so no second pass adds it.
pub fn linear(x: &[f32], w: &[f32], b: Option<&[f32]>, d_in: usize) -> Vec<f32> {
    let d_out = w.len() / d_in;
    let rows = x.len() / d_in;
    let mut y = match b {
        Some(b) => b.repeat(rows),
        None => vec![0.0; rows * d_out],
    };
    let (x, w) = (View::new(x, d_in, 1), View::new(w, d_in, 1));
    gemm([rows, d_out, d_in], x, w.t(), (&mut y, d_out), b.is_some());
    y
}

/// The gradients of [`linear`] for the output gradient `dy` [rows, d_out] that `want`s asks
/// for: (dx = dy W, dW = dyᵀ x, db = Σ_rows dy).
pub fn linear_backward(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    d_in: usize,
    want: [bool; 3],
) -> [Option<Vec<f32>>; 3] {
    let d_out = w.len() / d_in;
    let rows = x.len() / d_in;
    let (xv, wv, dyv) = (
        View::new(x, d_in, 1),
        View::new(w, d_in, 1),
        View::new(dy, d_out, 1),
    );
    let dx = want[0].then(|| {
        let mut dx = vec![0.0; rows * d_in];
        gemm([rows, d_in, d_out], dyv, wv, (&mut dx, d_in), false);
        dx
    });
    let dw = want[1].then(|| {
        let mut dw = vec![0.0; d_out * d_in];
        gemm([d_out, d_in, rows], dyv.t(), xv, (&mut dw, d_in), false);
        dw
    });
    let db = want[2].then(|| sum_rows(dy, d_out));
    [dx, dw, db]
}

/// The shape of an attention core: per sample `n` tokens of `d` = `heads` x head_dim
/// features, its input the qkv projection's rows [n, 3d] (q, k, v side by side).
#[derive(Clone, Copy)]
pub struct Heads {
    pub n: usize,
    pub d: usize,
    pub heads: usize,
}

impl Heads {
    fn hd(self) -> usize {
        self.d / self.heads
    }
    /// q, k and v of head `h` in one sample's qkv rows.
    fn qkv(self, qkv: &[f32], h: usize) -> [View<'_>; 3] {
        [0, 1, 2].map(|i| View::rows(qkv, i * self.d + h * self.hd(), 3 * self.d))
    }
}

/// One sample: `out` [n, d] (the heads side by side), `probs` [heads, n, n] =
/// softmax(scale q kᵀ) per head.
fn attention_sample(s: Heads, qkv: &[f32], scale: f32, out: &mut [f32], probs: &mut [f32]) {
    let (n, hd) = (s.n, s.hd());
    for (h, p) in probs.chunks_exact_mut(n * n).enumerate() {
        let [q, k, v] = s.qkv(qkv, h);
        gemm([n, n, hd], q, k.t(), (p, n), false);
        softmax_rows(p, n, scale);
        gemm(
            [n, hd, n],
            View::new(p, n, 1),
            v,
            (&mut out[h * hd..], s.d),
            false,
        );
    }
}

/// softmax(scale q kᵀ) v per sample and head, from the qkv projection [B, n, 3d]: the
/// output [B, n, d] with the heads side by side (the layout the output projection reads),
/// and the probabilities [B, heads, n, n] the backward needs. Parallel over samples.
pub fn attention(s: Heads, qkv: &[f32], scale: f32) -> (Vec<f32>, Vec<f32>) {
    let batch = qkv.len() / (3 * s.n * s.d);
    let mut out = vec![0.0; batch * s.n * s.d];
    let mut probs = vec![0.0; batch * s.heads * s.n * s.n];
    out.par_chunks_mut(s.n * s.d)
        .zip(probs.par_chunks_mut(s.heads * s.n * s.n))
        .zip(qkv.par_chunks(3 * s.n * s.d))
        .for_each(|((out, probs), qkv)| attention_sample(s, qkv, scale, out, probs));
    (out, probs)
}

/// The gradient of [`attention`] with respect to its qkv input, [B, n, 3d], from the
/// probabilities it kept and the output gradient `dout` [B, n, d]: per head
/// dP = dO vᵀ, dS = scale P (dP - Σ P dP) (the softmax's backward), dq = dS k,
/// dk = dSᵀ q, dv = Pᵀ dO, each written into its columns of the sample's rows.
pub fn attention_backward(
    s: Heads,
    qkv: &[f32],
    probs: &[f32],
    dout: &[f32],
    scale: f32,
) -> Vec<f32> {
    let (n, d, hd) = (s.n, s.d, s.hd());
    let mut dqkv = vec![0.0; qkv.len()];
    dqkv.par_chunks_mut(3 * n * d)
        .zip(qkv.par_chunks(3 * n * d))
        .zip(
            probs
                .par_chunks(s.heads * n * n)
                .zip(dout.par_chunks(n * d)),
        )
        .for_each(|((dqkv, qkv), (probs, dout))| {
            let (mut dp, mut ds) = (vec![0.0; n * n], vec![0.0; n * n]);
            for (h, p) in probs.chunks_exact(n * n).enumerate() {
                let [q, k, v] = s.qkv(qkv, h);
                let (p, d_out) = (View::new(p, n, 1), View::rows(dout, h * hd, d));
                gemm([n, n, hd], d_out, v.t(), (&mut dp, n), false);
                softmax_backward_rows(p.data, &dp, n, scale, &mut ds);
                let ds = View::new(&ds, n, 1);
                let col = |i: usize| i * d + h * hd;
                gemm([n, hd, n], ds, k, (&mut dqkv[col(0)..], 3 * d), false);
                gemm([n, hd, n], ds.t(), q, (&mut dqkv[col(1)..], 3 * d), false);
                gemm(
                    [n, hd, n],
                    p.t(),
                    d_out,
                    (&mut dqkv[col(2)..], 3 * d),
                    false,
                );
            }
        });
    dqkv
}
