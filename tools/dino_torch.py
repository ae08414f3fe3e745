"""PyTorch pieces of facebookresearch/dino shared by the reference tools.

The network, loss and optimiser helpers of the official main_dino.py / utils.py /
vision_transformer.py, sized by arguments, for tools/bench_train_step.py (one timed step)
and tools/dino_reference.py (a full training run). The ViT is timm's VisionTransformer
(num_classes=0, so its state dict is the layout of DINO's released backbones and of our
import) run under DINO's prepare_tokens and interpolate_pos_encoding. Needs torch, timm
and numpy: import it after pinned_venv.bootstrap.
"""
from __future__ import annotations

import math
from functools import partial

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torchvision.models.resnet import Bottleneck, ResNet


def dino_pos_encoding(pos_embed: torch.Tensor, patch: int, w: int, h: int) -> torch.Tensor:
    """facebookresearch/dino vision_transformer.py interpolate_pos_encoding."""
    npatch = (w // patch) * (h // patch)
    N = pos_embed.shape[1] - 1
    if npatch == N and w == h:
        return pos_embed
    dim = pos_embed.shape[-1]
    # DINO adds 0.1 so the scale factor never floors one patch short (dino issue #8)
    w0, h0 = w // patch + 0.1, h // patch + 0.1
    s = int(math.sqrt(N))
    grid = F.interpolate(pos_embed[:, 1:].reshape(1, s, s, dim).permute(0, 3, 1, 2),
                         scale_factor=(w0 / math.sqrt(N), h0 / math.sqrt(N)), mode="bicubic")
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat((pos_embed[:, :1], grid), dim=1)


class Backbone(nn.Module):
    """timm's ViT modules under DINO's forward (CLS token after the final norm).

    mlp 4, qkv bias, LayerNorm eps 1e-6, exact GELU, drop path linear per block.
    timm's own forward would resample pos_embed its way (antialiased, by size) and needs
    dynamic_img_size; DINO's is what the Rust model reproduces. `fused_attn` picks torch's
    SDPA over DINO's explicit softmax(q k^T / sqrt(d)) v.
    """

    def __init__(self, img_size: int, patch_size: int, embed_dim: int, depth: int,
                 num_heads: int, drop_path_rate: float = 0.0, fused_attn: bool = False):
        super().__init__()
        self.patch_size = patch_size
        self.vit = VisionTransformer(
            img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
            num_heads=num_heads, mlp_ratio=4.0, qkv_bias=True, num_classes=0, class_token=True,
            global_pool="token", norm_layer=partial(nn.LayerNorm, eps=1e-6),
            drop_path_rate=drop_path_rate)
        for blk in self.vit.blocks:
            blk.attn.fused_attn = fused_attn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.vit
        B, _, w, h = x.shape
        t = v.patch_embed.proj(x).flatten(2).transpose(1, 2)
        t = torch.cat((v.cls_token.expand(B, -1, -1), t), dim=1)
        t = t + dino_pos_encoding(v.pos_embed, self.patch_size, w, h)
        t = v.blocks(t)
        return v.norm(t)[:, 0]


class ResNetBackbone(nn.Module):
    """torchvision's ResNet of Bottleneck blocks with stem width `width` (64: resnet50 for
    layers [3, 4, 6, 3]) and no fc: the attributes ResNet.__init__ sets and its own
    _make_layer, so module names and blocks are torchvision's."""

    def __init__(self, width: int, layers: list[int]):
        super().__init__()
        self._norm_layer = nn.BatchNorm2d
        self.inplanes = width
        self.dilation = 1
        self.groups = 1
        self.base_width = 64
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        for i, blocks in enumerate(layers):
            layer = ResNet._make_layer(self, Bottleneck, width << i, blocks, 1 if i == 0 else 2)
            setattr(self, f"layer{i + 1}", layer)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


class DINOHead(nn.Module):
    """facebookresearch/dino DINOHead: nlayers 3, weight-normalised last layer, BatchNorm1d
    after the hidden layers with use_bn."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048,
                 bottleneck_dim: int = 256, norm_last_layer: bool = True, use_bn: bool = False):
        super().__init__()
        bn = (lambda: [nn.BatchNorm1d(hidden_dim)]) if use_bn else (lambda: [])
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), *bn(), nn.GELU(),
                                 nn.Linear(hidden_dim, hidden_dim), *bn(), nn.GELU(),
                                 nn.Linear(hidden_dim, bottleneck_dim))
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        last = nn.Linear(bottleneck_dim, out_dim, bias=False)
        # the parametrization API of DINO's nn.utils.weight_norm: original0 is weight_g
        self.last_layer = nn.utils.parametrizations.weight_norm(last, dim=0)
        g = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            g.fill_(1.0)
        g.requires_grad_(not norm_last_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1, p=2))


class Dino(nn.Module):
    """utils.MultiCropWrapper: one backbone pass per run of same-sized crops, the head once."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, crops: list[torch.Tensor]) -> torch.Tensor:
        groups: list[list[torch.Tensor]] = []
        for c in crops:
            if groups and groups[-1][0].shape[-1] == c.shape[-1]:
                groups[-1].append(c)
            else:
                groups.append([c])
        # a lone tensor goes in as is: no copy on the benchmark's pre-concatenated crops
        feats = [self.backbone(g[0] if len(g) == 1 else torch.cat(g)) for g in groups]
        return self.head(torch.cat(feats))


def teacher_targets(teacher_output: torch.Tensor, center: torch.Tensor,
                    teacher_temp: float) -> torch.Tensor:
    """DINOLoss.forward's teacher side: centred, sharpened softmax, no gradient."""
    return F.softmax((teacher_output - center) / teacher_temp, dim=-1).detach()


def dino_loss(student_output: torch.Tensor, targets: torch.Tensor, ncrops: int,
              student_temp: float) -> torch.Tensor:
    """facebookresearch/dino main_dino.py DINOLoss.forward, less the centre update."""
    student_out = (student_output / student_temp).chunk(ncrops)
    teacher_out = targets.chunk(2)
    total_loss, n_loss_terms = 0, 0
    for iq, q in enumerate(teacher_out):
        for v in range(len(student_out)):
            if v == iq:
                continue
            total_loss += torch.sum(-q * F.log_softmax(student_out[v], dim=-1), dim=-1).mean()
            n_loss_terms += 1
    return total_loss / n_loss_terms


@torch.no_grad()
def update_center(center: torch.Tensor, teacher_output: torch.Tensor,
                  momentum: float) -> torch.Tensor:
    """DINOLoss.update_center on one process."""
    batch_center = teacher_output.sum(dim=0, keepdim=True) / len(teacher_output)
    return center * momentum + batch_center * (1 - momentum)


def params_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """facebookresearch/dino utils.get_params_groups (frozen weight_g left out)."""
    regularized, not_regularized = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.endswith(".bias") or len(p.shape) == 1:
            not_regularized.append(p)
        else:
            regularized.append(p)
    return [{"params": regularized, "weight_decay": weight_decay},
            {"params": not_regularized, "weight_decay": 0.0}]


class LARS(torch.optim.Optimizer):
    """The update rule of facebookresearch/dino utils.LARS: momentum SGD (no dampening, the
    buffer `mu` starting at zeros) where every tensor that is not 1-D also gets its group's
    weight decay and its step scaled by the trust ratio eta * |p| / |d|, 1 when either norm
    is zero."""

    def __init__(self, params, lr: float = 0.0, weight_decay: float = 0.0,
                 momentum: float = 0.9, eta: float = 0.001):
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay,
                                  "momentum": momentum, "eta": eta})

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in (p for p in group["params"] if p.grad is not None):
                d = p.grad
                if p.ndim != 1:
                    d = d.add(p, alpha=group["weight_decay"])
                    p_norm, d_norm = torch.norm(p), torch.norm(d)
                    usable = (p_norm > 0) & (d_norm > 0)
                    ratio = torch.where(usable, group["eta"] * p_norm / d_norm,
                                        torch.ones_like(p_norm))
                    d = d.mul(ratio)
                mu = self.state[p].setdefault("mu", torch.zeros_like(p))
                mu.mul_(group["momentum"]).add_(d)
                p.add_(mu, alpha=-group["lr"])


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


def cancel_gradients_last_layer(epoch: int, model: nn.Module, freeze_last_layer: int) -> None:
    """facebookresearch/dino utils.cancel_gradients_last_layer."""
    if epoch >= freeze_last_layer:
        return
    for n, p in model.named_parameters():
        if "last_layer" in n:
            p.grad = None


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, m: float) -> None:
    """The teacher EMA of train_one_epoch, over all parameters (weight_g included)."""
    for ps, pt in zip(student.parameters(), teacher.parameters()):
        pt.mul_(m).add_((1 - m) * ps.detach())


def cosine_scheduler(base_value: float, final_value: float, epochs: int, niter_per_ep: int,
                     warmup_epochs: int = 0, start_warmup_value: float = 0.0) -> np.ndarray:
    """facebookresearch/dino utils.cosine_scheduler: one value per iteration."""
    warmup_schedule = np.array([])
    warmup_iters = warmup_epochs * niter_per_ep
    if warmup_epochs > 0:
        warmup_schedule = np.linspace(start_warmup_value, base_value, warmup_iters)
    iters = np.arange(epochs * niter_per_ep - warmup_iters)
    schedule = final_value + 0.5 * (base_value - final_value) * (
        1 + np.cos(np.pi * iters / len(iters)))
    schedule = np.concatenate((warmup_schedule, schedule))
    assert len(schedule) == epochs * niter_per_ep
    return schedule


def teacher_temp_schedule(warmup_teacher_temp: float, teacher_temp: float,
                          warmup_teacher_temp_epochs: int, nepochs: int) -> np.ndarray:
    """DINOLoss's per-epoch teacher temperature: linear warmup, then constant."""
    return np.concatenate((
        np.linspace(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs),
        np.ones(nepochs - warmup_teacher_temp_epochs) * teacher_temp))
