//! Mixed precision: the network's trunk under bf16 autocast, the readout and the loss in f32.
//!
//! tch's `autocast` turns on CUDA autocast at torch's default dtype, fp16, which needs loss
//! scaling to keep small gradients from flushing to zero. bf16 has f32's exponent range and
//! needs none, so we ask libtorch for bf16 instead. tch binds neither the dtype setter nor the
//! per-device switch, so the two C++ functions are declared here by their mangled names
//! (present in libtorch 2.11's libtorch_cpu.so; a tch upgrade that binds them retires this).

use tch::Device;

extern "C" {
    // at::autocast::set_autocast_dtype(c10::DeviceType, c10::ScalarType): both are enum
    // classes over int8_t, passed as such.
    #[link_name = "_ZN2at8autocast18set_autocast_dtypeEN3c1010DeviceTypeENS1_10ScalarTypeE"]
    fn set_autocast_dtype(device: i8, dtype: i8);
    // at::autocast::set_autocast_enabled(c10::DeviceType, bool)
    #[link_name = "_ZN2at8autocast20set_autocast_enabledEN3c1010DeviceTypeEb"]
    fn set_autocast_enabled(device: i8, enabled: bool);
}

/// c10::DeviceType and c10::ScalarType values (c10/core/DeviceType.h, ScalarType.h).
const CPU: i8 = 0;
const CUDA: i8 = 1;
const BFLOAT16: i8 = 15;

/// Runs `f` with bf16 autocast on `device`'s type.
pub fn bf16<T>(device: Device, f: impl FnOnce() -> T) -> T {
    let kind = if device.is_cuda() { CUDA } else { CPU };
    // SAFETY: plain setters of libtorch's thread-local autocast state, with valid enum values.
    unsafe {
        set_autocast_dtype(kind, BFLOAT16);
        set_autocast_enabled(kind, true);
    }
    let out = f();
    // SAFETY: as above.
    unsafe { set_autocast_enabled(kind, false) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    #[test]
    fn matmuls_run_in_bf16_inside_and_f32_outside() {
        let a = Tensor::randn([4, 8], (Kind::Float, Device::Cpu));
        let inside = bf16(Device::Cpu, || a.matmul(&a.transpose(0, 1)));
        assert_eq!(inside.kind(), Kind::BFloat16);
        assert_eq!(a.matmul(&a.transpose(0, 1)).kind(), Kind::Float);
        let exact = a.matmul(&a.transpose(0, 1));
        let err = f64::try_from((inside.to_kind(Kind::Float) - &exact).abs().max()).unwrap();
        let scale = f64::try_from(exact.abs().max()).unwrap();
        assert!(
            err < 0.02 * scale && err > 0.0,
            "bf16 error {err} of {scale}"
        );
    }
}
