#!/usr/bin/env python3
"""Generate the fixtures for `dino-stream import`: tiny weight files in the official DINO formats.

Writes to tests/fixtures/import/:
  backbone.pth           torch.save of a teacher backbone state dict, the layout of the
                         official release files (dino_deitsmall16_pretrain.pth and friends)
  full_checkpoint.pth    the training checkpoint facebookresearch/dino main_dino.py writes:
                         {student, teacher, optimizer, epoch, args, dino_loss}
  timm.safetensors       the teacher backbone under timm's names, as the HF hub
                         timm/vit_small_patch16_224.dino model.safetensors
  missing.pth            backbone.pth without blocks.1.norm2.bias (a strict load must fail)
  unexpected.pth         backbone.pth plus a classifier head.weight (a strict load must fail)
  reference.safetensors  the expected tensors under dino-stream's own names, the input batch
                         and the CLS features / head outputs it gives (float32)
  reference.json         versions, model config, file list, key mapping, sha256 of each file
  README.md

The model, on CPU in float32 with fixed seeds: timm's VisionTransformer (DINO's ViT, img 32,
patch 8, dim 24, depth 2, 2 heads, LayerNorm eps 1e-6, no classifier) plus the official
DINOHead (use_bn=False, nlayers=3, hidden 32, bottleneck 16, out 64) with the old-style
torch.nn.utils.weight_norm last layer (keys weight_g / weight_v, as in the real checkpoints).
Every parameter is random (std 0.07-0.5, LayerNorm weights and weight_g about 1) so that a
wrong or partial load shows. The teacher is the student plus N(0, 0.01) noise, then the
student takes one real AdamW step, so the two always differ and the optimizer state is real.

Pinned reference versions (the same as gen-model-fixtures.py; other versions are refused
unless --allow-version-mismatch is given):
    torch 2.15.0, torchvision 0.29.2, numpy 2.4.6, timm 1.0.31, safetensors 0.8.0
    (Python 3.11)

How the committed fixtures were produced (run from the repo root):

    python3 tools/gen-import-fixtures.py

Run with any python3, the script creates (or reuses) the venv
~/.cache/dino-stream/venv-fixtures (see tools/pinned_venv.py), installs the pinned versions
into it from PyPI if they are missing, and re-runs itself with the venv's interpreter.
Nothing downloads model weights. --out defaults to tests/fixtures/import next to this
script. Re-running is deterministic: the same versions on the same machine give
byte-identical files, the .pth zip archives included (torch writes no timestamps, and the
archive's folder name is the file's base name, not its path).
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
DEFAULT_OUT = os.path.join(REPO, "tests", "fixtures", "import")


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
from safetensors.torch import load_file, save_file  # noqa: E402
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

FORMAT = 1

VIT_CFG = dict(img_size=32, patch_size=8, in_chans=3, embed_dim=24, depth=2, num_heads=2,
               mlp_ratio=4.0, qkv_bias=True, num_classes=0, ln_eps=1e-6, class_token=True,
               global_pool="token")
HEAD_CFG = dict(in_dim=24, hidden_dim=32, bottleneck_dim=16, out_dim=64, nlayers=3, use_bn=False,
                norm_last_layer=False)
BATCH = 2
EPOCH = 7
TEACHER_NOISE_STD = 0.01
# The one training step: main_dino's lr and weight-decay schedules set these per iteration
# (weight decay on the regularised group only); the loss is DINO's cross-entropy for one
# teacher/student view pair.
STEP = dict(lr=5e-4, weight_decay=0.04, student_temp=0.1, teacher_temp=0.04)
# A few of main_dino's arguments; the real checkpoint pickles the whole argparse.Namespace.
# arch names the official architecture family only: the fixture's model is the tiny one above.
ARGS = dict(arch="vit_small", patch_size=8, out_dim=64, norm_last_layer=False,
            use_bn_in_head=False, momentum_teacher=0.996, warmup_teacher_temp=0.04,
            teacher_temp=0.04, use_fp16=False, weight_decay=0.04, lr=0.0005, epochs=100,
            batch_size_per_gpu=64, optimizer="adamw", local_crops_number=8, seed=0)
CLASSIFIER_SHAPE = (10, 24)
MISSING_KEY = "blocks.1.norm2.bias"
# Official DINOHead mlp indices (Linear layers between the GELUs) -> dino-stream's.
HEAD_MLP_MAP = {"mlp.0": "mlp.0", "mlp.2": "mlp.1", "mlp.4": "mlp.2"}

# One generator per purpose, so changing one never moves another's values.
SEED_STUDENT, SEED_TEACHER_NOISE, SEED_CENTER, SEED_INPUT, SEED_CLASSIFIER = (
    6001, 6002, 6003, 6004, 6005)


def gen(seed: int) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(seed)
    return g


def randn(g: torch.Generator, *shape, std: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=torch.float32) * std


# --------------------------------------------------------------------------
# The model, after facebookresearch/dino
# --------------------------------------------------------------------------

class DINOHead(nn.Module):
    """vision_transformer.py DINOHead with use_bn=False, nlayers=3. Its trunc_normal_ init
    and weight_g.fill_(1) are left out: every parameter is overwritten anyway."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, bottleneck_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(),
                                 nn.Linear(hidden_dim, hidden_dim), nn.GELU(),
                                 nn.Linear(hidden_dim, bottleneck_dim))
        # The deprecated API on purpose: it is what the official code uses, and it gives the
        # checkpoint keys last_layer.weight_g [out, 1] / last_layer.weight_v [out, in]
        # (the parametrizations API would name them differently).
        self.last_layer = nn.utils.weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp(x)
        x = F.normalize(x, dim=-1, p=2)
        return self.last_layer(x)


class MultiCropWrapper(nn.Module):
    """utils.MultiCropWrapper for a single crop size: backbone (CLS token) then head."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class DDPLike(nn.Module):
    """Stands in for DistributedDataParallel (the student is wrapped in it, the ViT teacher
    is not): its state_dict prefixes every key with `module.`."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module


def make_backbone() -> VisionTransformer:
    vit = VisionTransformer(
        img_size=VIT_CFG["img_size"], patch_size=VIT_CFG["patch_size"], in_chans=3,
        embed_dim=VIT_CFG["embed_dim"], depth=VIT_CFG["depth"], num_heads=VIT_CFG["num_heads"],
        mlp_ratio=VIT_CFG["mlp_ratio"], qkv_bias=True, num_classes=0,
        norm_layer=partial(nn.LayerNorm, eps=VIT_CFG["ln_eps"]), class_token=True,
        global_pool="token")
    # The key layout the official backbones have; fail loudly if timm ever changes it.
    assert isinstance(vit.head, nn.Identity) and isinstance(vit.fc_norm, nn.Identity)
    assert vit.reg_token is None and not vit.no_embed_class
    assert tuple(vit.pos_embed.shape) == (1, 17, 24)
    return vit.eval()


def make_model() -> MultiCropWrapper:
    h = HEAD_CFG
    return MultiCropWrapper(make_backbone(),
                            DINOHead(h["in_dim"], h["out_dim"], h["hidden_dim"], h["bottleneck_dim"]))


def randomize(model: nn.Module, g: torch.Generator) -> dict:
    """Overwrite every parameter in registration order; returns name -> distribution."""
    kinds = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("cls_token", "pos_embed")):
                p.copy_(randn(g, *p.shape, std=0.5))
                kinds[name] = "N(0, 0.5)"
            elif name.endswith("weight_g") or ("norm" in name and name.endswith(".weight")):
                p.copy_(1.0 + randn(g, *p.shape, std=0.1))
                kinds[name] = "1 + N(0, 0.1)"
            elif name.endswith(".bias"):
                p.copy_(randn(g, *p.shape, std=0.1))
                kinds[name] = "N(0, 0.1)"
            elif p.dim() >= 2:
                fan_in = p[0].numel()
                p.copy_(randn(g, *p.shape, std=1.0 / math.sqrt(fan_in)))
                kinds[name] = f"N(0, 1/sqrt({fan_in}))"
            else:
                raise AssertionError(f"unhandled parameter {name}")
    assert set(kinds) == set(model.state_dict()), "state_dict has non-parameter entries"
    return kinds


def get_params_groups(model: nn.Module) -> list:
    """utils.get_params_groups: no weight decay on biases and 1-d (norm) parameters."""
    regularized, not_regularized = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.endswith(".bias") or len(param.shape) == 1:
            not_regularized.append(param)
        else:
            regularized.append(param)
    return [{"params": regularized}, {"params": not_regularized, "weight_decay": 0.0}]


def project_name(key: str) -> str:
    """A MultiCropWrapper key (backbone.* / head.*) -> dino-stream's name."""
    if key.startswith("head.mlp."):
        _, mlp, idx, rest = key.split(".", 3)
        return "head." + HEAD_MLP_MAP[f"{mlp}.{idx}"] + "." + rest
    return key


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


def verify(out: str, expect: dict, cls_teacher: torch.Tensor, opt_state: dict) -> dict:
    """Reload every file the way an importer would and check it; returns facts for the JSON."""
    path = partial(os.path.join, out)
    facts = {}
    with torch.no_grad():
        for name in ("backbone.pth", "timm.safetensors"):
            sd = (load_file(path(name)) if name.endswith(".safetensors")
                  else torch.load(path(name), weights_only=True))
            assert same_tensors(sd, expect["backbone"]), name
            vit = make_backbone()
            vit.load_state_dict(sd, strict=True)
            assert torch.equal(vit.forward_features(expect["input"])[:, 0], cls_teacher), name

        for name, want_missing, want_unexpected in (("missing.pth", [MISSING_KEY], []),
                                                    ("unexpected.pth", [], ["head.weight"])):
            sd = torch.load(path(name), weights_only=True)
            res = make_backbone().load_state_dict(sd, strict=False)
            assert res.missing_keys == want_missing and res.unexpected_keys == want_unexpected, res
            try:
                make_backbone().load_state_dict(sd, strict=True)
                raise AssertionError(f"{name} loaded strictly")
            except RuntimeError:
                pass

        ck = torch.load(path("full_checkpoint.pth"), weights_only=False)
        assert list(ck) == ["student", "teacher", "optimizer", "epoch", "args", "dino_loss"]
        assert ck["epoch"] == EPOCH and vars(ck["args"]) == ARGS
        assert same_tensors(ck["dino_loss"], {"center": expect["center"]})
        teacher = make_model()
        teacher.load_state_dict(ck["teacher"], strict=True)
        student = DDPLike(make_model())
        student.load_state_dict(ck["student"], strict=True)
        for prefix, model in (("teacher", teacher), ("student", student.module)):
            for k, v in model.state_dict().items():
                assert torch.equal(v, expect["reference"][f"{prefix}.{project_name(k)}"]), k
        assert torch.equal(teacher.backbone(expect["input"]), cls_teacher)
        opt = torch.optim.AdamW(get_params_groups(student))
        opt.load_state_dict(ck["optimizer"])
        assert opt.state_dict()["param_groups"] == opt_state["param_groups"]

        # Recent torch loads with weights_only=True by default; record whether a plain
        # torch.load of this layout works (the pickled Namespace is outside the allowlist).
        try:
            torch.load(path("full_checkpoint.pth"), weights_only=True)
            facts["full_checkpoint_loads_with_weights_only_true"] = True
        except pickle.UnpicklingError as e:
            facts["full_checkpoint_loads_with_weights_only_true"] = False
            facts["full_checkpoint_weights_only_error"] = next(
                line.strip() for line in str(e).splitlines()
                if "Unsupported global" in line).split(" Please use")[0]

    assert same_tensors(load_file(path("reference.safetensors")), expect["reference"])
    return facts


README = """\
# Import fixtures

Generated by `tools/gen-import-fixtures.py`; do not edit by hand. Tiny weight
files in the official DINO (facebookresearch/dino) formats, for
`dino-stream import --weights FILE`, which must load them strictly, plus the
tensors they must load to (`reference.safetensors`, dino-stream's names) and
a description (`reference.json`: config, files, key mapping, sha256).

## Regenerate

```sh
python3 tools/gen-import-fixtures.py
```

It creates or reuses the venv `~/.cache/dino-stream/venv-fixtures`, installs
the pinned versions below into it from PyPI when they are missing, and re-runs
itself there. No model weights are downloaded (random weights, fixed seeds).
Same versions on the same machine give byte-identical files.

| package | version |
| --- | --- |
{versions}

## Model

timm `VisionTransformer(img_size=32, patch_size=8, embed_dim=24, depth=2,
num_heads=2, mlp_ratio=4, qkv_bias=True, num_classes=0,
norm_layer=partial(nn.LayerNorm, eps=1e-6))` (DINO's ViT) and the official
`DINOHead(in_dim=24, out_dim=64, use_bn=False, nlayers=3, hidden_dim=32,
bottleneck_dim=16)`: `mlp = Linear(24,32), GELU, Linear(32,32), GELU,
Linear(32,16)`, L2-normalise, `last_layer = weight_norm(Linear(16, 64,
bias=False))` with the old `torch.nn.utils.weight_norm` (keys `weight_g`
[64, 1], `weight_v` [64, 16]). All parameters random (`param_init` in the
JSON); teacher = student + N(0, 0.01), then the student takes one AdamW step.

## Files

- `backbone.pth`: `torch.save(teacher.backbone.state_dict())`, timm/official
  keys (`cls_token`, `pos_embed`, `patch_embed.proj.weight`, `blocks.0.norm1.weight`,
  ..., `norm.weight`, `norm.bias`), like `dino_deitsmall16_pretrain.pth`.
- `full_checkpoint.pth`: main_dino.py's `checkpoint.pth`: `student` (keys
  `module.backbone.*`, `module.head.*`: DDP around MultiCropWrapper), `teacher`
  (`backbone.*`, `head.*`), `optimizer` (AdamW state dict, one step, two groups
  as `get_params_groups`), `epoch` = {epoch}, `args` (an `argparse.Namespace`, so
  `torch.load(weights_only=True)` refuses the file), `dino_loss` (`center`
  [1, 64]). No `fp16_scaler` (use_fp16 off). The head's mlp keys are the
  official indices 0, 2, 4.
- `timm.safetensors`: the teacher backbone under timm's names, metadata
  `{{"format": "pt"}}` as on the HF hub.
- `missing.pth`: `backbone.pth` without `{missing}`.
- `unexpected.pth`: `backbone.pth` plus `head.weight` {classifier}.
- `reference.safetensors` (float32): `teacher.backbone.<timm key>`,
  `teacher.head.mlp.{{0,1,2}}.{{weight,bias}}` (official mlp.0, mlp.2, mlp.4),
  `teacher.head.last_layer.weight_g`, `teacher.head.last_layer.weight_v`, the
  same under `student.`; `center` [1, 64]; `input` [2, 3, 32, 32] (N(0, 1));
  `cls_teacher`, `cls_student` [2, 24] = timm `forward_features(input)[:, 0]`
  (CLS after the final norm); `head_out_teacher`, `head_out_student` [2, 64] =
  the head applied to that CLS token.

`backbone.pth`, `timm.safetensors`, `missing.pth` and `unexpected.pth` all
hold the teacher backbone (so they map to `teacher.backbone.*`).
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT, help="output folder (default tests/fixtures/import)")
    ap.add_argument("--allow-version-mismatch", action="store_true")
    ap.add_argument("--no-venv", action="store_true",
                    help="run with the current interpreter instead of the pinned venv")
    args = ap.parse_args()
    versions = check_versions(args.allow_version_mismatch)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(0)

    student = make_model()
    param_init = randomize(student, gen(SEED_STUDENT))
    teacher = make_model()
    teacher.load_state_dict(student.state_dict())
    g = gen(SEED_TEACHER_NOISE)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(randn(g, *p.shape, std=TEACHER_NOISE_STD))
    teacher.requires_grad_(False)  # as in main_dino: the teacher only moves by EMA
    center = randn(gen(SEED_CENTER), 1, HEAD_CFG["out_dim"], std=0.5)
    x = randn(gen(SEED_INPUT), BATCH, 3, VIT_CFG["img_size"], VIT_CFG["img_size"])

    student_ddp = DDPLike(student)
    opt = torch.optim.AdamW(get_params_groups(student_ddp))
    opt.param_groups[0]["weight_decay"] = STEP["weight_decay"]
    for pg in opt.param_groups:
        pg["lr"] = STEP["lr"]
    with torch.no_grad():
        q = F.softmax((teacher(x) - center) / STEP["teacher_temp"], dim=-1)
    loss = torch.sum(-q * F.log_softmax(student(x) / STEP["student_temp"], dim=-1), dim=-1).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()

    reference = {}
    with torch.no_grad():
        for prefix, model in (("teacher", teacher), ("student", student)):
            for k, v in model.state_dict().items():
                reference[f"{prefix}.{project_name(k)}"] = v.detach().clone()
            cls = model.backbone.forward_features(x)[:, 0]
            # MultiCropWrapper calls backbone(x): timm's pooled output must be that CLS token.
            assert torch.equal(model.backbone(x), cls)
            reference[f"cls_{prefix}"] = cls.clone()
            reference[f"head_out_{prefix}"] = model.head(cls).clone()
    reference["center"] = center
    reference["input"] = x
    for k, v in reference.items():
        assert v.dtype == torch.float32 and torch.isfinite(v).all(), k
    reference = {k: reference[k].contiguous() for k in sorted(reference)}
    teacher_minus_student = max(
        float((reference[k] - reference["student." + k[len("teacher."):]]).abs().max())
        for k in reference if k.startswith("teacher."))

    dino_loss = nn.Module()  # main_dino's DINOLoss: its only state is the `center` buffer
    dino_loss.register_buffer("center", center)
    backbone_sd = teacher.backbone.state_dict()
    missing_sd = teacher.backbone.state_dict()
    del missing_sd[MISSING_KEY]
    unexpected_sd = teacher.backbone.state_dict()
    unexpected_sd["head.weight"] = randn(gen(SEED_CLASSIFIER), *CLASSIFIER_SHAPE, std=0.2)
    # Key order as in main_dino.py's save_dict; fp16_scaler is only added when use_fp16.
    checkpoint = {
        "student": student_ddp.state_dict(),
        "teacher": teacher.state_dict(),
        "optimizer": opt.state_dict(),
        "epoch": EPOCH,
        "args": argparse.Namespace(**ARGS),
        "dino_loss": dino_loss.state_dict(),
    }

    os.makedirs(args.out, exist_ok=True)
    path = partial(os.path.join, args.out)
    torch.save(backbone_sd, path("backbone.pth"))
    torch.save(checkpoint, path("full_checkpoint.pth"))
    save_file(dict(backbone_sd), path("timm.safetensors"), metadata={"format": "pt"})
    torch.save(missing_sd, path("missing.pth"))
    torch.save(unexpected_sd, path("unexpected.pth"))
    # One metadata key only: safetensors writes the metadata map in hash order,
    # so two keys would make the header bytes differ from run to run.
    save_file(reference, path("reference.safetensors"),
              metadata={"generator": f"tools/gen-import-fixtures.py format {FORMAT}"})

    facts = verify(args.out, {"backbone": dict(backbone_sd), "center": center, "input": x,
                              "reference": reference},
                   reference["cls_teacher"], opt.state_dict())

    def keys(sd: dict) -> dict:
        return {k: list(v.shape) for k, v in sd.items()}

    files = {
        "backbone.pth": {
            "format": "torch.save zip (pickled OrderedDict with _metadata, as state_dict() gives)",
            "contains": "teacher backbone state dict, timm/official DINO keys",
            "maps_to": "teacher.backbone.<key>", "keys": keys(backbone_sd)},
        "full_checkpoint.pth": {
            "format": "torch.save zip; needs weights_only=False (pickles argparse.Namespace)",
            "contains": {
                "student": "DDP(MultiCropWrapper) state dict: module.backbone.*, module.head.*",
                "teacher": "MultiCropWrapper state dict: backbone.*, head.*",
                "optimizer": "torch.optim.AdamW state_dict after one step on the student; groups "
                             "as utils.get_params_groups (0: weights, decayed; 1: biases and "
                             "1-d, weight_decay 0)",
                "epoch": EPOCH,
                "args": ARGS,
                "dino_loss": "DINOLoss state dict: center [1, 64]",
                "fp16_scaler": "absent (use_fp16 off), as main_dino.py writes it"},
            "maps_to": {"module.backbone.": "student.backbone.", "module.head.": "student.head.",
                        "backbone.": "teacher.backbone.", "head.": "teacher.head.",
                        "dino_loss.center": "center"},
            "student_keys": keys(checkpoint["student"]),
            "teacher_keys": keys(checkpoint["teacher"])},
        "timm.safetensors": {
            "format": "safetensors, metadata {\"format\": \"pt\"}",
            "contains": "teacher backbone under timm's names (HF hub timm/vit_small_patch16_224.dino "
                        "model.safetensors layout)",
            "maps_to": "teacher.backbone.<key>"},
        "missing.pth": {
            "format": "torch.save zip", "contains": f"backbone.pth without {MISSING_KEY}",
            "missing": [MISSING_KEY]},
        "unexpected.pth": {
            "format": "torch.save zip",
            "contains": f"backbone.pth plus a classifier head.weight {list(CLASSIFIER_SHAPE)}",
            "unexpected": ["head.weight"]},
        "reference.safetensors": {
            "format": "safetensors, float32",
            "contains": "expected tensors under dino-stream's names, input, cls_*, head_out_*",
            "tensors": keys(reference)},
    }
    for name, entry in files.items():
        entry["bytes"] = os.path.getsize(path(name))
        entry["sha256"] = sha256(path(name))
        os.chmod(path(name), 0o644)

    doc = {
        "format": FORMAT,
        "generator": "tools/gen-import-fixtures.py",
        "versions": versions,
        "pinned": PINNED,
        "vit": VIT_CFG,
        "head": {**HEAD_CFG, "last_layer": "torch.nn.utils.weight_norm(Linear(16, 64, bias=False)), "
                                           "dim=0: weight = g * v / ||v|| per output row"},
        "param_init": {**param_init,
                       "teacher": f"student initial values + N(0, {TEACHER_NOISE_STD}), "
                                  "then the student takes one AdamW step"},
        "step": {**STEP, "loss": "sum(-softmax((teacher(x) - center) / teacher_temp) * "
                                 "log_softmax(student(x) / student_temp), -1).mean()",
                 "value": float(loss.detach())},
        "epoch": EPOCH,
        "batch": BATCH,
        "key_mapping": {
            "head_mlp": HEAD_MLP_MAP,
            "head_last_layer": {"last_layer.weight_g": "last_layer.weight_g",
                                "last_layer.weight_v": "last_layer.weight_v"},
            "backbone": "unchanged (timm names)",
        },
        "files": files,
        "checks": {"teacher_minus_student_max_abs_diff": teacher_minus_student, **facts},
    }
    with open(path("reference.json"), "w") as fh:
        json.dump(doc, fh, indent=1)
        fh.write("\n")

    vrows = "\n".join(f"| {k} | {v} |" for k, v in versions.items())
    with open(path("README.md"), "w") as fh:
        fh.write(README.format(versions=vrows, epoch=EPOCH, missing=MISSING_KEY,
                               classifier=list(CLASSIFIER_SHAPE)))

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
