#!/usr/bin/env python3
"""Generate pycocotools goldens for perceptio's RLE module (manual; never run in CI).

    python3 -m venv .venv && .venv/bin/pip install pycocotools numpy
    .venv/bin/python tools/gen_rle_goldens.py fixtures/rle/pycocotools_golden.json

Every expected value comes from pycocotools' compiled maskApi.c (encode, decode, frPyObjects,
merge, area, toBbox, iou). Masks are stored as row-major '0'/'1' strings so the Rust test can
check encoding from an independent representation.
"""
import json
import sys

import numpy as np
from importlib.metadata import version
from pycocotools import mask as M

rng = np.random.default_rng(20261125)


def s(rle):
    return rle["counts"].decode("ascii")


def bits(m):
    return "".join("1" if v else "0" for v in m.reshape(-1))


def random_mask(h, w, kind):
    if kind == "zeros":
        return np.zeros((h, w), np.uint8)
    if kind == "ones":
        return np.ones((h, w), np.uint8)
    if kind == "noise":
        return (rng.random((h, w)) < rng.uniform(0.05, 0.95)).astype(np.uint8)
    # blobs: a few random rectangles and a disc
    m = np.zeros((h, w), np.uint8)
    for _ in range(rng.integers(1, 4)):
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        m[y0:y0 + rng.integers(1, h + 1), x0:x0 + rng.integers(1, w + 1)] = 1
    yy, xx = np.mgrid[:h, :w]
    cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.5, max(h, w) / 2 + 1)
    m[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] ^= 1
    return m


def masks():
    out = []
    sizes = [(1, 1), (1, 7), (7, 1), (3, 4), (4, 5), (13, 17), (32, 24), (40, 40), (5, 64)]
    for h, w in sizes:
        for kind in ["zeros", "ones", "noise", "blobs", "blobs"]:
            m = random_mask(h, w, kind)
            r = M.encode(np.asfortranarray(m))
            out.append(dict(h=h, w=w, bits=bits(m), counts=s(r), area=int(M.area(r)),
                            bbox=[float(v) for v in M.toBbox(r)]))
    return out


def random_polygon(h, w, style):
    n = int(rng.integers(3, 12))
    if style == "inside":
        xs, ys = rng.uniform(0, w, n), rng.uniform(0, h, n)
    elif style == "outside":
        xs, ys = rng.uniform(-0.5 * w, 1.5 * w, n), rng.uniform(-0.5 * h, 1.5 * h, n)
    elif style == "integer":
        xs, ys = rng.integers(0, w + 1, n).astype(float), rng.integers(0, h + 1, n).astype(float)
    elif style == "halves":
        xs, ys = rng.integers(0, 2 * w, n) / 2.0, rng.integers(0, 2 * h, n) / 2.0
    elif style == "duplicates":
        xs, ys = rng.uniform(0, w, n), rng.uniform(0, h, n)
        xs[1], ys[1] = xs[0], ys[0]
        xs[-1], ys[-1] = xs[-2], ys[-2]
    else:  # star around the centre, COCO-like with 2 decimals
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        rad = rng.uniform(0.2, 0.5, n) * min(h, w)
        xs, ys = w / 2 + rad * np.cos(ang), h / 2 + rad * np.sin(ang)
        xs, ys = np.round(xs, 2), np.round(ys, 2)
    xy = np.stack([xs, ys], 1).reshape(-1)
    return [float(v) for v in xy]


def polygons():
    out = []
    sizes = [(1, 1), (5, 5), (10, 20), (31, 17), (64, 48), (100, 150), (480, 640)]
    styles = ["inside", "outside", "integer", "halves", "duplicates", "star"]
    for h, w in sizes:
        for st in styles:
            for _ in range(2):
                polys = [random_polygon(h, w, st) for _ in range(int(rng.integers(1, 4)))]
                if rng.random() < 0.2:
                    polys[0] = polys[0] + [float(rng.uniform(0, w))]  # odd length: last value dropped
                rles = M.frPyObjects(polys, h, w)
                merged = M.merge(rles)
                out.append(dict(h=h, w=w, polygons=polys, each=[s(r) for r in rles], merged=s(merged),
                                area=int(M.area(merged))))
    # degenerate and special cases
    special = [
        (10, 10, [[1, 1, 4, 1, 4, 3, 1, 3]]),
        (10, 10, [[0, 0, 10, 0, 10, 10, 0, 10]]),
        (10, 10, [[-5, -5, 15, -5, 15, 15, -5, 15]]),
        (10, 10, [[2, 2, 2, 2, 2, 2]]),
        (10, 10, [[2.5, 2.5, 7.5, 2.5, 7.5, 7.5, 2.5, 7.5]]),
        (7, 9, [[0.1, 0.1, 8.9, 0.1, 4.5, 6.9]]),
        (3, 3, [[1, 1, 1, 1, 1, 1, 1, 1, 1, 1]]),
    ]
    for h, w, polys in special:
        rles = M.frPyObjects(polys, h, w)
        merged = M.merge(rles)
        out.append(dict(h=h, w=w, polygons=polys, each=[s(r) for r in rles], merged=s(merged),
                        area=int(M.area(merged))))
    return out


def bboxes():
    out = []
    for h, w in [(10, 10), (48, 64), (480, 640)]:
        for _ in range(8):
            bb = [float(rng.uniform(-5, w)), float(rng.uniform(-5, h)), float(rng.uniform(0, w)), float(rng.uniform(0, h))]
            r = M.frPyObjects(np.array([bb], dtype=np.double), h, w)[0]
            out.append(dict(h=h, w=w, bbox=bb, counts=s(r)))
    return out


def uncompressed():
    out = []
    for h, w in [(4, 5), (13, 17), (40, 40)]:
        for kind in ["noise", "blobs", "zeros", "ones"]:
            m = random_mask(h, w, kind)
            flat = m.reshape(-1, order="F")
            runs, cur, n = [], 0, 0
            for v in flat:
                if v != cur:
                    runs.append(n)
                    n, cur = 0, v
                n += 1
            runs.append(n)
            r = M.frPyObjects({"size": [h, w], "counts": runs}, h, w)
            out.append(dict(h=h, w=w, counts_list=runs, counts=s(r)))
    out.append(dict(h=4, w=5, counts_list=[5, 2, 2, 2, 2, 2, 4, 1], counts=s(M.frPyObjects({"size": [4, 5], "counts": [5, 2, 2, 2, 2, 2, 4, 1]}, 4, 5))))
    return out


def ious():
    out = []
    for h, w in [(13, 17), (40, 40), (64, 48)]:
        for _ in range(12):
            a = random_mask(h, w, rng.choice(["noise", "blobs", "zeros"]))
            b = random_mask(h, w, rng.choice(["noise", "blobs", "zeros", "ones"]))
            ra, rb = M.encode(np.asfortranarray(a)), M.encode(np.asfortranarray(b))
            inter = int(M.area(M.merge([ra, rb], intersect=True)))
            union = int(M.area(M.merge([ra, rb], intersect=False)))
            out.append(dict(h=h, w=w, a=s(ra), b=s(rb), intersection=inter, union=union,
                            iou=float(M.iou([ra], [rb], [0])[0][0]),
                            iou_crowd=float(M.iou([ra], [rb], [1])[0][0])))
    return out


def main():
    path = sys.argv[1]
    data = dict(generator="tools/gen_rle_goldens.py", pycocotools=version("pycocotools"),
                masks=masks(), polygons=polygons(), bboxes=bboxes(), uncompressed=uncompressed(), ious=ious())
    with open(path, "w") as f:
        json.dump(data, f, separators=(",", ":"))
    print(path, {k: len(v) for k, v in data.items() if isinstance(v, list)})


if __name__ == "__main__":
    main()
