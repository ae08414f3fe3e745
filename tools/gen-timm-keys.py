#!/usr/bin/env python3
"""List timm's VisionTransformer state-dict keys and shapes per DINO architecture.

Writes tests/fixtures/timm/vit_keys.json: for vit_tiny/vit_small/vit_base at patch 16 and 8
(img 224, num_classes=0, the layout of DINO's released backbones), every key with its shape.
The Rust tests check that a dino-stream backbone names and shapes its tensors the same way,
so an export loads into `timm.create_model(..., num_classes=0)` with strict key matching.

    python3 tools/gen-timm-keys.py            (runs in the shared pinned venv, see pinned_venv.py)
"""
from __future__ import annotations

import json
import os
import sys

PINNED = {"torch": "2.15.0", "timm": "1.0.31"}
OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                   "tests", "fixtures", "timm", "vit_keys.json")
ARCHS = {"vit_tiny": (192, 12, 3), "vit_small": (384, 12, 6), "vit_base": (768, 12, 12)}

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from pinned_venv import bootstrap
    bootstrap(__file__, PINNED, sys.argv[1:])

import timm  # noqa: E402
import torch  # noqa: E402
from timm.models.vision_transformer import VisionTransformer  # noqa: E402


def main() -> None:
    out = {"timm": timm.__version__, "torch": torch.__version__.split("+")[0], "archs": {}}
    for name, (dim, depth, heads) in ARCHS.items():
        for patch in (16, 8):
            # the meta device gives shapes without allocating weights
            with torch.device("meta"):
                model = VisionTransformer(img_size=224, patch_size=patch, embed_dim=dim,
                                          depth=depth, num_heads=heads, num_classes=0)
            keys = {k: list(v.shape) for k, v in model.state_dict().items()}
            out["archs"][f"{name}/{patch}"] = keys
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"wrote {OUT}: {len(out['archs'])} architectures")


if __name__ == "__main__":
    main()
