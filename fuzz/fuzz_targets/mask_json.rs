//! Any JSON mask value (RLE, uncompressed counts, polygons) parses and resolves without panicking.
#![no_main]
use libfuzzer_sys::fuzz_target;
use perceptio::mask::parse_mask_json;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    if let Ok(m) = parse_mask_json(&v) {
        let _ = m.resolve(37, 53);
    }
});
