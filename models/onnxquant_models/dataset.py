"""Deterministic synthetic detection and instance-segmentation data ("shapes").

Every image is a function of (seed, split, index) only: sample i of a split is the same whatever else is generated,
in whatever order. Objects are filled shapes of five classes with random size, position, rotation, colour and
texture (solid, stripes, checker, gradient) on a textured background; later objects occlude earlier ones, and the
annotation of each object is its *visible* mask (objects left with too little visible area are dropped).

Files written by ``write_split``:
  <name>.npz   ``images`` float32 [N, 3, H, W] normalised with ImageNet mean/std (what the models take),
               ``image_ids`` int64 [N] (matching the JSON's image ids). A zip archive of deflated .npy members
               (what numpy.savez_compressed writes; numpy.load reads it).
  <name>.json  COCO-style: images, categories, annotations with bbox [x, y, w, h] in pixels (the tight box of the
               visible mask: x0 = min column, w = max column - min column + 1), area = visible mask pixel count,
               iscrowd 0, segmentation as COCO *uncompressed* RLE {"size": [H, W], "counts": [...]}: run lengths
               over the mask in column-major (Fortran) order, starting with a run of zeros (possibly 0).
"""
from __future__ import annotations

import io
import json
import math
import os
import zipfile
from dataclasses import dataclass
from typing import Dict, List, Sequence

import numpy as np
from PIL import Image, ImageDraw

CATEGORIES = ("circle", "rectangle", "triangle", "cross", "star")  # category id = index + 1
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
SPLIT_IDS = {"train": 0, "calib": 1, "eval": 2}


@dataclass(frozen=True)
class ShapesConfig:
    image_size: int = 128
    min_objects: int = 1
    max_objects: int = 3
    min_size: int = 28  # object extent in pixels (diameter of the shape's circumscribed circle)
    max_size: int = 64
    min_visible: float = 0.5  # an occluded object is kept only if this fraction of its own area stays visible
    max_overlap: float = 0.35  # a new object may cover at most this fraction of an existing object's visible area


@dataclass(frozen=True)
class Sample:
    image: np.ndarray  # uint8 [H, W, 3]
    masks: np.ndarray  # bool [N, H, W], visible masks
    labels: np.ndarray  # int64 [N], category ids 1..len(CATEGORIES)
    boxes: np.ndarray  # float32 [N, 4] xyxy in pixels, x1/y1 exclusive (tight box of the mask: max + 1)


def _shape_polygon(kind: str, cx: float, cy: float, r: float, angle: float, rng: np.random.Generator):
    def rot(points):
        c, s = math.cos(angle), math.sin(angle)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]

    if kind == "rectangle":
        aspect = rng.uniform(0.5, 1.0)
        hw, hh = r / math.sqrt(1 + aspect ** 2), r * aspect / math.sqrt(1 + aspect ** 2)
        return rot([(-hw, -hh), (hw, -hh), (hw, hh), (-hw, hh)])
    if kind == "triangle":
        return rot([(r * math.cos(a), r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)])
    if kind == "cross":
        t = r * rng.uniform(0.28, 0.4)
        a = r / math.sqrt(2) * 1.3
        pts = [(-t, -a), (t, -a), (t, -t), (a, -t), (a, t), (t, t), (t, a), (-t, a), (-t, t), (-a, t), (-a, -t),
               (-t, -t)]
        return rot(pts)
    if kind == "star":
        inner = r * rng.uniform(0.4, 0.5)
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else inner
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((rad * math.cos(a), rad * math.sin(a)))
        return rot(pts)
    raise ValueError(f"unknown polygon shape '{kind}'")


def _shape_mask(kind: str, size: int, cx: float, cy: float, r: float, angle: float,
                rng: np.random.Generator) -> np.ndarray:
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    if kind == "circle":
        # An ellipse up to 1.0:0.8 keeps it recognisable as the round class.
        ry = r * rng.uniform(0.8, 1.0)
        draw.ellipse([cx - r, cy - ry, cx + r, cy + ry], fill=1)
    else:
        draw.polygon(_shape_polygon(kind, cx, cy, r, angle, rng), fill=1)
    return np.asarray(canvas, dtype=np.uint8).astype(bool)


def _texture(size: int, rng: np.random.Generator) -> np.ndarray:
    """A [size, size, 3] float texture in 0..255: solid, stripes, checker or linear gradient between two colours."""
    c0 = rng.uniform(0, 255, 3)
    c1 = np.clip(c0 + rng.uniform(-90, 90, 3), 0, 255)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    kind = rng.integers(0, 4)
    if kind == 0:
        t = np.zeros((size, size), np.float32)
    elif kind == 1:
        a = rng.uniform(0, math.pi)
        period = rng.uniform(4, 10)
        t = (np.floor((xx * math.cos(a) + yy * math.sin(a)) / period) % 2).astype(np.float32)
    elif kind == 2:
        period = rng.integers(3, 8)
        t = ((np.floor(xx / period) + np.floor(yy / period)) % 2).astype(np.float32)
    else:
        a = rng.uniform(0, 2 * math.pi)
        t = (xx * math.cos(a) + yy * math.sin(a))
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    return c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]


def generate_sample(seed: int, split: str, index: int, config: ShapesConfig = ShapesConfig()) -> Sample:
    if split not in SPLIT_IDS:
        raise ValueError(f"unknown split '{split}'; expected one of {sorted(SPLIT_IDS)}")
    rng = np.random.default_rng([seed, SPLIT_IDS[split], index])
    size = config.image_size
    background = _texture(size, rng) * 0.5 + rng.uniform(0, 127, 3)[None, None, :]
    image = background
    n = int(rng.integers(config.min_objects, config.max_objects + 1))
    visible: List[np.ndarray] = []
    full_areas: List[int] = []
    labels: List[int] = []
    attempts = 0
    while len(labels) < n and attempts < 50:
        attempts += 1
        label = int(rng.integers(1, len(CATEGORIES) + 1))
        r = rng.uniform(config.min_size, config.max_size) / 2
        cx, cy = rng.uniform(r * 0.7, size - r * 0.7, 2)
        angle = rng.uniform(0, 2 * math.pi)
        mask = _shape_mask(CATEGORIES[label - 1], size, cx, cy, r, angle, rng)
        area = int(mask.sum())
        if area < 30:
            continue
        if any((m & mask).sum() > config.max_overlap * max(int(m.sum()), 1) for m in visible):
            continue
        texture = _texture(size, rng)
        image = np.where(mask[..., None], texture, image)
        visible = [m & ~mask for m in visible]
        visible.append(mask)
        full_areas.append(area)
        labels.append(label)
    keep = [i for i, m in enumerate(visible) if m.sum() >= config.min_visible * full_areas[i]]
    # Mild pixel noise so flat regions are not perfectly constant (keeps calibration statistics realistic).
    image = np.clip(image + rng.normal(0, 4, image.shape), 0, 255).round().astype(np.uint8)
    masks = np.stack([visible[i] for i in keep]) if keep else np.zeros((0, size, size), bool)
    boxes = np.array([_mask_box(m) for m in masks], dtype=np.float32).reshape(-1, 4)
    return Sample(image=image, masks=masks, labels=np.array([labels[i] for i in keep], np.int64), boxes=boxes)


def _mask_box(mask: np.ndarray):
    ys, xs = np.nonzero(mask)
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def normalize(image: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> float32 [3, H, W] with ImageNet mean/std (the models' input convention)."""
    x = image.astype(np.float32) / 255.0
    return ((x - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1).copy()


def rle_encode(mask: np.ndarray) -> Dict[str, object]:
    """COCO uncompressed RLE of a bool [H, W] mask (column-major runs, first run counts zeros)."""
    flat = mask.astype(np.uint8).flatten(order="F")
    counts: List[int] = []
    current, run = 0, 0
    for v in flat:
        if v == current:
            run += 1
        else:
            counts.append(run)
            current, run = int(v), 1
    counts.append(run)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def rle_decode(rle: Dict[str, object]) -> np.ndarray:
    h, w = rle["size"]
    flat = np.zeros(h * w, dtype=bool)
    pos, value = 0, False
    for c in rle["counts"]:
        flat[pos:pos + c] = value
        pos += c
        value = not value
    return flat.reshape((h, w), order="F")


def coco_dict(samples: Sequence[Sample], first_image_id: int = 1) -> Dict[str, object]:
    images, annotations = [], []
    ann_id = 1
    for k, s in enumerate(samples):
        image_id = first_image_id + k
        h, w = s.image.shape[:2]
        images.append({"id": image_id, "width": int(w), "height": int(h), "file_name": f"{image_id}"})
        for m, label, box in zip(s.masks, s.labels, s.boxes):
            x0, y0, x1, y1 = (float(v) for v in box)
            annotations.append({
                "id": ann_id, "image_id": image_id, "category_id": int(label),
                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": float(m.sum()), "iscrowd": 0,
                "segmentation": rle_encode(m),
            })
            ann_id += 1
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CATEGORIES)]
    return {"images": images, "annotations": annotations, "categories": categories}


def write_split(directory: str, name: str, seed: int, split: str, count: int,
                config: ShapesConfig = ShapesConfig(), input_name: str = "images") -> None:
    """Writes <directory>/<name>.npz and <directory>/<name>.json for samples 0..count-1 of a split."""
    samples = [generate_sample(seed, split, i, config) for i in range(count)]
    images = np.stack([normalize(s.image) for s in samples]).astype(np.float32)
    image_ids = np.arange(1, count + 1, dtype=np.int64)
    os.makedirs(directory, exist_ok=True)
    npz_path = os.path.join(directory, f"{name}.npz")
    json_path = os.path.join(directory, f"{name}.json")
    _atomic_write(npz_path, lambda f: write_npz(f, {input_name: images, "image_ids": image_ids}))
    text = json.dumps(coco_dict(samples), separators=(",", ":"), sort_keys=True)
    _atomic_write(json_path, lambda f: f.write(text.encode("utf-8")))


def write_npz(file, arrays: Dict[str, np.ndarray]) -> None:
    """Like numpy.savez_compressed, but byte-identical across runs: members in the given order with a fixed
    timestamp (numpy stamps the current time into the zip headers)."""
    with zipfile.ZipFile(file, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buffer.getvalue())


def _atomic_write(path: str, write) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)


def detr_targets(sample: Sample) -> Dict[str, np.ndarray]:
    """DETR training targets: 0-based class indices and cxcywh boxes normalised by the image size."""
    h, w = sample.image.shape[:2]
    b = sample.boxes
    cxcywh = np.stack([(b[:, 0] + b[:, 2]) / 2 / w, (b[:, 1] + b[:, 3]) / 2 / h,
                       (b[:, 2] - b[:, 0]) / w, (b[:, 3] - b[:, 1]) / h], axis=1).astype(np.float32)
    return {"labels": sample.labels - 1, "boxes": cxcywh.reshape(-1, 4)}


# ------------------------------------------------------------------------------------------------ training pool
@dataclass(frozen=True)
class SamplePool:
    """A fixed set of training samples held in memory (generation costs ~50 ms per image, more than a training step
    of the small models), sampled with the 8 flips/rotations of the square, which leave every class unchanged."""
    images: np.ndarray  # uint8 [N, H, W, 3]
    object_image: np.ndarray  # int64 [M], index of the image of each object
    labels: np.ndarray  # int64 [M]
    masks: np.ndarray  # uint8 [M, H*W/8], np.packbits of the visible mask

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def sample(self, index: int, transform: int) -> Sample:
        """Sample `index` under dihedral transform 0..7 (bit 0: transpose, bit 1: flip rows, bit 2: flip columns)."""
        h, w = self.images.shape[1:3]
        objects = np.nonzero(self.object_image == index)[0]
        image = self.images[index]
        masks = np.unpackbits(self.masks[objects], axis=1, count=h * w).reshape(-1, h, w).astype(bool)
        image, masks = _dihedral(image, transform, (0, 1)), _dihedral(masks, transform, (1, 2))
        boxes = np.array([_mask_box(m) for m in masks], np.float32).reshape(-1, 4)
        return Sample(image=np.ascontiguousarray(image), masks=np.ascontiguousarray(masks),
                      labels=self.labels[objects].copy(), boxes=boxes)


def _dihedral(a: np.ndarray, transform: int, axes) -> np.ndarray:
    if transform & 1:
        a = np.swapaxes(a, *axes)
    if transform & 2:
        a = np.flip(a, axes[0])
    if transform & 4:
        a = np.flip(a, axes[1])
    return a


def build_pool(seed: int, count: int, config: ShapesConfig = ShapesConfig()) -> SamplePool:
    samples = [generate_sample(seed, "train", i, config) for i in range(count)]
    return SamplePool(
        images=np.stack([s.image for s in samples]),
        object_image=np.concatenate([np.full(len(s.labels), i, np.int64) for i, s in enumerate(samples)]),
        labels=np.concatenate([s.labels for s in samples]),
        masks=np.concatenate([np.packbits(s.masks.reshape(len(s.labels), -1), axis=1) for s in samples]),
    )


def load_or_build_pool(path: str, seed: int, count: int, config: ShapesConfig = ShapesConfig()) -> SamplePool:
    """The pool is cached at `path` (outside git); a cache built with other parameters is rebuilt."""
    key = np.array([seed, count, config.image_size, config.min_objects, config.max_objects, config.min_size,
                    config.max_size, round(config.min_visible * 1000), round(config.max_overlap * 1000)], np.int64)
    if os.path.exists(path):
        with np.load(path) as f:
            if np.array_equal(f["key"], key):
                return SamplePool(f["images"], f["object_image"], f["labels"], f["masks"])
    pool = build_pool(seed, count, config)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    _atomic_write(path, lambda f: np.savez(f, key=key, images=pool.images, object_image=pool.object_image,
                                           labels=pool.labels, masks=pool.masks))
    return pool
