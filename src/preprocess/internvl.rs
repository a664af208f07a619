//! InternVL's image tiling and normalisation, as in the reference Python.
//!
//! `dynamic_preprocess`, `find_closest_aspect_ratio` and `build_transform` in
//! `internvl_chat/internvl/train/dataset.py` (InternVL; the same code is copied in Sa2VA's
//! `modeling_sa2va_chat.py`):
//!
//! 1. candidate grids `(cols, rows)` with `min_num <= cols*rows <= max_num`, in the order the
//!    reference iterates them: a Python `set`, then `sorted(key=cols*rows)` (stable), so within one
//!    tile count the order is CPython's set-table order ([`target_ratios`] reproduces it);
//! 2. the grid whose `cols/rows` is closest to the image's `width/height`; on an exact tie a later
//!    candidate replaces the current one only if `width*height > 0.5 * S² * cols * rows`;
//! 3. the whole image resized to `(S*cols, S*rows)` with Pillow's BICUBIC, cut into `S×S` tiles in
//!    row-major order, plus a thumbnail (the whole image resized to `S×S`) when there is more than
//!    one tile and `use_thumbnail` is set;
//! 4. per tile, `T.Resize((S, S), BICUBIC)` (a no-op: torchvision returns the tile itself when it
//!    already has that size), `ToTensor` (`/255` in f32) and `Normalize` with the ImageNet mean/std
//!    (in f32).
//!
//! Everything is exact: the uint8 tiles equal Pillow's byte for byte and the f32 values equal
//! torchvision's bit for bit (goldens in `fixtures/preprocess/`).

use image::RgbImage;

use super::resize::{resize_bicubic_compat, PillowCompat};

pub use super::{IMAGENET_MEAN, IMAGENET_STD};

/// The tile grid chosen for an image: `cols × rows` tiles (InternVL's `target_aspect_ratio`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileGrid {
    pub cols: usize,
    pub rows: usize,
}

impl TileGrid {
    /// Number of grid tiles (without the thumbnail).
    pub fn blocks(&self) -> usize {
        self.cols * self.rows
    }
}

// --- CPython set order ------------------------------------------------------------------------
//
// The reference builds the candidates as `set((i, j) for n in range(min_num, max_num + 1) for i in
// range(1, n + 1) for j in range(1, n + 1) if min_num <= i * j <= max_num)` and sorts them by i*j
// with Python's stable sort, so candidates with the same tile count keep the set's iteration
// order. That order decides InternVL's tie rule in rare cases (e.g. min_num = max_num = 4 on a 5x2
// image picks (4, 1), not (2, 2)), so it is reproduced here: CPython's tuple hash (xxHash-based,
// CPython >= 3.8) and set table (open addressing, 9 linear probes, perturbation, growth at 60%
// fill) for 64-bit builds, checked against CPython 3.11 for every 0 <= min_num <= max_num + 1,
// max_num <= 48.

const XXPRIME_1: u64 = 11_400_714_785_074_694_791;
const XXPRIME_2: u64 = 14_029_467_366_897_019_727;
const XXPRIME_5: u64 = 2_870_177_450_012_600_261;
const LINEAR_PROBES: usize = 9;
const PERTURB_SHIFT: u32 = 5;
const SET_MINSIZE: usize = 8;

/// `hash((i, j))` for small non-negative ints (whose hash is the int itself).
fn py_tuple2_hash(i: u64, j: u64) -> u64 {
    let mut acc = XXPRIME_5;
    for lane in [i, j] {
        acc = acc.wrapping_add(lane.wrapping_mul(XXPRIME_2));
        acc = acc.rotate_left(31);
        acc = acc.wrapping_mul(XXPRIME_1);
    }
    acc = acc.wrapping_add(2 ^ (XXPRIME_5 ^ 3_527_539));
    if acc == u64::MAX {
        1_546_275_796
    } else {
        acc
    }
}

/// A CPython set of distinct keys (no deletions), enough to reproduce its iteration order.
struct PySet {
    table: Vec<Option<(u64, (usize, usize))>>,
    fill: usize,
}

impl PySet {
    fn new() -> Self {
        PySet {
            table: vec![None; SET_MINSIZE],
            fill: 0,
        }
    }

    /// The free slot `set_insert_clean` / `set_add_entry` would use for `hash` (the key is new).
    fn free_slot(table: &[Option<(u64, (usize, usize))>], hash: u64) -> usize {
        let mask = table.len() - 1;
        let mut perturb = hash;
        let mut i = hash as usize & mask;
        loop {
            // `i` and the next LINEAR_PROBES slots, unless that would run past the table's end
            let probes = if i + LINEAR_PROBES <= mask { LINEAR_PROBES } else { 0 };
            if let Some(k) = table[i..=i + probes].iter().position(Option::is_none) {
                return i + k;
            }
            perturb >>= PERTURB_SHIFT;
            i = (i.wrapping_mul(5).wrapping_add(1).wrapping_add(perturb as usize)) & mask;
        }
    }

    /// Add a key that is not in the set yet (`set_add_entry` for a new key).
    fn add_new(&mut self, key: (usize, usize)) {
        let hash = py_tuple2_hash(key.0 as u64, key.1 as u64);
        let slot = Self::free_slot(&self.table, hash);
        self.table[slot] = Some((hash, key));
        self.fill += 1;
        let mask = self.table.len() - 1;
        if self.fill * 5 >= mask * 3 {
            let used = self.fill;
            let minused = if used > 50_000 { used * 2 } else { used * 4 };
            let mut newsize = SET_MINSIZE;
            while newsize <= minused {
                newsize <<= 1;
            }
            let mut table = vec![None; newsize];
            for &(h, k) in self.table.iter().flatten() {
                let s = Self::free_slot(&table, h);
                table[s] = Some((h, k));
            }
            self.table = table;
        }
    }

    fn iter_order(&self) -> Vec<(usize, usize)> {
        self.table.iter().flatten().map(|&(_, k)| k).collect()
    }
}

/// The candidate grids `(cols, rows)` in the exact order InternVL's `dynamic_preprocess` passes
/// them to `find_closest_aspect_ratio` (sorted by `cols*rows`; ties in CPython set order).
///
/// Empty when `min_num > max_num` (the reference then falls back to `(1, 1)`).
pub fn target_ratios(min_num: usize, max_num: usize) -> Vec<(usize, usize)> {
    let mut set = PySet::new();
    let in_range = |p: usize| p >= min_num && p <= max_num;
    // The generator's insertion order with repeats dropped (adding a key already present leaves
    // a CPython set unchanged): (i, j) first appears at n = max(i, j, min_num), and within one n
    // the generator runs i, then j, ascending.
    let start = min_num.max(1);
    for n in start..=max_num {
        if n == start {
            for i in 1..=n {
                for j in (1..=n).take_while(|&j| i * j <= max_num) {
                    if in_range(i * j) {
                        set.add_new((i, j));
                    }
                }
            }
            continue;
        }
        // pairs new at this n have max(i, j) == n: (i < n, n) then (n, j <= n)
        for i in (1..n).take_while(|&i| i * n <= max_num) {
            if in_range(i * n) {
                set.add_new((i, n));
            }
        }
        for j in (1..=n).take_while(|&j| n * j <= max_num) {
            if in_range(n * j) {
                set.add_new((n, j));
            }
        }
    }
    let mut v = set.iter_order();
    v.sort_by_key(|&(i, j)| i * j); // stable, like Python's sorted
    v
}

/// InternVL's `find_closest_aspect_ratio`: the candidate whose `cols/rows` is closest to
/// `aspect` (= width / height); on an exact tie a later candidate wins only if
/// `width*height > 0.5 * image_size² * cols * rows`. `(1, 1)` if `ratios` is empty.
pub fn find_closest_aspect_ratio(
    aspect: f64,
    ratios: &[(usize, usize)],
    width: u32,
    height: u32,
    image_size: usize,
) -> (usize, usize) {
    let mut best_diff = f64::INFINITY;
    let mut best = (1, 1);
    // Python compares the int area with the float bound exactly; both are exact in f64 here.
    let area = (u64::from(width) * u64::from(height)) as f64;
    for &(c, r) in ratios {
        let target = c as f64 / r as f64;
        let diff = (aspect - target).abs();
        if diff < best_diff {
            best_diff = diff;
            best = (c, r);
        } else if diff == best_diff && area > 0.5 * image_size as f64 * image_size as f64 * c as f64 * r as f64 {
            best = (c, r);
        }
    }
    best
}

/// Copy the `size × size` square at (`x0`, `y0`) out of `img`.
fn crop(img: &RgbImage, x0: u32, y0: u32, size: u32) -> RgbImage {
    let stride = img.width() as usize * 3;
    let mut out = Vec::with_capacity(size as usize * size as usize * 3);
    for y in y0..y0 + size {
        let start = y as usize * stride + x0 as usize * 3;
        out.extend_from_slice(&img.as_raw()[start..start + size as usize * 3]);
    }
    RgbImage::from_raw(size, size, out).expect("buffer size matches the dimensions")
}

/// The tiles InternVL feeds its ViT: uint8 RGB tiles (row-major grid, then the thumbnail).
///
/// `img` is the RGB image (`Image.open(p).convert("RGB")`, see [`super::load_rgb`]);
/// `image_size` is the tile side S (448 for InternVL2.5 / Sa2VA), `min_num`/`max_num` the tile
/// count bounds (1 and 12 in Sa2VA). Resizing follows Pillow 13 (see [`dynamic_tiles_compat`]).
/// Panics if `image_size` is 0, `img` is empty, or the grid's pixel size overflows `u32`.
pub fn dynamic_tiles(
    img: &RgbImage,
    image_size: usize,
    min_num: usize,
    max_num: usize,
    use_thumbnail: bool,
) -> (Vec<RgbImage>, TileGrid) {
    dynamic_tiles_compat(img, image_size, min_num, max_num, use_thumbnail, PillowCompat::Pillow13)
}

/// [`dynamic_tiles`] with the resize of a given Pillow release (they differ by rounding only, on
/// images whose height shrinks much more than their width).
pub fn dynamic_tiles_compat(
    img: &RgbImage,
    image_size: usize,
    min_num: usize,
    max_num: usize,
    use_thumbnail: bool,
    compat: PillowCompat,
) -> (Vec<RgbImage>, TileGrid) {
    let (w, h) = img.dimensions();
    assert!(image_size > 0, "image_size must be positive");
    assert!(w > 0 && h > 0, "empty image");
    let aspect = f64::from(w) / f64::from(h);
    let (cols, rows) = find_closest_aspect_ratio(aspect, &target_ratios(min_num, max_num), w, h, image_size);
    let grid = TileGrid { cols, rows };
    let s = u32::try_from(image_size).expect("image_size fits in u32");
    let dim = |n: usize| u32::try_from(n * image_size).expect("tile grid too large");
    let resized = resize_bicubic_compat(img, dim(cols), dim(rows), compat);
    let mut tiles = Vec::with_capacity(grid.blocks() + 1);
    for i in 0..grid.blocks() {
        let (c, r) = ((i % cols) as u32, (i / cols) as u32);
        tiles.push(crop(&resized, c * s, r * s, s));
    }
    if use_thumbnail && tiles.len() != 1 {
        tiles.push(resize_bicubic_compat(img, s, s, compat));
    }
    (tiles, grid)
}

/// Normalised pixel values, layout (n_tiles, 3, S, S) row-major, f32, ImageNet mean/std:
/// `(v as f32 / 255 - mean) / std`, evaluated in f32 like torchvision's `ToTensor` + `Normalize`.
/// All tiles must be square and of the same size (as [`dynamic_tiles`] returns them).
pub fn normalize_tiles(tiles: &[RgbImage]) -> Vec<f32> {
    let Some(first) = tiles.first() else { return Vec::new() };
    let (w, h) = first.dimensions();
    let plane = w as usize * h as usize;
    let mean = IMAGENET_MEAN.map(|m| m as f32);
    let std = IMAGENET_STD.map(|s| s as f32);
    // Only 256 possible inputs per channel: a table gives the same bits as computing each pixel.
    let lut: [[f32; 256]; 3] =
        std::array::from_fn(|c| std::array::from_fn(|v| (v as f32 / 255.0f32 - mean[c]) / std[c]));
    let mut out = vec![0f32; tiles.len() * 3 * plane];
    for (tile, dst) in tiles.iter().zip(out.chunks_exact_mut(3 * plane)) {
        assert_eq!(tile.dimensions(), (w, h), "all tiles must have the same size");
        for (p, px) in tile.as_raw().chunks_exact(3).enumerate() {
            for c in 0..3 {
                dst[c * plane + p] = lut[c][px[c] as usize];
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuple_hash_matches_cpython() {
        // python3.11 -c 'print(hash((1, 1)), hash((2, 3)), hash((12, 1)))'
        assert_eq!(py_tuple2_hash(1, 1) as i64, 8_389_048_192_121_911_274);
        assert_eq!(py_tuple2_hash(2, 3) as i64, 8_409_376_899_596_376_432);
        assert_eq!(py_tuple2_hash(12, 1) as i64, -7_907_666_742_645_488_893);
    }

    #[test]
    fn ratios_order_matches_python_for_max6() {
        // sorted(set(...), key=lambda x: x[0] * x[1]) in CPython 3.11, min_num=1, max_num=6
        let expected = [
            (1, 1),
            (1, 2),
            (2, 1),
            (3, 1),
            (1, 3),
            (4, 1),
            (1, 4),
            (2, 2),
            (1, 5),
            (5, 1),
            (6, 1),
            (2, 3),
            (1, 6),
            (3, 2),
        ];
        assert_eq!(target_ratios(1, 6), expected);
        assert!(target_ratios(5, 4).is_empty());
    }

    #[test]
    fn normalisation_endpoints() {
        let t = RgbImage::from_pixel(2, 2, image::Rgb([0, 255, 128]));
        let v = normalize_tiles(&[t]);
        assert_eq!(v.len(), 12);
        assert_eq!(v[0], (0.0f32 - 0.485f32) / 0.229f32);
        assert_eq!(v[4], (1.0f32 - 0.456f32) / 0.224f32);
        assert_eq!(v[8], (128.0f32 / 255.0f32 - 0.406f32) / 0.225f32);
    }
}
