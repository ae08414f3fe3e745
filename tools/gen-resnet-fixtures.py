#!/usr/bin/env python3
"""Generate the ResNet reference fixtures: torchvision key list, a small Bottleneck ResNet's
forward/backward/BatchNorm statistics, SGD and LARS steps, and import files in DINO's formats.

Writes to tests/fixtures/resnet/:
  resnet50_keys.json           torchvision.models.resnet50() state-dict entries without fc.*, in
                               state-dict order: [{"name", "shape", "dtype"}] (built on the meta
                               device: no weights, nothing downloaded)
  small.safetensors            a small ResNet from torchvision's own Bottleneck and
                               ResNet._make_layer (width 4, layers [1, 2, 1, 1], 128 features):
                               its state, an input batch, eval and train features, the gradients
                               of one train backward, the BatchNorm running statistics after one
                               and after two train forwards
  optim.safetensors            3 steps of torch.optim.SGD (momentum 0.9) and of DINO's LARS
                               (utils.LARS semantics) on 5 small parameters, with main_dino.py's
                               two parameter groups and per-step lr / weight decay
  backbone.pth                 torch.save of the small ResNet's state dict, the layout of the
                               released dino_resnet50_pretrain.pth (torchvision keys, no fc)
  full_checkpoint.pth          main_dino.py's checkpoint.pth for that backbone with the official
                               DINOHead(use_bn=True): {student, teacher, optimizer, epoch, args,
                               dino_loss}
  released_full.pth            a full checkpoint like the released
                               dino_resnet50_pretrain_full_checkpoint.pth, whose head is not a
                               DINOHead (2-layer MLP with BatchNorm, plain Linear last layer)
  import_reference.safetensors the student backbone and teacher head of full_checkpoint.pth and
                               its centre (float32); the teacher backbone is small.safetensors'
                               state.*
  reference.json               versions, config, tensor lists, checks, sha256 of every file
  README.md

Everything is float32 on CPU with fixed seeds, one thread and deterministic algorithms.

Pinned reference versions (the same as the other fixture generators; other versions are
refused unless --allow-version-mismatch is given):
    torch 2.15.0, torchvision 0.29.2, numpy 2.4.6, timm 1.0.31, safetensors 0.8.0
    (Python 3.11)

How the committed fixtures were produced (run from the repo root):

    python3 tools/gen-resnet-fixtures.py

Run with any python3, the script creates (or reuses) the venv
~/.cache/dino-stream/venv-fixtures (see tools/pinned_venv.py), installs the pinned versions
into it from PyPI if they are missing, and re-runs itself with the venv's interpreter.
Nothing downloads model weights. --out defaults to tests/fixtures/resnet next to this
script. Re-running is deterministic: the same versions on the same machine give
byte-identical files, the .pth zip archives included (torch writes no timestamps, and the
archive's folder name is the file's base name, not its path: torch.save is given the path).
"""
from __future__ import annotations

import argparse
import os
import sys

PINNED = {
    "torch": "2.15.0",
    "torchvision": "0.29.2",
    "numpy": "2.4.6",
    "timm": "1.0.31",
    "safetensors": "0.8.0",
}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "tests", "fixtures", "resnet")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from pinned_venv import bootstrap
    bootstrap(__file__, PINNED, sys.argv[1:])

# Heavy imports only after the bootstrap.
import hashlib  # noqa: E402
import importlib.metadata as md  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import pickle  # noqa: E402
from functools import partial  # noqa: E402

import numpy as np  # noqa: E402
import safetensors  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torchvision  # noqa: E402
import warnings  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from torchvision.models.resnet import Bottleneck  # noqa: E402

from dino_torch import LARS, ResNetBackbone  # noqa: E402

FORMAT = 1
# The official head uses the deprecated weight_norm on purpose (see DINOHead).
warnings.filterwarnings("ignore", message=r".*weight_norm.* is deprecated", category=FutureWarning)

# The small ResNet: torchvision's Bottleneck (expansion 4), base width W instead of 64.
W = 4
RESNET_CFG = dict(block="torchvision.models.resnet.Bottleneck", width=W, layers=[1, 2, 1, 1],
                  planes=[W, 2 * W, 4 * W, 8 * W], strides=[1, 2, 2, 2], groups=1,
                  width_per_group=64, stem="conv1 7x7/2 pad 3, bn1, relu, maxpool 3/2 pad 1",
                  pool="AdaptiveAvgPool2d(1), flatten", features=8 * W * Bottleneck.expansion,
                  bn_eps=1e-5, bn_momentum=0.1)
FEATURES = RESNET_CFG["features"]
INPUT_SHAPE = (4, 3, 48, 48)    # layer3 -> layer4: 3x3 -> 2x2
INPUT2_SHAPE = (4, 3, 40, 40)
BN_NUM_BATCHES = 3
BN_INIT = {"weight": "U(0.5, 1.5)", "bias": "N(0, 0.1)", "running_mean": "N(0, 0.1)",
           "running_var": "U(0.5, 1.5)", "num_batches_tracked": BN_NUM_BATCHES}

# The optimizer fixture.
OPT_SHAPES = {"a.weight": (5, 7), "a.bias": (5,), "c.weight": (3, 2, 3, 3), "n.weight": (6,),
              "z.weight": (4, 4)}
OPT_STEPS = dict(lr=[0.1, 0.05, 0.02], weight_decay=[1e-4, 5e-4, 1e-3])
SGD_MOMENTUM = 0.9
LARS_CFG = dict(momentum=0.9, eta=0.001)

# The import files.
HEAD_CFG = dict(in_dim=FEATURES, hidden_dim=32, bottleneck_dim=16, out_dim=64, nlayers=3,
                use_bn=True, norm_last_layer=True)
RELEASED_HEAD_CFG = dict(in_dim=FEATURES, hidden_dim=32, mlp_out=64, out_dim=48)
EPOCH = 1
TEACHER_NOISE_STD = 0.01  # student = teacher + this noise on float parameters
# The optimizer in full_checkpoint.pth: main_dino's first iteration (warm-up lr 0, weight
# decay args.weight_decay on group 0) with seeded N(0, 1) gradients, so it has real momentum
# buffers and the student keeps exactly its values.
CKPT_STEP = dict(lr=0.0, weight_decay=1e-4, momentum=0.9)
# A few of main_dino's arguments (the ResNet-50 recipe of the DINO README); arch names the
# official architecture only: the fixture's backbone is the small one above.
ARGS = dict(arch="resnet50", out_dim=HEAD_CFG["out_dim"], norm_last_layer=True,
            use_bn_in_head=True, momentum_teacher=0.996, warmup_teacher_temp=0.04,
            teacher_temp=0.07, use_fp16=False, weight_decay=1e-4, weight_decay_end=1e-4,
            clip_grad=0.0, lr=0.03, epochs=100, batch_size_per_gpu=4, optimizer="sgd",
            global_crops_scale=(0.14, 1.0), local_crops_number=6, local_crops_scale=(0.05, 0.14),
            seed=0)
RELEASED_ARGS = {**ARGS, "out_dim": RELEASED_HEAD_CFG["out_dim"]}

# One generator per purpose, so changing one never moves another's values.
(SEED_RESNET, SEED_BN, SEED_INPUT, SEED_INPUT2, SEED_UPSTREAM, SEED_OPT_INIT, SEED_OPT_GRAD,
 SEED_HEAD, SEED_STUDENT_NOISE, SEED_CENTER, SEED_CKPT_GRAD, SEED_RELEASED_HEAD,
 SEED_RELEASED_CENTER) = range(7001, 7014)


def gen(seed: int) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(seed)
    return g


def randn(g: torch.Generator, *shape, std: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=torch.float32) * std


def uniform(g: torch.Generator, *shape, lo: float, hi: float) -> torch.Tensor:
    return torch.rand(*shape, generator=g, dtype=torch.float32) * (hi - lo) + lo


# --------------------------------------------------------------------------
# The small ResNet
# --------------------------------------------------------------------------

def SmallResNet() -> nn.Module:
    """The fixture's network: torchvision's blocks and names, base width W, no fc."""
    return ResNetBackbone(W, RESNET_CFG["layers"])


def torchvision_init(model: nn.Module, g: torch.Generator) -> None:
    """ResNet.__init__'s init loop (zero_init_residual=False), with a seeded generator."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=g)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)


def randomize_bn(model: nn.Module, g: torch.Generator) -> None:
    """Every BatchNorm's affine parameters and running statistics off their defaults."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.weight.copy_(uniform(g, n, lo=0.5, hi=1.5))
                m.bias.copy_(randn(g, n, std=0.1))
                m.running_mean.copy_(randn(g, n, std=0.1))
                m.running_var.copy_(uniform(g, n, lo=0.5, hi=1.5))
                m.num_batches_tracked.fill_(BN_NUM_BATCHES)


def make_resnet() -> SmallResNet:
    torch.manual_seed(0)  # the constructors' default init; overwritten below anyway
    model = SmallResNet()
    torchvision_init(model, gen(SEED_RESNET))
    randomize_bn(model, gen(SEED_BN))
    return model


def as_f32(sd: dict) -> dict:
    """A state dict as float32 contiguous clones (num_batches_tracked: int64 [] -> float32 [])."""
    return {k: v.detach().to(torch.float32).clone().contiguous() for k, v in sd.items()}


def bn_buffers(model: nn.Module) -> dict:
    return {k: v for k, v in model.state_dict().items()
            if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


# --------------------------------------------------------------------------
# Heads, wrappers, after facebookresearch/dino
# --------------------------------------------------------------------------

class DINOHead(nn.Module):
    """vision_transformer.py DINOHead with use_bn=True, nlayers=3: mlp = Linear, BatchNorm1d,
    GELU, Linear, BatchNorm1d, GELU, Linear; last_layer the old weight_norm(Linear, no bias),
    weight_g filled with 1. The trunc_normal_ init is left out: randomize_head overwrites it."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, bottleneck_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.GELU(),
                                 nn.Linear(hidden_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.GELU(),
                                 nn.Linear(hidden_dim, bottleneck_dim))
        # The deprecated API on purpose: keys last_layer.weight_g [out, 1] / weight_v [out, in].
        self.last_layer = nn.utils.weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        self.last_layer.weight_g.data.fill_(1)
        self.last_layer.weight_g.requires_grad = False  # norm_last_layer=True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1, p=2))


class ReleasedHead(nn.Module):
    """The head of the released ResNet-50 full checkpoint (not a DINOHead): Linear, BatchNorm1d,
    GELU, Linear, then a plain Linear last layer with a bias."""

    def __init__(self, in_dim: int, hidden_dim: int, mlp_out: int, out_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.GELU(),
                                 nn.Linear(hidden_dim, mlp_out))
        self.last_layer = nn.Linear(mlp_out, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(self.mlp(x))


def randomize_head(head: nn.Module, g: torch.Generator) -> dict:
    """Linear weights N(0, 1/sqrt(fan_in)), biases N(0, 0.1), BatchNorm1d as randomize_bn,
    weight_v N(0, 1/sqrt(fan_in)), weight_g left at 1. Returns name -> distribution."""
    kinds = {}
    with torch.no_grad():
        for name, m in head.named_modules():
            if isinstance(m, nn.BatchNorm1d):
                n = m.num_features
                m.weight.copy_(uniform(g, n, lo=0.5, hi=1.5))
                m.bias.copy_(randn(g, n, std=0.1))
                m.running_mean.copy_(randn(g, n, std=0.1))
                m.running_var.copy_(uniform(g, n, lo=0.5, hi=1.5))
                m.num_batches_tracked.fill_(BN_NUM_BATCHES)
                kinds.update({f"{name}.{k}": v for k, v in BN_INIT.items()})
            elif isinstance(m, nn.Linear):
                wname = "weight_v" if hasattr(m, "weight_v") else "weight"
                w = getattr(m, wname)
                w.copy_(randn(g, *w.shape, std=1.0 / math.sqrt(w.shape[1])))
                kinds[f"{name}.{wname}"] = f"N(0, 1/sqrt({w.shape[1]}))"
                if m.bias is not None:
                    m.bias.copy_(randn(g, *m.bias.shape, std=0.1))
                    kinds[f"{name}.bias"] = "N(0, 0.1)"
                if hasattr(m, "weight_g"):
                    kinds[f"{name}.weight_g"] = "1 (filled, frozen: norm_last_layer)"
    assert set(kinds) == set(head.state_dict()), set(head.state_dict()) ^ set(kinds)
    return kinds


class MultiCropWrapper(nn.Module):
    """utils.MultiCropWrapper, single crop size: backbone (fc already absent) then head."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class DDPLike(nn.Module):
    """Stands in for DistributedDataParallel: its state_dict prefixes every key with `module.`."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module


def get_params_groups(named_params) -> list:
    """utils.get_params_groups: no weight decay on biases and 1-d (norm) parameters."""
    regularized, not_regularized = [], []
    for name, param in named_params:
        if not param.requires_grad:
            continue
        if name.endswith(".bias") or len(param.shape) == 1:
            not_regularized.append(param)
        else:
            regularized.append(param)
    return [{"params": regularized}, {"params": not_regularized, "weight_decay": 0.0}]


def group_names(named_params) -> list:
    """The names in each get_params_groups group, in the same order."""
    reg, noreg = [], []
    for name, p in named_params:
        if p.requires_grad:
            (noreg if name.endswith(".bias") or p.ndim == 1 else reg).append(name)
    return [reg, noreg]


# --------------------------------------------------------------------------
# The parts
# --------------------------------------------------------------------------

def resnet50_keys() -> list:
    with torch.device("meta"):
        model = torchvision.models.resnet50()  # weights=None: nothing is downloaded
    return [{"name": k, "shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")}
            for k, v in model.state_dict().items() if not k.startswith("fc.")]


def small_resnet_tensors() -> tuple:
    """Returns (tensors for small.safetensors, the stored state as a state dict, checks)."""
    model = make_resnet()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    params = [k for k, _ in model.named_parameters()]
    bufs = list(bn_buffers(model))
    x = randn(gen(SEED_INPUT), *INPUT_SHAPE)
    x2 = randn(gen(SEED_INPUT2), *INPUT2_SHAPE)
    upstream = randn(gen(SEED_UPSTREAM), INPUT_SHAPE[0], FEATURES)
    checks = {}

    model.eval()
    with torch.no_grad():
        eval_features = model(x).clone()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())

    # First train forward and backward; the BatchNorm inputs are recorded to check the
    # running-statistics formula independently.
    model.train()
    seen = {}
    hooks = [m.register_forward_pre_hook(
        lambda mod, inp, name=name: seen.__setitem__(name, inp[0].detach().clone()))
        for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    xg = x.clone().requires_grad_(True)
    train_features = model(xg)
    for h in hooks:
        h.remove()
    (train_features * upstream).sum().backward()
    running1 = {k: v.clone() for k, v in bn_buffers(model).items()}
    worst = 0.0
    for name, inp in seen.items():
        n = inp.numel() // inp.shape[1]
        mean = inp.mean(dim=(0, 2, 3))
        var = inp.var(dim=(0, 2, 3), unbiased=True)
        want_mean = 0.9 * state[f"{name}.running_mean"] + 0.1 * mean
        want_var = 0.9 * state[f"{name}.running_var"] + 0.1 * var
        worst = max(worst, float((want_mean - running1[f"{name}.running_mean"]).abs().max()),
                    float((want_var - running1[f"{name}.running_var"]).abs().max()))
        assert n > 1 and int(running1[f"{name}.num_batches_tracked"]) == BN_NUM_BATCHES + 1
    checks["running_stats_vs_formula_max_abs_diff"] = worst
    assert worst < 1e-5, worst

    with torch.no_grad():
        train2_features = model(x2).clone()
    running2 = {k: v.clone() for k, v in bn_buffers(model).items()}
    assert int(running2["bn1.num_batches_tracked"]) == BN_NUM_BATCHES + 2

    t = {f"state.{k}": v for k, v in as_f32(state).items()}
    t["input"] = x
    t["input2"] = x2
    t["eval.features"] = eval_features
    t["train.features"] = train_features.detach().clone()
    t["train.upstream"] = upstream
    t["train.grad.input"] = xg.grad.clone()
    named = dict(model.named_parameters())
    for k in params:
        t[f"train.grad.{k}"] = named[k].grad.clone()
    t.update({f"train.running.{k}": v for k, v in as_f32(running1).items()})
    t["train2.features"] = train2_features
    t.update({f"train2.running.{k}": v for k, v in as_f32(running2).items()})
    assert len(bufs) == 3 * sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    checks["eval_minus_train_features_max_abs_diff"] = float((eval_features - train_features.detach()).abs().max())
    checks["features_shape"] = list(eval_features.shape)
    return t, state, checks


def optim_tensors() -> tuple:
    gi, gg = gen(SEED_OPT_INIT), gen(SEED_OPT_GRAD)
    init = {n: (torch.zeros(s) if n == "z.weight" else randn(gi, *s)) for n, s in OPT_SHAPES.items()}
    grads = []
    for step in range(3):
        gs = {}
        for n, s in OPT_SHAPES.items():
            gs[n] = randn(gg, *s)
            if n == "z.weight" and step == 1:
                gs[n] = torch.zeros(s)
        grads.append(gs)

    def run(kind: str) -> list:
        named = [(n, nn.Parameter(init[n].clone())) for n in OPT_SHAPES]
        groups = get_params_groups(named)
        opt = (torch.optim.SGD(groups, lr=0, momentum=SGD_MOMENTUM) if kind == "sgd"
               else LARS(groups))
        out = []
        for step in range(3):
            for i, pg in enumerate(opt.param_groups):
                pg["lr"] = OPT_STEPS["lr"][step]
                if i == 0:  # only the first group is regularized
                    pg["weight_decay"] = OPT_STEPS["weight_decay"][step]
            for n, p in named:
                p.grad = grads[step][n].clone()
            opt.step()
            out.append({n: p.detach().clone() for n, p in named})
        return out

    sgd, lars = run("sgd"), run("lars")

    # An independent float32 re-computation of both, as a check.
    def manual(kind: str) -> list:
        p = {n: v.clone() for n, v in init.items()}
        buf = {}
        out = []
        reg = group_names([(n, nn.Parameter(v)) for n, v in init.items()])[0]
        for step in range(3):
            lr, wd = OPT_STEPS["lr"][step], OPT_STEPS["weight_decay"][step]
            for n in OPT_SHAPES:
                g = grads[step][n]
                if kind == "sgd":
                    d = g + wd * p[n] if n in reg else g
                    buf[n] = d.clone() if n not in buf else SGD_MOMENTUM * buf[n] + d
                else:
                    d = g
                    if p[n].ndim != 1:
                        d = d + wd * p[n]
                        pn, un = float(p[n].norm()), float(d.norm())
                        d = d * (LARS_CFG["eta"] * pn / un if pn > 0 and un > 0 else 1.0)
                    buf[n] = LARS_CFG["momentum"] * buf.get(n, torch.zeros_like(g)) + d
                p[n] = p[n] - lr * buf[n]
            out.append({n: v.clone() for n, v in p.items()})
        return out

    checks = {}
    for kind, got in (("sgd", sgd), ("lars", lars)):
        ref = manual(kind)
        diff = max(float((got[s][n] - ref[s][n]).abs().max()) for s in range(3) for n in OPT_SHAPES)
        checks[f"{kind}_vs_manual_max_abs_diff"] = diff
        assert diff < 1e-5, (kind, diff)

    t = {f"init.{n}": v for n, v in init.items()}
    for step in range(3):
        t.update({f"grad.{step}.{n}": v for n, v in grads[step].items()})
        t.update({f"sgd.{step}.{n}": v for n, v in sgd[step].items()})
        t.update({f"lars.{step}.{n}": v for n, v in lars[step].items()})
    t["lr"] = torch.tensor(OPT_STEPS["lr"], dtype=torch.float32)
    t["wd"] = torch.tensor(OPT_STEPS["weight_decay"], dtype=torch.float32)
    groups = group_names([(n, nn.Parameter(v)) for n, v in init.items()])
    return t, checks, groups


def make_student(teacher: MultiCropWrapper, head_factory, g: torch.Generator) -> MultiCropWrapper:
    """teacher's values plus N(0, TEACHER_NOISE_STD) on every trainable float parameter;
    buffers (and the frozen weight_g) copied."""
    student = MultiCropWrapper(SmallResNet(), head_factory())
    student.load_state_dict(teacher.state_dict())
    with torch.no_grad():
        for _, p in student.named_parameters():
            if p.requires_grad:
                p.add_(randn(g, *p.shape, std=TEACHER_NOISE_STD))
    return student


def checkpoints(state: dict) -> tuple:
    """Returns (backbone state dict, full checkpoint, released checkpoint, import reference,
    head init kinds)."""
    h, rh = HEAD_CFG, RELEASED_HEAD_CFG

    def head_factory():
        return DINOHead(h["in_dim"], h["out_dim"], h["hidden_dim"], h["bottleneck_dim"])

    def released_factory():
        return ReleasedHead(rh["in_dim"], rh["hidden_dim"], rh["mlp_out"], rh["out_dim"])

    torch.manual_seed(0)
    teacher = MultiCropWrapper(SmallResNet(), head_factory())
    teacher.backbone.load_state_dict(state)
    head_init = randomize_head(teacher.head, gen(SEED_HEAD))
    teacher.requires_grad_(False)
    student = make_student(teacher, head_factory, gen(SEED_STUDENT_NOISE))
    student_ddp = DDPLike(student)
    opt = torch.optim.SGD(get_params_groups(student_ddp.named_parameters()), lr=0,
                          momentum=CKPT_STEP["momentum"])
    for i, pg in enumerate(opt.param_groups):
        pg["lr"] = CKPT_STEP["lr"]
        if i == 0:
            pg["weight_decay"] = CKPT_STEP["weight_decay"]
    before = {k: v.clone() for k, v in student.state_dict().items()}
    gg = gen(SEED_CKPT_GRAD)
    for p in student.parameters():
        if p.requires_grad:
            p.grad = randn(gg, *p.shape)
    opt.step()
    assert all(torch.equal(v, before[k]) for k, v in student.state_dict().items()), "lr 0 moved"
    for p in student.parameters():
        p.grad = None
    dino_loss = nn.Module()  # DINOLoss: its only state is the `center` buffer
    dino_loss.register_buffer("center", randn(gen(SEED_CENTER), 1, h["out_dim"], std=0.5))
    full = {
        "student": student_ddp.state_dict(),
        "teacher": teacher.state_dict(),
        "optimizer": opt.state_dict(),
        "epoch": EPOCH,
        "args": argparse.Namespace(**ARGS),
        "dino_loss": dino_loss.state_dict(),
    }

    torch.manual_seed(0)
    r_teacher = MultiCropWrapper(SmallResNet(), released_factory())
    r_teacher.backbone.load_state_dict(state)
    randomize_head(r_teacher.head, gen(SEED_RELEASED_HEAD))
    r_teacher.requires_grad_(False)
    r_student = MultiCropWrapper(SmallResNet(), released_factory())
    r_student.load_state_dict(r_teacher.state_dict())
    r_student.backbone.load_state_dict(student.backbone.state_dict())  # the same student backbone
    g = gen(SEED_RELEASED_HEAD + 100)
    with torch.no_grad():
        for p in r_student.head.parameters():
            p.add_(randn(g, *p.shape, std=TEACHER_NOISE_STD))
    r_student_ddp = DDPLike(r_student)
    r_opt = torch.optim.SGD(get_params_groups(r_student_ddp.named_parameters()), lr=0,
                            momentum=CKPT_STEP["momentum"])
    r_opt.param_groups[0]["weight_decay"] = CKPT_STEP["weight_decay"]
    r_loss = nn.Module()
    r_loss.register_buffer("center", randn(gen(SEED_RELEASED_CENTER), 1, rh["out_dim"], std=0.5))
    released = {
        "student": r_student_ddp.state_dict(),
        "teacher": r_teacher.state_dict(),
        "optimizer": r_opt.state_dict(),  # never stepped: state {}, param_groups only
        "epoch": EPOCH,
        "args": argparse.Namespace(**RELEASED_ARGS),
        "dino_loss": r_loss.state_dict(),
    }

    ref = {f"student.{k}": v for k, v in as_f32(student.backbone.state_dict()).items()}
    ref.update({f"teacher_head.{k}": v for k, v in as_f32(teacher.head.state_dict()).items()})
    ref["center"] = dino_loss.center.clone()
    return teacher.backbone.state_dict(), full, released, ref, head_init


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------

def check_versions(allow: bool) -> dict:
    got = {"torch": torch.__version__.split("+")[0],
           "torchvision": md.version("torchvision").split("+")[0],
           "numpy": np.__version__, "timm": timm.__version__, "safetensors": safetensors.__version__}
    bad = {k: (got[k], PINNED[k]) for k in PINNED if got[k] != PINNED[k]}
    if bad and not allow:
        sys.exit(f"version mismatch (got, pinned): {bad}; pass --allow-version-mismatch to proceed")
    return {"python": sys.version.split()[0], "torch": torch.__version__,
            "torchvision": md.version("torchvision"), "numpy": np.__version__,
            "timm": timm.__version__, "safetensors": safetensors.__version__}


def sha256(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def same_tensors(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def verify(out: str, small: dict, state: dict, full: dict, released: dict, ref: dict,
           optim: dict) -> dict:
    """Reload every file the way an importer would and check it; returns facts for the JSON."""
    path = partial(os.path.join, out)
    facts = {}
    assert same_tensors(load_file(path("small.safetensors")), small)
    assert same_tensors(load_file(path("optim.safetensors")), optim)
    assert same_tensors(load_file(path("import_reference.safetensors")), ref)
    with torch.no_grad():
        sd = torch.load(path("backbone.pth"), weights_only=True)
        assert same_tensors(sd, state) and list(sd) == list(state)
        model = SmallResNet()
        model.load_state_dict(sd, strict=True)
        assert torch.equal(model.eval()(small["input"]), small["eval.features"])
        f32 = as_f32(sd)
        assert all(torch.equal(f32[k], small[f"state.{k}"]) for k in sd)

        for name, want, head_factory in (
                ("full_checkpoint.pth", full,
                 lambda: DINOHead(HEAD_CFG["in_dim"], HEAD_CFG["out_dim"], HEAD_CFG["hidden_dim"],
                                  HEAD_CFG["bottleneck_dim"])),
                ("released_full.pth", released,
                 lambda: ReleasedHead(RELEASED_HEAD_CFG["in_dim"], RELEASED_HEAD_CFG["hidden_dim"],
                                      RELEASED_HEAD_CFG["mlp_out"], RELEASED_HEAD_CFG["out_dim"]))):
            ck = torch.load(path(name), weights_only=False)
            assert list(ck) == ["student", "teacher", "optimizer", "epoch", "args", "dino_loss"]
            assert ck["epoch"] == EPOCH and vars(ck["args"]) == vars(want["args"])
            assert same_tensors(ck["dino_loss"], want["dino_loss"])
            teacher = MultiCropWrapper(SmallResNet(), head_factory())
            teacher.load_state_dict(ck["teacher"], strict=True)
            student = DDPLike(MultiCropWrapper(SmallResNet(), head_factory()))
            student.load_state_dict(ck["student"], strict=True)
            assert same_tensors(teacher.backbone.state_dict(), state), name
            for k, v in as_f32(student.module.backbone.state_dict()).items():
                assert torch.equal(v, ref[f"student.{k}"]), (name, k)
            assert same_tensors(ck["student"], want["student"]) and same_tensors(ck["teacher"], want["teacher"])
            if name == "full_checkpoint.pth":
                for k, v in as_f32(teacher.head.state_dict()).items():
                    assert torch.equal(v, ref[f"teacher_head.{k}"]), k
            opt = torch.optim.SGD(get_params_groups(student.named_parameters()), lr=0, momentum=0.9)
            opt.load_state_dict(ck["optimizer"])
            assert opt.state_dict()["param_groups"] == want["optimizer"]["param_groups"], name
            try:
                torch.load(path(name), weights_only=True)
                facts[f"{name}_loads_with_weights_only_true"] = True
            except pickle.UnpicklingError as e:
                facts[f"{name}_loads_with_weights_only_true"] = False
                facts[f"{name}_weights_only_error"] = next(
                    line.strip() for line in str(e).splitlines()
                    if "Unsupported global" in line).split(" Please use")[0]
    return facts


README = """\
# ResNet fixtures

Generated by `tools/gen-resnet-fixtures.py`; do not edit by hand. References
for dino-stream's ResNet backbone (torchvision's Bottleneck ResNet), BatchNorm
in eval and train mode, SGD and LARS as main_dino.py drives them, and tiny
ResNet weight files in the official DINO (facebookresearch/dino) formats.
`reference.json` lists every tensor with its shape, the config, the checks the
generator ran and the sha256 of every file. All tensors are float32 (the
`num_batches_tracked` counters too, as float32 of shape `[]`) except in the
`.pth` files, which keep PyTorch's own dtypes (counters int64 `[]`).

## Regenerate

```sh
python3 tools/gen-resnet-fixtures.py
```

It creates or reuses the venv `~/.cache/dino-stream/venv-fixtures`, installs
the pinned versions below into it from PyPI when they are missing, and re-runs
itself there. No model weights are downloaded (random weights, fixed seeds,
CPU, float32, one thread, deterministic algorithms). Same versions on the
same machine give byte-identical files.

| package | version |
| --- | --- |
{versions}

## The small ResNet

torchvision's ResNet with `torchvision.models.resnet.Bottleneck` blocks built
by torchvision's own `ResNet._make_layer`, base width {w} instead of 64,
layers [1, 2, 1, 1], planes {planes}, strides 1, 2, 2, 2: stem
`conv1 = Conv2d(3, {w}, 7, 2, 3, bias=False)`, `bn1`, ReLU,
`MaxPool2d(3, 2, 1)`, `layer1..layer4`, `AdaptiveAvgPool2d(1)`, flatten:
{features} features, no `fc`. Module names are torchvision's
(`layer2.0.downsample.0.weight`, `layer2.1.bn3.running_var`, ...). Init as
torchvision's (kaiming normal, fan_out, relu), then every BatchNorm: weight
U(0.5, 1.5), bias N(0, 0.1), running_mean N(0, 0.1), running_var
U(0.5, 1.5), num_batches_tracked {nbt}. BatchNorm eps 1e-5, momentum 0.1
(running var updated with the unbiased batch variance).

## Files

- `resnet50_keys.json`: `torchvision.models.resnet50()` state-dict entries
  without `fc.*`, in state-dict order, a JSON list of
  `{{"name": str, "shape": [int], "dtype": "float32" | "int64"}}`
  (`num_batches_tracked`: int64, shape `[]`).
- `small.safetensors`:
  - `state.<key>`: every state-dict entry of the small ResNet as stored;
  - `input` {input}, `input2` {input2}: N(0, 1);
  - `eval.features` [{batch}, {features}]: `model.eval()(input)` with the stored state;
  - `train.features` [{batch}, {features}]: `model.train()(input)` (batch statistics), from
    the stored state;
  - `train.upstream` [{batch}, {features}]: R ~ N(0, 1); `train.grad.input` and
    `train.grad.<param>` (every conv weight, BatchNorm weight and bias): the gradients
    of `(train.features * R).sum()` in that same forward;
  - `train.running.<bn>.{{running_mean,running_var,num_batches_tracked}}`: the
    buffers after that one train forward;
  - `train2.features`, `train2.running.<bn>.*`: a second train forward on
    `input2` right after the first (running statistics after two forwards in a
    row, as the DINO student's globals-then-locals passes).
- `optim.safetensors`: parameters `a.weight` [5, 7], `a.bias` [5],
  `c.weight` [3, 2, 3, 3], `n.weight` [6] (N(0, 1)), `z.weight` [4, 4] (zeros);
  groups as main_dino.py's `get_params_groups` (0: `a.weight`, `c.weight`,
  `z.weight`, decayed; 1: `a.bias`, `n.weight`, weight decay 0); per step `s`
  the lr `lr[s]` on every group and weight decay `wd[s]` on group 0 only.
  `init.<name>`; `grad.<s>.<name>` (N(0, 1), `z.weight`'s step-1 gradient
  zero); `sgd.<s>.<name>` after step `s` of `torch.optim.SGD(momentum=0.9)`;
  `lars.<s>.<name>` after step `s` of DINO's `utils.LARS` (momentum 0.9, eta
  0.001; 1-d parameters: no decay, no adaptation; trust ratio
  `eta * ||p|| / ||grad + wd * p||`, 1 when either norm is 0); `lr` [3] =
  {lr}, `wd` [3] = {wd}.
- `backbone.pth`: `torch.save` of the small ResNet's state dict (the values
  of `state.*`), torchvision keys without `fc`, like `dino_resnet50_pretrain.pth`.
- `full_checkpoint.pth`: main_dino.py's `checkpoint.pth`: `student`
  (`module.backbone.*`, `module.head.*`), `teacher` (`backbone.*`, `head.*`),
  `optimizer` (`torch.optim.SGD` state dict, two groups as `get_params_groups`,
  one step with lr 0 as main_dino's warm-up starts, so it has momentum buffers
  and the student keeps its values), `epoch` = {epoch}, `args` (an
  `argparse.Namespace`, arch `resnet50`, so `torch.load(weights_only=True)`
  refuses the file), `dino_loss` (`center` [1, {out}]). Teacher backbone =
  `state.*`; student = teacher + N(0, {noise}) on every trainable parameter,
  buffers copied. Head: the official `DINOHead(in_dim={features}, out_dim={out},
  use_bn=True, nlayers=3, hidden_dim={hidden}, bottleneck_dim={bottleneck})`:
  `head.mlp.0` Linear, `head.mlp.1` BatchNorm1d, GELU, `head.mlp.3` Linear,
  `head.mlp.4` BatchNorm1d, GELU, `head.mlp.6` Linear, then
  `head.last_layer.weight_g` [{out}, 1] (all 1, frozen) and
  `head.last_layer.weight_v` [{out}, {bottleneck}] (old `torch.nn.utils.weight_norm`).
- `released_full.pth`: the same layout and the same backbones, but the head of
  the released `dino_resnet50_pretrain_full_checkpoint.pth`, not a DINOHead:
  `head.mlp.0` Linear({features}, {rhidden}), `head.mlp.1` BatchNorm1d({rhidden}), GELU,
  `head.mlp.3` Linear({rhidden}, {rmlp}), `head.last_layer` Linear({rmlp}, {rout}) with
  `weight` and `bias`; `dino_loss.center` [1, {rout}]; `optimizer` a never-stepped
  SGD state dict (`state` empty).
- `import_reference.safetensors` (float32): `student.<key>`: the student
  backbone of both checkpoints (torchvision keys); `teacher_head.<key>`
  (`mlp.0.weight`, ..., `last_layer.weight_g`, `last_layer.weight_v`): the
  teacher head of `full_checkpoint.pth`; `center` [1, {out}]. The teacher
  backbone of both checkpoints and `backbone.pth` is `small.safetensors`'
  `state.*`.
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT, help="output folder (default tests/fixtures/resnet)")
    ap.add_argument("--allow-version-mismatch", action="store_true")
    ap.add_argument("--no-venv", action="store_true",
                    help="run with the current interpreter instead of the pinned venv")
    args = ap.parse_args()
    versions = check_versions(args.allow_version_mismatch)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(0)

    keys50 = resnet50_keys()
    small, state, small_checks = small_resnet_tensors()
    optim, optim_checks, opt_groups = optim_tensors()
    backbone_sd, full, released, ref, head_init = checkpoints(state)
    for d in (small, optim, ref):
        for k, v in d.items():
            assert v.dtype == torch.float32 and v.is_contiguous() and torch.isfinite(v).all(), k
    small = {k: small[k] for k in sorted(small)}
    optim = {k: optim[k] for k in sorted(optim)}
    ref = {k: ref[k] for k in sorted(ref)}

    os.makedirs(args.out, exist_ok=True)
    path = partial(os.path.join, args.out)
    with open(path("resnet50_keys.json"), "w") as fh:
        fh.write("[\n" + ",\n".join(json.dumps(e) for e in keys50) + "\n]\n")
    # One metadata key only: safetensors writes the metadata map in hash order.
    meta = {"generator": f"tools/gen-resnet-fixtures.py format {FORMAT}"}
    save_file(small, path("small.safetensors"), metadata=meta)
    save_file(optim, path("optim.safetensors"), metadata=meta)
    save_file(ref, path("import_reference.safetensors"), metadata=meta)
    torch.save(backbone_sd, path("backbone.pth"))
    torch.save(full, path("full_checkpoint.pth"))
    torch.save(released, path("released_full.pth"))

    facts = verify(args.out, small, state, full, released, ref, optim)

    def keys(sd: dict) -> dict:
        return {k: list(v.shape) for k, v in sd.items()}

    files = {
        "resnet50_keys.json": {
            "format": "JSON list of {name, shape, dtype}, state-dict order",
            "contains": "torchvision.models.resnet50() state dict without fc.*",
            "entries": len(keys50)},
        "small.safetensors": {
            "format": "safetensors, float32 (num_batches_tracked as float32 [])",
            "contains": "state.*, input, input2, eval.features, train.features, train.upstream, "
                        "train.grad.input, train.grad.<param>, train.running.<buffer>, "
                        "train2.features, train2.running.<buffer>",
            "tensors": keys(small)},
        "optim.safetensors": {
            "format": "safetensors, float32",
            "contains": "init.<p>, grad.<s>.<p>, sgd.<s>.<p>, lars.<s>.<p> for s in 0..3, lr, wd",
            "tensors": keys(optim)},
        "backbone.pth": {
            "format": "torch.save zip (pickled OrderedDict with _metadata, as state_dict() gives)",
            "contains": "small ResNet state dict (= small.safetensors state.*), torchvision keys, no fc",
            "keys": keys(backbone_sd)},
        "full_checkpoint.pth": {
            "format": "torch.save zip; needs weights_only=False (pickles argparse.Namespace)",
            "contains": {
                "student": "DDP(MultiCropWrapper) state dict: module.backbone.*, module.head.*",
                "teacher": "MultiCropWrapper state dict: backbone.*, head.*",
                "optimizer": "torch.optim.SGD(momentum=0.9) state_dict after one lr-0 step with "
                             "N(0, 1) gradients (momentum_buffer per parameter); groups as "
                             "utils.get_params_groups (0: weights, decayed; 1: biases and 1-d, "
                             "weight_decay 0; the frozen weight_g in neither)",
                "epoch": EPOCH, "args": ARGS,
                "dino_loss": f"DINOLoss state dict: center [1, {HEAD_CFG['out_dim']}]",
                "fp16_scaler": "absent (use_fp16 off)"},
            "maps_to": {"module.backbone.": "import_reference student.", "backbone.": "small state.",
                        "head.": "import_reference teacher_head.",
                        "dino_loss.center": "import_reference center"},
            "student_keys": keys(full["student"]),
            "teacher_keys": keys(full["teacher"])},
        "released_full.pth": {
            "format": "torch.save zip; needs weights_only=False (pickles argparse.Namespace)",
            "contains": {
                "student": "module.backbone.* (= import_reference student.*), module.head.*",
                "teacher": "backbone.* (= small state.*), head.*",
                "head": "not a DINOHead: mlp.0 Linear, mlp.1 BatchNorm1d, (GELU), mlp.3 Linear, "
                        "last_layer Linear with bias",
                "optimizer": "torch.optim.SGD state_dict, never stepped (state {})",
                "epoch": EPOCH, "args": RELEASED_ARGS,
                "dino_loss": f"center [1, {RELEASED_HEAD_CFG['out_dim']}]"},
            "student_keys": keys(released["student"]),
            "teacher_keys": keys(released["teacher"])},
        "import_reference.safetensors": {
            "format": "safetensors, float32 (num_batches_tracked as float32 [])",
            "contains": "student.<backbone key> (student backbone of both checkpoints), "
                        "teacher_head.<head key> (full_checkpoint.pth), center",
            "tensors": keys(ref)},
    }
    vrows = "\n".join(f"| {k} | {v} |" for k, v in versions.items())
    h, rh = HEAD_CFG, RELEASED_HEAD_CFG
    with open(path("README.md"), "w") as fh:
        fh.write(README.format(
            versions=vrows, w=W, planes=RESNET_CFG["planes"], features=FEATURES, nbt=BN_NUM_BATCHES,
            input=list(INPUT_SHAPE), input2=list(INPUT2_SHAPE), batch=INPUT_SHAPE[0],
            lr=OPT_STEPS["lr"], wd=OPT_STEPS["weight_decay"], epoch=EPOCH, out=h["out_dim"],
            noise=TEACHER_NOISE_STD, hidden=h["hidden_dim"], bottleneck=h["bottleneck_dim"],
            rhidden=rh["hidden_dim"], rmlp=rh["mlp_out"], rout=rh["out_dim"]))

    files["README.md"] = {"format": "Markdown", "contains": "this description"}
    for name, entry in files.items():
        entry["bytes"] = os.path.getsize(path(name))
        entry["sha256"] = sha256(path(name))
        os.chmod(path(name), 0o644)

    doc = {
        "format": FORMAT,
        "generator": "tools/gen-resnet-fixtures.py",
        "versions": versions,
        "pinned": PINNED,
        "resnet": {**RESNET_CFG, "init": "torchvision ResNet.__init__ (kaiming_normal_ fan_out "
                                         "relu for convs), then BatchNorm as bn_init",
                   "bn_init": BN_INIT, "input": list(INPUT_SHAPE), "input2": list(INPUT2_SHAPE),
                   "train_loss": "(train.features * train.upstream).sum()",
                   "order": "eval forward (input), train forward+backward (input), "
                            "train forward (input2)"},
        "optim": {"shapes": {k: list(v) for k, v in OPT_SHAPES.items()}, **OPT_STEPS,
                  "groups": {"0_regularized": opt_groups[0], "1_not_regularized": opt_groups[1]},
                  "init": "N(0, 1); z.weight zeros", "grad": "N(0, 1); grad.1.z.weight zeros",
                  "sgd": {"class": "torch.optim.SGD", "momentum": SGD_MOMENTUM, "dampening": 0,
                          "nesterov": False},
                  "lars": {**LARS_CFG, "semantics": "dp = g; if ndim != 1: dp += wd * p, "
                                                    "q = eta*||p||/||dp|| if both > 0 else 1, dp *= q; "
                                                    "mu = momentum * mu + dp; p -= lr * mu"}},
        "head": {**HEAD_CFG, "init": head_init},
        "released_head": RELEASED_HEAD_CFG,
        "student": f"teacher + N(0, {TEACHER_NOISE_STD}) on trainable parameters; buffers and "
                   "the frozen last_layer.weight_g copied",
        "checkpoint_optimizer_step": CKPT_STEP,
        "epoch": EPOCH,
        "files": files,
        "checks": {**small_checks, **optim_checks, **facts},
    }
    with open(path("reference.json"), "w") as fh:
        json.dump(doc, fh, indent=1)
        fh.write("\n")

    total = 0
    for name in sorted(os.listdir(args.out)):
        size = os.path.getsize(path(name))
        total += size
        print(f"  {name}: {size} bytes")
    print(f"wrote {args.out} ({total} bytes in all)")
    for k, v in doc["checks"].items():
        print(f"  {k}: {v}")


if __name__ == "__main__":
    main()
