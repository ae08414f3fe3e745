#!/usr/bin/env python3
"""Generate the reference fixtures for dino-stream's augmentation ops.

The outputs come from the real reference stack, torchvision's functional API on
PIL images (plus PIL's ImageFilter/ImageOps, which is what DINO's own
utils.GaussianBlur / utils.Solarization call). They are written as lossless RGB
PNGs under tests/fixtures/augment/ together with index.json (every case and its
parameters) and README.md (format, versions, and the exact rounding rules).
Rust tests compare against these files. Nothing here is reimplemented in place
of torchvision: the numpy code in the "spec" section is only an independent,
executable description of the rounding rules. The script checks it against the
real outputs and stops if any case differs by even one pixel.

Pinned reference versions. The script refuses other versions unless
--allow-version-mismatch is given:
    torch 2.15.0, torchvision 0.29.2, pillow 13.0.0, numpy 2.4.6  (Python 3.11)

How the committed fixtures were produced (run from the repo root):

    python3 -m venv ~/.cache/dino-stream/venv-fixtures
    ~/.cache/dino-stream/venv-fixtures/bin/pip install \
        torch==2.15.0 torchvision==0.29.2 pillow==13.0.0 numpy==2.4.6
    bash tools/fetch-sample-data.sh /tmp/fx-crops crops 120
    ~/.cache/dino-stream/venv-fixtures/bin/python tools/gen-augment-fixtures.py \
        --out tests/fixtures/augment \
        --input /tmp/fx-crops/imagenet_10_541/imagenet_10_541_00000.JPEG

(That JPEG is the first file in sorted order of the `crops` set.) --input may
also be the committed tests/fixtures/augment/input.png (256x192). It is then
used as it is, so the fixtures can be regenerated without the sample data.
Re-running is deterministic: the same versions give the same pixels. index.json
records a sha256 of every image's raw RGB pixels, so a re-run can be checked
even where a different zlib writes different PNG bytes.
"""
from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import math
import os
import sys
import textwrap

import numpy as np
import PIL
import torch
import torchvision
from PIL import Image, ImageEnhance, ImageFilter, ImageOps, ImageStat
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms import _functional_pil as F_pil
from torchvision.transforms import functional as F

PINNED = {"torch": "2.15.0", "torchvision": "0.29.2", "pillow": "13.0.0", "numpy": "2.4.6"}
INDEX_FORMAT = 1

# The photo (500x375) is cropped to this fixed (left, top, right, bottom) box.
# It holds a red drum shell, a chrome lug, blue highlights and a beige background.
PHOTO_CROP_BOX = (236, 20, 492, 212)  # -> 256x192
SMALL_BOX = (64, 48, 192, 144)        # box inside input.png -> input_small.png, 128x96
TINY_BOX = (120, 60, 125, 63)         # box inside input.png -> input_tiny.png, 5x3
PORTRAIT_BOX = (140, 0, 188, 80)      # box inside input.png -> input_portrait.png, 48x80 (lug)
GRAY28_BOX = (128, 100, 156, 128)     # box inside input.png -> input_gray28.png, 28x28, as L

JITTER_NAMES = ["brightness", "contrast", "saturation", "hue"]  # ColorJitter fn_id 0..3


# --------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------

def make_colors_image() -> Image.Image:
    """64x48 synthetic image that hits the rounding edge cases.

    Rows 0-3 hold the grey ramp 0..255. Rows 4-5 hold hand-picked colours:
    primaries and secondaries, ties for the max channel (which branch
    rgb2hsv takes), near-greys, the solarize threshold 127/128 and 0/255
    extremes. Rows 6-47 are pseudo-random colours from a fixed splitmix64
    stream, written in pure Python so the result never depends on numpy's RNG.
    """
    w, h = 64, 48
    px: list[tuple[int, int, int]] = [(v, v, v) for v in range(256)]
    special = [
        (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255),
        (255, 255, 255), (0, 0, 0), (128, 128, 128), (127, 127, 127),
        (128, 127, 127), (127, 128, 128), (1, 0, 0), (0, 1, 0), (0, 0, 1), (254, 255, 255),
        (200, 200, 10), (10, 200, 200), (200, 10, 200), (200, 200, 199), (199, 200, 200),
        (127, 128, 129), (128, 129, 127), (129, 127, 128), (255, 1, 0), (255, 0, 1),
        (1, 255, 0), (0, 255, 1), (1, 0, 255), (0, 1, 255), (255, 128, 0), (0, 128, 255),
        (128, 0, 255), (255, 0, 128), (0, 255, 128), (128, 255, 0), (250, 5, 3), (3, 5, 250),
        (100, 50, 25), (25, 50, 100), (50, 100, 25), (240, 230, 140), (139, 69, 19),
        (176, 196, 222), (60, 179, 113), (220, 20, 60), (255, 127, 80), (75, 0, 130),
        (2, 1, 1), (1, 2, 1), (1, 1, 2), (253, 254, 252), (64, 64, 63), (191, 192, 191),
        (0, 127, 128), (128, 0, 127), (127, 128, 0), (254, 127, 1), (1, 127, 254),
        (33, 66, 99), (99, 66, 33), (66, 99, 33), (211, 213, 217), (255, 254, 0),
        (123, 45, 67), (89, 201, 34), (17, 17, 240), (240, 17, 17), (17, 240, 17),
        (5, 250, 251), (251, 5, 250), (250, 251, 5), (12, 34, 56), (78, 90, 12),
        (129, 128, 128), (128, 128, 129), (126, 127, 128), (130, 131, 132), (96, 96, 97),
        (97, 96, 96), (160, 161, 160), (0, 0, 128), (128, 0, 0), (0, 128, 0),
    ]
    assert len(special) <= 2 * w
    px += special + [(128, 64, 32)] * (2 * w - len(special))
    state = 0x9E3779B97F4A7C15 ^ 20240601
    mask = (1 << 64) - 1
    while len(px) < w * h:
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        z ^= z >> 31
        px.append((z & 255, (z >> 8) & 255, (z >> 16) & 255))
    arr = np.array(px, dtype=np.uint8).reshape(h, w, 3)
    return Image.fromarray(arr, "RGB")


def load_photo_input(path: str) -> tuple[Image.Image, dict]:
    with open(path, "rb") as fh:
        raw = fh.read()
    im = Image.open(path)
    im.load()
    origin = {"file": os.path.basename(path), "file_sha256": hashlib.sha256(raw).hexdigest(),
              "file_size": list(im.size), "file_format": im.format}
    im = im.convert("RGB")
    want = (PHOTO_CROP_BOX[2] - PHOTO_CROP_BOX[0], PHOTO_CROP_BOX[3] - PHOTO_CROP_BOX[1])
    if im.size == want:
        origin["crop_box_ltrb"] = None
        origin["note"] = "used as is (already the 256x192 input)"
    else:
        if im.size[0] < PHOTO_CROP_BOX[2] or im.size[1] < PHOTO_CROP_BOX[3]:
            sys.exit(f"input {path} is {im.size}; need at least {PHOTO_CROP_BOX[2:]}")
        im = im.crop(PHOTO_CROP_BOX)
        origin["crop_box_ltrb"] = list(PHOTO_CROP_BOX)
    return im, origin


# --------------------------------------------------------------------------
# The reference ops: torchvision functional API on PIL images (+ DINO's utils)
# --------------------------------------------------------------------------

def apply_step(img: Image.Image, step: dict) -> Image.Image:
    op = step["op"]
    if op == "resized_crop":
        # what RandomResizedCrop(size, interpolation=BICUBIC).forward does once
        # get_params has picked (i, j, h, w)
        return F.resized_crop(img, step["top"], step["left"], step["height"], step["width"],
                              list(step["size_hw"]), interpolation=InterpolationMode.BICUBIC)
    if op == "hflip":
        return F.hflip(img)
    if op == "brightness":
        return F.adjust_brightness(img, step["factor"])
    if op == "contrast":
        return F.adjust_contrast(img, step["factor"])
    if op == "saturation":
        return F.adjust_saturation(img, step["factor"])
    if op == "hue":
        return F.adjust_hue(img, step["factor"])
    if op == "grayscale":
        # RandomGrayscale: F.rgb_to_grayscale(img, num_output_channels=3) for RGB input
        return F.rgb_to_grayscale(img, num_output_channels=step["num_output_channels"])
    if op == "gaussian_blur":
        # DINO utils.GaussianBlur.__call__ once it has drawn the radius
        return img.filter(ImageFilter.GaussianBlur(radius=step["sigma"]))
    if op == "solarize":
        # DINO utils.Solarization.__call__ (ImageOps.solarize, default threshold 128)
        assert step["threshold"] == 128
        return ImageOps.solarize(img)
    if op == "center_crop":
        # DINO eval_knn.py's evaluation transform (Resize(256), CenterCrop(224)), with the
        # resize side scaled to the model's resolution as dino_pipeline::eval::resize_side does
        size = step["size"]
        assert step["resize_side"] == eval_resize_side(size)
        tf = T.Compose([T.Resize(step["resize_side"], interpolation=InterpolationMode.BICUBIC),
                        T.CenterCrop(size)])
        return tf(img)
    raise ValueError(op)


def eval_resize_side(size: int) -> int:
    """Shorter side before the evaluation centre crop: 256 for 224 (eval_knn.py), in the same
    ratio for other sizes (dino_pipeline::eval::resize_side)."""
    return (size * 256 + 112) // 224


def center_crop_geometry(w: int, h: int, size: int) -> tuple[int, int, int, int]:
    """(resized_w, resized_h, top, left) of the evaluation centre crop, in integers only.

    Resize: the shorter side becomes eval_resize_side(size) and the longer side is
    floor(short * long / old_short) (torchvision's int() of the quotient; exact here, since the
    quotient of small integers is never within a rounding error of the next integer).
    CenterCrop: offset = round((side - size) / 2) with Python's round, half to even.
    """
    short = eval_resize_side(size)
    if w <= h:
        rw, rh = short, short * h // w
    else:
        rw, rh = short * w // h, short

    def offset(side: int) -> int:
        d = side - size
        assert d >= 0
        q = d // 2
        return q + 1 if d % 2 == 1 and q % 2 == 1 else q  # x.5 goes to the even neighbour
    return rw, rh, offset(rh), offset(rw)


def jitter_steps(order: list[int], b: float, c: float, s: float, h: float) -> list[dict]:
    vals = [b, c, s, h]
    return [{"op": JITTER_NAMES[i], "factor": vals[i]} for i in order]


def build_cases() -> list[dict]:
    cases: list[dict] = []

    def add(name, op, params, steps, inp):
        cases.append({"name": name, "op": op, "params": params, "steps": steps, "input": inp})

    def single(name, inp, step):
        params = {k: v for k, v in step.items() if k != "op"}
        add(name, step["op"], params, [step], inp)

    # 1. resized_crop: (top, left, height, width) on the 256x192 input, size as [h, w]
    rc = [
        ("resized_crop_full_to_96", 0, 0, 192, 256, [96, 96],
         "whole image to 96x96: 2.67x (x) / 2x (y) antialiased downscale"),
        ("resized_crop_160_to_64", 16, 40, 160, 160, [64, 64], "square box, 2.5x downscale"),
        ("resized_crop_64_to_128", 70, 100, 64, 64, [128, 128], "square box, 2x upscale"),
        ("resized_crop_nonsquare_200x90_to_96", 30, 10, 90, 200, [96, 96],
         "non-square box: 2.08x downscale in x, 1.07x upscale in y"),
        ("resized_crop_border_br_80_to_96", 112, 176, 80, 80, [96, 96],
         "box touching the right and bottom border, 1.2x upscale"),
        ("resized_crop_border_tl_77x100_to_112", 0, 0, 100, 77, [112, 112],
         "box touching the left and top border, aspect 0.77, upscale"),
        ("resized_crop_tall_40x150_to_96", 21, 203, 150, 40, [96, 96],
         "tall box touching the right border: upscale in x, downscale in y "
         "(Pillow runs the vertical pass first)"),
        ("resized_crop_vfirst_100x180_to_90x48", 4, 120, 180, 100, [48, 90],
         "both axes shrink, height by > 2x as many pixels: Pillow runs the vertical pass first"),
        ("resized_crop_same_size_96", 50, 60, 96, 96, [96, 96],
         "crop already at the output size: torchvision returns the crop unresampled"),
        ("resized_crop_whole_to_224", 0, 0, 192, 256, [224, 224],
         "DINO's global size: downscale in x, upscale in y"),
    ]
    for name, t, l, hh, ww, size, note in rc:
        step = {"op": "resized_crop", "top": t, "left": l, "height": hh, "width": ww,
                "size_hw": size, "interpolation": "bicubic"}
        single(name, "input.png", step)
        cases[-1]["note"] = note

    # 2. hflip
    single("hflip", "input_small.png", {"op": "hflip"})

    # 3-6 colour ops on the small photo crop and on the synthetic colour image
    for inp, tag in (("input_small.png", "photo"), ("colors.png", "colors")):
        for f in (0.6, 0.87, 1.23, 1.4):
            single(f"brightness_{f}_{tag}", inp, {"op": "brightness", "factor": f})
        for f in (0.6, 0.87, 1.23, 1.4):
            single(f"contrast_{f}_{tag}", inp, {"op": "contrast", "factor": f})
        for f in (0.8, 0.93, 1.2):
            single(f"saturation_{f}_{tag}", inp, {"op": "saturation", "factor": f})
        hues = (-0.1, -0.037, 0.05, 0.1) + ((0.002,) if tag == "colors" else ())
        for f in hues:
            single(f"hue_{f}_{tag}", inp, {"op": "hue", "factor": f})
        # 7. grayscale, 9. solarize
        single(f"grayscale_{tag}", inp, {"op": "grayscale", "num_output_channels": 3})
        single(f"solarize_{tag}", inp, {"op": "solarize", "threshold": 128})

    # 8. gaussian blur (DINO: sigma ~ U(0.1, 2.0), passed as PIL radius)
    for s in (0.1, 0.5, 1.0, 1.37, 2.0, 0.7312345678):
        single(f"gaussian_blur_{s}", "input_small.png", {"op": "gaussian_blur", "sigma": s})
    single("gaussian_blur_1.37_large", "input.png", {"op": "gaussian_blur", "sigma": 1.37})
    single("gaussian_blur_2.0_tiny", "input_tiny.png", {"op": "gaussian_blur", "sigma": 2.0})
    cases[-1]["note"] = "5x3 image: the box radius reaches past the image edge (other C branch)"

    # 10. colour-jitter sequences: ColorJitter.forward with fixed params;
    # order = fn_idx (0 brightness, 1 contrast, 2 saturation, 3 hue)
    seqs = [
        ("color_jitter_hcbs", [3, 1, 0, 2], 1.23, 0.87, 1.2, -0.037),
        ("color_jitter_bcsh", [0, 1, 2, 3], 0.6, 1.4, 0.8, 0.1),
        ("color_jitter_shbc", [2, 3, 0, 1], 1.37, 0.65, 1.15, 0.073),
        ("color_jitter_cshb_f32", [1, 2, 3, 0], float(np.float32(0.7428571)),
         float(np.float32(1.3111111)), float(np.float32(0.8523)), float(np.float32(-0.0911))),
    ]
    for name, order, b, c, s, h in seqs:
        params = {"order": order, "order_names": [JITTER_NAMES[i] for i in order],
                  "brightness": b, "contrast": c, "saturation": s, "hue": h}
        add(name, "color_jitter_sequence", params, jitter_steps(order, b, c, s, h),
            "input_small.png")
    cases[-1]["note"] = "factors are float32 values, as ColorJitter.get_params draws them"

    # 11. full DINO-style chains with fixed draws (smaller sizes than 224 to keep
    # the fixtures small; the ops and their order are those of DataAugmentationDINO)
    def rc_step(t, l, hh, ww, size):
        return {"op": "resized_crop", "top": t, "left": l, "height": hh, "width": ww,
                "size_hw": size, "interpolation": "bicubic"}
    pipes = [
        ("pipeline_global1_like",
         [rc_step(8, 30, 170, 200, [128, 128]), {"op": "hflip"}]
         + jitter_steps([2, 0, 3, 1], 1.1873, 0.7301, 1.0625, 0.0437)
         + [{"op": "gaussian_blur", "sigma": 1.4142}],
         "RandomResizedCrop, flip, ColorJitter, (no grayscale), GaussianBlur(p=1.0)"),
        ("pipeline_global2_like",
         [rc_step(40, 90, 120, 110, [128, 128])]
         + jitter_steps([1, 3, 2, 0], 0.71, 1.32, 0.88, -0.081)
         + [{"op": "grayscale", "num_output_channels": 3},
            {"op": "gaussian_blur", "sigma": 0.1234}, {"op": "solarize", "threshold": 128}],
         "RandomResizedCrop, (no flip), ColorJitter, grayscale, GaussianBlur(p=0.1) "
         "applied, Solarization(p=0.2) applied"),
        ("pipeline_local_like",
         [rc_step(100, 12, 50, 60, [96, 96]), {"op": "hflip"}]
         + jitter_steps([0, 2, 1, 3], 1.31, 1.05, 0.97, 0.012)
         + [{"op": "gaussian_blur", "sigma": 0.55}],
         "local crop: RandomResizedCrop(96), flip, ColorJitter, GaussianBlur(p=0.5) applied"),
    ]
    for name, steps, note in pipes:
        add(name, "pipeline", {}, steps, "input.png")
        cases[-1]["note"] = note

    # 12. evaluation transform: Resize(resize_side(size), BICUBIC) then CenterCrop(size)
    def box_wh(b):
        return b[2] - b[0], b[3] - b[1]
    input_wh = {"input.png": box_wh(PHOTO_CROP_BOX), "input_small.png": box_wh(SMALL_BOX),
                "input_tiny.png": box_wh(TINY_BOX), "input_portrait.png": box_wh(PORTRAIT_BOX),
                "input_gray28.png": box_wh(GRAY28_BOX)}
    cc = [
        ("center_crop_224_photo", "input.png", 224,
         "DINO's eval size: upscale; left offset 58.5 rounds to the even 58"),
        ("center_crop_96_photo", "input.png", 96, "downscale; whole-number offsets"),
        ("center_crop_37_small", "input_small.png", 37,
         "downscale; left 9.5 rounds up to 10, top 2.5 down to 2 (half to even)"),
        ("center_crop_35_portrait", "input_portrait.png", 35,
         "portrait (w < h): longer side 40*80/48 = 66.67 truncated to 66; "
         "left 2.5 rounds to 2, top 15.5 to 16"),
        ("center_crop_8_tiny", "input_tiny.png", 8,
         "5x3 source, 3x upscale; left 3.5 rounds up to 4, top 0.5 down to 0"),
        ("center_crop_28_gray28", "input_gray28.png", 28,
         "Fashion-MNIST-like: a 28x28 grey image as RGB, upsampled to 32x32, then cropped to 28"),
    ]
    for name, inp, size, note in cc:
        rw, rh, top, left = center_crop_geometry(*input_wh[inp], size)
        single(name, inp, {"op": "center_crop", "size": size, "resize_side": eval_resize_side(size),
                           "interpolation": "bicubic"})
        cases[-1]["note"] = (f"{note}. {input_wh[inp][0]}x{input_wh[inp][1]} -> resize {rw}x{rh}"
                             f" -> crop at top {top}, left {left}")
    return cases


# --------------------------------------------------------------------------
# Executable spec: numpy re-statement of the rounding rules (only a check)
# --------------------------------------------------------------------------
f32, f64 = np.float32, np.float64


def spec_blend(deg: np.ndarray, img: np.ndarray, alpha: float) -> np.ndarray:
    """Pillow ImagingBlend: out = in1 + alpha*(in2 - in1) in float32, clip, truncate."""
    if alpha == 0.0:
        return deg.copy()
    if alpha == 1.0:
        return img.copy()
    a = f32(alpha)
    t = deg.astype(f32) + a * (img.astype(np.int32) - deg.astype(np.int32)).astype(f32)
    return np.clip(np.trunc(t), 0, 255).astype(np.uint8)


def spec_l(rgb: np.ndarray) -> np.ndarray:
    r, g, b = (rgb[..., i].astype(np.int64) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)


def spec_rgb2hsv(rgb: np.ndarray) -> np.ndarray:
    r, g, b = (rgb[..., i].astype(np.int32) for i in range(3))
    maxc = np.maximum(r, np.maximum(g, b))
    minc = np.minimum(r, np.minimum(g, b))
    with np.errstate(all="ignore"):
        cr = (maxc - minc).astype(f32)
        s = cr / maxc.astype(f32)
        rc = (maxc - r).astype(f32) / cr
        gc = (maxc - g).astype(f32) / cr
        bc = (maxc - b).astype(f32) / cr
        h = np.where(r == maxc, (bc - gc).astype(f32),
                     np.where(g == maxc, (2.0 + rc.astype(f64) - bc.astype(f64)).astype(f32),
                              (4.0 + gc.astype(f64) - rc.astype(f64)).astype(f32)))
        h = np.fmod(h.astype(f64) / 6.0 + 1.0, 1.0).astype(f32)
        uh = np.clip(np.trunc(h.astype(f64) * 255.0), 0, 255)
        us = np.clip(np.trunc(s.astype(f64) * 255.0), 0, 255)
    grey = maxc == minc
    uh = np.where(grey, 0, uh).astype(np.uint8)
    us = np.where(grey, 0, us).astype(np.uint8)
    return np.stack([uh, us, maxc.astype(np.uint8)], -1)


def spec_hsv2rgb(hsv: np.ndarray) -> np.ndarray:
    h, s, v = (hsv[..., i].astype(np.int32) for i in range(3))
    hf = h.astype(f64)
    i = np.floor(hf * 6.0 / 255.0).astype(np.int32)
    f = (hf * 6.0 / 255.0 - i).astype(f32).astype(f64)
    fs = (s.astype(f64) / 255.0).astype(f32).astype(f64)
    vv = v.astype(f64)

    def rnd(z):  # C round(): half away from zero
        return np.where(z >= 0, np.floor(z + 0.5), np.ceil(z - 0.5))
    p = np.clip(rnd(vv * (1.0 - fs)), 0, 255).astype(np.int32)
    q = np.clip(rnd(vv * (1.0 - fs * f)), 0, 255).astype(np.int32)
    t = np.clip(rnd(vv * (1.0 - fs * (1.0 - f))), 0, 255).astype(np.int32)
    i6 = i % 6
    r_ = np.choose(i6, [v, q, p, p, t, v])
    g_ = np.choose(i6, [t, v, v, q, p, p])
    b_ = np.choose(i6, [p, p, t, v, v, q])
    out = np.stack([r_, g_, b_], -1)
    out = np.where((s == 0)[..., None], np.stack([v, v, v], -1), out)
    return out.astype(np.uint8)


def spec_gb_radius(sigma: float, passes: int = 3) -> np.float32:
    """Pillow _gaussian_blur_radius (float32 variables, double sqrt/floor)."""
    radius = f32(sigma)
    sigma2 = f32(f32(radius * radius) / f32(passes))
    big_l = f32(math.sqrt(12.0 * f64(sigma2) + 1.0))
    l = f32(math.floor((f64(big_l) - 1.0) / 2.0))
    a = f32(f32(f32(2) * l + f32(1)) * f32(l * f32(l + f32(1)) - f32(3) * sigma2))
    a = f32(a / f32(f32(6) * f32(sigma2 - f32(l + f32(1)) * f32(l + f32(1)))))
    return f32(l + a)


def spec_box_pass_rows(x: np.ndarray, fr: np.float32) -> np.ndarray:
    r = int(fr)
    ww = int(f32(16777216.0) / f32(fr * f32(2) + f32(1)))
    fw = ((1 << 24) - (r * 2 + 1) * ww) // 2
    w = x.shape[1]
    xi = x.astype(np.int64)

    def at(o):
        return xi[:, np.clip(np.arange(w) + o, 0, w - 1)]
    acc = sum(at(k) for k in range(-r, r + 1))
    bulk = acc * ww + (at(-r - 1) + at(r + 1)) * fw
    return ((bulk + (1 << 23)) >> 24).astype(np.uint8)


def spec_gaussian_blur(x: np.ndarray, sigma: float, passes: int = 3) -> np.ndarray:
    if sigma == 0:
        return x.copy()
    fr = spec_gb_radius(sigma, passes)
    if fr == 0:
        return x.copy()
    for _ in range(passes):
        x = spec_box_pass_rows(x, fr)
    x = x.transpose(1, 0, 2)
    for _ in range(passes):
        x = spec_box_pass_rows(x, fr)
    return np.ascontiguousarray(x.transpose(1, 0, 2))


def _bicubic(x: float) -> float:
    a = -0.5
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


def spec_coeffs(in_size: int, out_size: int) -> list[tuple[int, list[int]]]:
    """Pillow precompute_coeffs + normalize_coeffs_8bpc for box (0, in_size)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    res = []
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        ss = 1.0 / filterscale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        w = [_bicubic((x + xmin - center + 0.5) * ss) for x in range(xmax)]
        tot = 0.0
        for v in w:
            tot += v
        w = [v / tot if tot != 0.0 else v for v in w]
        k = [int(-0.5 + v * (1 << 22)) if v < 0 else int(0.5 + v * (1 << 22)) for v in w]
        res.append((xmin, k))
    return res


def _spec_pass_rows(x: np.ndarray, coeffs: list[tuple[int, list[int]]]) -> np.ndarray:
    """One 8bpc resample pass along axis 1 (columns), fixed point 22 bits."""
    out = np.empty((x.shape[0], len(coeffs), x.shape[2]), np.int64)
    for xx, (xmin, k) in enumerate(coeffs):
        acc = np.full((x.shape[0], x.shape[2]), 1 << 21, np.int64)
        for i, kv in enumerate(k):
            acc += x[:, xmin + i] * kv
        out[:, xx] = np.clip(acc >> 22, 0, 255)
    return out


def spec_resize_bicubic(a: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """Pillow 13 ImagingResampleInner for box (0, 0, w, h), 8-bit RGB."""
    h, w = a.shape[:2]
    if (w, h) == (out_w, out_h):
        return a.copy()  # Image.resize returns a copy
    need_h, need_v = out_w != w, out_h != h
    # Pillow 13.0.0 Resample.c: vertical pass first when the height shrinks by
    # more than twice as many pixels as the width does (older Pillow releases
    # always went horizontal first; the first release with the rule was not checked)
    horizontal_first = not ((h - out_h) > 0 and (h - out_h) > (w - out_w) * 2)
    x = a.astype(np.int64)
    cv = spec_coeffs(h, out_h)
    if horizontal_first:
        if need_h:
            # only the source rows the vertical pass will read (no effect on values)
            y_first, y_last = cv[0][0], cv[-1][0] + len(cv[-1][1])
            x = _spec_pass_rows(x[y_first:y_last], spec_coeffs(w, out_w))
            cv = [(ymin - y_first, k) for ymin, k in cv]
        if need_v:
            x = _spec_pass_rows(x.transpose(1, 0, 2), cv).transpose(1, 0, 2)
    else:
        if need_v:
            x = _spec_pass_rows(x.transpose(1, 0, 2), cv).transpose(1, 0, 2)
        if need_h:
            x = _spec_pass_rows(x, spec_coeffs(w, out_w))
    return np.ascontiguousarray(x).astype(np.uint8)


def spec_step(a: np.ndarray, step: dict) -> np.ndarray:
    op = step["op"]
    if op == "resized_crop":
        t, l, hh, ww = step["top"], step["left"], step["height"], step["width"]
        oh, ow = step["size_hw"]
        return spec_resize_bicubic(a[t:t + hh, l:l + ww], ow, oh)
    if op == "hflip":
        return a[:, ::-1].copy()
    if op == "brightness":
        return spec_blend(np.zeros_like(a), a, step["factor"])
    if op == "contrast":
        lum = spec_l(a)
        mean = int(int(lum.astype(np.int64).sum()) / lum.size + 0.5)
        return spec_blend(np.full_like(a, mean), a, step["factor"])
    if op == "saturation":
        return spec_blend(np.repeat(spec_l(a)[..., None], 3, -1), a, step["factor"])
    if op == "hue":
        hsv = spec_rgb2hsv(a)
        shift = int(step["factor"] * 255) % 256  # trunc toward zero, then wrap
        hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + shift) % 256).astype(np.uint8)
        return spec_hsv2rgb(hsv)
    if op == "grayscale":
        return np.repeat(spec_l(a)[..., None], 3, -1)
    if op == "gaussian_blur":
        return spec_gaussian_blur(a, step["sigma"])
    if op == "solarize":
        return np.where(a < step["threshold"], a, 255 - a).astype(np.uint8)
    if op == "center_crop":
        size = step["size"]
        rw, rh, top, left = center_crop_geometry(a.shape[1], a.shape[0], size)
        return spec_resize_bicubic(a, rw, rh)[top:top + size, left:left + size].copy()
    raise ValueError(op)


# --------------------------------------------------------------------------
# Exhaustive probes of the PIL primitives (results go into index.json)
# --------------------------------------------------------------------------

def run_probes() -> dict:
    out: dict = {}
    a = np.repeat(np.arange(256, dtype=np.uint8), 256).reshape(256, 256)
    b = np.tile(np.arange(256, dtype=np.uint8), 256).reshape(256, 256)
    ia, ib = Image.fromarray(a, "L"), Image.fromarray(b, "L")
    blend = {}
    for alpha in (0.6, 0.87, 1.23, 1.4, 0.8, 0.93, 1.2, 0.5, -0.3, 2.7, 1.0000001):
        got = np.asarray(Image.blend(ia, ib, alpha))
        t64 = a.astype(f64) + alpha * (b.astype(f64) - a)
        blend[repr(alpha)] = {
            "mismatch_f32_truncate_clip": int((got != spec_blend(a, b, alpha)).sum()),
            "mismatch_f64_truncate_clip": int((got != np.clip(np.trunc(t64), 0, 255)).sum()),
            "mismatch_f64_round_clip": int((got != np.clip(np.floor(t64 + 0.5), 0, 255)).sum()),
        }
    out["blend_all_256x256_pairs"] = blend
    r, g, bb = np.meshgrid(np.arange(256), np.arange(256), np.arange(256), indexing="ij")
    allrgb = np.stack([r, g, bb], -1).reshape(4096, 4096, 3).astype(np.uint8)
    del r, g, bb
    im = Image.fromarray(allrgb, "RGB")
    lum = np.asarray(im.convert("L")).astype(np.int64)
    R, G, B = (allrgb[..., i].astype(np.int64) for i in range(3))
    out["rgb_to_L_all_16M_colors"] = {
        "mismatch_(R*19595+G*38470+B*7471+0x8000)>>16": int((lum != spec_l(allrgb)).sum()),
        "mismatch_(R*299+G*587+B*114)//1000": int((lum != (R * 299 + G * 587 + B * 114) // 1000).sum()),
        "mismatch_(R*299+G*587+B*114+500)//1000": int(
            (lum != (R * 299 + G * 587 + B * 114 + 500) // 1000).sum()),
    }
    del R, G, B, lum
    hsv = np.asarray(im.convert("HSV"))
    out["rgb_to_hsv_all_16M_colors"] = {
        "mismatch_spec": int((hsv != spec_rgb2hsv(allrgb)).any(-1).sum())}
    back = np.asarray(Image.fromarray(allrgb, "HSV").convert("RGB"))
    out["hsv_to_rgb_all_16M_triples"] = {
        "mismatch_spec": int((back != spec_hsv2rgb(allrgb)).any(-1).sum())}
    rt = np.asarray(im.convert("HSV").convert("RGB"))
    out["rgb_hsv_rgb_roundtrip_all_16M_colors"] = {
        "colors_changed_by_roundtrip_with_zero_shift": int((rt != allrgb).any(-1).sum())}
    out["gaussian_blur_box_radius"] = {
        repr(s): float(spec_gb_radius(s)) for s in (0.1, 0.5, 1.0, 1.37, 2.0, 0.7312345678)}
    return out


# --------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------

def pixels_sha256(im: Image.Image) -> str:
    assert im.mode == "RGB"
    return hashlib.sha256(im.tobytes()).hexdigest()


def save_png(im: Image.Image, path: str) -> None:
    assert im.mode == "RGB", im.mode
    im.save(path, format="PNG", optimize=True)


def check_versions(allow: bool) -> dict:
    got = {"torch": torch.__version__.split("+")[0], "torchvision": torchvision.__version__.split("+")[0],
           "pillow": PIL.__version__, "numpy": np.__version__}
    bad = {k: (got[k], PINNED[k]) for k in PINNED if got[k] != PINNED[k]}
    if bad and not allow:
        sys.exit(f"version mismatch (got, pinned): {bad}; pass --allow-version-mismatch to proceed")
    full = {"python": sys.version.split()[0], "torch": torch.__version__,
            "torchvision": torchvision.__version__, "pillow": PIL.__version__, "numpy": np.__version__}
    return full


def colorjitter_forward_check(img: Image.Image, params: dict) -> Image.Image:
    """Run the real ColorJitter.forward with get_params pinned to the case's draw."""
    cj = T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)
    fixed = (torch.tensor(params["order"]), params["brightness"], params["contrast"],
             params["saturation"], params["hue"])
    cj.get_params = lambda *a, **k: fixed  # instance attribute shadows the staticmethod
    return cj(img)


def src(obj) -> str:
    return textwrap.dedent(inspect.getsource(obj)).rstrip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output folder, e.g. tests/fixtures/augment")
    ap.add_argument("--input", required=True,
                    help="the source photo (500x375 JPEG of the crops set) or the 256x192 input.png")
    ap.add_argument("--allow-version-mismatch", action="store_true")
    ap.add_argument("--no-probes", action="store_true", help="skip the exhaustive PIL probes (~1 GB RAM)")
    args = ap.parse_args()
    versions = check_versions(args.allow_version_mismatch)
    os.makedirs(args.out, exist_ok=True)

    photo, origin = load_photo_input(args.input)
    inputs = {
        "input.png": (photo, {"origin": "photo", **origin}),
        "input_small.png": (photo.crop(SMALL_BOX),
                            {"origin": "input.png", "crop_box_ltrb": list(SMALL_BOX)}),
        "input_tiny.png": (photo.crop(TINY_BOX),
                           {"origin": "input.png", "crop_box_ltrb": list(TINY_BOX)}),
        "colors.png": (make_colors_image(),
                       {"origin": "synthetic: grey ramp, edge-case colours, splitmix64 colours"}),
        "input_portrait.png": (photo.crop(PORTRAIT_BOX),
                               {"origin": "input.png", "crop_box_ltrb": list(PORTRAIT_BOX)}),
        "input_gray28.png": (photo.crop(GRAY28_BOX).convert("L").convert("RGB"),
                             {"origin": "input.png, converted to L and back to RGB",
                              "crop_box_ltrb": list(GRAY28_BOX)}),
    }
    if origin.get("crop_box_ltrb") is None:
        # regenerating from the committed input.png: keep the photo's provenance
        try:
            with open(os.path.join(args.out, "index.json")) as fh:
                prev = json.load(fh)["inputs"]["input.png"]
            if prev.get("pixels_sha256") == pixels_sha256(photo) and "file_sha256" in prev:
                inputs["input.png"] = (photo, {k: v for k, v in prev.items()
                                               if k not in ("width", "height", "pixels_sha256")})
        except (OSError, KeyError, ValueError):
            pass
    index_inputs = {}
    for name, (im, meta) in inputs.items():
        save_png(im, os.path.join(args.out, name))
        # the ops read the decoded PNG, exactly what the Rust side will read
        with Image.open(os.path.join(args.out, name)) as chk:
            assert chk.mode == "RGB" and chk.tobytes() == im.tobytes()
        index_inputs[name] = {"width": im.size[0], "height": im.size[1],
                              "pixels_sha256": pixels_sha256(im), **meta}

    cases = build_cases()
    names = [c["name"] for c in cases]
    assert len(set(names)) == len(names)
    spec_failures = []
    for case in cases:
        with Image.open(os.path.join(args.out, case["input"])) as src_im:
            img = src_im.convert("RGB")
        ref = img
        for step in case["steps"]:
            ref = apply_step(ref, step)
        assert ref.mode == "RGB"
        if case["op"] == "color_jitter_sequence":
            via_cj = colorjitter_forward_check(img, case["params"])
            assert via_cj.tobytes() == ref.tobytes(), f"{case['name']}: ColorJitter.forward differs"
        spec = np.asarray(img)
        for step in case["steps"]:
            spec = spec_step(spec, step)
        diff = int((spec != np.asarray(ref)).any(-1).sum()) if spec.shape == np.asarray(ref).shape else -1
        if diff:
            spec_failures.append((case["name"], diff))
        case["output"] = f"{case['name']}.png"
        case["output_size"] = {"width": ref.size[0], "height": ref.size[1]}
        case["output_pixels_sha256"] = pixels_sha256(ref)
        save_png(ref, os.path.join(args.out, case["output"]))
    if spec_failures:
        sys.exit(f"numpy spec disagrees with the reference on: {spec_failures}")

    probes = None if args.no_probes else run_probes()
    index = {
        "format": INDEX_FORMAT,
        "generator": "tools/gen-augment-fixtures.py",
        "versions": versions,
        "pixel_format": "8-bit RGB PNG, no alpha, no gamma/ICC chunks; compare raw pixels exactly",
        "conventions": {
            "resized_crop": "top/left/height/width = torchvision (i, j, h, w); size_hw = [height, width]",
            "center_crop": "Resize(resize_side, BICUBIC) then CenterCrop(size); "
                           "resize_side = (size*256 + 112) // 224 (256 for 224)",
            "output_size": "width/height of the output PNG",
            "steps": "applied in order to the decoded input; a single-op case has one step",
            "jitter_order": "ColorJitter fn_idx: 0 brightness, 1 contrast, 2 saturation, 3 hue",
        },
        "spec_check": "the numpy spec in the generator reproduces every case exactly (0 differing pixels)",
        "inputs": index_inputs,
        "cases": cases,
    }
    if probes is not None:
        index["probes"] = probes
    with open(os.path.join(args.out, "index.json"), "w") as fh:
        json.dump(index, fh, indent=1)
        fh.write("\n")
    with open(os.path.join(args.out, "README.md"), "w") as fh:
        fh.write(render_readme(versions, index_inputs, cases, probes))
    total = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out))
    print(f"wrote {len(cases)} cases + {len(inputs)} inputs to {args.out} ({total} bytes); "
          f"spec check: all exact")


# --------------------------------------------------------------------------
# README
# --------------------------------------------------------------------------

def render_readme(versions: dict, inputs: dict, cases: list[dict], probes: dict | None) -> str:
    v = versions
    rows = []
    for c in cases:
        st = " → ".join(
            s["op"] + ("(" + ", ".join(f"{k}={s[k]}" for k in s if k not in ("op", "interpolation")) + ")"
                       if len(s) > 1 else "") for s in c["steps"])
        rows.append(f"| `{c['name']}` | `{c['input']}` | {st} | "
                    f"{c['output_size']['width']}x{c['output_size']['height']} |")
    in_rows = [f"| `{k}` | {m['width']}x{m['height']} | {m['origin']}"
               + (f", crop box (l,t,r,b) {m['crop_box_ltrb']}" if m.get("crop_box_ltrb") else "")
               + (f", source `{m['file']}` sha256 `{m['file_sha256'][:16]}…`" if "file" in m else "")
               + " |" for k, m in inputs.items()]
    probe_txt = "(probes skipped in this run)"
    if probes is not None:
        probe_txt = "```json\n" + json.dumps(probes, indent=1) + "\n```"

    def q(title, obj, note=""):
        return f"#### {title}\n{note}\n```python\n{src(obj)}\n```\n"

    quoted = "\n".join([
        q(f"torchvision {v['torchvision']}: `RandomResizedCrop.get_params`", T.RandomResizedCrop.get_params),
        q(f"torchvision {v['torchvision']}: `ColorJitter.get_params`", T.ColorJitter.get_params),
        q(f"torchvision {v['torchvision']}: `ColorJitter.forward`", T.ColorJitter.forward),
        q(f"torchvision {v['torchvision']}: `ColorJitter._check_input` (how 0.4/0.2/0.1 become ranges)",
          T.ColorJitter._check_input),
        q(f"torchvision {v['torchvision']}: `RandomApply.forward`", T.RandomApply.forward),
        q(f"torchvision {v['torchvision']}: `RandomHorizontalFlip.forward`", T.RandomHorizontalFlip.forward),
        q(f"torchvision {v['torchvision']}: `RandomGrayscale.forward`", T.RandomGrayscale.forward),
        q(f"torchvision {v['torchvision']}: `_functional_pil.adjust_brightness`", F_pil.adjust_brightness),
        q(f"torchvision {v['torchvision']}: `_functional_pil.adjust_contrast`", F_pil.adjust_contrast),
        q(f"torchvision {v['torchvision']}: `_functional_pil.adjust_saturation`", F_pil.adjust_saturation),
        q(f"torchvision {v['torchvision']}: `_functional_pil.adjust_hue`", F_pil.adjust_hue),
        q(f"torchvision {v['torchvision']}: `_functional_pil.to_grayscale`", F_pil.to_grayscale),
        q(f"torchvision {v['torchvision']}: `_functional_pil.crop` and `resize`", F_pil.crop)
        + f"```python\n{src(F_pil.resize)}\n```\n",
        q(f"Pillow {v['pillow']}: `ImageEnhance` (`_Enhance`, `Color`, `Contrast`, `Brightness`)",
          ImageEnhance._Enhance)
        + "".join(f"```python\n{src(c)}\n```\n"
                  for c in (ImageEnhance.Color, ImageEnhance.Contrast, ImageEnhance.Brightness)),
        q(f"Pillow {v['pillow']}: `ImageStat.Stat.sum` / `mean` (the contrast mean)",
          ImageStat.Stat.sum.func) + f"```python\n{src(ImageStat.Stat.mean.func)}\n```\n",
        q(f"Pillow {v['pillow']}: `ImageFilter.GaussianBlur`", ImageFilter.GaussianBlur),
        q(f"Pillow {v['pillow']}: `ImageOps.solarize`", ImageOps.solarize),
        q(f"torchvision {v['torchvision']}: `functional._compute_resized_output_size` (Resize with one int)",
          F._compute_resized_output_size),
        q(f"torchvision {v['torchvision']}: `functional.center_crop`", F.center_crop),
    ])
    return README_TEMPLATE.format(
        torch=v["torch"], torchvision=v["torchvision"], pillow=v["pillow"], numpy=v["numpy"],
        python=v["python"], input_rows="\n".join(in_rows), case_rows="\n".join(rows),
        ncases=len(cases), probes=probe_txt, quoted=quoted)


README_TEMPLATE = """\
# Augmentation reference fixtures

Generated by `tools/gen-augment-fixtures.py`; do not edit by hand. Re-run the
generator instead (this README is part of its output).

These are the reference outputs of DINO's data augmentations (`DataAugmentationDINO`
in `main_dino.py`: torchvision transforms on PIL images, plus DINO's own
`utils.GaussianBlur` / `utils.Solarization`). Each op is applied with its
parameters fixed. The Rust implementation must reproduce every output exactly.
The semantics section below gives the integer and float rules that make that
possible. The generator's numpy "spec" re-implements every rule and matches all
{ncases} cases with 0 differing pixels; the run fails if it does not.

## Versions

| package | version |
| --- | --- |
| Python | {python} |
| torch | {torch} |
| torchvision | {torchvision} |
| Pillow | {pillow} |
| numpy | {numpy} |

## Regenerate

```sh
python3 -m venv ~/.cache/dino-stream/venv-fixtures
~/.cache/dino-stream/venv-fixtures/bin/pip install \\
    torch==2.15.0 torchvision==0.29.2 pillow==13.0.0 numpy==2.4.6
bash tools/fetch-sample-data.sh /tmp/fx-crops crops 120
~/.cache/dino-stream/venv-fixtures/bin/python tools/gen-augment-fixtures.py \\
    --out tests/fixtures/augment \\
    --input /tmp/fx-crops/imagenet_10_541/imagenet_10_541_00000.JPEG
# or, without the sample data: --input tests/fixtures/augment/input.png
```

The torch wheel is only needed because torchvision imports it. It brings about 4 GB
of CUDA libraries, so keep the venv outside the repository.

## Files

All images are 8-bit RGB PNGs. Decode them and compare the raw pixels exactly.

Inputs:

| file | size | origin |
| --- | --- | --- |
{input_rows}

`index.json`:

```text
{{
  "format": 1,
  "versions": {{...}},                 # exact versions used
  "inputs": {{ "input.png": {{"width", "height", "pixels_sha256", origin...}}, ... }},
  "cases": [
    {{
      "name": "hue_-0.037_photo",      # also the output file stem
      "op": "hue",                     # category: resized_crop | hflip | brightness | contrast |
                                       #   saturation | hue | grayscale | gaussian_blur | solarize |
                                       #   color_jitter_sequence | pipeline | center_crop
      "params": {{"factor": -0.037}},    # the op's parameters (for sequences: order + factors)
      "steps": [{{"op": "hue", "factor": -0.037}}],   # what to apply, in order
      "input": "input_small.png",
      "output": "hue_-0.037_photo.png",
      "output_size": {{"width": 128, "height": 96}},
      "output_pixels_sha256": "...",   # sha256 of the raw RGB bytes (row-major, RGBRGB...)
      "note": "..."                    # optional
    }}, ...
  ],
  "probes": {{...}}                     # exhaustive probe results (see below)
}}
```

Step vocabulary (the interpreter for a case applies `steps` in order):

| step op | fields | reference call |
| --- | --- | --- |
| `resized_crop` | `top, left, height, width, size_hw: [h, w], interpolation: "bicubic"` | `F.resized_crop(img, top, left, height, width, size_hw, InterpolationMode.BICUBIC)` |
| `hflip` | - | `F.hflip(img)` |
| `brightness` | `factor` | `F.adjust_brightness(img, factor)` |
| `contrast` | `factor` | `F.adjust_contrast(img, factor)` |
| `saturation` | `factor` | `F.adjust_saturation(img, factor)` |
| `hue` | `factor` | `F.adjust_hue(img, factor)` |
| `grayscale` | `num_output_channels: 3` | `F.rgb_to_grayscale(img, 3)` (RandomGrayscale) |
| `gaussian_blur` | `sigma` | `img.filter(ImageFilter.GaussianBlur(radius=sigma))` (DINO utils.GaussianBlur) |
| `solarize` | `threshold: 128` | `ImageOps.solarize(img)` (DINO utils.Solarization) |
| `center_crop` | `size, resize_side, interpolation: "bicubic"` | `T.CenterCrop(size)(T.Resize(resize_side, InterpolationMode.BICUBIC)(img))` (DINO eval_knn.py) |

`color_jitter_sequence` cases are `ColorJitter.forward` with its draw fixed. The
generator also checks them against the real `ColorJitter.forward` with
`get_params` pinned. `params.order` is `fn_idx` (0 brightness, 1 contrast,
2 saturation, 3 hue). `pipeline` cases chain the DINO ops in `DataAugmentationDINO`
order with fixed draws: crop → flip → jitter → grayscale → blur → solarize. They
use smaller output sizes than 224 to keep the fixtures small.

Cases:

| name | input | steps | output |
| --- | --- | --- | --- |
{case_rows}

## Reference semantics (what the Rust side must do bit-exactly)

All were confirmed against the installed Pillow {pillow} binary. The blend,
rgb→L, rgb→HSV and HSV→rgb rules were checked exhaustively (probes below). The
resample and blur rules match every fixture exactly. The wheel has no C sources,
so the rules were read from the Pillow 13.0.0 sdist (`pip download pillow==13.0.0
--no-binary :all:`: `src/libImaging/Blend.c`, `Convert.c`, `BoxBlur.c`,
`Resample.c`, `src/_imaging.c`) and then confirmed on the binary. Float types matter: "f32" means IEEE single with every operation rounded
to f32 (no FMA), and "f64" means double.

### Image.blend (brightness, contrast, saturation)
`ImageEnhance.X(img).enhance(f)` = `Image.blend(degenerate, img, f)`, per 8-bit channel:
* `alpha == 0.0` → copy of degenerate. `alpha == 1.0` → copy of img.
* Otherwise `t = (f32)deg + (f32)alpha * (f32)(img - deg)`, computed in **f32**
  (`alpha` is the Python float cast to f32). The result is **truncated** toward
  zero and clipped to [0, 255]: `t <= 0 → 0`, `t >= 255 → 255`, otherwise
  `(u8)t`. There is no rounding. f64 arithmetic differs on some inputs (see
  the probes), so use f32 and do not use `mul_add`.
* degenerate for **brightness** = black (0) → `trunc(f32(f) * v)`, clipped.
* degenerate for **saturation** (`Color`) = `img.convert("L").convert("RGB")`,
  the grey value L (below) in all 3 channels.
* degenerate for **contrast** = a constant grey `m`.
  `m = int(mean(L) + 0.5)`, where `mean = sum(L) / (w*h)` is a correctly rounded
  f64 division of the integer sum and `int` truncates. So: round half up of the
  mean of the **rounded L image**, not of the RGB values.

### Grayscale (rgb→L), used by grayscale, saturation and contrast
`L = (R*19595 + G*38470 + B*7471 + 0x8000) >> 16` (Pillow 13.0.0 `Convert.c` fixed point,
ITU-R 601-2 weights 0.299/0.587/0.114 in 16.16, rounded). This is **not**
`(R*299 + G*587 + B*114) / 1000` truncated: that differs on about half of all
colours. Rounding that formula (`+500`) still differs on 9040 of the 16.7M
colours. `F.rgb_to_grayscale(img, 3)` puts L into all three channels.

### Hue (`F_pil.adjust_hue`)
1. rgb→HSV (Pillow `rgb2hsv`, u8 in and out). `maxc`/`minc` over R,G,B, and
   V = maxc. If `maxc == minc`: H = S = 0. Otherwise, all f32:
   `cr = maxc - minc`, `s = cr / maxc`, `rc = (maxc-r)/cr`, `gc = (maxc-g)/cr`,
   `bc = (maxc-b)/cr`. Then `h = bc - gc` if r is max (f32), else
   `h = f32(2.0 + (f64)rc - (f64)bc)` if g is max, else `h = f32(4.0 + (f64)gc - (f64)rc)`.
   Next `h = f32(fmod((f64)h / 6.0 + 1.0, 1.0))`, and finally
   `H = clip8(trunc((f64)h * 255.0))`, `S = clip8(trunc((f64)s * 255.0))`.
   The tests run in order r, g, b, so ties go to r first, then g.
2. `shift = np.int32(hue_factor * 255)`: an f64 product **truncated toward zero**
   (−0.037 → −9, 0.05 → 12, 0.1 → 25, −0.1 → −25). It is then cast to `u8`,
   which wraps (−9 → 247). H' = (H + shift) mod 256 (u8 wrap-around).
   |hue_factor| < 1/255 gives shift 0, but the image still makes the lossy
   HSV round trip, which changes many colours (see the probe count).
3. HSV→rgb (Pillow `hsv2rgb`): if S == 0 the result is (V,V,V). Otherwise, in f64
   with the f32 stores shown: `i = floor(H*6.0/255.0)` (0..6),
   `f = f32(H*6.0/255.0 - i)`, `fs = f32(S/255.0)`,
   `p = round(V*(1-fs))`, `q = round(V*(1-fs*f))`, `t = round(V*(1-fs*(1-f)))`.
   `round` is C `round`, half away from zero; each value is clipped to [0, 255].
   Then by `i % 6`: 0 → (V,t,p), 1 → (q,V,p), 2 → (p,V,t), 3 → (p,q,V),
   4 → (t,p,V), 5 → (V,p,q). H = 255 gives i = 6, which is case 0.

### resized_crop (bicubic, Pillow resample with antialias)
`F.resized_crop` = `img.crop((left, top, left+w, top+h))` followed by
`img.resize((out_w, out_h), BICUBIC)`. The resample **sees only the cropped
pixels**. Pixels outside the crop box are never read, even when they exist in
the source image. If the crop is already out_w × out_h, it is returned
unresampled (torchvision returns early, and Pillow copies).
Pillow `ImagingResample`, one axis at a time, for `in` → `out` samples:
* `scale = in/out` (f64), `filterscale = max(scale, 1)`, `support = 2.0 * filterscale`
  (bicubic, `a = -0.5`). Downscaling therefore widens the kernel (antialias).
  Upscaling uses the plain Keys cubic.
* For output `xx`: `center = (xx + 0.5) * scale`,
  `xmin = max((int)(center - support + 0.5), 0)`,
  `xmax = min((int)(center + support + 0.5), in)` (C casts truncate toward 0).
  The taps are `x = xmin .. xmax-1` with weight
  `w = cubic((x - center + 0.5) / filterscale)`. The weights are normalised by
  their f64 sum (summed in order). Taps outside the image are **dropped and the
  rest renormalised**; edge pixels are not replicated.
* The weights become fixed point with `PRECISION_BITS = 22`:
  `k = (int)(w * 2^22 + 0.5)` for w ≥ 0 and `(int)(w * 2^22 - 0.5)` for w < 0.
* Each pass: `acc = 2^21 + Σ pixel * k` (i32), output = clamp(`acc >> 22`, 0, 255)
  (arithmetic shift, so negative values floor).
* **Pass order (Pillow 13.0.0 `ImagingResampleInner`):**
  `horizontal_first = !((in_h - out_h) > 0 && (in_h - out_h) > (in_w - out_w) * 2)`
  (integer pixel counts of the crop and the output). The two passes give
  different pixels in the other order, because the intermediate is rounded to
  u8. In DINO this takes both branches: a 300x200 (h x w) crop resized to 224
  goes vertical-first.
  * Horizontal first: the horizontal pass writes an out_w-wide u8 intermediate
    (only the source rows the vertical pass reads; the values are the same as
    for all rows), then the vertical pass. Each pass is skipped when that axis
    keeps its size.
  * Vertical first: the vertical pass runs over the full crop width into an
    in_w x out_h u8 intermediate, then the horizontal pass.
  * Do not fuse the two passes in float: the u8 rounding between them is part
    of the result. Older Pillow releases always ran the horizontal pass first.
    The first release with this rule was not checked.

### GaussianBlur (DINO `utils.GaussianBlur` → `ImageFilter.GaussianBlur(radius=sigma)`)
PIL approximates the Gaussian with **3 passes** of an extended box blur per
axis (`_imaging.c: passes = 3`; Gwosdek et al. 2011). `sigma` is passed to C as
f32.
* Box radius (`_gaussian_blur_radius`; f32 variables, f64 `sqrt`/`floor`):
  `sigma2 = f32(sigma*sigma) / 3`, `L = f32(sqrt(12*sigma2 + 1))`,
  `l = f32(floor((L - 1) / 2))`,
  `a = (2l+1) * (l(l+1) - 3*sigma2) / (6 * (sigma2 - (l+1)^2))` (f32),
  `r = l + a`. Examples: sigma 0.1 → 0.00167, 0.5 → 0.04545, 1.0 → 0.25,
  1.37 → 0.83559, 2.0 → 1.375. For DINO's sigma range r is in [0.0017, 1.375],
  so the integer radius is 0 or 1.
* One box pass along a row with float radius `r`: `ri = (int)r`,
  `ww = (u32)(f32(2^24) / f32(2r + 1))`, `fw = (2^24 - (2ri+1)*ww) / 2` (integer).
  `out[x] = (ww * Σ_{{k=-ri..ri}} in[clamp(x+k)] + fw * (in[clamp(x-ri-1)] + in[clamp(x+ri+1)]) + 2^23) >> 24`.
  Indices are **clamped** to [0, w-1]: edge pixels are replicated. All values
  are u32.
* Order: 3 horizontal passes, then 3 vertical passes. Every pass rounds to u8.
  A radius of exactly 0 returns a copy. There is no other shortcut: at sigma 0.1
  the formula still runs (box radius 0.0017, `ww = 16721291`, `fw = 27962`),
  and on the fixture it leaves every pixel unchanged because the neighbour
  weight is under half a level.

### Solarize (DINO `utils.Solarization` → `ImageOps.solarize(img)`, threshold 128)
Per channel: `v < 128 ? v : 255 - v`.

### center_crop (evaluation: `Resize(resize_side, BICUBIC)` then `CenterCrop(size)`)
DINO's `eval_knn.py` uses `Resize(256, interpolation=3)` then `CenterCrop(224)`. For
other sizes `resize_side = (size*256 + 112) // 224` (224 → 256, 96 → 110, 28 → 32).
* Resize (`F._compute_resized_output_size` with one int): the shorter side becomes
  `resize_side`, the longer one `int(resize_side * long / short)` (f64 quotient,
  truncated; equal to the integer floor division for these sizes). A square
  image counts as `w <= h`. If the size is unchanged, the image is returned as
  it is. Otherwise it is the whole-image bicubic resample above (box = the full
  image, same pass order rule).
* CenterCrop (`F.center_crop`): `top = int(round((rh - size) / 2.0))`,
  `left = int(round((rw - size) / 2.0))`. Python's `round` is **half to even**:
  58.5 → 58, 9.5 → 10, 2.5 → 2, 15.5 → 16, 0.5 → 0. Then a plain crop. The
  resized image is never smaller than `size`, so the padding branch is not taken.

### hflip
`img.transpose(FLIP_LEFT_RIGHT)`: a plain mirror.

### Random parameter logic (for the statistics tests)
* `RandomResizedCrop.get_params` (quoted below) draws with torch's RNG at
  **f32** precision. `torch.empty(1).uniform_` is f32, and `log_ratio` is an f32
  tensor. `w = int(round(sqrt(target_area * aspect_ratio)))` uses Python
  `round`, which is **round-half-to-even**. It makes up to 10 attempts, then
  falls back to a centre crop. DINO uses `scale=(0.4, 1.0)` for the global crops,
  `(0.05, 0.4)` for the local crops, and `ratio=(3/4, 4/3)`.
* `ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)`: factors
  are uniform on [0.6, 1.4], [0.6, 1.4], [0.8, 1.2] and [-0.1, 0.1] (f32 draws),
  and the order is `torch.randperm(4)`. DINO wraps it in `RandomApply(p=0.8)`,
  which applies it iff `torch.rand(1) <= 0.8`.
* `RandomHorizontalFlip(0.5)`: flip iff `torch.rand(1) < 0.5`.
  `RandomGrayscale(0.2)`: iff `torch.rand(1) < 0.2`.
* DINO `utils.GaussianBlur(p)`: applied iff `random.random() <= p` (Python RNG),
  with `sigma = random.uniform(0.1, 2.0)`. p = 1.0 for global view 1, 0.1 for
  global view 2 and 0.5 for the local views. `utils.Solarization(0.2)` (global
  view 2 only) applies iff `random.random() < 0.2`.
* After the PIL ops, DINO applies `ToTensor()` (u8 / 255 as f32, CHW) and
  `Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))`. These fixtures stop
  at the 8-bit PIL image.

## Probes

Exhaustive comparisons made by the generator (mismatch = number of differing
pixels). `blend_all_256x256_pairs` blends every (a, b) pair of u8 values. The
other probes run over all 2^24 RGB colours or HSV triples.

{probes}

## Quoted reference source (installed packages)

{quoted}
"""


if __name__ == "__main__":
    main()
