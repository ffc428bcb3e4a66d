//! Mixed precision: the network's trunk under bf16 autocast, the readout and the loss in f32.
//!
//! tch's `autocast` turns on CUDA autocast at torch's default dtype, fp16, which needs loss
//! scaling to keep small gradients from flushing to zero. bf16 has f32's exponent range and
//! needs none, so we ask libtorch for bf16 instead. tch binds neither the dtype setter nor the
//! per-device switch, so those two C++ functions are declared here by their mangled names
//! (present in libtorch 2.11's libtorch_cpu.so; a tch upgrade that binds them retires this).
//!
//! Autocast caches the bf16 copy of every weight it casts and keeps it until the cache is
//! cleared: without clearing, the next region would compute with the weights as they were
//! before the optimizer step. Each region here ends by clearing it, as torch's own autocast
//! context does on exit.

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

/// Runs `f` with bf16 autocast on `device`'s type, and empties the cast cache afterwards.
pub fn bf16<T>(device: Device, f: impl FnOnce() -> T) -> T {
    let kind = if device.is_cuda() { CUDA } else { CPU };
    // SAFETY: plain setters of libtorch's thread-local autocast state, with valid enum values.
    unsafe {
        set_autocast_dtype(kind, BFLOAT16);
        set_autocast_enabled(kind, true);
    }
    let out = f();
    // SAFETY: as above; clear_cache only drops libtorch's own cached casts (tch's binding).
    unsafe {
        set_autocast_enabled(kind, false);
        torch_sys::at_autocast_clear_cache();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::{self, Module};
    use tch::{Kind, Tensor};

    fn max_abs(t: &Tensor) -> f64 {
        f64::try_from(t.abs().max()).unwrap()
    }

    #[test]
    fn matmuls_run_in_bf16_inside_and_f32_outside() {
        let a = Tensor::randn([4, 8], (Kind::Float, Device::Cpu));
        let inside = bf16(Device::Cpu, || a.matmul(&a.transpose(0, 1)));
        assert_eq!(inside.kind(), Kind::BFloat16);
        assert_eq!(a.matmul(&a.transpose(0, 1)).kind(), Kind::Float);
        let exact = a.matmul(&a.transpose(0, 1));
        let err = max_abs(&(inside.to_kind(Kind::Float) - &exact));
        let scale = max_abs(&exact);
        assert!(
            err < 0.02 * scale && err > 0.0,
            "bf16 error {err} of {scale}"
        );
    }

    /// The optimizer changes weights in place between steps: the next bf16 forward must see
    /// the new weights, exactly as a forward of a fresh copy of them would.
    #[test]
    fn a_weight_changed_in_place_is_seen_by_the_next_bf16_forward() {
        tch::manual_seed(1);
        let vs = nn::VarStore::new(Device::Cpu);
        let layer = nn::linear(vs.root() / "l", 16, 8, Default::default());
        let x = Tensor::randn([4, 16], (Kind::Float, Device::Cpu));
        let first = bf16(Device::Cpu, || layer.forward(&x));
        tch::no_grad(|| {
            let mut w = layer.ws.shallow_clone();
            w += 1.0;
        });
        let second = bf16(Device::Cpu, || layer.forward(&x));
        assert!(
            max_abs(&(second.to_kind(Kind::Float) - first.to_kind(Kind::Float))) > 1.0,
            "the second forward still used the old weights"
        );
        let fresh = nn::VarStore::new(Device::Cpu);
        let copy = nn::linear(fresh.root() / "l", 16, 8, Default::default());
        tch::no_grad(|| {
            copy.ws.shallow_clone().copy_(&layer.ws);
            copy.bs
                .as_ref()
                .unwrap()
                .shallow_clone()
                .copy_(layer.bs.as_ref().unwrap());
        });
        let expected = bf16(Device::Cpu, || copy.forward(&x));
        assert_eq!(
            max_abs(&(second.to_kind(Kind::Float) - expected.to_kind(Kind::Float))),
            0.0,
            "the second forward equals a fresh forward with the new weights"
        );
    }
}
