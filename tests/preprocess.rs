//! InternVL preprocessing: bit-exact parity with Pillow / torchvision (goldens from
//! tools/gen_preprocess_goldens.py) and the error paths of image loading.

use std::path::{Path, PathBuf};

use base64::Engine;
use image::RgbImage;
use perceptio::preprocess::{
    dynamic_tiles, dynamic_tiles_compat, find_closest_aspect_ratio, load_rgb, normalize_tiles, resize_bicubic,
    resize_bicubic_compat, target_ratios, PillowCompat, TileGrid, MAX_PIXELS,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn golden() -> Value {
    let s = std::fs::read_to_string(root().join("fixtures/preprocess/goldens.json")).unwrap();
    serde_json::from_str(&s).unwrap()
}

fn b64(v: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().unwrap())
        .unwrap()
}

fn hex_sha(b: &[u8]) -> String {
    Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

/// The older Pillow releases the goldens were also made with, and the matching compat mode.
fn legacy_versions(g: &Value) -> Vec<(String, PillowCompat)> {
    let v: Vec<(String, PillowCompat)> = g["legacy_pillow"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let v = v.as_str().unwrap().to_string();
            let compat = match v.as_str() {
                "12.1.1" => PillowCompat::Pillow12_1,
                "12.3.0" => PillowCompat::Pillow12_2,
                other => panic!("no compat mode for Pillow {other}"),
            };
            (v, compat)
        })
        .collect();
    assert_eq!(v.len(), 2);
    v
}

fn u(v: &Value) -> usize {
    v.as_u64().unwrap() as usize
}

/// Equality of two RGB buffers with a useful message: first differing pixel and max difference.
fn assert_same_rgb(got: &[u8], want: &[u8], width: usize, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if got != want {
        let first = got.iter().zip(want).position(|(a, b)| a != b).unwrap();
        let max = got
            .iter()
            .zip(want)
            .map(|(&a, &b)| (i32::from(a) - i32::from(b)).abs())
            .max()
            .unwrap();
        let n = got.iter().zip(want).filter(|(a, b)| a != b).count();
        let px = first / 3;
        panic!(
            "{what}: {n} bytes differ (max |diff| {max}); first at x={} y={} channel {}: got {} want {}",
            px % width,
            px / width,
            first % 3,
            got[first],
            want[first]
        );
    }
}

/// Images named in the goldens: the photos from fixtures/images (decoded by perceptio), the
/// synthetic ones from their raw bytes.
fn golden_image(g: &Value, name: &str) -> RgbImage {
    let meta = &g["images"][name];
    let (w, h) = (
        meta["width"].as_u64().unwrap() as u32,
        meta["height"].as_u64().unwrap() as u32,
    );
    let img = match meta.get("path") {
        Some(p) => load_rgb(&root().join(p.as_str().unwrap())).unwrap(),
        None => RgbImage::from_raw(w, h, b64(&meta["rgb"])).unwrap(),
    };
    assert_eq!(img.dimensions(), (w, h), "{name}");
    img
}

#[test]
fn reference_facts_hold() {
    // Measured by the generator on the reference stack; the implementation relies on them.
    let f = &golden()["facts"];
    assert_eq!(f["pillow_resize_default_resample"], "BICUBIC");
    assert_eq!(f["pillow_default_equals_explicit_bicubic"], true);
    assert_eq!(f["pillow_resize_same_size_is_identical_copy"], true);
    assert_eq!(f["torchvision_resize_at_size_returns_input_object"], true);
    assert_eq!(f["normalize_numpy_f32_equals_torchvision_bitwise"], true);
}

#[test]
fn photos_decode_like_pillow() {
    let g = golden();
    for name in ["chelsea", "coffee_portrait"] {
        let img = golden_image(&g, name);
        assert_eq!(
            hex_sha(img.as_raw()),
            g["images"][name]["rgb_sha256"].as_str().unwrap(),
            "{name}"
        );
    }
}

#[test]
fn resize_matches_pillow() {
    let g = golden();
    let cases = g["resize"].as_array().unwrap();
    assert!(cases.len() >= 20);
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let (w, h) = (c["in_w"].as_u64().unwrap() as u32, c["in_h"].as_u64().unwrap() as u32);
        let (ow, oh) = (c["out_w"].as_u64().unwrap() as u32, c["out_h"].as_u64().unwrap() as u32);
        let img = RgbImage::from_raw(w, h, b64(&c["input"])).unwrap();
        let out = resize_bicubic(&img, ow, oh);
        assert_eq!(out.dimensions(), (ow, oh), "{name}");
        assert_same_rgb(out.as_raw(), &b64(&c["output"]), ow as usize, name);
        // older releases: their own bytes where they differ from Pillow 13's
        for (v, compat) in legacy_versions(&g) {
            let want = c
                .get("output_by_pillow")
                .and_then(|o| o.get(&v))
                .unwrap_or(&c["output"]);
            let out = resize_bicubic_compat(&img, ow, oh, compat);
            assert_same_rgb(out.as_raw(), &b64(want), ow as usize, &format!("{name} (Pillow {v})"));
        }
    }
    // the pass order matters: some cases differ between releases
    assert!(cases.iter().filter(|c| c.get("output_by_pillow").is_some()).count() >= 5);
}

#[test]
fn png_colour_types_convert_like_pillow() {
    let g = golden();
    let dir = tempfile::tempdir().unwrap();
    let cases = g["convert"].as_array().unwrap();
    assert!(cases.len() >= 15);
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let path = dir.path().join(format!("{name}.png"));
        std::fs::write(&path, b64(&c["png"])).unwrap();
        let img = load_rgb(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            img.dimensions(),
            (
                c["width"].as_u64().unwrap() as u32,
                c["height"].as_u64().unwrap() as u32
            )
        );
        assert_same_rgb(img.as_raw(), &b64(&c["rgb"]), img.width() as usize, name);
    }
}

fn ratios_text(v: &[(usize, usize)]) -> String {
    v.iter().map(|(i, j)| format!("{i},{j}")).collect::<Vec<_>>().join(";")
}

#[test]
fn candidate_order_matches_cpython() {
    let g = golden();
    for (mx, order) in g["target_ratios_min1"].as_object().unwrap() {
        let want: Vec<(usize, usize)> = order.as_array().unwrap().iter().map(|p| (u(&p[0]), u(&p[1]))).collect();
        assert_eq!(target_ratios(1, mx.parse().unwrap()), want, "min_num=1 max_num={mx}");
    }
    // every min_num in 0..=max_num+1 for max_num <= 48, as one sha256 per max_num
    for (mx, digest) in g["target_ratios_digest"].as_object().unwrap() {
        let mx: usize = mx.parse().unwrap();
        let text: Vec<String> = (0..=mx + 1)
            .map(|mn| format!("{mn}:{}", ratios_text(&target_ratios(mn, mx))))
            .collect();
        assert_eq!(
            hex_sha(text.join("\n").as_bytes()),
            digest.as_str().unwrap(),
            "max_num={mx}"
        );
    }
}

#[test]
fn closest_aspect_ratio_matches_reference() {
    let g = golden();
    for c in g["closest"].as_array().unwrap() {
        let ratios: Vec<(usize, usize)> = c["ratios"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (u(&p[0]), u(&p[1])))
            .collect();
        assert_eq!(target_ratios(u(&c["min_num"]), u(&c["max_num"])), ratios);
        let (w, h) = (u(&c["width"]) as u32, u(&c["height"]) as u32);
        let best = find_closest_aspect_ratio(c["aspect"].as_f64().unwrap(), &ratios, w, h, u(&c["image_size"]));
        assert_eq!(best, (u(&c["best"][0]), u(&c["best"][1])), "{c}");
    }
}

#[test]
fn closest_aspect_ratio_ties() {
    // aspect 0.75 is exactly between (1,1) and (1,2): the later (1,2) wins only if
    // area > 0.5 * S^2 * 1 * 2.
    let r = target_ratios(1, 2);
    assert_eq!(r, vec![(1, 1), (1, 2), (2, 1)]);
    assert_eq!(find_closest_aspect_ratio(0.75, &r, 300, 400, 448), (1, 1)); // 120000 <= 200704
    assert_eq!(find_closest_aspect_ratio(0.75, &r, 300, 400, 56), (1, 2)); // 120000 > 3136
                                                                           // strictly greater: area == bound keeps the earlier one (bound = 0.5*8*8*2 = 64)
    assert_eq!(find_closest_aspect_ratio(0.75, &r, 6, 8, 8), (1, 1)); // 48 <= 64
    assert_eq!(find_closest_aspect_ratio(0.75, &r, 12, 16, 8), (1, 2)); // 192 > 64
                                                                        // equal ratios are ties too: (1,1) then (2,2) for a square image; (2,2) replaces (1,1) only
                                                                        // if area > 0.5 * 448^2 * 4 = 401408
    let r = target_ratios(1, 4);
    assert_eq!(find_closest_aspect_ratio(1.0, &r, 448, 448, 448), (1, 1));
    assert_eq!(find_closest_aspect_ratio(1.0, &r, 633, 633, 448), (1, 1)); // 400689
    assert_eq!(find_closest_aspect_ratio(1.0, &r, 634, 634, 448), (2, 2)); // 401956
    assert_eq!(find_closest_aspect_ratio(1.0, &r, 1000, 1000, 448), (2, 2));
    // an empty candidate list (min_num > max_num) falls back to (1, 1), as in Python
    assert_eq!(find_closest_aspect_ratio(3.0, &[], 30, 10, 448), (1, 1));
    // min_num = max_num = 4 on a 5x2 image: (2,2) and (4,1) tie (|2.5-1| = |2.5-4|) and the area
    // is small, so the earlier one stays. CPython's set order puts (4,1) first, so the reference
    // picks (4,1); a lexicographic order would give (2,2).
    let r = target_ratios(4, 4);
    assert_eq!(r, vec![(4, 1), (1, 4), (2, 2)]);
    assert_eq!(find_closest_aspect_ratio(2.5, &r, 5, 2, 448), (4, 1));
}

fn tile_bytes(blob: &[u8], off: usize, s: usize) -> &[u8] {
    &blob[off..off + s * s * 3]
}

#[test]
fn tiles_match_internvl_dynamic_preprocess() {
    let g = golden();
    let blob = std::fs::read(
        root()
            .join("fixtures/preprocess")
            .join(g["tiles_blob"]["file"].as_str().unwrap()),
    )
    .unwrap();
    assert_eq!(hex_sha(&blob), g["tiles_blob"]["sha256"].as_str().unwrap());
    let cases = g["tiles"].as_array().unwrap();
    let mut n_bytes_checked = 0;
    let mut cache: std::collections::HashMap<String, RgbImage> = Default::default();
    for c in cases {
        let name = c["image"].as_str().unwrap();
        let img = cache.entry(name.to_string()).or_insert_with(|| golden_image(&g, name));
        let (s, mn, mx) = (u(&c["image_size"]), u(&c["min_num"]), u(&c["max_num"]));
        let thumb = c["use_thumbnail"].as_bool().unwrap();
        let what = format!("{name} S={s} min={mn} max={mx} thumb={thumb}");
        let (tiles, grid) = dynamic_tiles(img, s, mn, mx, thumb);
        assert_eq!(
            grid,
            TileGrid {
                cols: u(&c["grid"][0]),
                rows: u(&c["grid"][1])
            },
            "{what}"
        );
        assert_eq!(tiles.len(), u(&c["n_tiles"]), "{what}");
        for (k, t) in tiles.iter().enumerate() {
            assert_eq!(t.dimensions(), (s as u32, s as u32));
            if let Some(offs) = c.get("offsets") {
                assert_same_rgb(
                    t.as_raw(),
                    tile_bytes(&blob, u(&offs[k]), s),
                    s,
                    &format!("{what} tile {k}"),
                );
                n_bytes_checked += 1;
            }
            assert_eq!(hex_sha(t.as_raw()), c["sha256"][k].as_str().unwrap(), "{what} tile {k}");
        }
        if s <= 112 {
            for (v, compat) in legacy_versions(&g) {
                let want = c
                    .get("sha256_by_pillow")
                    .and_then(|o| o.get(&v))
                    .unwrap_or(&c["sha256"]);
                let (tiles, _) = dynamic_tiles_compat(img, s, mn, mx, thumb, compat);
                let got: Vec<String> = tiles.iter().map(|t| hex_sha(t.as_raw())).collect();
                let want: Vec<String> = want
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_str().unwrap().to_string())
                    .collect();
                assert_eq!(got, want, "{what} (Pillow {v})");
            }
        }
    }
    assert!(n_bytes_checked >= 40, "{n_bytes_checked}");
    assert!(cases.iter().any(|c| c["image_size"] == 448));
}

#[test]
fn normalized_matches_torchvision() {
    let g = golden();
    let c = &g["normalized"];
    let img = golden_image(&g, c["image"].as_str().unwrap());
    let (tiles, _) = dynamic_tiles(
        &img,
        u(&c["image_size"]),
        u(&c["min_num"]),
        u(&c["max_num"]),
        c["use_thumbnail"].as_bool().unwrap(),
    );
    let shape: Vec<usize> = c["shape"].as_array().unwrap().iter().map(u).collect();
    assert_eq!(
        shape,
        vec![tiles.len(), 3, tiles[0].height() as usize, tiles[0].width() as usize]
    );
    let raw = std::fs::read(root().join("fixtures/preprocess").join(c["file"].as_str().unwrap())).unwrap();
    let want: Vec<f32> = raw
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let got = normalize_tiles(&tiles);
    assert_eq!(got.len(), want.len());
    let max = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(max <= 1e-6, "max |diff| {max}");
    // in fact bit-identical: (u8 as f32 / 255 - mean) / std in f32, as torchvision computes it
    assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()));
}

// --- bad inputs ---------------------------------------------------------------------------------

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn png_chunk(kind: &[u8], data: &[u8]) -> Vec<u8> {
    let mut v = (data.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(kind);
    v.extend_from_slice(data);
    let mut c = kind.to_vec();
    c.extend_from_slice(data);
    v.extend_from_slice(&crc32(&c).to_be_bytes());
    v
}

/// A PNG that is only a signature and a (valid) IHDR claiming `w × h` 8-bit RGB.
fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
    v.extend(png_chunk(b"IHDR", &ihdr));
    v
}

fn expect_err(path: &Path, needle: &str) -> String {
    let e = match load_rgb(path) {
        Ok(img) => panic!("{} loaded as {:?}", path.display(), img.dimensions()),
        Err(e) => e.to_string(),
    };
    let file = path.file_name().unwrap().to_str().unwrap();
    assert!(e.contains(file), "message does not name the file: {e}");
    assert!(e.to_lowercase().contains(needle), "expected {needle:?} in: {e}");
    e
}

#[test]
fn load_rgb_refuses_bad_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);

    std::fs::write(p("notes.png"), b"this is not an image, just text\n").unwrap();
    expect_err(&p("notes.png"), "not a png or jpeg");
    std::fs::write(p("empty.png"), b"").unwrap();
    expect_err(&p("empty.png"), "empty");
    expect_err(&p("missing.png"), "no such file");
    std::fs::create_dir(p("adir.png")).unwrap();
    expect_err(&p("adir.png"), "directory");

    // sizes refused from the header alone (the file has no pixel data at all)
    std::fs::write(p("huge.png"), png_header_only(30000, 30000)).unwrap();
    let e = expect_err(&p("huge.png"), "30000x30000");
    assert!(e.contains(&MAX_PIXELS.to_string()), "{e}");
    std::fs::write(p("zero.png"), png_header_only(0, 0)).unwrap();
    expect_err(&p("zero.png"), "zero dimension");
    std::fs::write(p("zero_w.png"), png_header_only(0, 7)).unwrap();
    expect_err(&p("zero_w.png"), "zero dimension");
    // just over the limit with a plausible shape, and a 1-pixel-high giant row
    std::fs::write(p("wide.png"), png_header_only(u32::MAX, 1)).unwrap();
    expect_err(&p("wide.png"), "more than the limit");

    // truncated PNG: the real photo cut in half, and cut inside the header
    let photo = std::fs::read(root().join("fixtures/images/chelsea.png")).unwrap();
    std::fs::write(p("half.png"), &photo[..photo.len() / 2]).unwrap();
    expect_err(&p("half.png"), "decode");
    std::fs::write(p("head.png"), &photo[..20]).unwrap();
    load_rgb(&p("head.png")).unwrap_err();
    // corrupt PNG: flip bytes in the middle of the compressed data
    let mut bad = photo.clone();
    let mid = bad.len() / 2;
    for b in &mut bad[mid..mid + 64] {
        *b ^= 0x5a;
    }
    std::fs::write(p("corrupt.png"), &bad).unwrap();
    load_rgb(&p("corrupt.png")).unwrap_err();

    // JPEG: a valid one decodes; truncated ones are refused
    let img = load_rgb(&root().join("fixtures/images/coffee_portrait.png")).unwrap();
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
        .encode_image(&img)
        .unwrap();
    std::fs::write(p("ok.jpg"), &jpeg).unwrap();
    assert_eq!(load_rgb(&p("ok.jpg")).unwrap().dimensions(), img.dimensions());
    std::fs::write(p("half.jpg"), &jpeg[..jpeg.len() / 2]).unwrap();
    expect_err(&p("half.jpg"), "decode");
    std::fs::write(p("head.jpg"), &jpeg[..200]).unwrap();
    load_rgb(&p("head.jpg")).unwrap_err();
}

#[test]
fn load_rgb_refuses_huge_jpeg_header() {
    // SOI, a baseline SOF0 claiming 30000x30000 with 3 components, then EOI: no pixel data.
    let mut j = vec![0xFF, 0xD8, 0xFF, 0xC0, 0x00, 0x11, 0x08];
    j.extend_from_slice(&30000u16.to_be_bytes());
    j.extend_from_slice(&30000u16.to_be_bytes());
    j.extend_from_slice(&[3, 1, 0x11, 0, 2, 0x11, 0, 3, 0x11, 0, 0xFF, 0xD9]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.jpg");
    std::fs::write(&path, &j).unwrap();
    let e = load_rgb(&path).unwrap_err().to_string();
    assert!(e.contains("huge.jpg") && e.contains("30000x30000"), "{e}");
    // the same header with a zero height
    j[7..9].copy_from_slice(&0u16.to_be_bytes());
    std::fs::write(&path, &j).unwrap();
    expect_err(&path, "zero dimension");
}

#[test]
fn load_rgb_refuses_other_formats() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("anim.gif");
    std::fs::write(&path, b"GIF89a\x01\x00\x01\x00\x00\x00\x00;").unwrap();
    expect_err(&path, "not supported");
}
