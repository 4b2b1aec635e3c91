import json
import os

import numpy as np
import pytest

from onnxquant_models import dataset
from onnxquant_models.dataset import CATEGORIES, ShapesConfig, generate_sample, rle_decode, rle_encode


def test_sample_is_a_function_of_seed_split_and_index_only():
    a = generate_sample(7, "eval", 3)
    generate_sample(7, "eval", 2)  # generating other samples in between changes nothing
    b = generate_sample(7, "eval", 3)
    assert np.array_equal(a.image, b.image)
    assert np.array_equal(a.masks, b.masks)
    assert np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.image, generate_sample(7, "calib", 3).image)
    assert not np.array_equal(a.image, generate_sample(8, "eval", 3).image)


def test_unknown_split_is_rejected():
    with pytest.raises(ValueError, match="unknown split"):
        generate_sample(0, "test", 0)


@pytest.mark.parametrize("index", range(12))
def test_annotations_are_consistent_with_masks(index):
    config = ShapesConfig()
    s = generate_sample(0, "train", index, config)
    assert s.image.shape == (config.image_size, config.image_size, 3) and s.image.dtype == np.uint8
    assert len(s.labels) <= config.max_objects
    assert np.all((s.labels >= 1) & (s.labels <= len(CATEGORIES)))
    for m, box in zip(s.masks, s.boxes):
        ys, xs = np.nonzero(m)
        assert len(xs) > 0
        # The box is the tight box of the visible mask (x1, y1 exclusive).
        assert (box[0], box[1], box[2], box[3]) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    # Visible masks never overlap: later objects occlude earlier ones.
    assert np.all(s.masks.sum(axis=0) <= 1)


def test_rle_round_trip_and_column_major_order():
    mask = np.zeros((3, 4), bool)
    mask[0, 1] = mask[1, 1] = mask[2, 3] = True
    rle = rle_encode(mask)
    # Column-major: column 0 (3 zeros), column 1 (1, 1, 0), column 2 (0, 0, 0), column 3 (0, 0, 1).
    assert rle == {"size": [3, 4], "counts": [3, 2, 6, 1]}
    assert np.array_equal(rle_decode(rle), mask)
    starts_with_one = np.ones((2, 2), bool)
    assert rle_encode(starts_with_one)["counts"] == [0, 4]


def test_write_split_is_byte_identical_and_consistent(tmp_path):
    for d in ("a", "b"):
        dataset.write_split(str(tmp_path / d), "eval", 0, "eval", 3)
    for name in ("eval.npz", "eval.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    with np.load(tmp_path / "a" / "eval.npz") as f:
        images, ids = f["images"], f["image_ids"]
    assert images.shape == (3, 3, 128, 128) and images.dtype == np.float32
    assert list(ids) == [1, 2, 3]
    coco = json.loads((tmp_path / "a" / "eval.json").read_text())
    assert [im["id"] for im in coco["images"]] == [1, 2, 3]
    assert [c["id"] for c in coco["categories"]] == list(range(1, len(CATEGORIES) + 1))
    for k in range(3):
        s = generate_sample(0, "eval", k)
        assert np.allclose(images[k], dataset.normalize(s.image))
        anns = [a for a in coco["annotations"] if a["image_id"] == k + 1]
        assert len(anns) == len(s.labels)
        for a, m in zip(anns, s.masks):
            decoded = rle_decode(a["segmentation"])
            assert np.array_equal(decoded, m)
            assert a["area"] == decoded.sum() and a["iscrowd"] == 0
            x, y, w, h = a["bbox"]
            ys, xs = np.nonzero(decoded)
            assert (x, y, x + w, y + h) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_pool_dihedral_transforms_keep_annotations_consistent():
    pool = dataset.build_pool(3, 2)
    base = pool.sample(0, 0)
    ref = generate_sample(3, "train", 0)
    assert np.array_equal(base.image, ref.image) and np.array_equal(base.boxes, ref.boxes)
    for t in range(8):
        s = pool.sample(0, t)
        assert s.masks.sum() == base.masks.sum()
        assert np.array_equal(s.labels, base.labels)
        for m, box in zip(s.masks, s.boxes):
            ys, xs = np.nonzero(m)
            assert (box[0], box[1], box[2], box[3]) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    # Transpose then flips: transform 1 swaps x and y of the boxes.
    assert np.array_equal(pool.sample(0, 1).boxes, base.boxes[:, [1, 0, 3, 2]])


def test_detr_targets_are_normalised_cxcywh():
    s = generate_sample(0, "eval", 0)
    t = dataset.detr_targets(s)
    b = s.boxes
    assert np.allclose(t["boxes"][:, 0], (b[:, 0] + b[:, 2]) / 2 / 128)
    assert np.allclose(t["boxes"][:, 2], (b[:, 2] - b[:, 0]) / 128)
    assert np.array_equal(t["labels"], s.labels - 1)
