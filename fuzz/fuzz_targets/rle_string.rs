//! The compressed-RLE decoder never panics, and whatever it accepts survives an encode/decode
//! round trip (strings need not be canonical: "P0" is a padded 0, as pycocotools also accepts).
#![no_main]
use libfuzzer_sys::fuzz_target;
use perceptio::mask::Rle;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let (h, w) = (data[0] as u32 + 1, data[1] as u32 + 1);
    let Ok(s) = std::str::from_utf8(&data[2..]) else { return };
    if let Ok(r) = Rle::from_compressed(s, h, w) {
        let again = Rle::from_compressed(&r.to_compressed(), h, w).unwrap();
        assert_eq!(again, r);
        assert!(r.area() <= (h * w) as u64);
        let _ = r.bbox();
        let u = Rle::union(&[r.clone(), r.clone()]).unwrap();
        assert_eq!(u.area(), r.area());
    }
});
