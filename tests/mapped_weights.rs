//! Checkpoint tensors over a file mapping, under the binary's allocator: the values candle's own
//! loader reads, a misaligned tensor read into a copy instead, writes kept private, and the
//! mapping gone with the last tensor.

#[global_allocator]
static ALLOC: perceptio::util::mapped::MappedAlloc = perceptio::util::mapped::MappedAlloc;

use candle_core::{DType, Device, Tensor};
use perceptio::models::checkpoint::Checkpoint;
use perceptio::util::mapped::{self, MappedFile};

/// A safetensors file by hand, so that one f32 tensor sits at an odd offset: `a` (3 u8), `b`
/// (2×5 f32 at data offset 3), `c` (12,288 f32 at 44, several 4 KiB pages), `d` (7 bf16).
fn write_checkpoint(dir: &std::path::Path) -> (Vec<f32>, Vec<f32>, Vec<half::bf16>, u64) {
    let b: Vec<f32> = (0..10).map(|i| i as f32 * 0.5 - 2.0).collect();
    let c: Vec<f32> = (0..12_288).map(|i| (i as f32 * 0.37).sin()).collect();
    let d: Vec<half::bf16> = (0..7).map(|i| half::bf16::from_f32(i as f32 - 3.5)).collect();
    let (b0, c0) = (3usize, 44usize);
    let d0 = c0 + 4 * c.len();
    let end = d0 + 2 * d.len();
    let mut header = format!(
        r#"{{"a":{{"dtype":"U8","shape":[3],"data_offsets":[0,3]}},"b":{{"dtype":"F32","shape":[2,5],"data_offsets":[{b0},{}]}},"c":{{"dtype":"F32","shape":[12288],"data_offsets":[{c0},{d0}]}},"d":{{"dtype":"BF16","shape":[7],"data_offsets":[{d0},{end}]}}}}"#,
        b0 + 40
    );
    while (8 + header.len()) % 8 != 0 {
        header.push(' ');
    }
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    let data_at = bytes.len() as u64;
    let mut data = vec![0u8; end];
    data[..3].copy_from_slice(&[7, 8, 9]);
    for (i, v) in b.iter().enumerate() {
        data[b0 + 4 * i..b0 + 4 * i + 4].copy_from_slice(&v.to_le_bytes());
    }
    for (i, v) in c.iter().enumerate() {
        data[c0 + 4 * i..c0 + 4 * i + 4].copy_from_slice(&v.to_le_bytes());
    }
    for (i, v) in d.iter().enumerate() {
        data[d0 + 2 * i..d0 + 2 * i + 2].copy_from_slice(&v.to_le_bytes());
    }
    bytes.extend_from_slice(&data);
    std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
    std::fs::write(dir.join("config.json"), "{}").unwrap();
    (b, c, d, data_at + c0 as u64)
}

fn storage_ptr(t: &Tensor) -> *const u8 {
    let (s, _) = t.storage_and_layout();
    match &*s {
        candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)) => v.as_ptr() as *const u8,
        candle_core::Storage::Cpu(candle_core::CpuStorage::BF16(v)) => v.as_ptr() as *const u8,
        _ => panic!("not a CPU f32/bf16 tensor"),
    }
}

// One test: the mapping count is process-wide.
#[test]
fn tensors_are_views_of_the_file_until_the_last_one_goes() {
    let dir = tempfile::tempdir().unwrap();
    let (b, c, d, c_at) = write_checkpoint(dir.path());
    assert_eq!(mapped::live_mappings(), 0);

    let ck = Checkpoint::open(dir.path(), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(mapped::live_mappings(), 1, "opening maps the file");
    let vb = ck.vb();
    let tb = vb.get((2, 5), "b").unwrap();
    let tc = vb.get(12_288, "c").unwrap();
    let td = vb
        .get_with_hints_dtype(7, "d", Default::default(), DType::BF16)
        .unwrap();
    let td32 = vb.get(7, "d").unwrap();
    assert_eq!(tb.flatten_all().unwrap().to_vec1::<f32>().unwrap(), b);
    assert_eq!(tc.to_vec1::<f32>().unwrap(), c);
    assert_eq!(td.to_vec1::<half::bf16>().unwrap(), d);
    let d32: Vec<f32> = d.iter().map(|v| v.to_f32()).collect();
    assert_eq!(td32.to_vec1::<f32>().unwrap(), d32);
    assert!(mapped::is_mapped(storage_ptr(&tc)), "an aligned f32 tensor is a view");
    assert!(mapped::is_mapped(storage_ptr(&td)), "an aligned bf16 tensor is a view");
    assert!(!mapped::is_mapped(storage_ptr(&tb)), "a misaligned one is a copy");
    assert!(!mapped::is_mapped(storage_ptr(&td32)), "a converted one is a copy");

    drop((vb, ck, tb, td, td32));
    assert_eq!(mapped::live_mappings(), 1, "the mapping outlives the checkpoint");
    let sum = tc.sum_all().unwrap().to_scalar::<f32>().unwrap();
    assert!((sum - c.iter().sum::<f32>()).abs() < 1e-2, "{sum}");
    drop(tc);
    assert_eq!(mapped::live_mappings(), 0, "the last tensor unmaps it");

    // Straight through MappedFile: bounds and alignment, private writes, growth copies out.
    let path = dir.path().join("model.safetensors");
    let before = std::fs::read(&path).unwrap();
    let f = std::fs::File::open(&path).unwrap();
    let m = MappedFile::open(&f).unwrap().expect("mapped under MappedAlloc");
    assert!(m.vec::<f32>(c_at as usize + 1, 1).is_none(), "misaligned");
    assert!(m.vec::<f32>(before.len() - 2, 1).is_none(), "past the end");
    assert!(m.vec::<f32>(0, 0).is_none(), "empty");
    let mut v = m.vec::<f32>(c_at as usize, 4).unwrap();
    assert_eq!(v, c[..4]);
    v[0] = 42.0;
    assert_eq!(std::fs::read(&path).unwrap(), before, "a write never reaches the file");
    drop(m);
    assert_eq!(mapped::live_mappings(), 1, "the vector holds the mapping");
    v.push(1.0);
    assert!(!mapped::is_mapped(v.as_ptr() as *const u8), "growing copies out");
    assert_eq!(v, [42.0, c[1], c[2], c[3], 1.0]);
    assert_eq!(mapped::live_mappings(), 0, "and lets the mapping go");
}
