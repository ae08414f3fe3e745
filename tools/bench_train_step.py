#!/usr/bin/env python3
"""Time one DINO training step in PyTorch on the CPU, phase by phase.

The PyTorch side of benches/train_step.rs (cargo bench --bench train_step):
the same model, crops, loss, optimiser and EMA, timed in the same phases, so
the two can be compared side by side. The step follows the official
facebookresearch/dino main_dino.py train_one_epoch in float32 without AMP, with
the model, loss and optimiser helpers of tools/dino_torch.py (shared with
tools/dino_reference.py, the full training run):

  * model: the backbone of --config (default configs/quickstart.toml: patch 8,
    img 64, dim 96, depth 4, 3 heads; configs/bench_vit_tiny.toml: ViT-Ti/16)
    with mlp 4, qkv bias, LayerNorm eps 1e-6, exact GELU, CLS token, from
    timm's VisionTransformer, run with DINO's prepare_tokens and
    interpolate_pos_encoding so that the local crops work; the config's drop
    path (linear per block) on the student only. DINO head dim -> hidden ->
    hidden -> bottleneck, L2 normalise, weight-normalised Linear(bottleneck,
    out_dim, no bias) with weight_g fixed at 1 (norm_last_layer). Attention is
    DINO's explicit softmax(q k^T / sqrt(d)) v unless --fused-attn (torch's
    SDPA) is given. A ResNet config (configs/resnet_quickstart.toml) gets
    torchvision's Bottleneck ResNet of its resnet_layers/resnet_width, no fc,
    student and teacher both normalizing with batch statistics (the teacher is
    never put in eval mode), and the head's BatchNorm1d with use_bn_in_head.
  * the config's batch, 2 global crops and its local crops at its sizes,
    random normal inputs made once. Student: one backbone pass for the
    globals, one for the locals, the head once; teacher (same weights, no drop
    path): globals, no grad.
  * DINOLoss (student temp 0.1, teacher temp 0.04, centre momentum 0.9) over
    the (teacher global, other student view) pairs; AdamW lr 2.5e-4, weight
    decay 0.04 on the non-bias, non-1-D parameters (with optim.optimizer =
    "sgd" in the config: SGD, momentum 0.9, the same groups); DINO's per-tensor
    clip_gradients at 3.0; teacher EMA with momentum 0.996.

Phases, each timed with time.perf_counter(): forward (teacher + student +
loss), backward, optimizer (clipping + step + zero_grad), ema (teacher EMA +
centre update) and step (all of them). 5 warmup steps, then --steps timed
steps; each phase's median in ms (upper median, v[n // 2] of the sorted times,
as benches/train_step.rs takes it) and images/s = batch / median step.

Pinned reference versions (the venv of gen-model-fixtures.py):
    torch 2.15.0, timm 1.0.31 (Python 3.11)

Run from the repo root with any python3:

    python3 tools/bench_train_step.py [--config FILE] [--steps 30] [--threads 2]
                                      [--device cpu|cuda[:N]] [--amp] [--json] [--no-venv]

On a GPU machine without network (tools/gpu-check.sh run), --no-venv runs it on the
machine's own torch and timm.

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

import timm  # noqa: E402
import torch  # noqa: E402

from dino_torch import (Backbone, DINOHead, Dino, ResNetBackbone, clip_gradients,  # noqa: E402
                        dino_loss, ema_update, params_groups, teacher_targets, update_center)

N_GLOBAL = 2
STUDENT_TEMP, TEACHER_TEMP, CENTER_MOMENTUM = 0.1, 0.04, 0.9
LR, WEIGHT_DECAY, CLIP, EMA_MOMENTUM = 2.5e-4, 0.04, 3.0, 0.996
WARMUP = 5
PHASES = ("forward", "backward", "optimizer", "ema", "step")
# the recipe's named ViTs: embed_dim, depth, heads (src/model/mod.rs ARCHS), and ResNets:
# blocks per stage (RESNETS)
ARCHS = {"vit_tiny": (192, 12, 3), "vit_small": (384, 12, 6), "vit_base": (768, 12, 12)}
RESNETS = {"resnet50": [3, 4, 6, 3], "resnet101": [3, 4, 23, 3], "resnet152": [3, 8, 36, 3]}


def shape_of(config: str | None) -> dict:
    """The sizes the bench uses: configs/quickstart.toml's unless `config` names another of
    our TOML configs (its [model] and [data]; absent keys take the recipe's defaults)."""
    import tomllib
    path = config or os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                  "configs", "quickstart.toml")
    with open(path, "rb") as f:
        cfg = tomllib.load(f)
    m, d, o = cfg.get("model", {}), cfg.get("data", {}), cfg.get("optim", {})
    arch = m.get("arch", "vit_small")
    resnet = arch == "resnet" or arch in RESNETS
    dim, depth, heads = ARCHS.get(arch, (None, None, None))
    return {
        "patch": m.get("patch_size", 16), "img": m.get("img_size", 224),
        "dim": m.get("embed_dim", dim), "depth": m.get("depth", depth),
        "heads": m.get("num_heads", heads), "drop_path": m.get("drop_path_rate", 0.1),
        "out_dim": m.get("out_dim", 65536), "hidden": m.get("head_hidden_dim", 2048),
        "bottleneck": m.get("head_bottleneck_dim", 256),
        "resnet": (m.get("resnet_width", 64), m.get("resnet_layers", RESNETS.get(arch)))
        if resnet else None,
        "use_bn_in_head": m.get("use_bn_in_head", False),
        "optimizer": o.get("optimizer", "adamw"),
        "batch": d.get("batch_size", 64), "global_px": d.get("global_crop_size", 224),
        "local_px": d.get("local_crop_size", 96), "local_crops": d.get("local_crops_number", 8),
        "path": path,
    }


def make_dino(s: dict, drop_path_rate: float, fused_attn: bool) -> Dino:
    if s["resnet"]:
        width, layers = s["resnet"]
        backbone = ResNetBackbone(width, layers)
        features = width * 8 * 4
    else:
        backbone = Backbone(s["img"], s["patch"], s["dim"], s["depth"], s["heads"],
                            drop_path_rate, fused_attn)
        features = s["dim"]
    head = DINOHead(features, s["out_dim"], s["hidden"], s["bottleneck"], norm_last_layer=True,
                    use_bn=s["use_bn_in_head"])
    return Dino(backbone, head)


def time_steps(s: dict, batch: int, local_crops: int, steps: int, fused_attn: bool,
               device: torch.device, amp: bool) -> dict:
    torch.manual_seed(0)
    student = make_dino(s, s["drop_path"], fused_attn).to(device)
    # DINO builds the teacher without drop path and loads the student's weights.
    teacher = make_dino(s, 0.0, fused_attn).to(device)
    teacher.load_state_dict(student.state_dict())
    for p in teacher.parameters():
        p.requires_grad_(False)
    if s["optimizer"] == "sgd":
        optimizer = torch.optim.SGD(params_groups(student, WEIGHT_DECAY), lr=LR, momentum=0.9)
    else:
        optimizer = torch.optim.AdamW(params_groups(student, WEIGHT_DECAY), lr=LR)
    center = torch.zeros(1, s["out_dim"], device=device)
    ncrops = N_GLOBAL + local_crops
    globals_ = torch.randn(N_GLOBAL * batch, 3, s["global_px"], s["global_px"], device=device)
    locals_ = torch.randn(local_crops * batch, 3, s["local_px"], s["local_px"], device=device)

    def now() -> float:
        # a phase ends when the device has finished it
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    times = {k: [] for k in PHASES}
    for it in range(WARMUP + steps):
        t0 = now()
        # main_dino.py's AMP: autocast around the forward passes and the loss
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            with torch.no_grad():
                teacher_output = teacher([globals_])
            student_output = student([globals_, locals_])
            loss = dino_loss(student_output, teacher_targets(teacher_output, center, TEACHER_TEMP),
                             ncrops, STUDENT_TEMP)
        if not math.isfinite(loss.item()):
            sys.exit(f"loss is {loss.item()}")
        t1 = now()
        loss.backward()
        t2 = now()
        clip_gradients(student, CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t3 = now()
        ema_update(teacher, student, EMA_MOMENTUM)
        center = update_center(center, teacher_output.float(), CENTER_MOMENTUM)
        t4 = now()
        if it >= WARMUP:
            for k, (a, b) in zip(PHASES, ((t0, t1), (t1, t2), (t2, t3), (t3, t4), (t0, t4))):
                times[k].append((b - a) * 1e3)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=30, help="timed steps after 5 warmup steps")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--config", help="one of our TOML configs (default configs/quickstart.toml)")
    ap.add_argument("--batch", type=int, help="images per crop (default: the config's)")
    ap.add_argument("--local-crops", type=int, help="local crops (default: the config's)")
    ap.add_argument("--fused-attn", action="store_true",
                    help="torch's scaled_dot_product_attention instead of DINO's explicit attention")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    ap.add_argument("--amp", action="store_true",
                    help="bf16 autocast around the forward passes and the loss (main_dino.py's AMP)")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ap.add_argument("--no-venv", action="store_true",
                    help="run with the current interpreter instead of the pinned venv")
    args = ap.parse_args()
    if args.steps < 1:
        ap.error("--steps must be at least 1")
    torch.set_num_threads(args.threads)

    s = shape_of(args.config)
    batch = args.batch or s["batch"]
    local_crops = s["local_crops"] if args.local_crops is None else args.local_crops
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = time_steps(s, batch, local_crops, args.steps, args.fused_attn, device, args.amp)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    medians = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    images_per_sec = batch / (medians["step"] / 1e3)
    attn = "fused SDPA" if args.fused_attn else "explicit"
    precision = "bf16 autocast" if args.amp else "fp32"
    print(f"train step on {device}, {precision}, pytorch {torch.__version__}, timm {timm.__version__}, "
          f"{args.threads} threads, "
          f"{s['path']}, batch {batch}, {N_GLOBAL}x{s['global_px']}px + {local_crops}x{s['local_px']}px "
          f"crops, {attn} attention, {args.steps} steps (median ms):")
    for k in PHASES:
        print(f"  {k:<10} {medians[k]:9.2f}")
    print(f"  images/s   {images_per_sec:9.1f}")
    if peak is not None:
        print(f"  peak memory {peak / 2**20:.0f} MiB")
    if args.json:
        print(json.dumps({"framework": "pytorch", "torch": torch.__version__,
                          "device": str(device), "precision": precision,
                          "threads": args.threads, "steps": args.steps, "median_ms": medians,
                          "images_per_sec": images_per_sec, "peak_bytes": peak}))


if __name__ == "__main__":
    main()
