//! COCO RLE: bit-exact parity with pycocotools (goldens from tools/gen_rle_goldens.py) and
//! property tests of the codec.

use perceptio::mask::{from_bbox, from_polygon, parse_mask_json, MaskJson, Rle};
use proptest::prelude::*;
use serde_json::Value;

fn golden() -> Value {
    let s = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/rle/pycocotools_golden.json"
    ))
    .unwrap();
    serde_json::from_str(&s).unwrap()
}

fn dims(c: &Value) -> (u32, u32) {
    (c["h"].as_u64().unwrap() as u32, c["w"].as_u64().unwrap() as u32)
}

/// Row-major '0'/'1' string → column-major bytes.
fn col_major(bits: &str, h: u32, w: u32) -> Vec<u8> {
    let b = bits.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    for x in 0..w as usize {
        for y in 0..h as usize {
            out.push(b[y * w as usize + x] - b'0');
        }
    }
    out
}

#[test]
fn encode_matches_pycocotools() {
    let g = golden();
    let cases = g["masks"].as_array().unwrap();
    assert!(cases.len() >= 40);
    for c in cases {
        let (h, w) = dims(c);
        let cm = col_major(c["bits"].as_str().unwrap(), h, w);
        let r = Rle::encode_col_major(&cm, h, w).unwrap();
        assert_eq!(r.to_compressed(), c["counts"].as_str().unwrap(), "{h}x{w}");
        assert_eq!(r.area(), c["area"].as_u64().unwrap());
        let bb: Vec<f64> = c["bbox"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(r.bbox().to_vec(), bb, "bbox {h}x{w}");
        // decoding the golden string gives the same mask back, in both layouts
        let d = Rle::from_compressed(c["counts"].as_str().unwrap(), h, w).unwrap();
        assert_eq!(d.decode_col_major(), cm);
        let rm: Vec<u8> = c["bits"].as_str().unwrap().bytes().map(|b| b - b'0').collect();
        assert_eq!(d.decode_row_major(), rm);
        assert_eq!(Rle::encode_row_major(&rm, h, w).unwrap(), d);
    }
}

#[test]
fn polygons_match_pycocotools() {
    let g = golden();
    let cases = g["polygons"].as_array().unwrap();
    assert!(cases.len() >= 80);
    for (i, c) in cases.iter().enumerate() {
        let (h, w) = dims(c);
        let polys: Vec<Vec<f64>> = c["polygons"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect())
            .collect();
        let each: Vec<Rle> = polys.iter().map(|p| from_polygon(p, h, w).unwrap()).collect();
        for (j, (r, e)) in each.iter().zip(c["each"].as_array().unwrap()).enumerate() {
            assert_eq!(
                r.to_compressed(),
                e.as_str().unwrap(),
                "case {i} polygon {j} ({h}x{w}): {:?}",
                polys[j]
            );
        }
        let merged = Rle::union(&each).unwrap();
        assert_eq!(merged.to_compressed(), c["merged"].as_str().unwrap(), "case {i} merged");
        assert_eq!(merged.area(), c["area"].as_u64().unwrap());
        // the prediction form {"polygons": ...} resolves to the same union
        let m = parse_mask_json(&serde_json::json!({ "polygons": c["polygons"] })).unwrap();
        assert_eq!(m.resolve(h, w).unwrap().unwrap(), merged);
    }
}

#[test]
fn boxes_match_pycocotools() {
    for c in golden()["bboxes"].as_array().unwrap() {
        let (h, w) = dims(c);
        let b: Vec<f64> = c["bbox"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let r = from_bbox([b[0], b[1], b[2], b[3]], h, w).unwrap();
        assert_eq!(r.to_compressed(), c["counts"].as_str().unwrap(), "{b:?}");
    }
}

#[test]
fn uncompressed_counts_match_pycocotools() {
    for c in golden()["uncompressed"].as_array().unwrap() {
        let (h, w) = dims(c);
        let m = parse_mask_json(&serde_json::json!({"size": [h, w], "counts": c["counts_list"]})).unwrap();
        let MaskJson::Rle(r) = m else { panic!("expected an RLE") };
        assert_eq!(r.to_compressed(), c["counts"].as_str().unwrap());
    }
}

#[test]
fn iou_matches_pycocotools() {
    for c in golden()["ious"].as_array().unwrap() {
        let (h, w) = dims(c);
        let a = Rle::from_compressed(c["a"].as_str().unwrap(), h, w).unwrap();
        let b = Rle::from_compressed(c["b"].as_str().unwrap(), h, w).unwrap();
        let (i, u) = a.intersection_union(&b).unwrap();
        assert_eq!(i, c["intersection"].as_u64().unwrap());
        assert_eq!(u, c["union"].as_u64().unwrap());
        assert_eq!(Rle::coco_iou(&a, &b, false), c["iou"].as_f64().unwrap());
        assert_eq!(Rle::coco_iou(&a, &b, true), c["iou_crowd"].as_f64().unwrap());
        // intersection through `combine` agrees with the run walk
        let inter = Rle::combine(&[a.clone(), b.clone()], |k| k == 2).unwrap();
        assert_eq!(inter.area(), i);
    }
}

#[test]
fn documented_test_vectors() {
    // The 3x4 mask rows 0110/0100/1100 from the reference notes.
    let rm = [0, 1, 1, 0, 0, 1, 0, 0, 1, 1, 0, 0];
    let r = Rle::encode_row_major(&rm, 3, 4).unwrap();
    assert_eq!(r.counts(), &[2, 5, 5]);
    assert_eq!(r.to_compressed(), "255");
    for (counts, s) in [
        (vec![0u32, 6, 1], "061"),
        (vec![100000, 5, 7, 20], "PeQ357?"),
        (vec![12], "<"),
        (vec![0, 12], "0<"),
    ] {
        let total: u32 = counts.iter().sum();
        let r = Rle::from_counts(1, total, counts.clone()).unwrap();
        assert_eq!(r.to_compressed(), s);
        assert_eq!(Rle::from_compressed(s, 1, total).unwrap().counts(), &counts[..]);
    }
}

#[test]
fn bad_rle_inputs_are_errors() {
    // counts that do not sum to h*w
    let e = parse_mask_json(&serde_json::json!({"size": [2, 2], "counts": [1, 2]})).unwrap_err();
    assert!(e.to_string().contains("sum to 3"), "{e}");
    assert!(parse_mask_json(&serde_json::json!({"size": [2, 2], "counts": "0<"})).is_err());
    assert!(parse_mask_json(&serde_json::json!({"size": [2], "counts": "4"})).is_err());
    assert!(parse_mask_json(&serde_json::json!({"size": [2, 2], "counts": [-1, 5]})).is_err());
    assert!(parse_mask_json(&serde_json::json!({"size": [2, 2], "counts": "4 "})).is_err());
    assert!(parse_mask_json(&serde_json::json!({"polygons": [[1, "x", 3]]})).is_err());
    assert!(parse_mask_json(&serde_json::json!([1, 2])).is_err());
    // size mismatch against the image
    let m = parse_mask_json(&serde_json::json!({"size": [2, 2], "counts": "4"})).unwrap();
    assert!(m
        .resolve(2, 3)
        .unwrap_err()
        .to_string()
        .contains("differs from the image size"));
    assert_eq!(parse_mask_json(&Value::Null).unwrap().resolve(2, 2).unwrap(), None);
    // non-finite polygon coordinates
    assert!(from_polygon(&[0.0, 0.0, f64::NAN, 1.0, 2.0, 2.0], 4, 4).is_err());
}

fn mask_strategy() -> impl Strategy<Value = (u32, u32, Vec<u8>)> {
    (1u32..24, 1u32..24).prop_flat_map(|(h, w)| {
        let n = (h * w) as usize;
        (
            Just(h),
            Just(w),
            prop::collection::vec(prop::bool::weighted(0.4).prop_map(u8::from), n),
        )
    })
}

proptest! {
    #[test]
    fn encode_decode_round_trip((h, w, m) in mask_strategy()) {
        let r = Rle::encode_col_major(&m, h, w).unwrap();
        prop_assert_eq!(r.decode_col_major(), m.clone());
        let s = r.to_compressed();
        let back = Rle::from_compressed(&s, h, w).unwrap();
        prop_assert_eq!(&back, &r);
        // area = sum of odd runs = number of set pixels
        let odd: u64 = r.counts().iter().skip(1).step_by(2).map(|&c| c as u64).sum();
        prop_assert_eq!(r.area(), odd);
        prop_assert_eq!(r.area(), m.iter().filter(|&&v| v == 1).count() as u64);
    }

    #[test]
    fn intersection_union_brute_force((h, w, a) in mask_strategy(), seed in any::<u64>()) {
        let b: Vec<u8> = a.iter().enumerate().map(|(i, _)| ((seed.rotate_left(i as u32 % 64) ^ i as u64) & 1) as u8).collect();
        let ra = Rle::encode_col_major(&a, h, w).unwrap();
        let rb = Rle::encode_col_major(&b, h, w).unwrap();
        let (i, u) = ra.intersection_union(&rb).unwrap();
        let bi = a.iter().zip(&b).filter(|(x, y)| **x == 1 && **y == 1).count() as u64;
        let bu = a.iter().zip(&b).filter(|(x, y)| **x == 1 || **y == 1).count() as u64;
        prop_assert_eq!((i, u), (bi, bu));
        prop_assert_eq!(Rle::union(&[ra, rb]).unwrap().area(), bu);
    }

    #[test]
    fn compressed_decoder_never_panics(s in "[0-o]{0,40}", h in 0u32..50, w in 0u32..50) {
        let _ = Rle::from_compressed(&s, h, w);
    }

    #[test]
    fn string_codec_round_trips_any_counts(counts in prop::collection::vec(0u32..5_000_000, 1..30)) {
        let total: u64 = counts.iter().map(|&c| c as u64).sum();
        prop_assume!(total <= u32::MAX as u64);
        let r = Rle::from_counts(1, total as u32, counts.clone()).unwrap();
        let back = Rle::from_compressed(&r.to_compressed(), 1, total as u32).unwrap();
        prop_assert_eq!(back.counts(), &counts[..]);
    }
}
