//! Exactness against the reference (PyTorch/timm, `tools/gen-model-fixtures.py`): the ViT at
//! three resolutions (positional-embedding interpolation), its last attention map, the DINO
//! head, the loss and its gradient, the centre update, AdamW with changing lr/wd, per-tensor
//! clipping and the schedules. Also the recipe's decay groups and the frozen last layer.

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::module::{AutodiffModule, Module, Param};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};
use dino_stream::checkpoint::{HostTensors, read_tensors};
use dino_stream::config::ModelConfig;
use dino_stream::device::Cpu;
use dino_stream::loss::DinoLoss;
use dino_stream::model::{
    Backbone, Dino, DinoHead, HeadConfig, Init, Norm, VisionTransformer, VitConfig,
};
use dino_stream::optim::{Gradients, Optimizer, Rule, clip_norm, decays};
use dino_stream::params;
use dino_stream::schedule::{Cosine, TeacherTemp};
use dino_stream::train::step::cancel_gradients_last_layer;

type Inner = <Cpu as AutodiffBackend>::InnerBackend;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/model")
}

fn reference() -> HostTensors {
    read_tensors(&fixture_dir().join("reference.safetensors")).unwrap()
}

fn json() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture_dir().join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn tensor<const D: usize>(r: &HostTensors, name: &str) -> Tensor<Inner, D> {
    let (shape, values) = &r[name];
    let shape: [usize; D] = shape.clone().try_into().unwrap();
    Tensor::from_data(TensorData::new(values.clone(), shape), &Default::default())
}

pub fn values<B: burn::tensor::backend::Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec().unwrap()
}

/// max |a - b| / scale, with the element counts checked; printed for the record
/// (`cargo test --test model -- --nocapture`).
pub fn max_diff(a: &[f32], b: &[f32], scale: f32) -> f32 {
    assert_eq!(a.len(), b.len());
    let diff = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / scale)
        .fold(0.0, f32::max);
    eprintln!("max diff {diff:.3e} over {} values", a.len());
    diff
}

/// The reference tensors under `prefix`, renamed by `rename`.
fn subset(r: &HostTensors, prefix: &str, rename: impl Fn(&str) -> String) -> HostTensors {
    r.iter()
        .filter_map(|(k, v)| k.strip_prefix(prefix).map(|k| (rename(k), v.clone())))
        .collect()
}

fn reference_vit(r: &HostTensors) -> VisionTransformer<Inner> {
    let cfg = VitConfig {
        embed_dim: 48,
        depth: 2,
        num_heads: 3,
        mlp_ratio: 4,
        patch_size: 8,
        img_size: 32,
    };
    let device = Default::default();
    let vit = VisionTransformer::new(&cfg, &mut Init::new(0), &device);
    params::load(vit, &subset(r, "vit.", str::to_string), &device).unwrap()
}

/// The crops go to the device as u8 and are cast and normalized there: equal to
/// (x / 255 - mean) / std computed on the host, NHWC -> NCHW.
#[test]
fn images_are_normalized_on_the_device_as_on_the_host() {
    let (n, hh, ww) = (3, 5, 7);
    let bytes: Vec<u8> = (0..n * hh * ww * 3).map(|i| (i * 37 % 256) as u8).collect();
    let got = values(dino_stream::images::to_device::<Inner>(
        &bytes,
        [n, hh, ww, 3],
        &Default::default(),
    ));
    let (mean, std) = ([0.485f32, 0.456, 0.406], [0.229f32, 0.224, 0.225]);
    let mut want = Vec::new();
    for i in 0..n {
        for c in 0..3 {
            for p in 0..hh * ww {
                let x = bytes[(i * hh * ww + p) * 3 + c] as f32;
                want.push((x / 255.0 - mean[c]) / std[c]);
            }
        }
    }
    assert_eq!(got.len(), want.len());
    let worst = max_diff(&got, &want, 1.0);
    assert!(worst <= 1e-6, "max difference {worst:e}");
}

#[test]
fn vit_matches_timm_and_dino_interpolation_at_three_resolutions() {
    let r = reference();
    let vit = reference_vit(&r);
    for res in [32, 16, 48] {
        let x = tensor::<4>(&r, &format!("x{res}"));
        let tokens = values(vit.forward_tokens(x.clone(), None));
        let diff = max_diff(&tokens, &r[&format!("tokens{res}")].1, 1.0);
        assert!(diff <= 1e-4, "{res} px: tokens differ by {diff}");
        let cls = values(vit.forward(x, None, &mut Norm::Running));
        let diff = max_diff(&cls, &r[&format!("cls{res}")].1, 1.0);
        assert!(diff <= 1e-4, "{res} px: CLS differs by {diff}");
    }
}

/// The official `get_intermediate_layers(x, n)`: block i's output through the final norm,
/// for the last n blocks. Block 0's equals the output of the same ViT cut after block 0,
/// and the last one is the network's own feature.
#[test]
fn intermediate_features_are_each_blocks_cls_through_the_final_norm() {
    let r = reference();
    let vit = reference_vit(&r);
    let cut = {
        let cfg = VitConfig {
            embed_dim: 48,
            depth: 1,
            num_heads: 3,
            mlp_ratio: 4,
            patch_size: 8,
            img_size: 32,
        };
        let device = Default::default();
        let one = VisionTransformer::new(&cfg, &mut Init::new(0), &device);
        let first_block = subset(&r, "vit.", str::to_string)
            .into_iter()
            .filter(|(k, _)| !k.starts_with("blocks.1."))
            .collect();
        params::load(one, &first_block, &device).unwrap()
    };
    for res in [32, 48] {
        let x = tensor::<4>(&r, &format!("x{res}"));
        let layers = vit.intermediate_features(x.clone(), 2);
        assert_eq!(layers.len(), 2);
        assert_eq!(
            values(layers[0].clone()),
            values(cut.forward(x.clone(), None, &mut Norm::Running))
        );
        assert_eq!(
            values(layers[1].clone()),
            values(vit.forward(x.clone(), None, &mut Norm::Running))
        );
        let last = vit.intermediate_features(x.clone(), 1);
        assert_eq!(last.len(), 1);
        assert_eq!(values(last[0].clone()), values(layers[1].clone()));
        // more layers than blocks: all of them, as the official slicing gives
        assert_eq!(vit.intermediate_features(x, 5).len(), 2);
    }
}

#[test]
fn last_attention_matches() {
    let r = reference();
    let vit = reference_vit(&r);
    let attn = values(vit.last_attention(tensor::<4>(&r, "x32")));
    let diff = max_diff(&attn, &r["attn32"].1, 1.0);
    assert!(diff <= 1e-5, "attention differs by {diff}");
}

#[test]
fn dino_head_matches_with_and_without_learned_g() {
    let r = reference();
    let device = Default::default();
    let cfg = HeadConfig {
        out_dim: 32,
        hidden_dim: 64,
        bottleneck_dim: 16,
        norm_last_layer: false,
        use_bn: false,
    };
    // the official Sequential indices 0, 2, 4 are our layers 0, 1, 2
    let rename = |k: &str| match k.strip_prefix("mlp.") {
        Some(rest) => {
            let (i, field) = rest.split_once('.').unwrap();
            format!("mlp.{}.{field}", i.parse::<usize>().unwrap() / 2)
        }
        None => k.to_string(),
    };
    let weights = subset(&r, "head.", rename);
    let head = DinoHead::<Inner>::new(&cfg, 48, &mut Init::new(0), &device);
    let head = params::load(head, &weights, &device).unwrap();
    let out = values(head.forward(tensor::<2>(&r, "head_in"), &mut Norm::Running));
    let diff = max_diff(&out, &r["head_out"].1, 1.0);
    assert!(diff <= 1e-5, "head output differs by {diff}");

    let mut ones = weights.clone();
    ones.get_mut("last_layer.weight_g").unwrap().1.fill(1.0);
    let frozen = DinoHead::<Inner>::new(
        &HeadConfig {
            norm_last_layer: true,
            ..cfg
        },
        48,
        &mut Init::new(0),
        &device,
    );
    let frozen = params::load(frozen, &ones, &device).unwrap();
    let out = values(frozen.forward(tensor::<2>(&r, "head_in"), &mut Norm::Running));
    let diff = max_diff(&out, &r["head_out_g1"].1, 1.0);
    assert!(
        diff <= 1e-5,
        "norm_last_layer head output differs by {diff}"
    );
}

#[test]
fn loss_gradient_and_center_match() {
    let r = reference();
    let j = json();
    let teacher_temp = j["loss"]["teacher_temp"].as_f64().unwrap();
    let device = Default::default();
    let mut loss = DinoLoss::<Inner>::new(32, 0.1, 0.9, &device);
    loss.center = tensor::<2>(&r, "center");
    let student = Tensor::<Cpu, 2>::from_inner(tensor::<2>(&r, "student_out")).require_grad();
    let targets = loss.teacher_targets(tensor::<2>(&r, "teacher_out"), teacher_temp);
    let value = loss.forward(student.clone(), Tensor::from_inner(targets));
    let expected = r["loss"].1[0];
    let got = values(value.clone())[0];
    eprintln!(
        "loss {got} vs {expected}: abs diff {:.3e}",
        (got - expected).abs()
    );
    assert!(
        ((got - expected) / expected).abs() <= 1e-5,
        "loss {got} vs {expected}"
    );
    let grads = value.backward();
    let grad = values(student.grad(&grads).unwrap());
    let scale = r["loss_grad_student"]
        .1
        .iter()
        .fold(0.0f32, |m, v| m.max(v.abs()));
    let diff = max_diff(&grad, &r["loss_grad_student"].1, scale);
    assert!(
        diff <= 1e-5,
        "gradient differs by {diff} of its max {scale}"
    );

    loss.update_center(DinoLoss::batch_center(tensor::<2>(&r, "teacher_out")));
    let diff = max_diff(&values(loss.center), &r["center_new"].1, 1.0);
    assert!(diff <= 1e-6, "centre differs by {diff}");
}

/// A module whose names put `w` in the decayed group and `b` (1-D) in the other.
#[derive(Module, Debug)]
struct Pair<B: burn::tensor::backend::Backend> {
    w: Param<Tensor<B, 2>>,
    b: Param<Tensor<B, 1>>,
}

#[test]
fn adamw_matches_torch_with_per_step_lr_and_weight_decay() {
    let r = reference();
    let mut pair = Pair::<Cpu> {
        w: Param::from_tensor(Tensor::from_inner(tensor::<2>(&r, "adamw.w0")).require_grad()),
        b: Param::from_tensor(Tensor::from_inner(tensor::<1>(&r, "adamw.b0")).require_grad()),
    };
    let mut adamw = Optimizer::new(Rule::AdamW);
    for k in 0..3 {
        // a loss whose gradient is exactly the reference gradient
        let gw = Tensor::from_inner(tensor::<2>(&r, &format!("adamw.grad{k}.w")));
        let gb = Tensor::from_inner(tensor::<1>(&r, &format!("adamw.grad{k}.b")));
        let loss = (pair.w.val() * gw).sum() + (pair.b.val() * gb).sum();
        let grads = loss.backward();
        let (lr, weight_decay) = if k < 2 { (0.01, 0.04) } else { (0.005, 0.1) };
        let grads = Gradients::collect(&pair, &grads);
        pair = adamw.update(pair, grads, lr, weight_decay);
        for (name, got) in [("w", values(pair.w.val())), ("b", values(pair.b.val()))] {
            let diff = max_diff(&got, &r[&format!("adamw.{name}_after{k}")].1, 1.0);
            assert!(diff <= 1e-6, "step {k}, {name}: differs by {diff}");
        }
    }
    assert_eq!(adamw.state["w"].step, 3);
}

#[test]
fn per_tensor_clipping_matches() {
    let r = reference();
    for name in ["clip.g0", "clip.g1"] {
        let g = tensor::<1>(
            &HostTensors::from([("g".into(), (vec![r[name].1.len()], r[name].1.clone()))]),
            "g",
        );
        let got = values(clip_norm(g, 3.0));
        let diff = max_diff(&got, &r[&format!("{name}_out")].1, 1.0);
        assert!(diff <= 1e-6, "{name}: differs by {diff}");
    }
    // a gradient under the cap is left bit-identical
    let small = vec![0.5f32, -0.25, 1.0];
    let got = values(clip_norm(
        Tensor::<Inner, 1>::from_floats(small.as_slice(), &Default::default()),
        3.0,
    ));
    assert_eq!(got, small);
}

#[test]
fn schedules_match_the_official_formulas() {
    let j = json();
    let args = &j["sched_args"];
    for key in ["sched_lr", "sched_wd", "sched_momentum"] {
        let a = &args[key];
        let f = |k: &str| a[k].as_f64().unwrap();
        let u = |k: &str| a[k].as_u64().unwrap();
        let schedule = Cosine::new(
            f("base_value"),
            f("final_value"),
            u("epochs"),
            u("niter_per_ep"),
            u("warmup_epochs"),
        );
        let expected: Vec<f64> = j[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(expected.len() as u64, schedule.total);
        for (it, want) in expected.iter().enumerate() {
            let got = schedule.at(it as u64);
            assert!((got - want).abs() <= 1e-12, "{key}[{it}]: {got} vs {want}");
        }
    }
    let a = &args["sched_teacher_temp"];
    let temp = TeacherTemp {
        warmup_temp: a["warmup_teacher_temp"].as_f64().unwrap(),
        temp: a["teacher_temp"].as_f64().unwrap(),
        warmup_epochs: a["warmup_teacher_temp_epochs"].as_u64().unwrap(),
    };
    for (epoch, want) in j["sched_teacher_temp"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let got = temp.at_epoch(epoch as u64);
        assert!(
            (got - want.as_f64().unwrap()).abs() <= 1e-12,
            "epoch {epoch}: {got}"
        );
    }
}

fn small_dino(norm_last_layer: bool) -> Dino<Cpu, VisionTransformer<Cpu>> {
    let cfg = ModelConfig {
        arch: "custom".into(),
        embed_dim: Some(24),
        depth: Some(2),
        num_heads: Some(2),
        patch_size: 8,
        img_size: 16,
        out_dim: 16,
        head_hidden_dim: 32,
        head_bottleneck_dim: 8,
        norm_last_layer,
        ..Default::default()
    };
    Dino::new(&cfg, 3, &Default::default())
}

#[test]
fn decay_groups_follow_the_recipe() {
    let model = small_dino(false);
    let named = params::collect(&model);
    let (decayed, kept): (Vec<_>, Vec<_>) = named
        .iter()
        .partition(|(name, flat)| decays(name, flat.shape.len()));
    let decayed: Vec<&str> = decayed.iter().map(|(n, _)| n.as_str()).collect();
    for name in [
        "backbone.cls_token",
        "backbone.pos_embed",
        "backbone.patch_embed.proj.weight",
        "backbone.blocks.0.attn.qkv.weight",
        "head.mlp.0.weight",
        "head.last_layer.weight_v",
        "head.last_layer.weight_g",
    ] {
        assert!(decayed.contains(&name), "{name} must be decayed");
    }
    for (name, flat) in kept {
        assert!(
            name.ends_with(".bias") || flat.shape.len() == 1,
            "{name} must be decayed"
        );
    }
    assert!(named.keys().any(|n| n == "backbone.norm.weight"));
    assert!(!decayed.contains(&"backbone.norm.weight"));
    assert!(!decayed.contains(&"backbone.blocks.1.mlp.fc2.bias"));
}

#[test]
fn frozen_last_layer_keeps_weights_and_optimizer_state() {
    let device = Default::default();
    for norm_last_layer in [true, false] {
        let mut model = small_dino(norm_last_layer);
        let before = params::to_host(&params::collect(&model.valid()));
        let x = Tensor::<Cpu, 4>::from_data(
            TensorData::new(
                (0..2 * 3 * 16 * 16)
                    .map(|i| ((i % 17) as f32 / 8.0) - 1.0)
                    .collect::<Vec<_>>(),
                [2, 3, 16, 16],
            ),
            &device,
        );
        let mut adamw = Optimizer::new(Rule::AdamW);
        for freeze in [true, false] {
            let out = model.forward(vec![(x.clone(), None)], &mut Norm::Running);
            let mut grads = Gradients::collect(&model, &out.square().mean().backward());
            // the trainer's transforms, in its order
            if freeze {
                cancel_gradients_last_layer(&mut grads);
            }
            grads.clip_per_tensor(3.0);
            model = adamw.update(model, grads, 0.01, 0.04);
            let after = params::to_host(&params::collect(&model.valid()));
            for (name, (_, values)) in &after {
                let moved = values != &before[name].1;
                let in_last = name.contains("last_layer");
                let g_frozen = norm_last_layer && name == "head.last_layer.weight_g";
                if freeze && in_last || g_frozen {
                    assert!(!moved, "{name} moved (freeze {freeze})");
                    assert!(
                        !adamw.state.contains_key(name),
                        "{name} has optimizer state"
                    );
                } else {
                    assert!(moved, "{name} did not move (freeze {freeze})");
                }
            }
        }
        // the last layer's own step count starts when it is first updated
        assert_eq!(adamw.state["head.last_layer.weight_v"].step, 1);
        assert_eq!(adamw.state["head.mlp.0.weight"].step, 2);
    }
}

#[test]
fn teacher_copy_is_exact_and_init_is_deterministic() {
    let a = params::to_host(&params::collect(&small_dino(true).valid()));
    let b = params::to_host(&params::collect(&small_dino(true)));
    assert_eq!(a, b);
    let names: BTreeMap<_, _> = a.iter().map(|(k, (s, _))| (k.clone(), s.clone())).collect();
    assert_eq!(names["backbone.pos_embed"], vec![1, 5, 24]);
    assert_eq!(names["head.last_layer.weight_g"], vec![16, 1]);
}

#[test]
fn backbone_names_and_shapes_are_timms_for_every_arch() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/timm/vit_keys.json");
    let fixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let archs = fixture["archs"].as_object().unwrap();
    assert_eq!(archs.len(), 6);
    for (key, expected) in archs {
        let (arch, patch) = key.split_once('/').unwrap();
        let cfg = VitConfig::named(arch, patch.parse().unwrap(), 224).unwrap();
        let vit = VisionTransformer::<Inner>::new(&cfg, &mut Init::new(0), &Default::default());
        let ours: BTreeMap<String, Vec<usize>> = params::collect(&vit)
            .into_iter()
            .map(|(k, flat)| (k, flat.shape))
            .collect();
        let theirs: BTreeMap<String, Vec<usize>> = expected
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, shape)| {
                (
                    k.clone(),
                    shape
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|d| d.as_u64().unwrap() as usize)
                        .collect(),
                )
            })
            .collect();
        assert_eq!(ours, theirs, "{key}");
    }
}
