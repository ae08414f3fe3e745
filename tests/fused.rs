//! The fused ops (src/fused) against the composed Burn ops they replace, which are also what
//! the CUDA backend runs: forward values and autodiff gradients on random inputs of edge
//! shapes (one row, odd widths, rows longer than a cache line, more rows than a parallel
//! block, non-contiguous and 3-D inputs), the composed backward formulas against autodiff,
//! and a training step's bits with 1 and 2 threads. Errors are relative to the largest
//! magnitude of the reference tensor.

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use dino_stream::config::Config;
use dino_stream::fused::{self, reference};
use dino_stream::images::Images;
use dino_stream::model::{ResNet, VisionTransformer};
use dino_stream::parallel::OneDevice;
use dino_stream::params;
use dino_stream::train::step::{Models, Schedules, dino_step};

type Ad = Autodiff<Flex>;

const SHAPES: [[usize; 2]; 7] = [
    [1, 1],
    [1, 7],
    [3, 96],
    [5, 33],
    [2, 1031],
    [70, 384],
    [33, 8],
];

/// Values in [-scale, scale) from a fixed LCG (no backend RNG: the draws stay the same).
fn random(shape: [usize; 2], seed: u64, scale: f32) -> Tensor<Flex, 2> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let values: Vec<f32> = (0..shape[0] * shape[1])
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect();
    Tensor::from_data(TensorData::new(values, shape), &Default::default())
}

fn values<B: burn::tensor::backend::Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec().unwrap()
}

fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-30);
    got.iter()
        .zip(want)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

fn close(what: &str, got: Vec<f32>, want: Vec<f32>, tolerance: f32) {
    let err = rel_err(&got, &want);
    assert!(err <= tolerance, "{what}: relative error {err:e}");
}

fn prim<B: burn::tensor::backend::Backend, const D: usize>(
    t: Tensor<B, D>,
) -> burn::tensor::ops::FloatTensor<B> {
    t.into_primitive().tensor()
}

fn tensor<B: burn::tensor::backend::Backend, const D: usize>(
    p: burn::tensor::ops::FloatTensor<B>,
) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(p))
}

fn ad<const D: usize>(t: &Tensor<Flex, D>) -> Tensor<Ad, D> {
    Tensor::from_inner(t.clone()).require_grad()
}

/// The inputs of one case: `x` as given and, for the non-contiguous case, as the transpose
/// of a [d, rows] tensor.
fn inputs(shape: [usize; 2], seed: u64, scale: f32) -> Vec<(String, Tensor<Flex, 2>)> {
    let x = random(shape, seed, scale);
    let t = random([shape[1], shape[0]], seed + 1, scale).transpose();
    vec![
        (format!("{shape:?}"), x),
        (format!("{shape:?} non-contiguous"), t),
    ]
}

/// GELU's errors are relative to the input's scale (its output and gradient are at most
/// |x| and 1.13 |dy|): the composed op computes 1 + erf(x / √2), which cancels for x < -3,
/// so its tail values are only good to ~1e-7 absolute; the kernel's erfc does not cancel.
#[test]
fn gelu_matches_the_composed_op_and_its_gradient() {
    let max_abs = |v: &[f32]| v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let close_to = |what: &str, got: Vec<f32>, want: &[f32], scale: f32, tolerance: f32| {
        let err = got
            .iter()
            .zip(want)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()))
            / scale;
        assert!(
            err <= tolerance,
            "{what}: error {err:e} of the scale {scale}"
        );
    };
    for (i, shape) in SHAPES.iter().enumerate() {
        for (case, x) in inputs(*shape, i as u64, 6.0) {
            let scale = max_abs(&values(x.clone()));
            let want = values(tensor::<Flex, 2>(reference::gelu::<Flex>(prim(x.clone()))));
            let got = values(fused::gelu(x.clone()));
            close_to(&format!("gelu {case}"), got, &want, scale, 1e-6);

            let r = random(*shape, 100 + i as u64, 1.0);
            let scale = max_abs(&values(r.clone()));
            let (xa, xb) = (ad(&x), ad(&x));
            let ga = (fused::gelu(xa.clone()) * Tensor::from_inner(r.clone()))
                .sum()
                .backward();
            let ref_y = tensor::<Ad, 2>(reference::gelu::<Ad>(prim(xb.clone())));
            let gb = (ref_y * Tensor::from_inner(r.clone())).sum().backward();
            let want = values(xb.grad(&gb).unwrap());
            let got = values(xa.grad(&ga).unwrap());
            close_to(&format!("gelu grad {case}"), got, &want, scale, 1e-5);
            // the composed backward (CUDA's) against autodiff of the composed forward
            let composed = reference::gelu_backward::<Flex>(prim(x.clone()), prim(r));
            let composed = values(tensor::<Flex, 2>(composed));
            close_to(
                &format!("composed gelu grad {case}"),
                composed,
                &want,
                scale,
                1e-5,
            );
        }
    }
}

#[test]
fn layer_norm_matches_the_composed_op_and_its_gradients() {
    for (i, shape) in SHAPES.iter().enumerate() {
        let d = shape[1];
        let w = random([1, d], 200 + i as u64, 2.0).reshape([d]);
        let b = random([1, d], 300 + i as u64, 1.0).reshape([d]);
        for (case, x) in inputs(*shape, i as u64, 3.0) {
            // an offset that a one-pass variance would lose digits to
            let x = x + 5.0;
            let want = reference::layer_norm::<Flex>(
                prim(x.clone()),
                prim(w.clone()),
                prim(b.clone()),
                1e-6,
            );
            let got = fused::layer_norm(x.clone(), w.clone(), b.clone(), 1e-6);
            close(
                &format!("layer norm {case}"),
                values(got),
                values(tensor::<Flex, 2>(want.y)),
                1e-5,
            );

            let r = random(*shape, 400 + i as u64, 1.0);
            let (xa, wa, ba) = (ad(&x), ad(&w), ad(&b));
            let ga = (fused::layer_norm(xa.clone(), wa.clone(), ba.clone(), 1e-6)
                * Tensor::from_inner(r.clone()))
            .sum()
            .backward();
            let (xb, wb, bb) = (ad(&x), ad(&w), ad(&b));
            let ref_y = reference::layer_norm::<Ad>(
                prim(xb.clone()),
                prim(wb.clone()),
                prim(bb.clone()),
                1e-6,
            )
            .y;
            let gb = (tensor::<Ad, 2>(ref_y) * Tensor::from_inner(r.clone()))
                .sum()
                .backward();
            let want_x = values(xb.grad(&gb).unwrap());
            let want_w = values(wb.grad(&gb).unwrap());
            let want_b = values(bb.grad(&gb).unwrap());
            close(
                &format!("layer norm dx {case}"),
                values(xa.grad(&ga).unwrap()),
                want_x.clone(),
                1e-5,
            );
            close(
                &format!("layer norm dw {case}"),
                values(wa.grad(&ga).unwrap()),
                want_w.clone(),
                1e-5,
            );
            close(
                &format!("layer norm db {case}"),
                values(ba.grad(&ga).unwrap()),
                want_b.clone(),
                1e-5,
            );

            let (dx, dw, db) = reference::layer_norm_backward::<Flex>(
                prim(x.clone()),
                prim(w.clone()),
                want.mean,
                want.rstd,
                prim(r),
            );
            close(
                &format!("composed layer norm dx {case}"),
                values(tensor::<Flex, 2>(dx)),
                want_x,
                1e-5,
            );
            close(
                &format!("composed layer norm dw {case}"),
                values(tensor::<Flex, 1>(dw)),
                want_w,
                1e-5,
            );
            close(
                &format!("composed layer norm db {case}"),
                values(tensor::<Flex, 1>(db)),
                want_b,
                1e-5,
            );
        }
    }
}

/// Plain, and scaled as the attention uses it (1 / sqrt(32)).
#[test]
fn softmax_matches_the_composed_op_and_its_gradient() {
    row_op_matches(
        "softmax",
        fused::scaled_softmax,
        reference::softmax::<Flex>,
        reference::softmax::<Ad>,
        reference::softmax_backward::<Flex>,
    );
}

#[test]
fn log_softmax_matches_the_composed_op_and_its_gradient() {
    row_op_matches(
        "log_softmax",
        fused::scaled_log_softmax,
        reference::log_softmax::<Flex>,
        reference::log_softmax::<Ad>,
        reference::log_softmax_backward::<Flex>,
    );
}

type Prim<B> = burn::tensor::ops::FloatTensor<B>;

/// A scaled row op (`fused`, generic over the backend) against its composed forward on
/// Flex and Autodiff and its composed backward formula, at the scales the models use
/// (attention's 1/sqrt(32), the student temperature's 10).
fn row_op_matches(
    name: &str,
    fused: impl Fn(Tensor<Ad, 2>, f64) -> Tensor<Ad, 2> + Copy,
    reference: impl Fn(Prim<Flex>, f64) -> Prim<Flex>,
    reference_ad: impl Fn(Prim<Ad>, f64) -> Prim<Ad>,
    reference_backward: impl Fn(Prim<Flex>, Prim<Flex>, f64) -> Prim<Flex>,
) {
    for scale in [1.0, 32f64.powf(-0.5), 10.0] {
        for (i, shape) in SHAPES.iter().enumerate() {
            for (case, x) in inputs(*shape, i as u64, 8.0) {
                let case = format!("{name} {case} scale {scale}");
                let want = tensor::<Flex, 2>(reference(prim(x.clone()), scale));
                let got = fused(ad(&x), scale).inner();
                close(&case, values(got), values(want.clone()), 1e-5);

                let r = random(*shape, 500 + i as u64, 1.0);
                let (xa, xb) = (ad(&x), ad(&x));
                let ga = (fused(xa.clone(), scale) * Tensor::from_inner(r.clone()))
                    .sum()
                    .backward();
                let ref_y = tensor::<Ad, 2>(reference_ad(prim(xb.clone()), scale));
                let gb = (ref_y * Tensor::from_inner(r.clone())).sum().backward();
                let want_grad = values(xb.grad(&gb).unwrap());
                let got = values(xa.grad(&ga).unwrap());
                close(&format!("{case} grad"), got, want_grad.clone(), 1e-5);
                let composed = tensor::<Flex, 2>(reference_backward(prim(want), prim(r), scale));
                close(
                    &format!("{case} composed grad"),
                    values(composed),
                    want_grad,
                    1e-5,
                );
            }
        }
    }
}

/// Row ops work over the last dimension of any rank.
#[test]
fn fused_ops_take_any_rank() {
    let x = random([6, 17], 7, 2.0);
    let x3 = x.clone().reshape([2, 3, 17]);
    let (w, b) = (
        random([1, 17], 8, 1.0).reshape([17]),
        random([1, 17], 9, 1.0).reshape([17]),
    );
    assert_eq!(
        values(fused::softmax(x3.clone())),
        values(fused::softmax(x.clone()))
    );
    assert_eq!(
        values(fused::layer_norm(x3.clone(), w.clone(), b.clone(), 1e-6)),
        values(fused::layer_norm(x.clone(), w, b, 1e-6))
    );
    assert_eq!(values(fused::gelu(x3)), values(fused::gelu(x)));
}

/// Two DINO steps of a small ViT from the same seed on the same crops give bit-identical
/// parameters with 1 and with 2 rayon threads: the kernels' reductions do not depend on how
/// the rows are split over threads (nor do Burn's own ops).
#[test]
fn a_training_step_is_bit_identical_for_one_and_two_threads() {
    let cfg = Config::parse(
        "[model]\narch = \"custom\"\npatch_size = 8\nimg_size = 32\nembed_dim = 48\ndepth = 2\n\
         num_heads = 3\nout_dim = 256\nhead_hidden_dim = 64\nhead_bottleneck_dim = 32\n\
         [data]\nbatch_size = 8\nglobal_crop_size = 32\nlocal_crop_size = 16\nlocal_crops_number = 2",
        "test",
        &[],
    )
    .unwrap();
    let run = || {
        let device = Default::default();
        let mut models = Models::<Ad, VisionTransformer<Ad>>::new(&cfg, &device);
        let schedules = Schedules::new(&cfg, 10, cfg.data.batch_size);
        for step in 0..2 {
            let images = Images {
                globals: random([16, 3 * 32 * 32], 20 + step, 2.0).reshape([16, 3, 32, 32]),
                locals: Some(random([16, 3 * 16 * 16], 30 + step, 2.0).reshape([16, 3, 16, 16])),
                n_globals: 16,
                n_locals: 16,
                next: Default::default(),
            };
            let h = schedules.at(step, 0);
            (models, _) = dino_step(models, images, &h, &mut OneDevice, &mut |_| {}).unwrap();
        }
        params::to_host(&params::collect(&models.student.valid()))
    };
    let (one, two) = (on_threads(1, run), on_threads(2, run));
    assert_eq!(one.len(), two.len());
    for (name, (_, a)) in &one {
        let b = &two[name].1;
        let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "{name} differs between 1 and 2 threads");
    }
}

/// The gradient of Σ out r with respect to `input`, for fixed random weights `r`.
fn grad_of<const D: usize, const O: usize>(
    input: &Tensor<Ad, D>,
    out: Tensor<Ad, O>,
    seed: u64,
) -> Vec<f32> {
    let dims = out.dims();
    let r = random([dims[..O - 1].iter().product(), dims[O - 1]], seed, 1.0).reshape(dims);
    let grads = (out * Tensor::from_inner(r)).sum().backward();
    values(input.grad(&grads).expect("a gradient"))
}

/// The attention core from the qkv projection (inner backend and autodiff) against Burn's
/// own attention op on the heads split out of it (what the CUDA teacher runs as flash
/// attention), and its qkv gradient against autodiff through the composed op, on token
/// counts of the crops (17, 65, 197), one token, an odd head width, and 600 tokens; the
/// composed backward formula (CUDA's) against the same autodiff.
#[test]
fn attention_matches_burns_attention_op_and_its_gradient() {
    for (i, [b, h, n, hd]) in [
        [2, 3, 65, 32],
        [3, 2, 17, 5],
        [1, 6, 197, 64],
        [1, 1, 1, 8],
        [1, 2, 600, 16],
    ]
    .into_iter()
    .enumerate()
    {
        let d = h * hd;
        let qkv = random([b * n, 3 * d], 40 + i as u64, 2.0).reshape([b, n, 3 * d]);
        let [q, k, v] = [0, 1, 2].map(|j| {
            qkv.clone()
                .reshape([b, n, 3, h, hd])
                .narrow(2, j, 1)
                .reshape([b, n, h, hd])
                .swap_dims(1, 2)
        });
        let burns = burn::tensor::module::attention(q, k, v, None, None, Default::default());
        let want = values(burns.swap_dims(1, 2).reshape([b, n, d]));
        let case = format!("attention {:?}", [b, h, n, hd]);
        close(
            &case,
            values(fused::attention(qkv.clone(), h)),
            want.clone(),
            1e-5,
        );

        let x = ad(&qkv);
        let fused_out = fused::attention(x.clone(), h);
        close(
            &format!("{case} autodiff"),
            values(fused_out.clone().inner()),
            want,
            1e-5,
        );
        let got = grad_of(&x, fused_out, 7 + i as u64);
        let x2 = ad(&qkv);
        let composed = tensor::<Ad, 3>(reference::attention::<Ad>(prim(x2.clone()), h, false).0);
        let want = grad_of(&x2, composed, 7 + i as u64);
        close(&format!("{case} d qkv"), got, want.clone(), 1e-5);

        // CUDA's backward: the composed formula from the kept probabilities
        let (_, probs) = reference::attention::<Flex>(prim(qkv.clone()), h, true);
        let r = random([b * n, d], 7 + i as u64, 1.0).reshape([b, n, d]);
        let formula =
            reference::attention_backward::<Flex>(prim(qkv), probs.expect("kept"), prim(r), h);
        close(
            &format!("{case} composed backward"),
            values(tensor::<Flex, 3>(formula)),
            want,
            1e-5,
        );
    }
}

/// The linear layer against Burn's (x Wᵀ + b), and its gradients (x, W, b) against autodiff
/// through Burn's, with and without bias, on [rows, d_in] -> d_out shapes: one value, the
/// quickstart's qkv and fc2, odd widths, more rows than a bias-gradient block, and a
/// non-contiguous x; the composed backward formula (CUDA's) against the same autodiff.
#[test]
fn linear_matches_burns_and_its_gradients() {
    for (i, [rows, d_in, d_out]) in [
        [1, 1, 1],
        [130, 96, 288],
        [70, 384, 96],
        [5, 33, 7],
        [600, 17, 9],
    ]
    .into_iter()
    .enumerate()
    {
        let seed = 60 + 4 * i as u64;
        let w = random([d_out, d_in], seed, 0.5);
        let b = random([1, d_out], seed + 1, 0.5).reshape([d_out]);
        for (case, x) in inputs([rows, d_in], seed + 2, 2.0) {
            for bias in [Some(b.clone()), None] {
                let case = format!("linear {case} -> {d_out}, bias {}", bias.is_some());
                let want = values(burn::tensor::module::linear(
                    x.clone(),
                    w.clone().transpose(),
                    bias.clone(),
                ));
                let got = values(fused::linear(x.clone(), w.clone(), bias.clone()));
                close(&case, got, want, 1e-5);

                let r = random([rows, d_out], seed + 3, 1.0);
                let grads = |x: &Tensor<Ad, 2>,
                             w: &Tensor<Ad, 2>,
                             b: &Option<Tensor<Ad, 1>>,
                             out: Tensor<Ad, 2>| {
                    let g = (out * Tensor::from_inner(r.clone())).sum().backward();
                    let mut found = vec![values(x.grad(&g).unwrap()), values(w.grad(&g).unwrap())];
                    found.extend(b.as_ref().map(|b| values(b.grad(&g).unwrap())));
                    found
                };
                let (xa, wa, ba) = (ad(&x), ad(&w), bias.as_ref().map(ad));
                let got = grads(
                    &xa,
                    &wa,
                    &ba,
                    fused::linear(xa.clone(), wa.clone(), ba.clone()),
                );
                let (xr, wr, br) = (ad(&x), ad(&w), bias.as_ref().map(ad));
                let burns =
                    burn::tensor::module::linear(xr.clone(), wr.clone().transpose(), br.clone());
                let want = grads(&xr, &wr, &br, burns);
                let formula = reference::linear_backward::<Flex>(
                    prim(x.clone()),
                    prim(w.clone()),
                    prim(r.clone()),
                    [true, true, bias.is_some()],
                );
                let [dx, dw, db] = formula;
                let mut formula = vec![
                    values(tensor::<Flex, 2>(dx.unwrap())),
                    values(tensor::<Flex, 2>(dw.unwrap())),
                ];
                formula.extend(db.map(|db| values(tensor::<Flex, 1>(db))));
                assert_eq!((got.len(), formula.len()), (want.len(), want.len()));
                for (k, name) in ["dx", "dW", "db"].iter().enumerate().take(want.len()) {
                    close(
                        &format!("{case} {name}"),
                        got[k].clone(),
                        want[k].clone(),
                        1e-5,
                    );
                    let composed = format!("{case} composed {name}");
                    close(&composed, formula[k].clone(), want[k].clone(), 1e-5);
                }
            }
        }
    }
}

/// Batch norm (batch statistics) against the composed op, forward, statistics and the
/// gradients of x, weight and bias, on [N, C, S] shapes: the head's [N, C] (S 1), two
/// samples of two values (with two values per channel alone, dx is 0 up to eps and has no
/// relative measure), odd channel and spatial sizes, and a map larger than a parallel task;
/// and on given statistics (evaluation) against the composed affine.
#[test]
fn batch_norm_matches_the_composed_op_and_its_gradients() {
    for (i, [n, c, s]) in [[7, 5, 1], [2, 3, 2], [3, 9, 49], [4, 16, 1031]]
        .into_iter()
        .enumerate()
    {
        let seed = 500 + 10 * i as u64;
        // an offset that a one-pass variance would lose digits to
        let x = (random([n, c * s], seed, 3.0) + 5.0).reshape([n, c, s]);
        let w = random([1, c], seed + 1, 2.0).reshape([c]);
        let b = random([1, c], seed + 2, 1.0).reshape([c]);
        let case = format!("[{n}, {c}, {s}]");
        let want =
            reference::batch_norm::<Flex>(prim(x.clone()), prim(w.clone()), prim(b.clone()), 1e-5);
        let (y, mean, var) = fused::batch_norm(x.clone(), w.clone(), b.clone(), 1e-5);
        close(
            &format!("batch norm {case}"),
            values(y),
            values(tensor::<Flex, 3>(want.y)),
            1e-5,
        );
        close(
            &format!("mean {case}"),
            values(mean),
            values(tensor::<Flex, 1>(want.mean)),
            1e-5,
        );
        close(
            &format!("var {case}"),
            values(var),
            values(tensor::<Flex, 1>(want.var)),
            1e-5,
        );

        let r = random([n, c * s], seed + 3, 1.0).reshape([n, c, s]);
        let grads = |fused_op: bool| {
            let (xa, wa, ba) = (ad(&x), ad(&w), ad(&b));
            let y = if fused_op {
                fused::batch_norm(xa.clone(), wa.clone(), ba.clone(), 1e-5).0
            } else {
                let out = reference::batch_norm::<Ad>(
                    prim(xa.clone()),
                    prim(wa.clone()),
                    prim(ba.clone()),
                    1e-5,
                );
                tensor::<Ad, 3>(out.y)
            };
            let g = (y * Tensor::from_inner(r.clone())).sum().backward();
            [
                values(xa.grad(&g).unwrap()),
                values(wa.grad(&g).unwrap()),
                values(ba.grad(&g).unwrap()),
            ]
        };
        let (got, want) = (grads(true), grads(false));
        for ((what, got), want) in ["dx", "dw", "db"].iter().zip(got).zip(want) {
            close(&format!("batch norm {what} {case}"), got, want, 1e-5);
        }

        let scale = random([1, c], seed + 4, 2.0).reshape([c]);
        let shift = random([1, c], seed + 5, 2.0).reshape([c]);
        let want = reference::channel_affine::<Flex>(
            prim(x.clone()),
            prim(scale.clone()),
            prim(shift.clone()),
        );
        let got = fused::channel_affine(x.clone(), scale, shift);
        close(
            &format!("affine {case}"),
            values(got),
            values(tensor::<Flex, 3>(want)),
            1e-6,
        );
    }
}

/// `run` on a rayon pool of `threads`.
fn on_threads<T: Send>(threads: usize, run: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(run)
}

/// A ResNet's step (its batch norms reduce over samples and channels in parallel) gives the
/// same bits on 1 and 2 threads.
#[test]
fn a_resnet_training_step_is_bit_identical_for_one_and_two_threads() {
    let cfg = Config::parse(
        "[model]\narch = \"resnet\"\nresnet_layers = [1, 1, 1, 1]\nresnet_width = 4\n\
         img_size = 32\nout_dim = 64\nhead_hidden_dim = 32\nhead_bottleneck_dim = 16\n\
         use_bn_in_head = true\n[optim]\noptimizer = \"sgd\"\n\
         [data]\nbatch_size = 4\nglobal_crop_size = 32\nlocal_crop_size = 32\nlocal_crops_number = 2",
        "test",
        &[],
    )
    .unwrap();
    let run = || {
        let device = Default::default();
        let mut models = Models::<Ad, ResNet<Ad>>::new(&cfg, &device);
        let schedules = Schedules::new(&cfg, 10, cfg.data.batch_size);
        for step in 0..2 {
            let images = Images {
                globals: random([8, 3 * 32 * 32], 40 + step, 2.0).reshape([8, 3, 32, 32]),
                locals: Some(random([8, 3 * 32 * 32], 50 + step, 2.0).reshape([8, 3, 32, 32])),
                n_globals: 8,
                n_locals: 8,
                next: Default::default(),
            };
            let h = schedules.at(step + 20, 2);
            (models, _) = dino_step(models, images, &h, &mut OneDevice, &mut |_| {}).unwrap();
        }
        let mut all = params::to_host(&params::collect(&models.student.valid()));
        all.extend(
            params::to_host(&params::collect(&models.teacher))
                .into_iter()
                .map(|(k, v)| (format!("teacher.{k}"), v)),
        );
        all
    };
    let (one, two) = (on_threads(1, run), on_threads(2, run));
    assert_eq!(one, two, "a tensor differs between 1 and 2 threads");
    assert!(one.contains_key("teacher.backbone.layer4.0.bn3.running_var"));
}
