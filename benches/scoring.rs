//! Scoring benchmarks (run with `cargo bench --bench scoring`; figures go in docs/performance.md).
//!
//! 1. RefCOCO scale: 10,000 sentences on 640×480 images (3,400 refs, polygon ground truth in a
//!    real refer layout, RLE predictions), scored end to end as `perceptio eval refcoco` does.
//! 2. MMBench DEV_EN shape: 4,329 TSV rows (1,164 questions with circular copies, base64 images).
//!
//! The data is written to `$PERCEPTIO_BENCH_DIR` (default target/bench-data) so that
//! tools/bench_pycocotools.py can time the same scoring in Python on the same files.

use perceptio::eval::mmbench::{self, matching::Matcher, MissingPolicy};
use perceptio::eval::refcoco::{self, refer, GtOverlap};
use perceptio::mask::{from_polygon, Rle};
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Small deterministic PRNG (xorshift64*), so the data is identical on every machine.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    fn f(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.f()
    }
}

fn star(rng: &mut Rng, cx: f64, cy: f64, r: f64, n: usize) -> Vec<f64> {
    let mut xy = Vec::with_capacity(2 * n);
    for k in 0..n {
        let a = std::f64::consts::TAU * k as f64 / n as f64;
        let rr = r * rng.range(0.6, 1.0);
        xy.push(((cx + rr * a.cos()) * 100.0).round() / 100.0);
        xy.push(((cy + rr * a.sin()) * 100.0).round() / 100.0);
    }
    xy
}

const H: u32 = 480;
const W: u32 = 640;

fn write_refcoco(dir: &Path) -> usize {
    let mut rng = Rng(0x9E3779B97F4A7C15);
    let ds = dir.join("refcoco");
    std::fs::create_dir_all(&ds).unwrap();
    let (mut images, mut anns, mut refs) = (vec![], vec![], vec![]);
    let mut preds = std::io::BufWriter::new(std::fs::File::create(dir.join("predictions.jsonl")).unwrap());
    let (mut sent_id, mut ref_id, mut ann_id) = (0i64, 0i64, 0i64);
    let mut image_id = 0i64;
    while sent_id < 10_000 {
        image_id += 1;
        images.push(
            json!({"id": image_id, "height": H, "width": W, "file_name": format!("COCO_train2014_{image_id:012}.jpg")}),
        );
        for _ in 0..2 {
            if sent_id >= 10_000 {
                break;
            }
            ann_id += 1;
            ref_id += 1;
            let (cx, cy, r) = (rng.range(80.0, 560.0), rng.range(80.0, 400.0), rng.range(30.0, 160.0));
            let n = 16 + (rng.next() % 24) as usize;
            let mut seg = vec![star(&mut rng, cx, cy, r, n)];
            if rng.f() < 0.2 {
                seg.push(star(&mut rng, cx + r, cy, r / 3.0, 10)); // a second part
            }
            anns.push(json!({"id": ann_id, "image_id": image_id, "segmentation": seg, "iscrowd": 0, "category_id": 1, "area": 0.0, "bbox": [0, 0, 0, 0]}));
            let n_sent = 2 + (rng.next() % 3) as i64;
            let mut sents = vec![];
            for _ in 0..n_sent.min(10_000 - sent_id) {
                sent_id += 1;
                sents.push(sent_id);
                // prediction: a jittered copy of the object
                let (dx, dy, s) = (rng.range(-15.0, 15.0), rng.range(-15.0, 15.0), rng.range(0.8, 1.2));
                let p = star(&mut rng, cx + dx, cy + dy, r * s, n);
                let m = from_polygon(&p, H, W).unwrap();
                writeln!(
                    preds,
                    "{}",
                    json!({"sent_id": sent_id, "mask": {"size": [H, W], "counts": m.to_compressed()}})
                )
                .unwrap();
            }
            refs.push((ref_id, ann_id, image_id, sents));
        }
    }
    preds.flush().unwrap();
    std::fs::write(
        ds.join("instances.json"),
        serde_json::to_vec(&json!({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}))
            .unwrap(),
    )
    .unwrap();
    // refs(unc).p as a pickled list of dicts, like the real file
    use serde_pickle::{HashableValue as K, Value as V};
    let s = |x: &str| K::String(x.into());
    let list: Vec<V> = refs
        .iter()
        .map(|(r, a, i, sents)| {
            let mut d = std::collections::BTreeMap::new();
            d.insert(s("ref_id"), V::I64(*r));
            d.insert(s("ann_id"), V::I64(*a));
            d.insert(s("image_id"), V::I64(*i));
            d.insert(s("category_id"), V::I64(1));
            d.insert(s("split"), V::String("val".into()));
            d.insert(s("sent_ids"), V::List(sents.iter().map(|x| V::I64(*x)).collect()));
            let sl = sents
                .iter()
                .map(|x| {
                    let mut sd = std::collections::BTreeMap::new();
                    sd.insert(s("sent_id"), V::I64(*x));
                    sd.insert(s("sent"), V::String(format!("object number {x}")));
                    V::Dict(sd)
                })
                .collect();
            d.insert(s("sentences"), V::List(sl));
            V::Dict(d)
        })
        .collect();
    std::fs::write(
        ds.join("refs(unc).p"),
        serde_pickle::value_to_vec(&V::List(list), serde_pickle::SerOptions::new().proto_v2()).unwrap(),
    )
    .unwrap();
    sent_id as usize
}

fn write_mmbench(dir: &Path) {
    let mut rng = Rng(42);
    let mut f = std::io::BufWriter::new(std::fs::File::create(dir.join("MMBench_DEV_EN_shape.tsv")).unwrap());
    let mut p = std::io::BufWriter::new(std::fs::File::create(dir.join("mmbench_predictions.jsonl")).unwrap());
    writeln!(
        f,
        "index\tquestion\thint\tA\tB\tC\tD\tanswer\tcategory\timage\tsource\tl2-category\tsplit"
    )
    .unwrap();
    let image: String = (0..20_000)
        .map(|i| b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[(i * 7 + 3) % 64] as char)
        .collect();
    let l2 = [
        "coarse_perception",
        "finegrained_perception (instance-level)",
        "finegrained_perception (cross-instance)",
        "logic_reasoning",
        "relation_reasoning",
        "attribute_reasoning",
    ];
    let mut rows = 0;
    let mut q = 0;
    while rows < 4329 {
        q += 1;
        let k = if rows + 4 <= 4329 {
            2 + (rng.next() % 3) as usize
        } else {
            4329 - rows
        };
        let k = k.max(2).min(4329 - rows).max(1);
        let answer = (rng.next() % k as u64) as usize;
        for r in 0..k {
            let index = q + 1_000_000 * r;
            let opts: Vec<String> = (0..4)
                .map(|j| {
                    if j < k {
                        format!("option {} of question {q}", (j + r) % k)
                    } else {
                        String::new()
                    }
                })
                .collect();
            let ans = (b'A' + ((answer + k - r % k) % k) as u8) as char;
            let img = if r == 0 { image.clone() } else { q.to_string() };
            writeln!(
                f,
                "{index}\tQuestion {q}?\t{}\t{}\t{}\t{}\t{}\t{ans}\tcat_{}\t{img}\tsrc\t{}\tdev",
                if q % 3 == 0 { "A hint." } else { "" },
                opts[0],
                opts[1],
                opts[2],
                opts[3],
                q % 20,
                l2[q % 6]
            )
            .unwrap();
            let pred = match rng.next() % 5 {
                0 => ans.to_string(),
                1 => format!("The answer is {ans}."),
                2 => format!("({ans}) because it fits the picture best"),
                3 => "I am not sure about this one at all, sorry".to_string(),
                _ => format!("{}", (b'A' + (rng.next() % k as u64) as u8) as char),
            };
            writeln!(p, "{}", json!({"index": index, "prediction": pred})).unwrap();
            rows += 1;
        }
    }
}

fn time<T>(label: &str, reps: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut times = vec![];
    let mut last = None;
    for _ in 0..reps {
        let t = Instant::now();
        last = Some(f());
        times.push(t.elapsed());
    }
    times.sort();
    let med = times[reps / 2];
    println!(
        "{label:<48} median {:>8.1} ms  (min {:.1}, max {:.1}, {reps} runs)",
        med.as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        times[reps - 1].as_secs_f64() * 1e3
    );
    (med, last.unwrap())
}

fn main() {
    let dir = std::env::var_os("PERCEPTIO_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-data"));
    std::fs::create_dir_all(&dir).unwrap();
    println!("data in {} ({} threads)", dir.display(), rayon::current_num_threads());
    let n = write_refcoco(&dir);
    write_mmbench(&dir);
    let pred = dir.join("predictions.jsonl");
    let (_, report) = time(&format!("refcoco: load GT + score {n} sentences"), 7, || {
        let gt = refer::load_refer(&dir, "refcoco", "unc", "val", GtOverlap::Union).unwrap();
        refcoco::score(&gt, &pred).unwrap()
    });
    println!(
        "  cIoU {:.4}  gIoU {:.4}  samples {}",
        report.ciou, report.giou, report.samples
    );
    let gt = refer::load_refer(&dir, "refcoco", "unc", "val", GtOverlap::Union).unwrap();
    time("refcoco: score only (GT loaded)", 7, || {
        refcoco::score(&gt, &pred).unwrap()
    });
    time("refcoco: load refer layout + rasterise GT", 7, || {
        refer::load_refer(&dir, "refcoco", "unc", "val", GtOverlap::Union).unwrap()
    });
    time("refcoco: parse refs(unc).p only", 7, || {
        refer::load_refs(&dir.join("refcoco/refs(unc).p")).unwrap()
    });
    time("refcoco: parse instances.json only (untyped)", 7, || {
        serde_json::from_slice::<serde_json::Value>(&std::fs::read(dir.join("refcoco/instances.json")).unwrap())
            .unwrap()
    });
    let masks: Vec<Rle> = gt.masks.clone();
    time("rle: 10k compressed encode+decode round trips", 7, || {
        masks
            .iter()
            .cycle()
            .take(10_000)
            .map(|m| Rle::from_compressed(&m.to_compressed(), H, W).unwrap().area())
            .sum::<u64>()
    });
    let tsv = dir.join("MMBench_DEV_EN_shape.tsv");
    let mp = dir.join("mmbench_predictions.jsonl");
    let (_, r) = time("mmbench: read 4,329-row TSV + predictions + score", 7, || {
        let ann = mmbench::read_annotations(&tsv).unwrap();
        let preds = mmbench::read_predictions(&mp).unwrap();
        mmbench::evaluate(&ann, &preds, Matcher::Vlmevalkit, MissingPolicy::Strict, &mp).unwrap()
    });
    println!("  overall {:.4} over {} questions", r.overall, r.questions);

    // HTML reports of the 10k-sentence run, no images (docs/report.md): from the scorer's results
    // as `eval refcoco --report` builds them, and from the --per-sample file as `perceptio report`.
    let per = dir.join("per_sample.jsonl");
    {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&per).unwrap());
        for sample in &report.per_sample {
            serde_json::to_writer(&mut w, sample).unwrap();
            w.write_all(b"\n").unwrap();
        }
    }
    let opts = perceptio::report::Options::default();
    let (_, html) = time("report: 10k sentences, from the scorer's results", 7, || {
        let prov = perceptio::report::Provenance::new("bench");
        let run = perceptio::report::Run::refcoco(&report, &Default::default(), "predictions.jsonl", prov).unwrap();
        perceptio::report::render(&[run], &opts).unwrap()
    });
    println!("  {:.3} MB of HTML", html.len() as f64 / 1e6);
    let shown = per.display().to_string();
    let (_, html) = time("report: 10k sentences, from a --per-sample file", 7, || {
        let run = perceptio::report::load(&per, &shown).unwrap();
        perceptio::report::render(&[run], &opts).unwrap()
    });
    println!(
        "  {:.3} MB of HTML from a {:.1} MB per-sample file",
        html.len() as f64 / 1e6,
        std::fs::metadata(&per).unwrap().len() as f64 / 1e6
    );
    let (_, html) = time("report: comparison of two 10k-sentence files", 7, || {
        let runs = [
            perceptio::report::load(&per, &shown).unwrap(),
            perceptio::report::load(&per, &shown).unwrap(),
        ];
        perceptio::report::render(&runs, &opts).unwrap()
    });
    println!("  {:.3} MB of HTML", html.len() as f64 / 1e6);
}
