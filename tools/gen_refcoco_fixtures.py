#!/usr/bin/env python3
"""Generate the small RefCOCO fixtures and their expected scores (manual; never run in CI).

    .venv/bin/pip install pycocotools numpy
    .venv/bin/python tools/gen_refcoco_fixtures.py fixtures/refcoco

Writes a refer layout with two datasets:
  refcoco/   refs(unc).p as a Python 3 protocol-2 pickle, instances.json
  refcocog/  refs(umd).p as a Python 2 style protocol-0 pickle (STRING opcodes), instances.json
plus prediction files exercising every mask form, and expected.json with the scores computed
independently of perceptio: ground truth through pycocotools (frPyObjects, decode), the three
overlap conventions reproduced as LISA (2-bin histogram) and Sa2VA (encode of the count map)
do it, and cIoU / gIoU with numpy in float64.
"""
import json
import os
import pickle
import sys

import numpy as np
from pycocotools import mask as M

rng = np.random.default_rng(7)

IMAGES = [(101, 48, 64), (102, 40, 30), (103, 25, 25), (104, 60, 80)]


def rect(x0, y0, x1, y1):
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def annotations():
    anns = [
        # id, image, segmentation
        (1, 101, [rect(5.2, 4.7, 30.9, 20.1)]),
        (2, 101, [rect(10, 10, 40, 40), rect(30, 5, 60, 30)]),  # two overlapping parts
        (3, 102, [[2.5, 3.5, 25.0, 2.0, 28.1, 35.9, 4.0, 30.0]]),
        (4, 103, []),  # empty segmentation -> empty ground truth
        (5, 104, [rect(0, 0, 80, 60)]),
        (6, 104, [[20.3, 10.1, 70.8, 15.2, 55.5, 50.5, 25.25, 45.75, 22.0, 30.0], rect(60, 40, 75, 58)]),
        (7, 102, [rect(1, 1, 29, 39), rect(5, 5, 20, 20), rect(8, 8, 12, 30)]),  # nested overlaps
    ]
    return anns


REFS = [
    # ref_id, ann_id, image_id, split, sentences (sent_id, text)
    (11, 1, 101, "val", [(1001, "the left box"), (1002, "small red thing")]),
    (12, 2, 101, "val", [(1003, "two overlapping parts")]),
    (13, 3, 102, "testA", [(1004, "quad"), (1005, "the quadrilateral"), (1006, "shape")]),
    (14, 4, 103, "testB", [(1007, "nothing here")]),
    (15, 5, 104, "testB", [(1008, "whole image")]),
    (16, 6, 104, "val", [(1009, "pentagon and box"), (1010, "the weird one")]),
    (17, 7, 102, "train", [(1011, "nested")]),
    (18, 7, 102, "val", [(1012, "nested again"), (1013, "the nest")]),
]


def gt_masks(seg, h, w):
    """Per-pixel polygon count map, as decode + np.sum(axis=2) gives it."""
    if len(seg) == 0:
        return np.zeros((h, w), np.uint8)
    rles = M.frPyObjects(seg, h, w)
    return np.sum(M.decode(rles), axis=2).astype(np.uint8)


def gt_variants(count):
    union = (count > 0).astype(np.uint8)
    lisa = (count == 1).astype(np.uint8)  # a 2-bin histc over [0, 1] drops values >= 2
    sa2va = M.decode(M.encode(np.asfortranarray(count.astype(np.uint8))))  # re-encoded count map
    return dict(union=union, lisa=lisa, sa2va=sa2va)


def perturb(m):
    p = m.copy()
    h, w = p.shape
    p = np.roll(p, int(rng.integers(-3, 4)), axis=int(rng.integers(0, 2)))
    noise = rng.random((h, w)) < 0.03
    p[noise] ^= 1
    return p


def rle_str(m):
    r = M.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": [int(m.shape[0]), int(m.shape[1])], "counts": r["counts"].decode()}


def rle_list(m):
    flat = m.reshape(-1, order="F")
    runs, cur, n = [], 0, 0
    for v in flat:
        if v != cur:
            runs.append(n)
            n, cur = 0, v
        n += 1
    runs.append(n)
    return {"size": [int(m.shape[0]), int(m.shape[1])], "counts": runs}


def py2_pickle(obj):
    """Protocol 0 as Python 2's pickle.dump wrote it for str/int/list/dict (STRING 'S' opcodes)."""
    out = []
    memo = [0]

    def put():
        out.append("p%d\n" % memo[0])
        memo[0] += 1

    def dump(o):
        if isinstance(o, bool):
            raise TypeError
        if isinstance(o, int):
            out.append("I%d\n" % o)
        elif isinstance(o, str):
            out.append("S%s\n" % repr(o))  # py2 repr of a byte string, ASCII here
            put()
        elif isinstance(o, list):
            out.append("(l")
            put()
            for x in o:
                dump(x)
                out.append("a")
        elif isinstance(o, dict):
            out.append("(d")
            put()
            for k, v in o.items():
                dump(k)
                dump(v)
                out.append("s")
        else:
            raise TypeError(type(o))

    dump(obj)
    out.append(".")
    data = "".join(out).encode("ascii")
    assert pickle.loads(data) == obj, "py2-style pickle must load in Python 3"
    return data


def write_dataset(root, name, split_by, protocol):
    d = os.path.join(root, name)
    os.makedirs(d, exist_ok=True)
    imgs = [dict(id=i, height=h, width=w, file_name="COCO_train2014_%012d.jpg" % i) for i, h, w in IMAGES]
    anns = [dict(id=a, image_id=im, segmentation=seg, area=0.0, bbox=[0, 0, 0, 0], iscrowd=0, category_id=1)
            for a, im, seg in annotations()]
    with open(os.path.join(d, "instances.json"), "w") as f:
        json.dump(dict(images=imgs, annotations=anns, categories=[dict(id=1, name="thing")]), f)
    refs = [dict(ref_id=r, ann_id=a, image_id=im, split=sp, category_id=1, file_name="COCO_train2014_%012d_%d.jpg" % (im, r),
                 sent_ids=[s for s, _ in sents],
                 sentences=[dict(sent_id=s, sent=t, raw=t, tokens=t.split()) for s, t in sents])
            for r, a, im, sp, sents in REFS]
    path = os.path.join(d, "refs(%s).p" % split_by)
    with open(path, "wb") as f:
        f.write(py2_pickle(refs) if protocol == 0 else pickle.dumps(refs, protocol=protocol))


def split_has(split, ref_split):
    if split in ("testA", "testB", "testC"):
        return split[-1] in ref_split
    if split == "test":
        return "test" in ref_split
    return ref_split == split


def main():
    root = sys.argv[1]
    os.makedirs(root, exist_ok=True)
    write_dataset(root, "refcoco", "unc", 2)
    write_dataset(root, "refcocog", "umd", 0)
    sizes = {i: (h, w) for i, h, w in IMAGES}
    segs = {a: (im, seg) for a, im, seg in annotations()}

    # Ground truth per sentence, in the three conventions.
    gts = {}
    for r, a, im, sp, sents in REFS:
        h, w = sizes[im]
        v = gt_variants(gt_masks(segs[a][1], h, w))
        for s, _ in sents:
            gts[s] = dict(split=sp, ref=r, image=im, h=h, w=w, **v)

    # Predictions: one line per sentence in various forms; some sentences missing.
    forms = ["rle", "list", "poly", "null", "empty", "rle", "exact", "rle", "list", "rle", "rle", "exact", "missing"]
    lines, pred_masks = [], {}
    for (s, g), form in zip(sorted(gts.items()), forms):
        h, w = g["h"], g["w"]
        if form == "missing":
            continue
        if form == "null":
            lines.append({"sent_id": s, "mask": None})
            pred_masks[s] = None
        elif form == "empty":
            z = np.zeros((h, w), np.uint8)
            lines.append({"sent_id": s, "mask": rle_str(z)})
            pred_masks[s] = None
        elif form == "poly":
            poly = [[3.0, 2.0, 25.5, 4.0, 22.0, 30.0], [1, 1, 8, 1, 8, 8, 1, 8]]
            lines.append({"sent_id": s, "mask": {"polygons": poly}})
            pred_masks[s] = (np.sum(M.decode(M.frPyObjects(poly, h, w)), axis=2) > 0).astype(np.uint8)
        elif form == "exact":
            m = g["union"]
            lines.append({"sent_id": s, "mask": rle_str(m)})
            pred_masks[s] = m
        else:
            m = perturb(g["union"])
            lines.append({"sent_id": s, "mask": rle_str(m) if form == "rle" else rle_list(m)})
            pred_masks[s] = m
    with open(os.path.join(root, "predictions.jsonl"), "w") as f:
        for l in lines:
            f.write(json.dumps(l) + "\n")

    expected = {}
    for split in ["val", "testA", "testB", "test", "train"]:
        for conv in ["union", "lisa", "sa2va"]:
            I = U = 0
            gious, ref_gious = [], []
            missing = empty = other = 0
            per = []
            for s, g in sorted(gts.items()):
                if not split_has(split, g["split"]):
                    continue
                gt = g[conv]
                if s not in pred_masks:
                    missing += 1
                    p = np.zeros_like(gt)
                elif pred_masks[s] is None:
                    empty += 1
                    p = np.zeros_like(gt)
                else:
                    p = pred_masks[s]
                    if p.sum() == 0:
                        empty += 1
                i = int(np.logical_and(p, gt).sum())
                u = int(np.logical_or(p, gt).sum())
                I += i
                U += u
                gious.append(1.0 if u == 0 else i / u)
                # the reference scripts' formula, with their epsilons
                ref_gious.append(i / (u + 1e-5) + (1.0 if u == 0 else 0.0))
                per.append(dict(sent_id=s, intersection=i, union=u))
            other = sum(1 for s in pred_masks if not split_has(split, gts[s]["split"]))
            n = len(gious)
            expected["%s/%s" % (split, conv)] = dict(
                samples=n, intersection=I, union=U, ciou=(I / U if U else 0.0), giou=float(np.sum(gious) / n),
                ciou_reference=I / (U + 1e-10), giou_reference=float(np.sum(ref_gious) / n),
                missing_predictions=missing, empty_predictions=empty, other_split_predictions=other, per_sample=per)
    with open(os.path.join(root, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)

    # The same val ground truth as --annotations JSONL (union convention).
    with open(os.path.join(root, "gt_val.jsonl"), "w") as f:
        for s, g in sorted(gts.items()):
            if g["split"] == "val":
                f.write(json.dumps({"sent_id": s, "height": g["h"], "width": g["w"], "mask": rle_str(g["union"]), "ref_id": g["ref"]}) + "\n")
    print("wrote", root)


if __name__ == "__main__":
    main()
