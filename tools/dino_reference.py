#!/usr/bin/env python3
"""Train DINO with PyTorch as the official code does, from one of our TOML configs.

A side-by-side reference for dino-stream's trainer: the same run (model, crops,
augmentation, loss, schedules, optimiser, EMA teacher) done the way
facebookresearch/dino main_dino.py does it (train_one_epoch, DataAugmentationDINO,
DINOLoss, utils.cosine_scheduler / get_params_groups / clip_gradients /
cancel_gradients_last_layer / LARS), on the CPU in float32 without AMP, on one process.
The hyper-parameters come from our config file (same keys and defaults as src/config.rs,
`--set section.key=value` overrides); the teacher backbone is saved in the layout our CLI
imports and evaluates:

    python3 tools/dino_reference.py --config configs/fmnist.toml \\
        --images ~/.cache/dino-stream/samples/fmnist-train-20000 --out /tmp/ref-run \\
        [--set optim.lr=0.002 ...] [--max-steps N] [--threads 2] [--workers 1]
    target/release/dino-stream import --weights /tmp/ref-run/teacher_backbone.pth \\
        --config configs/fmnist.toml --out /tmp/ref-run/ckpt
    target/release/dino-stream knn --checkpoint /tmp/ref-run/ckpt ...

Backbones: the ViTs (vit_tiny / vit_small / vit_base, or custom with embed_dim, depth and
num_heads) and the ResNets (resnet50 / resnet101 / resnet152, or resnet with
model.resnet_layers and model.resnet_width): torchvision's Bottleneck ResNet without fc
(dino_torch.ResNetBackbone). drop_path_rate applies to ViTs only; model.use_bn_in_head puts
BatchNorm1d in the head. As main_dino.py does for a network with batch norms, student and
teacher both stay in train mode (batch statistics of each same-sized crop group; the
teacher's running statistics follow its own forwards), the EMA is over parameters only, and
the teacher starts as the student's full state dict (buffers included). On one process
main_dino.py's SyncBatchNorm is plain batch norm. optim.optimizer: adamw (the ViT recipe),
sgd (momentum 0.9) or lars (utils.LARS, eta 0.001), each with the per-iteration lr schedule
on every parameter group and the weight-decay schedule on the first.

--images is a class-folder dataset (torchvision ImageFolder; JPEG/PNG, made RGB). OUT gets
metrics.jsonl (our trainer's fields), config.json (the effective config), and at each
epoch end and at the end teacher_backbone.pth / student_backbone.pth: torch.save of the
backbone's state dict, the layout of DINO's released backbones (a ViT's as timm's
VisionTransformer with num_classes=0; a ResNet's as torchvision's ResNet without fc.*).
Network and loss pieces live in tools/dino_torch.py (shared with bench_train_step.py).
Runs in the pinned venv ~/.cache/dino-stream/venv-fixtures (see pinned_venv.py).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import sys
import time

PINNED = {"torch": "2.15.0", "timm": "1.0.31", "torchvision": "0.29.2"}

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from pinned_venv import bootstrap
    bootstrap(__file__, PINNED, sys.argv[1:])

# libgomp's idle threads spin; on cores busy with other jobs that made 2-thread steps ~10x
# slower. Sleeping waiters cost little here; set OMP_WAIT_POLICY=ACTIVE to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Heavy imports only after the bootstrap (and the OpenMP setting).
import tomllib  # noqa: E402

import numpy as np  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from PIL import ImageFilter, ImageOps  # noqa: E402
from torch.utils.data import DataLoader, DistributedSampler  # noqa: E402
from torchvision import datasets, transforms  # noqa: E402

from torchvision.models.resnet import Bottleneck  # noqa: E402

from dino_torch import (LARS, Backbone, DINOHead, Dino, ResNetBackbone,  # noqa: E402
                        cancel_gradients_last_layer, clip_gradients, cosine_scheduler, dino_loss,
                        ema_update, params_groups, teacher_targets, teacher_temp_schedule,
                        update_center)

# src/config.rs's keys and defaults (the official recipe); keys our trainer has and this
# tool has no use for (data.split, data.workers, ...) are accepted and ignored.
DEFAULTS = {
    "model": {"arch": "vit_small", "patch_size": 16, "img_size": 224, "embed_dim": 384,
              "depth": 12, "num_heads": 6, "drop_path_rate": 0.1, "out_dim": 65536,
              "head_hidden_dim": 2048, "head_bottleneck_dim": 256, "norm_last_layer": True,
              # ResNets: filled from a named arch by resolve_model
              "resnet_layers": None, "resnet_width": None, "use_bn_in_head": False},
    "data": {"split": "train", "batch_size": 64, "global_crop_size": 224,
             "global_crops_scale": [0.4, 1.0], "local_crop_size": 96, "local_crops_number": 8,
             "local_crops_scale": [0.05, 0.4], "workers": 0, "shuffle_window": 4,
             "dct_scaling": False},
    "augment": {"flip_p": 0.5, "color_jitter_p": 0.8, "brightness": 0.4, "contrast": 0.4,
                "saturation": 0.2, "hue": 0.1, "grayscale_p": 0.2, "blur_sigma": [0.1, 2.0],
                "global_1_blur_p": 1.0, "global_2_blur_p": 0.1, "local_blur_p": 0.5,
                "global_2_solarize_p": 0.2},
    "optim": {"optimizer": "adamw", "epochs": 100, "lr": 0.0005, "min_lr": 1e-6,
              "warmup_epochs": 10,
              "weight_decay": 0.04, "weight_decay_end": 0.4, "clip_grad": 3.0,
              "freeze_last_layer": 1, "momentum_teacher": 0.996},
    "loss": {"warmup_teacher_temp": 0.04, "teacher_temp": 0.04, "warmup_teacher_temp_epochs": 0,
             "student_temp": 0.1, "center_momentum": 0.9},
    "run": {"seed": 0, "log_every": 10, "checkpoint_every": 0, "keep_checkpoints": 3,
            "max_steps": 0, "threads": 0, "precision": "fp32", "nodes": 1, "node_rank": 0,
            "coordinator": "", "collective_timeout": 600},
}
ARCHS = {"vit_tiny": (192, 12, 3), "vit_small": (384, 12, 6), "vit_base": (768, 12, 12)}
# torchvision's Bottleneck ResNets: blocks per stage, stem width
RESNETS = {"resnet50": ([3, 4, 6, 3], 64), "resnet101": ([3, 4, 23, 3], 64),
           "resnet152": ([3, 8, 36, 3], 64)}
OPTIMIZERS = ("adamw", "sgd", "lars")


def is_resnet(m: dict) -> bool:
    return m["arch"] == "resnet" or m["arch"] in RESNETS


def resolve_model(path: str, m: dict, given: set[str]) -> None:
    """Config::resolve for the ResNet keys: a named ResNet fixes resnet_layers and
    resnet_width (an explicit value must agree), arch "resnet" needs resnet_layers (width
    64 unless given), and keys of the other family are refused."""
    other = ("resnet_layers", "resnet_width") if not is_resnet(m) else (
        "embed_dim", "depth", "num_heads")
    for key in other:
        if key in given:
            sys.exit(f"{path}: model.{key} does not apply to arch `{m['arch']}`; drop the key")
    if not is_resnet(m):
        return
    if m["arch"] in RESNETS:
        layers, width = RESNETS[m["arch"]]
        for key, fixed in (("resnet_layers", layers), ("resnet_width", width)):
            if key in given and m[key] != fixed:
                sys.exit(f"{path}: model.{key} = {m[key]} contradicts arch `{m['arch']}`, "
                         f"whose value is {fixed}; drop the key, or set model.arch = \"resnet\"")
        m["resnet_layers"], m["resnet_width"] = list(layers), width
    else:
        if m["resnet_layers"] is None:
            sys.exit(f"{path}: model.resnet_layers is required with arch = \"resnet\" "
                     "(blocks per stage, e.g. [3, 4, 6, 3])")
        if m["resnet_width"] is None:
            m["resnet_width"] = 64
    layers, width = m["resnet_layers"], m["resnet_width"]
    if (not isinstance(layers, list) or len(layers) != 4
            or not all(isinstance(b, int) and b >= 1 for b in layers)):
        sys.exit(f"{path}: model.resnet_layers must be 4 block counts >= 1, not {layers!r}")
    if not isinstance(width, int) or width < 1:
        sys.exit(f"{path}: model.resnet_width must be a positive integer, not {width!r}")


def load_config(path: str, overrides: list[str]) -> dict:
    """Config::load: the file, `section.key=value` overrides (TOML values, a bare word a
    string), over the defaults; unknown keys are errors."""
    with open(path, "rb") as f:
        table = tomllib.load(f)
    for item in overrides:
        key, sep, text = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            sys.exit(f"bad override `{item}`: expected KEY=VALUE, e.g. optim.epochs=5")
        try:
            value = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()
        table.setdefault(section, {})[name] = value
    cfg = copy.deepcopy(DEFAULTS)
    for section, values in table.items():
        if section not in cfg or not isinstance(values, dict):
            sys.exit(f"{path}: unknown section `{section}`")
        for k, v in values.items():
            if k not in cfg[section]:
                sys.exit(f"{path}: unknown key `{section}.{k}`")
            cfg[section][k] = v
    resolve_model(path, cfg["model"], set(table.get("model", {})))
    if cfg["optim"]["optimizer"] not in OPTIMIZERS:
        sys.exit(f"{path}: optim.optimizer `{cfg['optim']['optimizer']}`: use "
                 + ", ".join(OPTIMIZERS))
    return cfg


class GaussianBlur:
    """facebookresearch/dino utils.GaussianBlur (PIL's blur, radius drawn uniformly)."""

    def __init__(self, p: float, radius_min: float, radius_max: float):
        self.prob, self.radius_min, self.radius_max = p, radius_min, radius_max

    def __call__(self, img):
        if not random.random() <= self.prob:  # `<=` as upstream: p 0 still blurs 1 in 2^53
            return img
        return img.filter(ImageFilter.GaussianBlur(
            radius=random.uniform(self.radius_min, self.radius_max)))


class Solarization:
    """facebookresearch/dino utils.Solarization (threshold 128)."""

    def __init__(self, p: float):
        self.p = p

    def __call__(self, img):
        return ImageOps.solarize(img) if random.random() < self.p else img


class DataAugmentationDINO:
    """main_dino.py DataAugmentationDINO with the config's sizes, scales and probabilities."""

    def __init__(self, d: dict, a: dict):
        flip_and_color_jitter = transforms.Compose([
            transforms.RandomHorizontalFlip(p=a["flip_p"]),
            transforms.RandomApply([transforms.ColorJitter(
                brightness=a["brightness"], contrast=a["contrast"],
                saturation=a["saturation"], hue=a["hue"])], p=a["color_jitter_p"]),
            transforms.RandomGrayscale(p=a["grayscale_p"]),
        ])
        normalize = transforms.Compose([
            transforms.ToTensor(),
            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ])
        lo, hi = a["blur_sigma"]

        def crop(size, scale):
            return transforms.RandomResizedCrop(
                size, scale=tuple(scale), interpolation=transforms.InterpolationMode.BICUBIC)

        g, gs = d["global_crop_size"], d["global_crops_scale"]
        self.global_transfo1 = transforms.Compose([
            crop(g, gs), flip_and_color_jitter, GaussianBlur(a["global_1_blur_p"], lo, hi),
            normalize])
        self.global_transfo2 = transforms.Compose([
            crop(g, gs), flip_and_color_jitter, GaussianBlur(a["global_2_blur_p"], lo, hi),
            Solarization(a["global_2_solarize_p"]), normalize])
        self.local_crops_number = d["local_crops_number"]
        self.local_transfo = transforms.Compose([
            crop(d["local_crop_size"], d["local_crops_scale"]), flip_and_color_jitter,
            GaussianBlur(a["local_blur_p"], lo, hi), normalize])

    def __call__(self, image):
        crops = [self.global_transfo1(image), self.global_transfo2(image)]
        crops += [self.local_transfo(image) for _ in range(self.local_crops_number)]
        return crops


def make_optimizer(name: str, groups: list[dict]) -> torch.optim.Optimizer:
    """optim.optimizer as main_dino.py builds it (AdamW for the ViT recipe, SGD or LARS for
    convnets); the schedules set lr and weight decay every iteration."""
    optimizers = {
        "adamw": lambda: torch.optim.AdamW(groups),
        "sgd": lambda: torch.optim.SGD(groups, lr=0, momentum=0.9),
        "lars": lambda: LARS(groups),
    }
    return optimizers[name]()


def build(cfg: dict, drop_path_rate: float) -> Dino:
    m = cfg["model"]
    if is_resnet(m):
        # drop path does not apply to a ResNet (main_dino.py builds torchvision's plainly)
        backbone = ResNetBackbone(m["resnet_width"], m["resnet_layers"])
        dim = m["resnet_width"] * 8 * Bottleneck.expansion
    else:
        dim, depth, heads = ARCHS.get(m["arch"], (m["embed_dim"], m["depth"], m["num_heads"]))
        backbone = Backbone(m["img_size"], m["patch_size"], dim, depth, heads, drop_path_rate)
        # DINO's ViT draws cls_token from trunc_normal(std 0.02); timm's uses normal(1e-6)
        torch.nn.init.trunc_normal_(backbone.vit.cls_token, std=0.02)
    return Dino(backbone, DINOHead(dim, m["out_dim"], m["head_hidden_dim"],
                                   m["head_bottleneck_dim"], m["norm_last_layer"],
                                   use_bn=m["use_bn_in_head"]))


def entropy(p: torch.Tensor) -> float:
    """Mean row entropy in nats, as src/loss.rs teacher_stats."""
    return float(-(p * p.clamp_min(1e-30).log()).sum() / p.shape[0])


def save_backbones(out: str, student: Dino, teacher: Dino) -> None:
    for name, net in (("teacher", teacher), ("student", student)):
        path = os.path.join(out, f"{name}_backbone.pth")
        # write then rename: a reader (or a kill mid-save) never sees half a file
        # a ViT as timm's VisionTransformer, a ResNet as torchvision's (no fc)
        backbone = net.backbone if isinstance(net.backbone, ResNetBackbone) else net.backbone.vit
        torch.save(backbone.state_dict(), path + ".tmp")
        os.replace(path + ".tmp", path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="our TOML run config")
    ap.add_argument("--images", required=True, help="class-folder image dataset")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key, e.g. optim.lr=0.002 (repeatable)")
    ap.add_argument("--max-steps", type=int, help="same as --set run.max_steps=N")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--workers", type=int, default=1, help="DataLoader workers (default 1)")
    ap.add_argument("--no-venv", action="store_true",
                    help="run with the current interpreter instead of the pinned venv")
    args = ap.parse_args()
    max_steps = [] if args.max_steps is None else [f"run.max_steps={args.max_steps}"]
    cfg = load_config(args.config, args.set + max_steps)
    d, o, lc, r = cfg["data"], cfg["optim"], cfg["loss"], cfg["run"]
    torch.set_num_threads(args.threads)
    # utils.fix_random_seeds (torch, numpy), plus Python's for blur/solarize with 0 workers
    torch.manual_seed(r["seed"])
    np.random.seed(r["seed"])
    random.seed(r["seed"])

    dataset = datasets.ImageFolder(os.path.expanduser(args.images),
                                   transform=DataAugmentationDINO(d, cfg["augment"]))
    # one replica of main_dino.py's DistributedSampler: a fresh shuffle per epoch (seed+epoch)
    sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=r["seed"])
    loader = DataLoader(dataset, sampler=sampler, batch_size=d["batch_size"],
                        num_workers=args.workers, drop_last=True)
    niter, epochs, batch = len(loader), o["epochs"], d["batch_size"]
    if niter == 0:
        sys.exit(f"{args.images}: {len(dataset)} images, fewer than one batch of {batch}")
    total = epochs * niter if r["max_steps"] == 0 else min(r["max_steps"], epochs * niter)

    student = build(cfg, cfg["model"]["drop_path_rate"])
    teacher = build(cfg, 0.0)  # the teacher has no drop path and starts as the student
    teacher.load_state_dict(student.state_dict())  # buffers (batch-norm statistics) too
    teacher.requires_grad_(False)
    # both stay in train mode, as in main_dino.py: batch norms normalize with the batch's
    # statistics, the teacher's too (it is never put in eval mode)
    student.train()
    teacher.train()
    lr_s = cosine_scheduler(o["lr"] * batch / 256.0, o["min_lr"], epochs, niter,
                            warmup_epochs=o["warmup_epochs"])
    wd_s = cosine_scheduler(o["weight_decay"], o["weight_decay_end"], epochs, niter)
    mom_s = cosine_scheduler(o["momentum_teacher"], 1.0, epochs, niter)
    temp_s = teacher_temp_schedule(lc["warmup_teacher_temp"], lc["teacher_temp"],
                                   lc["warmup_teacher_temp_epochs"], epochs)
    optimizer = make_optimizer(o["optimizer"], params_groups(student, wd_s[0]))
    center = torch.zeros(1, cfg["model"]["out_dim"])
    ncrops = 2 + d["local_crops_number"]

    os.makedirs(args.out, exist_ok=True)
    run = {"images": args.images, "num_images": len(dataset), "steps_per_epoch": niter,
           "total_steps": total, "threads": args.threads, "workers": args.workers,
           "torch": torch.__version__, "timm": timm.__version__,
           "torchvision": torchvision.__version__}
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump({**cfg, "reference": run}, f, indent=2)
    metrics = open(os.path.join(args.out, "metrics.jsonl"), "w")
    arch = (f"{cfg['model']['arch']} {cfg['model']['resnet_layers']} width "
            f"{cfg['model']['resnet_width']}" if is_resnet(cfg["model"]) else cfg["model"]["arch"])
    print(f"reference: {arch}, {o['optimizer']}; "
          f"{len(dataset)} images, {niter} steps/epoch, {total} steps, "
          f"{args.threads} threads, {args.workers} workers", file=sys.stderr)

    step, win = 0, {"loss": 0.0, "wait": 0.0, "time": 0.0, "n": 0}
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        t_prev = time.perf_counter()
        for i, (images, _) in enumerate(loader):
            t_data = time.perf_counter()
            it = niter * epoch + i  # global training iteration
            for j, group in enumerate(optimizer.param_groups):
                group["lr"] = lr_s[it]
                if j == 0:  # only the first group is regularized
                    group["weight_decay"] = wd_s[it]
            with torch.no_grad():
                teacher_output = teacher(images[:2])  # only the 2 global views
            student_output = student(images)
            targets = teacher_targets(teacher_output, center, temp_s[epoch])
            loss = dino_loss(student_output, targets, ncrops, lc["student_temp"])
            center = update_center(center, teacher_output, lc["center_momentum"])
            if not math.isfinite(loss.item()):
                sys.exit(f"loss is {loss.item()} at step {step}, stopping training")

            optimizer.zero_grad()
            loss.backward()
            if o["clip_grad"]:
                clip_gradients(student, o["clip_grad"])
            cancel_gradients_last_layer(epoch, student, o["freeze_last_layer"])
            optimizer.step()
            ema_update(teacher, student, mom_s[it])
            step += 1

            now = time.perf_counter()
            for k, v in (("loss", loss.item()), ("wait", t_data - t_prev),
                         ("time", now - t_prev), ("n", 1)):
                win[k] += v
            t_prev = now
            if step % r["log_every"] == 0 or step == total:
                n, secs = win["n"], max(win["time"], 1e-9)
                line = {"step": step, "epoch": epoch, "loss": win["loss"] / n,
                        "lr": float(lr_s[it]), "wd": float(wd_s[it]),
                        "momentum": float(mom_s[it]), "teacher_temp": float(temp_s[epoch]),
                        "images_per_sec": n * batch / secs, "data_wait": win["wait"] / n,
                        "data_wait_fraction": win["wait"] / secs, "step_time": secs / n,
                        "teacher_entropy": entropy(targets),
                        "teacher_marginal_entropy": entropy(targets.mean(0, keepdim=True))}
                metrics.write(json.dumps(line) + "\n")
                metrics.flush()
                print("step {step}/{total} epoch {epoch} loss {loss:.4f} lr {lr:.2e} "
                      "H {teacher_entropy:.3f}/{teacher_marginal_entropy:.3f} "
                      "{images_per_sec:.1f} img/s (wait {data_wait_fraction:.0%})"
                      .format(total=total, **line), file=sys.stderr)
                win = {"loss": 0.0, "wait": 0.0, "time": 0.0, "n": 0}
            if step >= total:
                break
        save_backbones(args.out, student, teacher)
        if step >= total:
            break
    metrics.close()
    print(f"saved {os.path.join(args.out, 'teacher_backbone.pth')}", file=sys.stderr)


if __name__ == "__main__":
    main()
