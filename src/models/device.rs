//! `--device auto|cpu|cuda[:N]` and `--dtype`: CPU runs in f32 (or f16); CUDA defaults to bf16,
//! as Sa2VA runs. bf16 is refused on the CPU: candle has no bf16 CPU convolution and widens bf16
//! matmuls to f32 on every call, so it would be slower than f32 and no closer to the GPU's numbers.

use crate::error::{Error, Result};
use candle_core::{DType, Device};

pub fn parse_device(s: &str) -> Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        // `cuda_is_available` only says the build has CUDA; whether a GPU answers is known by
        // opening it, so a CUDA build on a machine without one falls back to the CPU.
        "auto" => Ok(if candle_core::utils::cuda_is_available() {
            Device::new_cuda(0).unwrap_or(Device::Cpu)
        } else {
            Device::Cpu
        }),
        "cuda" => cuda(0),
        other => match other.strip_prefix("cuda:").and_then(|n| n.parse::<usize>().ok()) {
            Some(n) => cuda(n),
            None => Err(Error::Usage(format!(
                "--device {other:?}: expected auto, cpu, cuda or cuda:N"
            ))),
        },
    }
}

/// A CUDA device, or a clear error (exit 1) when this build or this machine has none.
fn cuda(n: usize) -> Result<Device> {
    if !candle_core::utils::cuda_is_available() {
        return Err(Error::at(
            "--device",
            "this perceptio was built without CUDA support (build it with tools/build-cuda.sh or `--features cuda`)",
        ));
    }
    // With CUDA built in, a machine without a driver or GPU fails here (no panic: cudarc's
    // errors come back as values).
    Device::new_cuda(n).map_err(|e| {
        Error::at(
            format!("--device cuda:{n}"),
            format!(
                "cannot open CUDA device {n} (no NVIDIA GPU or driver visible?): {}",
                crate::error::candle_message(&e)
            ),
        )
    })
}

/// `--dtype auto|f32|f16|bf16`: auto is f32 on CPU, bf16 on CUDA.
pub fn parse_dtype(s: &str, dev: &Device) -> Result<DType> {
    match s {
        "auto" => Ok(if dev.is_cpu() { DType::F32 } else { DType::BF16 }),
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "bf16" if dev.is_cpu() => Err(Error::Usage(
            "--dtype bf16 is not supported on the CPU (candle has no bf16 CPU convolutions); use f32 (the CPU default) or f16 there, bf16 on --device cuda".into(),
        )),
        "bf16" => Ok(DType::BF16),
        other => Err(Error::Usage(format!("--dtype {other:?}: expected auto, f32, f16 or bf16"))),
    }
}
