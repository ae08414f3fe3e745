#!/usr/bin/env python3
"""Generate the reference fixtures for dino-stream's model, loss and optimiser code.

Writes tests/fixtures/model/reference.safetensors (every tensor, float32),
reference.json (versions, configs, scalars, schedules, tensor list) and
README.md. The Rust tests read the tensors by name and compare against them.

Reference semantics, all on CPU in float32 with fixed seeds:
  * ViT backbone: timm's VisionTransformer (DINO's ViT: pre-norm, exact GELU,
    LayerNorm eps 1e-6, CLS token, learned absolute pos_embed, no head), every
    parameter overwritten with random values. The forward is written here from
    timm's submodules so that the positional embedding at non-native sizes
    follows the official DINO `interpolate_pos_encoding` (bicubic with
    scale_factor (n + 0.1) / sqrt(N), no antialias), not timm's resampling. At
    the native 32 px it is checked against timm's own forward_features.
  * DINO head, DINOLoss, cosine_scheduler, clip_gradients: written here after
    the official facebookresearch/dino code (main_dino.py, utils.py,
    vision_transformer.py), with torch.nn.utils.parametrizations.weight_norm as
    a cross-check for the weight-normalised last layer.
  * AdamW: torch.optim.AdamW itself (single-tensor path), cross-checked against
    a float64 numpy spec.

Pinned reference versions. The script refuses other versions unless
--allow-version-mismatch is given:
    torch 2.15.0, torchvision 0.29.2, numpy 2.4.6, timm 1.0.31, safetensors 0.8.0
    (Python 3.11)

How the committed fixtures were produced (run from the repo root):

    python3 tools/gen-model-fixtures.py

Run with any python3, the script creates (or reuses) the venv
~/.cache/dino-stream/venv-fixtures (shared with gen-augment-fixtures.py),
installs the pinned versions into it from PyPI if they are missing, and
re-runs itself with the venv's interpreter. Nothing downloads model weights
(timm is used with random weights only). --out defaults to
tests/fixtures/model next to this script. Re-running is deterministic: the
same versions on the same machine give byte-identical files (another CPU may
pick other SIMD kernels and move the last bits of the float32 outputs, so
compare with a tolerance, not bytes, across machines).
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
DEFAULT_OUT = os.path.join(REPO, "tests", "fixtures", "model")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from pinned_venv import bootstrap
    bootstrap(__file__, PINNED, sys.argv[1:])

# Heavy imports only after the bootstrap.
import hashlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
from functools import partial  # noqa: E402

import numpy as np  # noqa: E402
import safetensors  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from timm.layers import resample_abs_pos_embed  # noqa: E402
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

FORMAT = 1

VIT_CFG = dict(img_size=32, patch_size=8, in_chans=3, embed_dim=48, depth=2, num_heads=3,
               mlp_ratio=4.0, qkv_bias=True, num_classes=0, ln_eps=1e-6, drop_path_rate=0.0,
               class_token=True, global_pool="token", act="gelu (exact, erf)")
RESOLUTIONS = [32, 16, 48]
BATCH = 2
HEAD_CFG = dict(in_dim=48, hidden_dim=64, bottleneck_dim=16, out_dim=32, nlayers=3,
                use_bn=False, act="gelu (exact, erf)", l2norm_eps=1e-12,
                last_layer="weight_norm(Linear(16, 32, bias=False), dim=0)")
LOSS_CFG = dict(batch=3, global_crops=2, local_crops=2, ncrops=4, out_dim=32,
                student_temp=0.1, teacher_temp=0.04, center_momentum=0.9,
                layout="view-major: row v*batch + b")
ADAMW_CFG = dict(betas=[0.9, 0.999], eps=1e-8, lr=0.01, weight_decay_w=0.04, weight_decay_b=0.0,
                 steps=3, step2_lr=0.005, step2_weight_decay_w=0.1, amsgrad=False, maximize=False,
                 foreach=False)
CLIP_CFG = dict(clip=3.0, eps=1e-6, g0_target_norm=5.0, g1_target_norm=1.0)
SCHED_ARGS = {
    "sched_lr": dict(base_value=0.002, final_value=1e-6, epochs=5, niter_per_ep=7,
                     warmup_epochs=2, start_warmup_value=0.0),
    "sched_wd": dict(base_value=0.04, final_value=0.4, epochs=5, niter_per_ep=7,
                     warmup_epochs=0, start_warmup_value=0.0),
    "sched_momentum": dict(base_value=0.996, final_value=1.0, epochs=5, niter_per_ep=7,
                           warmup_epochs=0, start_warmup_value=0.0),
}
TEACHER_TEMP_ARGS = dict(warmup_teacher_temp=0.04, teacher_temp=0.07,
                         warmup_teacher_temp_epochs=3, epochs=5)

# One generator per section, so changing one section never moves another's values.
SEED_VIT_PARAMS, SEED_VIT_INPUTS, SEED_HEAD, SEED_LOSS, SEED_ADAMW, SEED_CLIP = (
    1001, 1002, 2001, 3001, 4001, 5001)


def gen(seed: int) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(seed)
    return g


def randn(g: torch.Generator, *shape, std: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=torch.float32) * std


def uniform(g: torch.Generator, *shape) -> torch.Tensor:  # U(-1, 1)
    return torch.rand(*shape, generator=g, dtype=torch.float32) * 2 - 1


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


# --------------------------------------------------------------------------
# 1. ViT backbone
# --------------------------------------------------------------------------

def make_vit() -> tuple[VisionTransformer, dict]:
    vit = VisionTransformer(
        img_size=VIT_CFG["img_size"], patch_size=VIT_CFG["patch_size"], in_chans=3,
        embed_dim=VIT_CFG["embed_dim"], depth=VIT_CFG["depth"], num_heads=VIT_CFG["num_heads"],
        mlp_ratio=VIT_CFG["mlp_ratio"], qkv_bias=True, num_classes=0,
        norm_layer=partial(nn.LayerNorm, eps=VIT_CFG["ln_eps"]), drop_path_rate=0.0,
        class_token=True, global_pool="token")
    vit.eval()
    # The structure we rely on (DINO's ViT); fail loudly if timm ever changes it.
    assert isinstance(vit.head, nn.Identity) and isinstance(vit.fc_norm, nn.Identity)
    assert isinstance(vit.norm_pre, nn.Identity) and isinstance(vit.patch_embed.norm, nn.Identity)
    assert vit.num_prefix_tokens == 1 and not vit.no_embed_class and vit.reg_token is None
    assert tuple(vit.pos_embed.shape) == (1, 17, 48)
    for blk in vit.blocks:
        assert isinstance(blk.mlp.act, nn.GELU) and blk.mlp.act.approximate == "none"
        assert isinstance(blk.ls1, nn.Identity) and isinstance(blk.ls2, nn.Identity)
        assert isinstance(blk.attn.q_norm, nn.Identity) and isinstance(blk.attn.norm, nn.Identity)
        assert isinstance(blk.mlp.norm, nn.Identity)
        assert blk.norm1.eps == 1e-6 and blk.norm2.eps == 1e-6
    assert vit.norm.eps == 1e-6

    g = gen(SEED_VIT_PARAMS)
    scales = {}
    with torch.no_grad():
        for name, p in vit.named_parameters():  # deterministic registration order
            if name in ("cls_token", "pos_embed"):
                std, kind = 0.5, "N(0, 0.5)"
                p.copy_(randn(g, *p.shape, std=std))
            elif "norm" in name and name.endswith(".weight"):
                p.copy_(1.0 + randn(g, *p.shape, std=0.1))
                kind = "1 + N(0, 0.1)"
            elif name.endswith(".bias"):
                p.copy_(randn(g, *p.shape, std=0.1))
                kind = "N(0, 0.1)"
            elif name.endswith(".weight") and p.dim() >= 2:
                fan_in = p[0].numel()
                std = 1.0 / math.sqrt(fan_in)
                p.copy_(randn(g, *p.shape, std=std))
                kind = f"N(0, 1/sqrt({fan_in}))"
            else:
                raise AssertionError(f"unhandled parameter {name}")
            scales[name] = kind
    assert set(scales) == set(vit.state_dict()), "state_dict has non-parameter entries"
    return vit, scales


def dino_interpolate_pos_encoding(pos_embed: torch.Tensor, npatch: int, w: int, h: int,
                                  patch_size: int) -> torch.Tensor:
    """facebookresearch/dino vision_transformer.py VisionTransformer.interpolate_pos_encoding."""
    N = pos_embed.shape[1] - 1
    if npatch == N and w == h:
        return pos_embed
    class_pos_embed = pos_embed[:, 0]
    patch_pos_embed = pos_embed[:, 1:]
    dim = pos_embed.shape[-1]
    w0 = w // patch_size
    h0 = h // patch_size
    # we add a small number to avoid floating point error in the interpolation
    # see discussion at https://github.com/facebookresearch/dino/issues/8
    w0, h0 = w0 + 0.1, h0 + 0.1
    s = int(math.sqrt(N))
    patch_pos_embed = F.interpolate(
        patch_pos_embed.reshape(1, s, s, dim).permute(0, 3, 1, 2),
        scale_factor=(w0 / math.sqrt(N), h0 / math.sqrt(N)),
        mode="bicubic",
    )
    assert int(w0) == patch_pos_embed.shape[-2] and int(h0) == patch_pos_embed.shape[-1], \
        f"interpolate gave {tuple(patch_pos_embed.shape)}, want (.., {int(w0)}, {int(h0)})"
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)


def bicubic_spec(grid: np.ndarray, out_hw: tuple[int, int], scale_hw: tuple[float, float]) -> np.ndarray:
    """Independent float64 description of torch's bicubic upsample (align_corners=False,
    no antialias, scale_factor given and not recomputed): for output index i the source
    coordinate is (i + 0.5) / scale - 0.5 (not clamped), taps floor(x)-1 .. floor(x)+2
    clamped to the border, Keys cubic with A = -0.75. grid: [C, H, W]."""
    A = -0.75

    def w(t):
        def c1(x):  # |x| <= 1
            return ((A + 2) * x - (A + 3)) * x * x + 1

        def c2(x):  # 1 < |x| < 2
            return ((A * x - 5 * A) * x + 8 * A) * x - 4 * A
        return [c2(t + 1), c1(t), c1(1 - t), c2(2 - t)]

    def axis(n_in, n_out, scale):
        m = np.zeros((n_out, n_in))
        for i in range(n_out):
            x = (i + 0.5) / scale - 0.5
            x0 = math.floor(x)
            for k, wk in enumerate(w(x - x0)):
                m[i, min(max(x0 - 1 + k, 0), n_in - 1)] += wk
        return m

    my = axis(grid.shape[1], out_hw[0], scale_hw[0])
    mx = axis(grid.shape[2], out_hw[1], scale_hw[1])
    return np.einsum("oh,chw,pw->cop", my, grid.astype(np.float64), mx)


def block_by_hand(blk, x: torch.Tensor, num_heads: int):
    """Pre-norm block written out: x + proj(attn(LN1 x)); x + fc2(gelu(fc1(LN2 x)))."""
    B, N, C = x.shape
    hd = C // num_heads
    y = F.layer_norm(x, (C,), blk.norm1.weight, blk.norm1.bias, eps=1e-6)
    qkv = y @ blk.attn.qkv.weight.T + blk.attn.qkv.bias  # [B, N, 3C]: q | k | v, heads inside
    qkv = qkv.reshape(B, N, 3, num_heads, hd).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = torch.softmax((q @ k.transpose(-2, -1)) * hd ** -0.5, dim=-1)
    o = (attn @ v).transpose(1, 2).reshape(B, N, C)
    x = x + (o @ blk.attn.proj.weight.T + blk.attn.proj.bias)
    y = F.layer_norm(x, (C,), blk.norm2.weight, blk.norm2.bias, eps=1e-6)
    h = F.gelu(y @ blk.mlp.fc1.weight.T + blk.mlp.fc1.bias)
    x = x + (h @ blk.mlp.fc2.weight.T + blk.mlp.fc2.bias)
    return x, attn


def vit_forward(vit, x: torch.Tensor, checks: dict, tag: str):
    """DINO's prepare_tokens + blocks + norm, from timm's submodules."""
    B, _, w, h = x.shape
    p = VIT_CFG["patch_size"]
    t = vit.patch_embed.proj(x).flatten(2).transpose(1, 2)  # [B, n, D], row-major patches
    t = vit.patch_embed.norm(t)
    t = torch.cat((vit.cls_token.expand(B, -1, -1), t), dim=1)
    pos = dino_interpolate_pos_encoding(vit.pos_embed, t.shape[1] - 1, w, h, p)
    t = t + pos
    attn_last = None
    for i, blk in enumerate(vit.blocks):
        if i == len(vit.blocks) - 1:
            mine, attn_last = block_by_hand(blk, t, VIT_CFG["num_heads"])
        else:
            mine, _ = block_by_hand(blk, t, VIT_CFG["num_heads"])
        t = blk(t)
        d = maxdiff(mine, t)
        checks[f"vit_{tag}_block{i}_by_hand_vs_timm_block_max_abs_diff"] = d
        assert d < 2e-5, (tag, i, d)
    t = vit.norm(t)
    return t, pos, attn_last


def section_vit(tensors: dict, info: dict, checks: dict) -> None:
    vit, scales = make_vit()
    for k, v in vit.state_dict().items():
        tensors[f"vit.{k}"] = v.detach().clone()
    info["vit_param_init"] = scales
    g = gen(SEED_VIT_INPUTS)
    with torch.no_grad():
        for r in RESOLUTIONS:
            x = randn(g, BATCH, 3, r, r)
            tok, pos, attn = vit_forward(vit, x, checks, f"{r}px")
            n = (r // 8) ** 2
            assert tok.shape == (BATCH, 1 + n, 48)
            assert tok.abs().max() < 20 and tok.std() > 0.3, "activations not O(1)"
            tensors[f"x{r}"] = x
            tensors[f"tokens{r}"] = tok
            tensors[f"cls{r}"] = tok[:, 0].clone()
            if r == 32:
                assert pos is vit.pos_embed
                ref = vit.forward_features(x)
                d = maxdiff(tok, ref)
                checks["vit_32px_manual_vs_timm_forward_features_max_abs_diff"] = d
                assert d < 1e-6, f"manual forward disagrees with timm forward_features: {d}"
                d = maxdiff(vit.patch_embed(x), vit.patch_embed.proj(x).flatten(2).transpose(1, 2))
                assert d == 0.0
                tensors["attn32"] = attn.clone()
                assert attn.shape == (BATCH, 3, 17, 17)
                checks["attn32_max_prob"] = float(attn.max())
            else:
                tensors[f"pos_embed{r}"] = pos.clone()
                s = (r // 8 + 0.1) / 4
                grid = vit.pos_embed[0, 1:].reshape(4, 4, 48).permute(2, 0, 1).numpy()
                spec = bicubic_spec(grid, (r // 8, r // 8), (s, s))
                mine = pos[0, 1:].reshape(r // 8, r // 8, 48).permute(2, 0, 1)
                d = float(np.abs(spec - mine.double().numpy()).max())
                checks[f"pos_embed{r}_vs_numpy_bicubic_spec_max_abs_diff"] = d
                assert d < 1e-5, d
                # For the record: how far the other conventions are from DINO's.
                plain = bicubic_spec(grid, (r // 8, r // 8), ((r // 8) / 4, (r // 8) / 4))
                checks[f"pos_embed{r}_dino_vs_exact_scale_bicubic_max_abs_diff"] = float(
                    np.abs(spec - plain).max())
                timm_pos = resample_abs_pos_embed(vit.pos_embed, new_size=(r // 8, r // 8),
                                                  old_size=(4, 4), num_prefix_tokens=1)
                checks[f"pos_embed{r}_dino_vs_timm_resample_max_abs_diff"] = maxdiff(pos, timm_pos)


# --------------------------------------------------------------------------
# 2. DINO head
# --------------------------------------------------------------------------

def dino_head(x, p, weight_g):
    x = F.gelu(F.linear(x, p["head.mlp.0.weight"], p["head.mlp.0.bias"]))
    x = F.gelu(F.linear(x, p["head.mlp.2.weight"], p["head.mlp.2.bias"]))
    x = F.linear(x, p["head.mlp.4.weight"], p["head.mlp.4.bias"])
    x = F.normalize(x, dim=-1, p=2, eps=1e-12)
    v = p["head.last_layer.weight_v"]
    w = weight_g * v / v.norm(dim=1, keepdim=True)  # weight_norm, dim=0: per output row
    return F.linear(x, w)


def section_head(tensors: dict, checks: dict) -> None:
    g = gen(SEED_HEAD)
    p = {}
    for i, (fi, fo) in zip((0, 2, 4), ((48, 64), (64, 64), (64, 16))):
        p[f"head.mlp.{i}.weight"] = randn(g, fo, fi, std=1.0 / math.sqrt(fi))
        p[f"head.mlp.{i}.bias"] = randn(g, fo, std=0.1)
    p["head.last_layer.weight_g"] = 1.0 + 0.3 * uniform(g, 32, 1)
    p["head.last_layer.weight_v"] = randn(g, 32, 16)
    x = randn(g, 5, 48)
    with torch.no_grad():
        out = dino_head(x, p, p["head.last_layer.weight_g"])
        out_g1 = dino_head(x, p, torch.ones(32, 1))
        # Cross-check the last layer against torch's own weight_norm parametrisation.
        last = nn.Linear(16, 32, bias=False)
        last = torch.nn.utils.parametrizations.weight_norm(last, name="weight", dim=0)
        last.parametrizations.weight.original0.copy_(p["head.last_layer.weight_g"])
        last.parametrizations.weight.original1.copy_(p["head.last_layer.weight_v"])
        mlp = nn.Sequential(nn.Linear(48, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 16))
        for i in (0, 2, 4):
            mlp[i].weight.copy_(p[f"head.mlp.{i}.weight"])
            mlp[i].bias.copy_(p[f"head.mlp.{i}.bias"])
        ref = last(F.normalize(mlp(x), dim=-1, p=2))
        d = maxdiff(out, ref)
        checks["head_vs_torch_weight_norm_module_max_abs_diff"] = d
        assert d < 1e-6, d
        checks["head_out_vs_head_out_g1_max_abs_diff"] = maxdiff(out, out_g1)
    tensors.update(p)
    tensors["head_in"] = x
    tensors["head_out"] = out
    tensors["head_out_g1"] = out_g1


# --------------------------------------------------------------------------
# 3. DINO loss
# --------------------------------------------------------------------------

def dino_loss(student_output, teacher_output, center, ncrops, student_temp, teacher_temp):
    """facebookresearch/dino main_dino.py DINOLoss.forward (one process)."""
    student_out = (student_output / student_temp).chunk(ncrops)
    teacher_out = F.softmax((teacher_output - center) / teacher_temp, dim=-1).detach().chunk(2)
    total_loss = 0
    n_loss_terms = 0
    for iq, q in enumerate(teacher_out):
        for v in range(len(student_out)):
            if v == iq:
                continue
            loss = torch.sum(-q * F.log_softmax(student_out[v], dim=-1), dim=-1)
            total_loss += loss.mean()
            n_loss_terms += 1
    total_loss /= n_loss_terms
    return total_loss, n_loss_terms


def section_loss(tensors: dict, info: dict) -> None:
    c = LOSS_CFG
    g = gen(SEED_LOSS)
    student = randn(g, c["ncrops"] * c["batch"], c["out_dim"], std=3.0)
    teacher = randn(g, c["global_crops"] * c["batch"], c["out_dim"], std=3.0)
    center = randn(g, 1, c["out_dim"], std=0.5)
    s = student.clone().requires_grad_(True)
    loss, n_terms = dino_loss(s, teacher, center, c["ncrops"], c["student_temp"], c["teacher_temp"])
    loss.backward()
    m = c["center_momentum"]
    center_new = center * m + (1 - m) * teacher.mean(dim=0, keepdim=True)
    tensors["student_out"] = student
    tensors["teacher_out"] = teacher
    tensors["center"] = center
    tensors["loss"] = loss.detach().reshape(1)
    tensors["center_new"] = center_new
    tensors["loss_grad_student"] = s.grad.detach().clone()
    info["loss_n_terms"] = n_terms
    info["loss_value"] = float(loss.detach())


# --------------------------------------------------------------------------
# 4. AdamW
# --------------------------------------------------------------------------

def adamw_spec(w0, b0, grads, cfg):
    """float64 numpy AdamW (decoupled decay, bias-corrected), torch's op order."""
    b1, b2 = cfg["betas"]
    eps = cfg["eps"]
    params = {"w": w0.double().numpy().copy(), "b": b0.double().numpy().copy()}
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v2 = {k: np.zeros_like(v) for k, v in params.items()}
    outs = []
    for t, gk in enumerate(grads, start=1):
        lr = cfg["lr"] if t < 3 else cfg["step2_lr"]
        wd = {"w": cfg["weight_decay_w"] if t < 3 else cfg["step2_weight_decay_w"],
              "b": cfg["weight_decay_b"]}
        for k in params:
            gr = gk[k].double().numpy()
            params[k] = params[k] * (1 - lr * wd[k])
            m[k] = b1 * m[k] + (1 - b1) * gr
            v2[k] = b2 * v2[k] + (1 - b2) * gr * gr
            denom = np.sqrt(v2[k]) / math.sqrt(1 - b2 ** t) + eps
            params[k] = params[k] - (lr / (1 - b1 ** t)) * m[k] / denom
        outs.append({k: v.copy() for k, v in params.items()})
    return outs


def section_adamw(tensors: dict, checks: dict) -> None:
    cfg = ADAMW_CFG
    g = gen(SEED_ADAMW)
    w0 = randn(g, 4, 3)
    b0 = randn(g, 3)
    grads = [{"w": randn(g, 4, 3), "b": randn(g, 3)} for _ in range(cfg["steps"])]
    w = nn.Parameter(w0.clone())
    b = nn.Parameter(b0.clone())
    opt = torch.optim.AdamW(
        [{"params": [w], "weight_decay": cfg["weight_decay_w"]},
         {"params": [b], "weight_decay": cfg["weight_decay_b"]}],
        lr=cfg["lr"], betas=tuple(cfg["betas"]), eps=cfg["eps"], foreach=False)
    tensors["adamw.w0"] = w0
    tensors["adamw.b0"] = b0
    spec = adamw_spec(w0, b0, grads, cfg)
    for k, gk in enumerate(grads):
        if k == 2:
            for pg in opt.param_groups:
                pg["lr"] = cfg["step2_lr"]
            opt.param_groups[0]["weight_decay"] = cfg["step2_weight_decay_w"]
        w.grad = gk["w"].clone()
        b.grad = gk["b"].clone()
        opt.step()
        tensors[f"adamw.grad{k}.w"] = gk["w"]
        tensors[f"adamw.grad{k}.b"] = gk["b"]
        tensors[f"adamw.w_after{k}"] = w.detach().clone()
        tensors[f"adamw.b_after{k}"] = b.detach().clone()
        d = max(float(np.abs(w.detach().double().numpy() - spec[k]["w"]).max()),
                float(np.abs(b.detach().double().numpy() - spec[k]["b"]).max()))
        checks[f"adamw_step{k}_vs_float64_spec_max_abs_diff"] = d
        assert d < 1e-6, (k, d)


# --------------------------------------------------------------------------
# 5. Schedules, 6. gradient clipping
# --------------------------------------------------------------------------

def cosine_scheduler(base_value, final_value, epochs, niter_per_ep, warmup_epochs=0,
                     start_warmup_value=0):
    """facebookresearch/dino utils.cosine_scheduler."""
    warmup_schedule = np.array([])
    warmup_iters = warmup_epochs * niter_per_ep
    if warmup_epochs > 0:
        warmup_schedule = np.linspace(start_warmup_value, base_value, warmup_iters)
    iters = np.arange(epochs * niter_per_ep - warmup_iters)
    schedule = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * iters / len(iters)))
    schedule = np.concatenate((warmup_schedule, schedule))
    assert len(schedule) == epochs * niter_per_ep
    return schedule


def section_schedules(info: dict) -> None:
    for name, args in SCHED_ARGS.items():
        info[name] = [float(v) for v in cosine_scheduler(**args)]
    a = TEACHER_TEMP_ARGS
    tt = np.concatenate((np.linspace(a["warmup_teacher_temp"], a["teacher_temp"],
                                     a["warmup_teacher_temp_epochs"]),
                         np.ones(a["epochs"] - a["warmup_teacher_temp_epochs"]) * a["teacher_temp"]))
    info["sched_teacher_temp"] = [float(v) for v in tt]


def clip_gradients(grads, clip):
    """facebookresearch/dino utils.clip_gradients on a list of gradients (in place)."""
    norms = []
    for gr in grads:
        param_norm = gr.norm(2)
        norms.append(param_norm.item())
        clip_coef = clip / (param_norm + 1e-6)
        if clip_coef < 1:
            gr.mul_(clip_coef)
    return norms


def section_clip(tensors: dict, info: dict) -> None:
    g = gen(SEED_CLIP)
    g0 = randn(g, 10)
    g0 = g0 * (CLIP_CFG["g0_target_norm"] / g0.norm())
    g1 = randn(g, 4, 4)
    g1 = g1 * (CLIP_CFG["g1_target_norm"] / g1.norm())
    outs = [g0.clone(), g1.clone()]
    norms = clip_gradients(outs, CLIP_CFG["clip"])
    assert norms[0] > CLIP_CFG["clip"] and norms[1] < CLIP_CFG["clip"]
    tensors["clip.g0"] = g0
    tensors["clip.g1"] = g1
    tensors["clip.g0_out"] = outs[0]
    tensors["clip.g1_out"] = outs[1]
    info["clip_norms_in"] = norms
    info["clip_norms_out"] = [float(o.norm()) for o in outs]


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------

def check_versions(allow: bool) -> dict:
    got = {"torch": torch.__version__.split("+")[0], "torchvision": None,
           "numpy": np.__version__, "timm": timm.__version__, "safetensors": safetensors.__version__}
    import importlib.metadata as md
    got["torchvision"] = md.version("torchvision").split("+")[0]
    bad = {k: (got[k], PINNED[k]) for k in PINNED if got[k] != PINNED[k]}
    if bad and not allow:
        sys.exit(f"version mismatch (got, pinned): {bad}; pass --allow-version-mismatch to proceed")
    return {"python": sys.version.split()[0], "torch": torch.__version__,
            "torchvision": md.version("torchvision"), "numpy": np.__version__,
            "timm": timm.__version__, "safetensors": safetensors.__version__}


README = """\
# Model reference fixtures

Generated by `tools/gen-model-fixtures.py`; do not edit by hand. Rust tests
read `reference.safetensors` (all tensors, float32, little-endian) by tensor
name and `reference.json` (configs, scalars, schedules, the tensor list with
shapes, and the self-checks the generator ran).

## Regenerate

```sh
python3 tools/gen-model-fixtures.py
```

It creates or reuses the venv `~/.cache/dino-stream/venv-fixtures`, installs
the pinned versions below into it from PyPI when they are missing, and re-runs
itself there. No model weights are downloaded (random weights only). Same
versions on the same machine give byte-identical files (CPU, one thread, fixed
seeds, one `torch.Generator` per section); another CPU may differ in the last
bits of the computed outputs, never in the random inputs and parameters.

Tolerances: values are float32 computed in float32, so compare relatively
(about 1e-5) rather than absolutely; `loss` is about 59 (teacher temp 0.04 on
logits of scale 3 makes most teacher rows nearly one-hot).

| package | version |
| --- | --- |
{versions}

## Tensors

Names, shapes and dtypes are also listed in `reference.json` (`tensors`).

### 1. ViT backbone (`vit.*`, `x*`, `tokens*`, `cls*`, `attn32`, `pos_embed*`)

timm `VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=2,
num_heads=3, mlp_ratio=4, qkv_bias=True, num_classes=0,
norm_layer=partial(nn.LayerNorm, eps=1e-6), drop_path_rate=0, class_token=True,
global_pool='token')`, i.e. DINO's ViT: pre-norm blocks
`x + proj(attn(LN1 x))`, `x + fc2(GELU(fc1(LN2 x)))` with exact (erf) GELU,
LayerNorm eps 1e-6, CLS token, learned absolute `pos_embed` [1, 17, 48]
(CLS position first, then the 4x4 patch grid row-major), final LayerNorm, no
head. `vit.*` is the full timm `state_dict` with the prefix `vit.`. Layouts are
PyTorch's: `patch_embed.proj.weight` [48, 3, 8, 8] (conv, stride 8; patches
flattened row-major), Linear weights [out, in], `attn.qkv.weight` [144, 48]
whose output splits as q | k | v, each 3 heads x 16 (head-major).

Every parameter is random: matrices N(0, 1/sqrt(fan_in)), biases N(0, 0.1),
LayerNorm weights 1 + N(0, 0.1), LayerNorm biases N(0, 0.1), `cls_token` and
`pos_embed` N(0, 0.5) (`vit_param_init` in the JSON).

- `x32` [2,3,32,32], `x16` [2,3,16,16], `x48` [2,3,48,48]: inputs, N(0, 1).
- `tokens{{R}}` [2, 1+(R/8)^2, 48]: all tokens after the final norm; `cls{{R}}`
  [2, 48] = `tokens{{R}}[:, 0]`.
- `attn32` [2, 3, 17, 17]: last block's attention probabilities at 32 px,
  `softmax(q k^T * 16^-0.5)` with q, k from `qkv(LN1 x)`.
- `pos_embed16` [1, 5, 48], `pos_embed48` [1, 37, 48]: the interpolated
  positional embeddings actually added at 16 and 48 px (for debugging).

Positional embedding at other sizes follows the official DINO
`interpolate_pos_encoding` (facebookresearch/dino `vision_transformer.py`),
**not** timm's `resample_abs_pos_embed`: with n = R/8 patches per side, if
n*n == 16 use `pos_embed` as is; otherwise the patch part is reshaped to
[1, 4, 4, 48] -> [1, 48, 4, 4] and resized with
`F.interpolate(grid, scale_factor=((n + 0.1) / 4, (n + 0.1) / 4), mode='bicubic')`
(align_corners=False, no antialias), giving floor(4 * (n + 0.1) / 4) = n per side;
then back to [1, n*n, 48] row-major and the CLS position is prepended. Because
the scale factor is passed (and not recomputed from the output size), the
source coordinate of output pixel i is `(i + 0.5) * 4 / (n + 0.1) - 0.5`
(not `(i + 0.5) * 4 / n - 0.5`): this is the "+0.1 kludge" and it changes the
values (see `pos_embed*_dino_vs_exact_scale_bicubic_max_abs_diff` in the JSON).
The bicubic kernel is Keys' with A = -0.75, the source coordinate is not
clamped, and the four taps floor(x)-1 .. floor(x)+2 are clamped to the border.
The generator checks this against an independent float64 numpy version.

The forward is `patch_embed.proj -> flatten -> cat(cls) -> + pos -> blocks ->
norm`, written from timm's submodules; at 32 px it equals timm's
`forward_features` (max abs diff in the JSON), and each block also agrees
with a written-out pre-norm block.

### 2. DINO head (`head.*`, `head_in`, `head_out`, `head_out_g1`)

Official `DINOHead(in_dim=48, out_dim=32, use_bn=False, nlayers=3,
hidden_dim=64, bottleneck_dim=16)`: `mlp = Linear(48,64), GELU, Linear(64,64),
GELU, Linear(64,16)` (`head.mlp.{{0,2,4}}.{{weight,bias}}`), then
`F.normalize(x, dim=-1, p=2, eps=1e-12)`, then the weight-normalised
`last_layer = Linear(16, 32, bias=False)` with `weight = g * v / ||v||`, the
norm taken per output row (torch `weight_norm`, dim=0):
`head.last_layer.weight_g` [32, 1], `head.last_layer.weight_v` [32, 16]
(N(0,1)). `weight_g` is 1 + 0.3 U(-1, 1), not ones. `head_in` [5, 48] N(0,1);
`head_out` [5, 32]; `head_out_g1` [5, 32] is the output with `weight_g` set to
all ones (the `norm_last_layer=True` case). Checked against
`torch.nn.utils.parametrizations.weight_norm`.

### 3. DINO loss (`student_out`, `teacher_out`, `center`, `loss`, `center_new`, `loss_grad_student`)

Official `DINOLoss` with B = 3, ncrops = 4 (2 global + 2 local), K = 32,
student temp 0.1, teacher temp 0.04, center momentum 0.9. Rows are view-major:
row `v*3 + b` is view v (0, 1 global, 2, 3 local), sample b.
`student_out` [12, 32] and `teacher_out` [6, 32] are 3 N(0,1); `center`
[1, 32] is N(0, 0.5). With `q_i = softmax((t_i - center) / 0.04)` for the
global views i = 0, 1 and `log p_v = log_softmax(s_v / 0.1)`:
`loss = mean over the 6 pairs (i, v), v != i, of mean over b of
sum_k -q_i[b,k] log p_v[b,k]` (each pair's batch mean weighted equally, one
total divided by n_loss_terms = 6). `loss` [1]. `center_new` [1, 32] =
`center * 0.9 + 0.1 * teacher_out.mean(0, keepdim=True)` (from the raw teacher
outputs). `loss_grad_student` [12, 32] = d loss / d student_out (teacher side
detached).

### 4. AdamW (`adamw.*`)

`torch.optim.AdamW(betas=(0.9, 0.999), eps=1e-8, foreach=False)`, two groups:
`w` [4, 3] with weight_decay 0.04 and `b` [3] with weight_decay 0, lr 0.01.
Three steps with gradients `adamw.grad{{k}}.w`, `adamw.grad{{k}}.b` (k = 0, 1, 2);
before step 2 the lr of both groups is set to 0.005 and w's weight_decay to
0.1. `adamw.w0`, `adamw.b0` are the initial values, `adamw.w_after{{k}}`,
`adamw.b_after{{k}}` the values after step k. Step t (1-based) does
`p *= 1 - lr*wd; m = 0.9 m + 0.1 g; v = 0.999 v + 0.001 g^2;
p -= lr / (1 - 0.9^t) * m / (sqrt(v) / sqrt(1 - 0.999^t) + 1e-8)`.

### 5. Schedules (JSON only)

DINO `utils.cosine_scheduler(base, final, epochs, niter_per_ep, warmup_epochs,
start_warmup_value)`: `np.linspace(start_warmup_value, base, warmup_iters)`
then `final + 0.5 (base - final)(1 + cos(pi i / len(iters)))` for
i = 0 .. len(iters)-1. `sched_lr` = (0.002, 1e-6, 5, 7, warmup_epochs=2),
`sched_wd` = (0.04, 0.4, 5, 7), `sched_momentum` = (0.996, 1.0, 5, 7), each 35
float64 values per iteration; `sched_teacher_temp` = linspace(0.04, 0.07, 3)
then 0.07 for the remaining 2 epochs (per epoch). Arguments in `sched_args`.

### 6. Gradient clipping (`clip.*`)

DINO `utils.clip_gradients`, per tensor: `norm = ||g||_2; c = clip / (norm +
1e-6); if c < 1: g *= c`, clip = 3. `clip.g0` [10] has norm 5 (clipped),
`clip.g1` [4, 4] norm 1 (unchanged); `clip.g0_out`, `clip.g1_out`.
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT, help="output folder (default tests/fixtures/model)")
    ap.add_argument("--allow-version-mismatch", action="store_true")
    ap.add_argument("--no-venv", action="store_true",
                    help="run with the current interpreter instead of the pinned venv")
    args = ap.parse_args()
    versions = check_versions(args.allow_version_mismatch)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(0)

    tensors: dict[str, torch.Tensor] = {}
    info: dict = {}
    checks: dict = {}
    section_vit(tensors, info, checks)
    section_head(tensors, checks)
    section_loss(tensors, info)
    section_adamw(tensors, checks)
    section_schedules(info)
    section_clip(tensors, info)

    for k, v in tensors.items():
        assert v.dtype == torch.float32, k
        assert torch.isfinite(v).all(), k
    tensors = {k: tensors[k].detach().contiguous().clone() for k in sorted(tensors)}

    os.makedirs(args.out, exist_ok=True)
    st_path = os.path.join(args.out, "reference.safetensors")
    # One metadata key only: safetensors writes the metadata map in hash order,
    # so two keys would make the header bytes differ from run to run.
    save_file(tensors, st_path, metadata={"generator": f"tools/gen-model-fixtures.py format {FORMAT}"})
    os.chmod(st_path, 0o644)
    back = load_file(st_path)
    assert set(back) == set(tensors) and all(torch.equal(back[k], tensors[k]) for k in tensors)
    with open(st_path, "rb") as fh:
        st_sha = hashlib.sha256(fh.read()).hexdigest()

    doc = {
        "format": FORMAT,
        "generator": "tools/gen-model-fixtures.py",
        "versions": versions,
        "pinned": PINNED,
        "vit": {**VIT_CFG, "resolutions": RESOLUTIONS, "batch": BATCH,
                "pos_embed_interpolation": "dino: F.interpolate(bicubic, scale_factor=(n+0.1)/4, "
                                           "align_corners=False, no antialias)",
                "param_init": info.pop("vit_param_init")},
        "head": HEAD_CFG,
        "loss": {**LOSS_CFG, "n_loss_terms": info.pop("loss_n_terms"),
                 "value": info.pop("loss_value")},
        "adamw": ADAMW_CFG,
        "clip": {**CLIP_CFG, "norms_in": info.pop("clip_norms_in"),
                 "norms_out": info.pop("clip_norms_out")},
        "sched_args": {**SCHED_ARGS, "sched_teacher_temp": TEACHER_TEMP_ARGS},
        **info,
        "checks": checks,
        "safetensors_sha256": st_sha,
        "tensors": {k: {"shape": list(v.shape), "dtype": "F32"} for k, v in tensors.items()},
    }
    with open(os.path.join(args.out, "reference.json"), "w") as fh:
        json.dump(doc, fh, indent=1)
        fh.write("\n")

    vrows = "\n".join(f"| {k} | {v} |" for k, v in versions.items())
    with open(os.path.join(args.out, "README.md"), "w") as fh:
        fh.write(README.format(versions=vrows))

    total = sum(os.path.getsize(os.path.join(args.out, f))
                for f in ("reference.safetensors", "reference.json", "README.md"))
    print(f"wrote {len(tensors)} tensors to {args.out} ({total} bytes in all)")
    for k, v in checks.items():
        print(f"  {k}: {v}")


if __name__ == "__main__":
    main()
