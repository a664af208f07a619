#!/usr/bin/env python3
"""Time RefCOCO cIoU scoring in Python with pycocotools on the data `cargo bench --bench scoring`
writes (default target/bench-data), for the comparison in docs/performance.md.

    .venv/bin/pip install pycocotools numpy
    cargo bench --bench scoring && .venv/bin/python tools/bench_pycocotools.py target/bench-data

Two Python variants, both single-threaded as the reference scripts are:
  decode  - what LISA / GLaMM / Sa2VA do: decode GT polygons and predicted RLEs to arrays,
            intersect with numpy (the reference path);
  rle     - the fastest pycocotools route: stay in RLE, merge(intersect) + area.
"""
import json
import pickle
import sys
import time

import numpy as np
from pycocotools import mask as M


def load(root):
    refs = pickle.load(open(f"{root}/refcoco/refs(unc).p", "rb"))
    inst = json.load(open(f"{root}/refcoco/instances.json"))
    imgs = {i["id"]: i for i in inst["images"]}
    anns = {a["id"]: a for a in inst["annotations"]}
    preds = {}
    for line in open(f"{root}/predictions.jsonl"):
        d = json.loads(line)
        preds[d["sent_id"]] = d["mask"]
    return refs, imgs, anns, preds


def score_decode(root):
    refs, imgs, anns, preds = load(root)
    I = U = 0
    gious = []
    for r in refs:
        if r["split"] != "val":
            continue
        img = imgs[r["image_id"]]
        h, w = img["height"], img["width"]
        gt = (np.sum(M.decode(M.frPyObjects(anns[r["ann_id"]]["segmentation"], h, w)), axis=2) > 0).astype(np.uint8)
        for s in r["sentences"]:
            p = preds.get(s["sent_id"])
            pm = M.decode(p) if p else np.zeros_like(gt)
            i = int(np.logical_and(pm, gt).sum())
            u = int(np.logical_or(pm, gt).sum())
            I += i
            U += u
            gious.append(1.0 if u == 0 else i / u)
    return I / U, float(np.mean(gious)), len(gious)


def score_rle(root):
    refs, imgs, anns, preds = load(root)
    I = U = 0
    gious = []
    for r in refs:
        if r["split"] != "val":
            continue
        img = imgs[r["image_id"]]
        h, w = img["height"], img["width"]
        gt = M.merge(M.frPyObjects(anns[r["ann_id"]]["segmentation"], h, w))
        for s in r["sentences"]:
            p = preds.get(s["sent_id"])
            if p is None:
                i, u = 0, int(M.area(gt))
            else:
                i = int(M.area(M.merge([p, gt], intersect=True)))
                u = int(M.area(M.merge([p, gt], intersect=False)))
            I += i
            U += u
            gious.append(1.0 if u == 0 else i / u)
    return I / U, float(np.mean(gious)), len(gious)


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "target/bench-data"
    for name, fn, reps in [("decode (reference path)", score_decode, 3), ("rle (merge + area)", score_rle, 3)]:
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            ciou, giou, n = fn(root)
            times.append(time.perf_counter() - t)
        times.sort()
        print(f"python pycocotools {name:<26} median {times[len(times)//2]*1e3:8.1f} ms  (min {times[0]*1e3:.1f}, {reps} runs)  cIoU {ciou:.4f} gIoU {giou:.4f} n={n}")


if __name__ == "__main__":
    main()
