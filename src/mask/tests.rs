use super::*;

#[test]
fn documented_vectors() {
    // Vectors checked against pycocotools (see fixtures/rle/ for the generated ones).
    assert_eq!(codec::encode(&[2, 3, 1, 1]), "231N");
    assert_eq!(codec::decode(b"231N").unwrap(), vec![2, 3, 1, 1]);
    assert_eq!(codec::encode(&[12]), "<");
    assert_eq!(codec::encode(&[0, 12]), "0<");
}

#[test]
fn strict_decoder_rejects_garbage() {
    assert!(codec::decode(b"a b").is_err());
    assert!(codec::decode(b"\x7f").is_err());
    // continuation bit set on the last char: string ends inside a count
    assert!(codec::decode(b"P").is_err());
    // counts that don't sum to h*w
    assert!(Rle::from_compressed("231N", 2, 2).is_err());
    assert!(Rle::from_compressed("231N", 1, 7).is_ok());
}

#[test]
fn zero_length_runs_merge() {
    let a = Rle::from_counts(1, 10, vec![2, 3, 0, 4, 1]).unwrap();
    let u = Rle::union(std::slice::from_ref(&a)).unwrap();
    assert_eq!(u.counts(), &[2, 7, 1]);
    assert_eq!(a.area(), 7);
    let (i, un) = a.intersection_union(&u).unwrap();
    assert_eq!((i, un), (7, 7));
}

#[test]
fn non_canonical_strings_decode_like_pycocotools() {
    // A count may carry redundant continuation groups ("P0" is 0 padded to two chars);
    // maskApi.c's rleFrString accepts them, so perceptio does too (found by cargo fuzz).
    assert_eq!(codec::decode(b"P0").unwrap(), vec![0]);
    assert_eq!(codec::decode(b"2P03").unwrap(), codec::decode(b"203").unwrap());
}
