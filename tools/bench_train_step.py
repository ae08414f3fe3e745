#!/usr/bin/env python3
"""Time one DINO training step in PyTorch on the CPU, phase by phase.

The PyTorch side of benches/train_step.rs (cargo bench --bench train_step):
the same model, crops, loss, optimiser and EMA, timed in the same phases, so
the two can be compared side by side. The step follows the official
facebookresearch/dino main_dino.py train_one_epoch in float32 without AMP:

  * model: configs/quickstart.toml's ViT (patch 8, img 64, dim 96, depth 4,
    3 heads, mlp 4, qkv bias, LayerNorm eps 1e-6, exact GELU, CLS token) from
    timm's VisionTransformer, run with DINO's prepare_tokens and
    interpolate_pos_encoding so that the 32 px local crops work; drop path 0.1
    (linear per block) on the student only. DINO head 96 -> 256 -> 256 -> 64,
    L2 normalise, weight-normalised Linear(64, 1024, no bias) with weight_g
    fixed at 1 (norm_last_layer). Attention is DINO's explicit
    softmax(q k^T / sqrt(d)) v unless --fused-attn (torch's SDPA) is given.
  * batch 32: 2 global crops 64 px, 4 local crops 32 px, random normal inputs
    made once. Student: one backbone pass for the globals, one for the locals,
    the head once; teacher (same weights, no drop path): globals, no grad.
  * DINOLoss (student temp 0.1, teacher temp 0.04, centre momentum 0.9) over
    the 10 (teacher global, other student view) pairs; AdamW lr 2.5e-4, weight
    decay 0.04 on the non-bias, non-1-D parameters; DINO's per-tensor
    clip_gradients at 3.0; teacher EMA with momentum 0.996.

Phases, each timed with time.perf_counter(): forward (teacher + student +
loss), backward, optimizer (clipping + step + zero_grad), ema (teacher EMA +
centre update) and step (all of them). 5 warmup steps, then --steps timed
steps; each phase's median in ms (upper median, v[n // 2] of the sorted times,
as benches/train_step.rs takes it) and images/s = batch / median step.

Pinned reference versions (the venv of gen-model-fixtures.py):
    torch 2.15.0, timm 1.0.31 (Python 3.11)

Run from the repo root with any python3:

    python3 tools/bench_train_step.py [--steps 30] [--threads 2] [--json]

It creates (or reuses) the venv ~/.cache/dino-stream/venv-fixtures, installs
the pinned versions into it from PyPI if they are missing, and re-runs itself
with the venv's interpreter. No weights are downloaded (random weights only).
With --json the last line of the output is one JSON object.
"""
from __future__ import annotations

import argparse
import os
import sys

PINNED = {"torch": "2.15.0", "timm": "1.0.31"}


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from pinned_venv import bootstrap
    bootstrap(__file__, PINNED, sys.argv[1:])

# Heavy imports only after the bootstrap.
import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from functools import partial  # noqa: E402

import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

PATCH, IMG, DIM, DEPTH, HEADS = 8, 64, 96, 4, 3
HIDDEN, BOTTLENECK, OUT_DIM = 256, 64, 1024
GLOBAL_PX, LOCAL_PX, N_GLOBAL = 64, 32, 2
STUDENT_TEMP, TEACHER_TEMP, CENTER_MOMENTUM = 0.1, 0.04, 0.9
LR, WEIGHT_DECAY, CLIP, EMA_MOMENTUM = 2.5e-4, 0.04, 3.0, 0.996
DROP_PATH, WARMUP = 0.1, 5
PHASES = ("forward", "backward", "optimizer", "ema", "step")


def dino_pos_encoding(pos_embed: torch.Tensor, npatch: int, w: int, h: int) -> torch.Tensor:
    """facebookresearch/dino vision_transformer.py interpolate_pos_encoding."""
    N = pos_embed.shape[1] - 1
    if npatch == N and w == h:
        return pos_embed
    dim = pos_embed.shape[-1]
    # DINO adds 0.1 so the scale factor never floors one patch short (dino issue #8)
    w0, h0 = w // PATCH + 0.1, h // PATCH + 0.1
    s = int(math.sqrt(N))
    patch = F.interpolate(pos_embed[:, 1:].reshape(1, s, s, dim).permute(0, 3, 1, 2),
                          scale_factor=(w0 / math.sqrt(N), h0 / math.sqrt(N)), mode="bicubic")
    patch = patch.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat((pos_embed[:, :1], patch), dim=1)


class Backbone(nn.Module):
    """timm's ViT modules under DINO's forward (CLS token after the final norm).

    timm's own forward would resample pos_embed its way (antialiased, by size)
    and needs dynamic_img_size; DINO's is what the Rust model reproduces.
    """

    def __init__(self, drop_path_rate: float, fused_attn: bool):
        super().__init__()
        self.vit = VisionTransformer(
            img_size=IMG, patch_size=PATCH, embed_dim=DIM, depth=DEPTH, num_heads=HEADS,
            mlp_ratio=4.0, qkv_bias=True, num_classes=0, class_token=True, global_pool="token",
            norm_layer=partial(nn.LayerNorm, eps=1e-6), drop_path_rate=drop_path_rate)
        for blk in self.vit.blocks:
            blk.attn.fused_attn = fused_attn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.vit
        B, _, w, h = x.shape
        t = v.patch_embed.proj(x).flatten(2).transpose(1, 2)
        t = torch.cat((v.cls_token.expand(B, -1, -1), t), dim=1)
        t = t + dino_pos_encoding(v.pos_embed, t.shape[1] - 1, w, h)
        t = v.blocks(t)
        return v.norm(t)[:, 0]


class DINOHead(nn.Module):
    """facebookresearch/dino DINOHead, nlayers 3, no BN, norm_last_layer=True."""

    def __init__(self):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(DIM, HIDDEN), nn.GELU(), nn.Linear(HIDDEN, HIDDEN),
                                 nn.GELU(), nn.Linear(HIDDEN, BOTTLENECK))
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        last = nn.Linear(BOTTLENECK, OUT_DIM, bias=False)
        self.last_layer = nn.utils.parametrizations.weight_norm(last, dim=0)
        g = self.last_layer.parametrizations.weight.original0  # weight_g
        with torch.no_grad():
            g.fill_(1.0)
        g.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1, p=2))


class Dino(nn.Module):
    """MultiCropWrapper: one backbone pass per resolution, the head once."""

    def __init__(self, drop_path_rate: float, fused_attn: bool):
        super().__init__()
        self.backbone = Backbone(drop_path_rate, fused_attn)
        self.head = DINOHead()

    def forward(self, crops: list[torch.Tensor]) -> torch.Tensor:
        return self.head(torch.cat([self.backbone(c) for c in crops]))


def dino_loss(student_output, teacher_output, center, ncrops):
    """facebookresearch/dino main_dino.py DINOLoss.forward, less the centre update."""
    student_out = (student_output / STUDENT_TEMP).chunk(ncrops)
    teacher_out = F.softmax((teacher_output - center) / TEACHER_TEMP, dim=-1).detach().chunk(2)
    total_loss, n_loss_terms = 0, 0
    for iq, q in enumerate(teacher_out):
        for v in range(len(student_out)):
            if v == iq:
                continue
            total_loss += torch.sum(-q * F.log_softmax(student_out[v], dim=-1), dim=-1).mean()
            n_loss_terms += 1
    return total_loss / n_loss_terms


def params_groups(model: nn.Module) -> list[dict]:
    """facebookresearch/dino utils.get_params_groups (frozen weight_g left out)."""
    regularized, not_regularized = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.endswith(".bias") or len(p.shape) == 1:
            not_regularized.append(p)
        else:
            regularized.append(p)
    return [{"params": regularized, "weight_decay": WEIGHT_DECAY},
            {"params": not_regularized, "weight_decay": 0.0}]


def clip_gradients(model: nn.Module, clip: float) -> list[float]:
    """facebookresearch/dino utils.clip_gradients (the .item() per tensor included)."""
    norms = []
    for p in model.parameters():
        if p.grad is not None:
            param_norm = p.grad.norm(2)
            norms.append(param_norm.item())
            clip_coef = clip / (param_norm + 1e-6)
            if clip_coef < 1:
                p.grad.mul_(clip_coef)
    return norms


def time_steps(batch: int, local_crops: int, steps: int, fused_attn: bool) -> dict:
    torch.manual_seed(0)
    student = Dino(DROP_PATH, fused_attn)
    # DINO builds the teacher without drop path and loads the student's weights.
    teacher = Dino(0.0, fused_attn)
    teacher.load_state_dict(student.state_dict())
    for p in teacher.parameters():
        p.requires_grad_(False)
    optimizer = torch.optim.AdamW(params_groups(student), lr=LR)
    center = torch.zeros(1, OUT_DIM)
    ncrops = N_GLOBAL + local_crops
    globals_ = torch.randn(N_GLOBAL * batch, 3, GLOBAL_PX, GLOBAL_PX)
    locals_ = torch.randn(local_crops * batch, 3, LOCAL_PX, LOCAL_PX)
    student_params = list(student.parameters())
    teacher_params = list(teacher.parameters())

    times = {k: [] for k in PHASES}
    for it in range(WARMUP + steps):
        t0 = time.perf_counter()
        with torch.no_grad():
            teacher_output = teacher([globals_])
        student_output = student([globals_, locals_])
        loss = dino_loss(student_output, teacher_output, center, ncrops)
        if not math.isfinite(loss.item()):
            sys.exit(f"loss is {loss.item()}")
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        clip_gradients(student, CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t3 = time.perf_counter()
        with torch.no_grad():
            for ps, pt in zip(student_params, teacher_params):
                pt.mul_(EMA_MOMENTUM).add_((1 - EMA_MOMENTUM) * ps.detach())
            batch_center = teacher_output.sum(dim=0, keepdim=True) / len(teacher_output)
            center = center * CENTER_MOMENTUM + batch_center * (1 - CENTER_MOMENTUM)
        t4 = time.perf_counter()
        if it >= WARMUP:
            for k, (a, b) in zip(PHASES, ((t0, t1), (t1, t2), (t2, t3), (t3, t4), (t0, t4))):
                times[k].append((b - a) * 1e3)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=30, help="timed steps after 5 warmup steps")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--batch", type=int, default=32, help="images per crop (default 32)")
    ap.add_argument("--local-crops", type=int, default=4, help="local crops (default 4)")
    ap.add_argument("--fused-attn", action="store_true",
                    help="torch's scaled_dot_product_attention instead of DINO's explicit attention")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ap.add_argument("--no-venv", action="store_true",
                    help="run with the current interpreter instead of the pinned venv")
    args = ap.parse_args()
    if args.steps < 1:
        ap.error("--steps must be at least 1")
    torch.set_num_threads(args.threads)

    times = time_steps(args.batch, args.local_crops, args.steps, args.fused_attn)
    medians = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    images_per_sec = args.batch / (medians["step"] / 1e3)
    attn = "fused SDPA" if args.fused_attn else "explicit"
    print(f"train step, pytorch {torch.__version__}, timm {timm.__version__}, {args.threads} threads, "
          f"batch {args.batch}, {N_GLOBAL}x{GLOBAL_PX}px + {args.local_crops}x{LOCAL_PX}px crops, "
          f"{attn} attention, {args.steps} steps (median ms):")
    for k in PHASES:
        print(f"  {k:<10} {medians[k]:9.2f}")
    print(f"  images/s   {images_per_sec:9.1f}")
    if args.json:
        print(json.dumps({"framework": "pytorch", "torch": torch.__version__,
                          "threads": args.threads, "steps": args.steps, "median_ms": medians,
                          "images_per_sec": images_per_sec}))


if __name__ == "__main__":
    main()
