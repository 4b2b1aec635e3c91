"""Independent reference of COCO's box/mask AP protocol, used to cross-check the C# evaluator on random cases.

Usage: coco_reference.py gt.json dets.json bbox|segm  -> prints the 12 summary numbers as JSON (null = undefined).
Ground truth is COCO JSON whose segmentations are uncompressed RLE; detections are a JSON list of
{image_id, category_id, score, bbox, [segmentation: uncompressed RLE]}.
"""
import json
import sys

import numpy as np

IOU_THRS = np.linspace(0.5, 0.95, 10)
REC_THRS = np.linspace(0.0, 1.0, 101)
MAX_DETS = [1, 10, 100]
AREAS = [(0, 1e10), (0, 32 ** 2), (32 ** 2, 96 ** 2), (96 ** 2, 1e10)]


def decode(rle):
    h, w = rle["size"]
    flat = np.zeros(h * w, dtype=bool)
    pos, val = 0, False
    for c in rle["counts"]:
        flat[pos:pos + c] = val
        pos += c
        val = not val
    return flat  # column-major order; fine for areas and overlaps


def iou_matrix(dts, gts, kind):
    out = np.zeros((len(dts), len(gts)))
    for i, d in enumerate(dts):
        for j, g in enumerate(gts):
            if kind == "bbox":
                dx, dy, dw, dh = d["bbox"]
                gx, gy, gw, gh = g["bbox"]
                iw = min(dx + dw, gx + gw) - max(dx, gx)
                ih = min(dy + dh, gy + gh) - max(dy, gy)
                inter = iw * ih if iw > 0 and ih > 0 else 0.0
                da, ga = dw * dh, gw * gh
            else:
                dm, gm = d["_mask"], g["_mask"]
                inter = float(np.count_nonzero(dm & gm))
                da, ga = float(dm.sum()), float(gm.sum())
            union = da if g.get("iscrowd", 0) else da + ga - inter
            out[i, j] = inter / union if union > 0 else 0.0
    return out


def match(dts, gts, ious, rng, kind):
    """Greedy per-threshold matching; returns scores, matched[T,D], ignored[T,D], number of counted gts."""
    ign = np.array([bool(g.get("iscrowd", 0)) or g["area"] < rng[0] or g["area"] > rng[1] for g in gts], dtype=bool)
    order = np.argsort(ign.astype(int), kind="stable")
    ign = ign[order]
    crowd = np.array([bool(gts[j].get("iscrowd", 0)) for j in order], dtype=bool)
    ious = ious[:, order] if ious.size else np.zeros((len(dts), len(gts)))
    T, D, G = len(IOU_THRS), len(dts), len(gts)
    taken = np.zeros((T, G), bool)
    matched = np.zeros((T, D), bool)
    ignored = np.zeros((T, D), bool)
    for t, thr in enumerate(IOU_THRS):
        for di in range(D):
            best, m = min(thr, 1 - 1e-10), -1
            for gi in range(G):
                if taken[t, gi] and not crowd[gi]:
                    continue
                if m > -1 and not ign[m] and ign[gi]:
                    break
                if ious[di, gi] < best:
                    continue
                best, m = ious[di, gi], gi
            if m >= 0:
                matched[t, di] = True
                ignored[t, di] = ign[m]
                taken[t, m] = True
    areas = np.array([(d["bbox"][2] * d["bbox"][3]) if kind == "bbox" else float(d["_mask"].sum()) for d in dts])
    out_of_range = (areas < rng[0]) | (areas > rng[1]) if D else np.zeros(0, bool)
    ignored |= (~matched) & out_of_range[None, :]
    return np.array([d["score"] for d in dts]), matched, ignored, int((~ign).sum())


def evaluate(gt, dets, kind):
    images = sorted(im["id"] for im in gt["images"])
    cats = sorted(c["id"] for c in gt["categories"])
    if kind == "segm":
        for a in gt["annotations"]:
            a["_mask"] = decode(a["segmentation"])
        for d in dets:
            d["_mask"] = decode(d["segmentation"])
    T, R, K, A, M = len(IOU_THRS), len(REC_THRS), len(cats), len(AREAS), len(MAX_DETS)
    precision = -np.ones((T, R, K, A, M))
    recall = -np.ones((T, K, A, M))
    results = {}
    for ki, c in enumerate(cats):
        for im in images:
            g = [a for a in gt["annotations"] if a["image_id"] == im and a["category_id"] == c]
            d = [x for x in dets if x["image_id"] == im and x["category_id"] == c]
            d = [d[i] for i in np.argsort([-x["score"] for x in d], kind="stable")][:MAX_DETS[-1]]
            if not g and not d:
                continue
            ious = iou_matrix(d, g, kind)
            for ai, rng in enumerate(AREAS):
                results[ki, ai, im] = match(d, g, ious, rng, kind)
    for ki in range(K):
        for ai in range(A):
            for mi, md in enumerate(MAX_DETS):
                E = [results[ki, ai, im] for im in images if (ki, ai, im) in results]
                if not E:
                    continue
                npig = sum(e[3] for e in E)
                if npig == 0:
                    continue
                scores = np.concatenate([e[0][:md] for e in E])
                order = np.argsort(-scores, kind="stable")
                tm = np.concatenate([e[1][:, :md] for e in E], axis=1)[:, order]
                ti = np.concatenate([e[2][:, :md] for e in E], axis=1)[:, order]
                tps = np.cumsum(tm & ~ti, axis=1).astype(float)
                fps = np.cumsum(~tm & ~ti, axis=1).astype(float)
                for t in range(T):
                    # Ignored detections stay in the cumulative sums (adding nothing), as the reference protocol does.
                    tp, fp = tps[t], fps[t]
                    rc = tp / npig
                    pr = tp / (tp + fp + np.spacing(1))
                    recall[t, ki, ai, mi] = rc[-1] if len(rc) else 0
                    pr = np.maximum.accumulate(pr[::-1])[::-1] if len(pr) else pr
                    idx = np.searchsorted(rc, REC_THRS, side="left")
                    q = np.array([pr[i] if i < len(pr) else 0.0 for i in idx])
                    precision[t, :, ki, ai, mi] = q

    def summ(ap, thr=None, a=0, m=2):
        s = precision[:, :, :, a, m] if ap else recall[:, :, a, m]
        if thr is not None:
            s = s[np.where(np.isclose(IOU_THRS, thr))[0]]
        s = s[s > -1]
        return float(s.mean()) if s.size else None

    return [summ(1), summ(1, .5), summ(1, .75), summ(1, a=1), summ(1, a=2), summ(1, a=3),
            summ(0, m=0), summ(0, m=1), summ(0), summ(0, a=1), summ(0, a=2), summ(0, a=3)]


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        gt = json.load(f)
    with open(sys.argv[2]) as f:
        dets = json.load(f)
    print(json.dumps(evaluate(gt, dets, sys.argv[3])))
