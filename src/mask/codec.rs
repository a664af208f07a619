//! pycocotools' compressed RLE strings: LEB128-like, 5 data bits per char offset by 48, with
//! counts after the third delta-coded against the count two places back.

use super::RleError;

/// `rleToString`.
pub fn encode(counts: &[u32]) -> String {
    let mut s = Vec::with_capacity(counts.len() * 2);
    for (i, &c) in counts.iter().enumerate() {
        let mut x = c as i64;
        if i > 2 {
            x -= counts[i - 2] as i64;
        }
        loop {
            let mut ch = (x & 0x1f) as u8;
            x >>= 5;
            let more = if ch & 0x10 != 0 { x != -1 } else { x != 0 };
            if more {
                ch |= 0x20;
            }
            s.push(ch + 48);
            if !more {
                break;
            }
        }
    }
    // All bytes are in 48..=111, i.e. ASCII.
    String::from_utf8(s).expect("RLE string is ASCII")
}

/// `rleFrString`, strict: rejects characters outside the alphabet, a string that ends inside
/// a count, counts that overflow or go negative (where pycocotools would silently wrap).
pub fn decode(s: &[u8]) -> Result<Vec<u32>, RleError> {
    let mut counts: Vec<u32> = Vec::with_capacity(s.len());
    let mut p = 0usize;
    while p < s.len() {
        let start = p;
        let mut x: i64 = 0;
        let mut k = 0u32;
        loop {
            let Some(&byte) = s.get(p) else {
                return Err(RleError(format!(
                    "compressed RLE ends inside a count (at character {start})"
                )));
            };
            if !(48..=111).contains(&byte) {
                return Err(RleError(format!(
                    "invalid character {:?} at position {p} of a compressed RLE",
                    byte as char
                )));
            }
            if k >= 7 {
                return Err(RleError(format!(
                    "count too large at position {start} of a compressed RLE"
                )));
            }
            let c = (byte - 48) as i64;
            x |= (c & 0x1f) << (5 * k);
            p += 1;
            k += 1;
            if c & 0x20 == 0 {
                if c & 0x10 != 0 {
                    x |= -1i64 << (5 * k);
                }
                break;
            }
        }
        let m = counts.len();
        if m > 2 {
            x += counts[m - 2] as i64;
        }
        if !(0..=u32::MAX as i64).contains(&x) {
            return Err(RleError(format!(
                "run {m} of a compressed RLE decodes to {x}, outside 0..2^32"
            )));
        }
        counts.push(x as u32);
    }
    Ok(counts)
}
