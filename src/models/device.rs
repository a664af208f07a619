//! `--device auto|cpu|cuda[:N]` and `--dtype`: CPU runs in f32 (candle's bf16 CPU path is
//! slow); CUDA defaults to bf16.

use crate::error::{Error, Result};
use candle_core::{DType, Device};

pub fn parse_device(s: &str) -> Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        "auto" => {
            if candle_core::utils::cuda_is_available() {
                cuda(0)
            } else {
                Ok(Device::Cpu)
            }
        }
        "cuda" => cuda(0),
        other => match other.strip_prefix("cuda:").and_then(|n| n.parse::<usize>().ok()) {
            Some(n) => cuda(n),
            None => Err(Error::Usage(format!("--device {other:?}: expected auto, cpu, cuda or cuda:N"))),
        },
    }
}

fn cuda(n: usize) -> Result<Device> {
    if !candle_core::utils::cuda_is_available() {
        return Err(Error::Usage("this perceptio was built without CUDA support (rebuild with `--features cuda`) or no GPU is visible".into()));
    }
    Device::new_cuda(n).map_err(|e| Error::Usage(format!("cannot open CUDA device {n}: {e}")))
}

/// `--dtype auto|f32|f16|bf16`: auto is f32 on CPU, bf16 on CUDA.
pub fn parse_dtype(s: &str, dev: &Device) -> Result<DType> {
    match s {
        "auto" => Ok(if dev.is_cpu() { DType::F32 } else { DType::BF16 }),
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        other => Err(Error::Usage(format!("--dtype {other:?}: expected auto, f32, f16 or bf16"))),
    }
}
