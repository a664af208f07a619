#!/usr/bin/env bash
# Build HTML reports from the fixture datasets with a perceptio binary, open each in headless
# Chromium and check the screenshot is a rendered page: the window's size, many colours, not blank.
#
#   tools/check-report.sh [BINARY] [OUT_DIR]
#
# BINARY defaults to target/release/perceptio. OUT_DIR (optional) keeps the reports and the
# screenshots; REPORT_PNG=FILE also writes the RefCOCO screenshot there, downscaled to 960 px wide
# (how docs/report.png is made). Needs python3 (standard library only). Skips, exiting 0, when
# Chromium is not installed.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${1:-target/release/perceptio}
OUT=${2:-}
W=1280
H=2000

CHROME=""
for c in chromium chromium-browser google-chrome; do
    if command -v "$c" >/dev/null 2>&1; then CHROME=$c; break; fi
done
if [ -z "$CHROME" ]; then
    echo "check-report: SKIP: Chromium is not installed (apt-get install -y chromium); nothing checked"
    exit 0
fi
if [ ! -x "$BIN" ]; then
    echo "check-report: no perceptio binary at $BIN (run cargo build --release, or pass its path)" >&2
    exit 1
fi
command -v python3 >/dev/null || { echo "check-report: python3 is needed" >&2; exit 1; }
BIN=$(realpath "$BIN")

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
F=fixtures

# PNG reading/writing with the standard library only (zlib): fixture photos, screenshot checks.
PY=$(cat <<'EOF'
import json, struct, sys, zlib

def read_png(path):
    b = open(path, "rb").read()
    assert b[:8] == b"\x89PNG\r\n\x1a\n", f"{path}: not a PNG"
    pos, idat, hdr = 8, b"", None
    while pos < len(b):
        n, kind = struct.unpack(">I4s", b[pos:pos + 8])
        data = b[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            hdr = struct.unpack(">IIBBBBB", data)
        elif kind == b"IDAT":
            idat += data
        pos += 12 + n
    w, h, depth, ctype, _, _, interlace = hdr
    assert depth == 8 and ctype in (2, 6) and interlace == 0, f"{path}: unsupported PNG {hdr}"
    bpp = 3 if ctype == 2 else 4
    raw, stride, rows, prev = zlib.decompress(idat), w * bpp, [], bytearray(w * bpp)
    for y in range(h):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            c = prev[i - bpp] if i >= bpp else 0
            up = prev[i]
            if f == 1: line[i] = (line[i] + a) & 255
            elif f == 2: line[i] = (line[i] + up) & 255
            elif f == 3: line[i] = (line[i] + (a + up) // 2) & 255
            elif f == 4:
                p = a + up - c
                pa, pb, pc = abs(p - a), abs(p - up), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else up if pb <= pc else c)) & 255
        rows.append(bytes(line) if bpp == 3 else bytes(v for k, v in enumerate(line) if k % 4 != 3))
        prev = line
    return w, h, rows

def filtered(rows):
    """PNG scanlines, each with the filter (None, Sub, Up, Paeth) of the smallest sum of |bytes|."""
    out, prev = [], bytes(len(rows[0]))
    for r in rows:
        sub = bytes((r[i] - (r[i - 3] if i >= 3 else 0)) & 255 for i in range(len(r)))
        up = bytes((r[i] - prev[i]) & 255 for i in range(len(r)))
        pae = bytearray(len(r))
        for i in range(len(r)):
            a, b, c = (r[i - 3], prev[i], prev[i - 3]) if i >= 3 else (0, prev[i], 0)
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            pae[i] = (r[i] - (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        cost = lambda line: sum(v if v < 128 else 256 - v for v in line)
        best = min([(0, r), (1, sub), (2, up), (4, bytes(pae))], key=lambda fl: cost(fl[1]))
        out.append(bytes([best[0]]) + best[1])
        prev = r
    return b"".join(out)

def write_png(path, w, h, rows, adaptive=False):
    chunk = lambda k, d: struct.pack(">I", len(d)) + k + d + struct.pack(">I", zlib.crc32(k + d) & 0xFFFFFFFF)
    raw = filtered(rows) if adaptive else b"".join(b"\0" + r for r in rows)
    open(path, "wb").write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                           + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))

def resize(w, h, rows, nw, nh):
    """Area-average (box) resize of RGB rows."""
    out = []
    for y in range(nh):
        y0, y1 = y * h // nh, max(y * h // nh + 1, (y + 1) * h // nh)
        line = bytearray()
        for x in range(nw):
            x0, x1 = x * w // nw, max(x * w // nw + 1, (x + 1) * w // nw)
            acc, n = [0, 0, 0], 0
            for yy in range(y0, y1):
                r = rows[yy]
                for xx in range(x0, x1):
                    acc[0] += r[3 * xx]; acc[1] += r[3 * xx + 1]; acc[2] += r[3 * xx + 2]; n += 1
            line += bytes(v // n for v in acc)
        out.append(bytes(line))
    return out

cmd = sys.argv[1]
if cmd == "photos":  # crops of chelsea.png at the sizes of the refcoco fixture's images
    inst, src, out = sys.argv[2:5]
    w, h, rows = read_png(src)
    for i, im in enumerate(json.load(open(inst))["images"]):
        x, y = i * 37 % 200, i * 23 % 100
        crop = [r[3 * x:3 * (x + 240)] for r in rows[y:y + 180]]
        write_png(f"{out}/{im['file_name']}", im["width"], im["height"],
                  resize(240, 180, crop, im["width"], im["height"]))
elif cmd == "check":  # a rendered page: expected size, many colours, not blank
    path, ew, eh = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    w, h, rows = read_png(path)
    colours, ink = set(), 0
    for r in rows[::2]:
        for k in range(0, len(r), 6):
            px = r[k:k + 3]
            colours.add(px)
            ink += px != b"\xff\xff\xff"
    frac = ink / (len(rows[::2]) * ((w + 1) // 2))
    ok = (w, h) == (ew, eh) and len(colours) > 64 and frac > 0.01
    print(f"{path}: {w}x{h}, {len(colours)} colours, {100 * frac:.1f}% non-white: {'ok' if ok else 'FAILED'}")
    sys.exit(0 if ok else 1)
elif cmd == "shrink":  # the docs screenshot: smaller, 32 levels per channel (white stays white)
    src, dst, nw = sys.argv[2], sys.argv[3], int(sys.argv[4])
    w, h, rows = read_png(src)
    nh = h * nw // w
    level = bytes(min(255, (v + 4) // 8 * 8) for v in range(256))
    small = [r.translate(level) for r in resize(w, h, rows, nw, nh)]
    write_png(dst, nw, nh, small, adaptive=True)
EOF
)
py() { python3 -c "$PY" "$@"; }

mkdir -p "$WORK/coco"
py photos "$F/refcoco/refcoco/instances.json" "$F/images/chelsea.png" "$WORK/coco"

# The reports: RefCOCO (scored now, and later from its per-sample file, with the gallery), a
# RefCOCO comparison (B lacks sentence 1001), MMBench and HardBLINK.
refcoco() { "$BIN" eval refcoco --refer-root "$F/refcoco" --dataset refcoco --split val "$@" >/dev/null; }
refcoco --predictions "$F/refcoco/predictions.jsonl" --per-sample "$WORK/a.jsonl" \
    --report "$WORK/refcoco_eval.html" --images "$WORK/coco" --report-k 2
(cd "$WORK" && "$BIN" report a.jsonl -o refcoco.html --images coco --k 3)
grep -v '"sent_id": 1001,' "$F/refcoco/predictions.jsonl" >"$WORK/pred_b.jsonl"
refcoco --predictions "$WORK/pred_b.jsonl" --per-sample "$WORK/b.jsonl"
(cd "$WORK" && "$BIN" report a.jsonl b.jsonl -o compare.html --images coco --k 2)
"$BIN" eval mmbench --annotations "$F/mmbench/MMBench_DEV_EN_mini.tsv" \
    --predictions "$F/mmbench/predictions.jsonl" --report "$WORK/mmbench.html" >/dev/null
"$BIN" eval hardblink --annotations "$F/hardblink" --predictions "$F/hardblink/predictions" \
    --blink2 "$F/hardblink/blink2.jsonl" --report "$WORK/hardblink.html" >/dev/null

fail=0
for name in refcoco_eval refcoco compare mmbench hardblink; do
    html="$WORK/$name.html"
    if grep -q -E 'https?://' "$html"; then echo "$html: contains a URL: FAILED"; fail=1; fi
    timeout 120 "$CHROME" --headless --no-sandbox --disable-gpu --hide-scrollbars \
        --screenshot="$WORK/$name.png" --window-size=$W,$H "file://$html" >/dev/null 2>&1 || true
    if [ ! -s "$WORK/$name.png" ]; then echo "$html: Chromium wrote no screenshot: FAILED"; fail=1; continue; fi
    py check "$WORK/$name.png" $W $H || fail=1
done
gallery=$(grep -o '<figure class="item"' "$WORK/refcoco.html" | wc -l)
[ "$gallery" -eq 6 ] || { echo "refcoco.html: $gallery gallery photos, expected 6 (k = 3 worst + 3 median): FAILED"; fail=1; }

if [ -n "$OUT" ]; then
    mkdir -p "$OUT"
    cp "$WORK"/*.html "$WORK"/*.png "$OUT"/
    echo "check-report: reports and screenshots in $OUT"
fi
if [ -n "${REPORT_PNG:-}" ]; then
    py shrink "$WORK/refcoco.png" "$REPORT_PNG" 960
    echo "check-report: wrote $REPORT_PNG ($(wc -c <"$REPORT_PNG") bytes)"
fi
if [ $fail -ne 0 ]; then echo "check-report: FAILED"; exit 1; fi
echo "check-report: OK: 5 reports rendered by $CHROME ($BIN)"
