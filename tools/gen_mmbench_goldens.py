#!/usr/bin/env python3
"""Generate MMBench scoring fixtures with VLMEvalKit's and lmms-eval's own code (manual; never in CI).

    .venv/bin/pip install pandas openpyxl numpy
    git clone https://github.com/open-compass/VLMEvalKit  /tmp/VLMEvalKit     # tested at e8e78f05 (2026-08-18)
    git clone https://github.com/EvolvingLMMs-Lab/lmms-eval /tmp/lmms-eval
    .venv/bin/python tools/gen_mmbench_goldens.py /tmp/VLMEvalKit /tmp/lmms-eval fixtures/mmbench

Writes a crafted MMBench-style TSV (circular copies at index + k*1e6, NaN hints and options,
an option whose text is "None", base64 and back-referenced images), predictions as JSONL, TSV
and xlsx covering the tricky answer forms, and expected.json. The expected numbers come from
running VLMEvalKit's real `mcq_circular_eval` + `report_acc` (exact matching, judge=None) on
the xlsx, as `ImageMCQDataset.evaluate_heuristic` does, and from lmms-eval's
`MMBench_Evaluator.prefetch_answer` for the legacy matcher. Only `vlmeval.smp` helpers
(load/dump and logging) are stubbed; the matching and circular code is loaded from the checkouts.
"""
import base64
import csv
import importlib.util
import io
import json
import os
import pickle
import string
import sys
import types
import logging
from collections import deque

import numpy as np
import pandas as pd


def load_module(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def stub_vlmeval(vlmeval_root):
    def load(f, fmt=None):
        ext = f.rsplit(".", 1)[-1]
        if ext == "pkl":
            return pickle.load(open(f, "rb"))
        if ext == "xlsx":
            return pd.read_excel(f)
        if ext == "tsv":
            return pd.read_csv(f, sep="\t")
        raise ValueError(f)

    def dump(data, f, **kw):
        ext = f.rsplit(".", 1)[-1]
        if ext == "pkl":
            pickle.dump(data, open(f, "wb"))
        elif ext == "xlsx":
            data.to_excel(f, index=False, engine="openpyxl")
        elif ext == "tsv":
            data.to_csv(f, sep="\t", index=False, encoding="utf-8", quoting=csv.QUOTE_ALL)
        elif ext == "csv":
            data.to_csv(f, index=False, encoding="utf-8", quoting=csv.QUOTE_ALL)
        else:
            raise ValueError(f)

    for name in ["vlmeval", "vlmeval.smp", "vlmeval.smp.log", "vlmeval.smp.vlm", "vlmeval.utils", "vlmeval.dataset", "vlmeval.dataset.utils"]:
        sys.modules[name] = types.ModuleType(name)
    smp = sys.modules["vlmeval.smp"]
    smp.load, smp.dump = load, dump
    smp.get_logger = lambda name=None: logging.getLogger(name)
    smp.istype = lambda x, t: isinstance(x, (int, np.integer)) if t is int else isinstance(x, t)
    smp.timestr = lambda *a, **k: "gen_mmbench"
    smp.get_pred_file_format = lambda: "xlsx"
    smp.cn_string = lambda s: False
    smp.d2df = lambda d: pd.DataFrame(d)
    sys.modules["vlmeval.smp.log"].get_logger = smp.get_logger
    sys.modules["vlmeval.smp.vlm"].build_option_str = lambda opts: "".join(f"{k}. {v}\n" for k, v in opts.items())
    mu = load_module("vlmeval.utils.matching_util", os.path.join(vlmeval_root, "vlmeval/utils/matching_util.py"))
    utils = sys.modules["vlmeval.utils"]
    utils.can_infer, utils.can_infer_lego = mu.can_infer, mu.can_infer_lego
    utils.track_progress_rich = None
    mc = load_module("vlmeval.dataset.utils.multiple_choice", os.path.join(vlmeval_root, "vlmeval/dataset/utils/multiple_choice.py"))
    return mu, mc


def lmms_evaluator(lmms_root):
    for name in ["requests", "loguru"]:
        if name not in sys.modules:
            m = types.ModuleType(name)
            sys.modules[name] = m
    sys.modules["loguru"].logger = logging.getLogger("loguru")
    mod = load_module("lmms_mmbench_evals", os.path.join(lmms_root, "lmms_eval/tasks/mmbench/mmbench_evals.py"))
    return mod.MMBench_Evaluator(sys_prompt="", API_KEY="none", API_URL="http://127.0.0.1:9/none")


# ---------------------------------------------------------------------------------------------
QUESTIONS = [
    # index, question, hint, options, answer, category, l2-category
    (1, "What animal is shown?", None, ["cat", "dog", "horse", "cow"], "A", "image_topic", "coarse_perception"),
    (2, "What colour is the cup?", "Look at the table.", ["red", "blue", "green", "white"], "B", "attribute_recognition", "finegrained_perception (instance-level)"),
    (3, "How many people?", None, ["1", "2", "3"], "C", "object_localization", "finegrained_perception (instance-level)"),
    (4, "Which is closer?", None, ["the tree", "the car"], "B", "spatial_relationship", "relation_reasoning"),
    (5, "What is the mood?", None, ["happy", "sad", "None", "angry"], "D", "image_emotion", "coarse_perception"),
    (6, "What will happen next?", None, ["it rains", "it snows", "sun", "fog"], "A", "future_prediction", "logic_reasoning"),
    (7, "Which object is larger?", None, ["apple", "watermelon", "grape", "cherry"], "B", "physical_property_reasoning", "attribute_reasoning"),
    (8, "What is written?", None, ["STOP", "GO", "YIELD", "EXIT"], "A", "ocr", "finegrained_perception (cross-instance)"),
    (9, "Is the man sitting?", None, ["yes", "no"], "A", "action_recognition", "coarse_perception"),
    (10, "What sport?", None, ["tennis", "golf", "soccer", "chess"], "C", "image_topic", "coarse_perception"),
    (11, "Where is the cat?", None, ["on the sofa", "under the table", "in the box", "on the roof"], "A", "spatial_relationship", "relation_reasoning"),
    (12, "What time of day?", None, ["morning", "night", "noon", "evening"], "B", "image_scene", "coarse_perception"),
]

# Predictions per question: one string per rotation (None = no row for it).
PREDICTIONS = {
    1: ["A", "B", "C", "D"],                         # all right
    2: ["B", "The answer is A.", "(D)", "C"],         # verbose answer regex
    3: ["C", "A. 1", "B"],                           # letter with option text (first token)
    4: ["the car", "The car."],                      # option text only
    5: ["C", "A", "B"],                              # "None" option is NaN: 3 options, 3 rotations
    6: ["I'm sorry, but without the image provided I cannot say. A", "D", "C", "B"],  # refusal -> Z
    7: ["B. The watermelon is the largest fruit here", "A", "D", "C"],  # letter too early -> text length cap
    8: ["A B", "D", "C", "B"],                       # multi-letter answer
    9: [None, "B"],                                  # main row missing
    10: ["C", None, "A", "D"],                       # a rotation missing
    11: ["**A**", "answer is b", "C", "Z"],          # markdown letter, lowercase regex, Z
    12: ["b", "A", "D", "C"],                        # lowercase letter: unresolved
}


def rotations(idx, options, answer):
    k = len([o for o in options if o is not None])
    labels = list(string.ascii_uppercase[:k])
    rots = [labels]
    dq = deque(labels)
    for _ in range(k - 1):
        dq.rotate(1)
        rots.append(list(dq))
    out = []
    for i, rot in enumerate(rots):
        c_map = dict(zip(labels, rot))
        new = {}
        for s, t in c_map.items():
            new[t] = options[labels.index(s)]
        out.append((int(idx + 1e6 * i), c_map[answer], [new[l] for l in labels]))
    return out


def tiny_jpeg_b64(seed):
    # A valid 1x1 JPEG would need PIL; MMBench images are opaque to the scorer, any base64 works.
    return base64.b64encode(bytes([seed % 256]) * 48).decode()


def build_tsv(path):
    rows = []
    for idx, q, hint, opts, ans, cat, l2 in QUESTIONS:
        # Rotate over the options pandas will see: an option text "None" reads as NaN.
        visible = [o for o in opts if o != "None"]
        answer_letter = string.ascii_uppercase[visible.index(opts[ord(ans) - 65])] if opts[ord(ans) - 65] != "None" else ans
        for r, (index, a, ropts) in enumerate(rotations(idx, visible, answer_letter)):
            if idx == 5:
                ropts = ropts + ["None"]  # keep a literal "None" cell in the file
            row = {"index": index, "question": q, "hint": hint if hint else "", "answer": a,
                   "category": cat, "l2-category": l2, "split": "dev", "source": "perceptio-fixture",
                   "image": tiny_jpeg_b64(idx) if r == 0 else str(idx)}
            for j, L in enumerate("ABCD"):
                row[L] = ropts[j] if j < len(ropts) else ""
            rows.append(row)
    cols = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "source", "l2-category", "split"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(cols)
        for r in rows:
            w.writerow([r[c] for c in cols])


def build_predictions(meta, out_dir):
    lines = []
    for idx, preds in PREDICTIONS.items():
        for k, p in enumerate(preds):
            if p is None:
                continue
            lines.append({"index": int(idx + 1e6 * k), "prediction": p})
    with open(os.path.join(out_dir, "predictions.jsonl"), "w") as f:
        for l in lines:
            f.write(json.dumps(l) + "\n")
    # VLMEvalKit's prediction file: every TSV column but the image, plus `prediction`.
    pm = {l["index"]: l["prediction"] for l in lines}
    data = meta[meta["index"].isin(pm)].copy()
    data.pop("image")
    data["prediction"] = [pm[i] for i in data["index"]]
    data.to_excel(os.path.join(out_dir, "predictions.xlsx"), index=False, engine="openpyxl")
    data.to_csv(os.path.join(out_dir, "predictions.tsv"), sep="\t", index=False, quoting=csv.QUOTE_ALL)


def run_vlmevalkit(mc, meta, xlsx, work):
    # ImageMCQDataset.evaluate_heuristic, exact matching
    data = pd.read_excel(xlsx)
    data["index"] = [int(x) for x in data["index"]]
    data = data.sort_values(by="index")
    data["prediction"] = [str(x) for x in data["prediction"]]
    for k in list(data.keys()):
        data[k.lower() if k not in list(string.ascii_uppercase) else k] = data.pop(k)
    result_file = os.path.join(work, "result.pkl")
    if os.path.exists(result_file):
        os.remove(result_file)
    data_main = mc.mcq_circular_eval(None, data, meta, 1, result_file, "MMBench_DEV_EN")
    acc = mc.report_acc(data_main)
    buf = io.StringIO()
    acc.to_csv(buf, index=False, quoting=csv.QUOTE_ALL)
    hits = {int(i): int(h) for i, h in zip(data_main["index"], data_main["hit"])}
    return hits, buf.getvalue(), acc


def run_legacy(ev, meta, preds):
    hits = {}
    gts = dict(zip(meta["index"], meta["answer"]))
    for idx in sorted(i for i in preds if i < 1e6):
        group = sorted(i for i in preds if i % int(1e6) == idx)
        hit = 1
        for i in group:
            item = meta[meta["index"] == i].iloc[0].to_dict()
            item["prediction"] = str(preds[i])
            p = ev.prefetch_answer(item)
            if p != gts[i]:  # unresolved (False) is wrong without a judge
                hit = 0
        hits[int(idx)] = hit
    return hits


def summarise(meta, hits, mains_all, strict):
    main = meta[meta["index"] < 1e6].set_index("index")
    if strict:
        hits = {i: hits.get(i, 0) for i in mains_all}
    idx = sorted(hits)
    res = dict(overall=float(np.mean([hits[i] for i in idx])), questions=len(idx), l2_categories={}, categories={})
    for col, key in [("l2-category", "l2_categories"), ("category", "categories")]:
        for name in sorted(set(main.loc[idx, col])):
            sel = [hits[i] for i in idx if main.loc[i, col] == name]
            res[key][name] = float(np.mean(sel))
    return res, hits


def main():
    vlmeval_root, lmms_root, out_dir = sys.argv[1:4]
    os.makedirs(out_dir, exist_ok=True)
    mu, mc = stub_vlmeval(vlmeval_root)
    ev = lmms_evaluator(lmms_root)
    tsv = os.path.join(out_dir, "MMBench_DEV_EN_mini.tsv")
    build_tsv(tsv)
    meta = pd.read_csv(tsv, sep="\t")
    build_predictions(meta, out_dir)
    preds = {json.loads(l)["index"]: json.loads(l)["prediction"] for l in open(os.path.join(out_dir, "predictions.jsonl"))}
    mains_all = sorted(int(i) for i in meta["index"] if i < 1e6)

    hits, acc_csv, _ = run_vlmevalkit(mc, meta, os.path.join(out_dir, "predictions.xlsx"), out_dir)
    os.remove(os.path.join(out_dir, "result.pkl"))
    with open(os.path.join(out_dir, "expected_acc.csv"), "w") as f:
        f.write(acc_csv)
    exp = {}
    exp["vlmevalkit/vlmevalkit"], _ = summarise(meta, hits, mains_all, strict=False)
    exp["vlmevalkit/strict"], _ = summarise(meta, hits, mains_all, strict=True)
    lh = run_legacy(ev, meta, preds)
    exp["legacy/vlmevalkit"], _ = summarise(meta, lh, mains_all, strict=False)
    exp["legacy/strict"], _ = summarise(meta, lh, mains_all, strict=True)
    exp["hits_vlmevalkit"] = {str(k): v for k, v in hits.items()}
    exp["hits_legacy"] = {str(k): v for k, v in lh.items()}
    # can_infer on single strings, for unit-level parity
    choices = {"A": "cat", "B": "dog", "C": "a red bird", "D": "none of these"}
    probes = ["A", "B.", "(C)", "The answer is C", "the answer is d because", "**B**", "I think it is B but maybe A",
              "B. The cat sits on the sofa", "It is a dog", "dog or cat", "Z", "Cannot determine the answer",
              "Failed to obtain answer via API", "Answer: A", "a", "C is my final answer", "The correct answer is **D**.",
              "A red bird", "\u3000B\u3000", "x y z w B", "x y z w v B", "B x y z w", "A. cat", "nan", ""]
    exp["can_infer"] = [dict(answer=p, vlmevalkit=mu.can_infer(p, dict(choices)) or None,
                             legacy=ev.can_infer(p, dict(choices)) or None) for p in probes]
    exp["can_infer_choices"] = choices
    with open(os.path.join(out_dir, "expected.json"), "w") as f:
        json.dump(exp, f, indent=1)
    print(json.dumps({k: v for k, v in exp.items() if "/" in k}, indent=1)[:1500])


if __name__ == "__main__":
    main()
