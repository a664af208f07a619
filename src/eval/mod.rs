//! Benchmark scorers: RefCOCO/+/g (cIoU), HardBLINK and MMBench, reproducing the reference tools.

pub mod hardblink;
pub mod mmbench;
pub mod refcoco;
