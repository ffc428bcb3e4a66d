//! Collectives over NCCL on device memory (the `cuda` feature), through cudarc's raw bindings.
//!
//! Rank 0 makes the NCCL id and MPI carries it to the others; MPI also keeps the host
//! reductions (flags, timings). NCCL runs on the null stream, the stream torch's kernels use
//! (tch never sets one), so collectives are ordered after the kernels that produce their input
//! without any explicit synchronisation.

use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cudarc::driver::CudaContext;
use cudarc::nccl::{result, sys};
use tch::{Kind, Tensor};

use super::mpi::MpiCollectives;
use super::{Collectives, DistError};

pub struct NcclCollectives {
    host: MpiCollectives,
    comm: sys::ncclComm_t,
    // Keeps the device's primary context (the one torch uses) current for this thread.
    _context: Arc<CudaContext>,
}

fn nccl_error(what: &str, e: result::NcclError) -> DistError {
    DistError::Collective(format!("NCCL {what} failed: {:?}", e.0))
}

impl NcclCollectives {
    /// Joins all ranks in one NCCL communicator on device `ordinal`.
    pub fn init(host: MpiCollectives, ordinal: usize) -> Result<NcclCollectives, DistError> {
        let context = CudaContext::new(ordinal)
            .and_then(|c| c.bind_to_thread().map(|_| c))
            .map_err(|e| DistError::Collective(format!("CUDA device {ordinal}: {e:?}")))?;
        let mut bytes = [0u8; 128];
        if host.is_root() {
            let id = result::get_uniqueid().map_err(|e| nccl_error("get_uniqueid", e))?;
            for (b, c) in bytes.iter_mut().zip(id.internal) {
                *b = c as u8;
            }
        }
        host.broadcast_host(&mut bytes);
        let id = sys::ncclUniqueId {
            internal: bytes.map(|b| b as std::ffi::c_char),
        };
        let mut comm: sys::ncclComm_t = std::ptr::null_mut();
        // SAFETY: `comm` is a valid out-pointer; every rank passes the same id and world size.
        unsafe { result::comm_init_rank(&mut comm, host.world() as i32, id, host.rank() as i32) }
            .map_err(|e| nccl_error("comm_init_rank", e))?;
        Ok(NcclCollectives {
            host,
            comm,
            _context: context,
        })
    }
}

impl Drop for NcclCollectives {
    fn drop(&mut self) {
        // SAFETY: the communicator was initialised in `init` and is not used after this.
        let _ = unsafe { result::comm_destroy(self.comm) };
    }
}

/// A contiguous float32 copy on the device (a no-op for such tensors).
fn device_f32(t: &Tensor) -> Tensor {
    t.to_kind(Kind::Float).contiguous()
}

impl Collectives for NcclCollectives {
    fn rank(&self) -> usize {
        self.host.rank()
    }

    fn world(&self) -> usize {
        self.host.world()
    }

    fn local(&self) -> (usize, usize) {
        self.host.local()
    }

    fn all_gather(&self, t: &Tensor) -> Result<Tensor, DistError> {
        let send = device_f32(t);
        let mut shape = send.size();
        shape[0] *= self.world() as i64;
        let recv = Tensor::empty(&shape[..], (Kind::Float, send.device()));
        // SAFETY: both buffers are contiguous float32 device memory of the stated sizes and stay
        // alive (bound here) until the stream has run the collective: later torch kernels on
        // the same null stream are ordered after it.
        unsafe {
            result::all_gather(
                send.data_ptr() as *const c_void,
                recv.data_ptr(),
                send.numel(),
                sys::ncclDataType_t::ncclFloat32,
                self.comm,
                std::ptr::null_mut(),
            )
        }
        .map_err(|e| nccl_error("all_gather", e))?;
        Ok(recv.to_kind(t.kind()))
    }

    fn all_reduce_sum_(&self, t: &Tensor) -> Result<(), DistError> {
        if t.kind() != Kind::Float || !t.is_contiguous() {
            return Err(DistError::Collective(
                "all_reduce_sum_ takes a contiguous float32 tensor".into(),
            ));
        }
        // SAFETY: `t` is contiguous float32 device memory that the caller keeps alive; NCCL
        // reduces in place when the send and receive buffers are the same, and later torch
        // kernels on the same null stream are ordered after it.
        unsafe {
            result::all_reduce(
                t.data_ptr() as *const c_void,
                t.data_ptr(),
                t.numel(),
                sys::ncclDataType_t::ncclFloat32,
                sys::ncclRedOp_t::ncclSum,
                self.comm,
                std::ptr::null_mut(),
            )
        }
        .map_err(|e| nccl_error("all_reduce", e))?;
        Ok(())
    }

    fn reduce_scatter_sum(&self, t: &Tensor) -> Result<Tensor, DistError> {
        let send = device_f32(t);
        let mut shape = send.size();
        shape[0] /= self.world() as i64;
        let recv = Tensor::empty(&shape[..], (Kind::Float, send.device()));
        // SAFETY: as in all_gather; recv holds one rank's block of send.
        unsafe {
            result::reduce_scatter(
                send.data_ptr() as *const c_void,
                recv.data_ptr(),
                recv.numel(),
                sys::ncclDataType_t::ncclFloat32,
                sys::ncclRedOp_t::ncclSum,
                self.comm,
                std::ptr::null_mut(),
            )
        }
        .map_err(|e| nccl_error("reduce_scatter", e))?;
        Ok(recv.to_kind(t.kind()))
    }

    fn max_host(&self, values: &[f64]) -> Vec<f64> {
        self.host.max_host(values)
    }

    fn broadcast_host(&self, bytes: &mut [u8]) {
        self.host.broadcast_host(bytes)
    }

    fn barrier(&self) {
        self.host.barrier()
    }

    fn abort(&self, code: i32) -> ! {
        // SAFETY: the communicator is valid; abort ends it without waiting for peers.
        let _ = unsafe { result::comm_abort(self.comm) };
        self.host.abort(code)
    }
}

/// Where cudarc will look for NCCL: build.rs puts `$ORIGIN/nccl` on the binary's run path.
fn nccl_dir() -> Option<PathBuf> {
    Some(std::env::current_exe().ok()?.parent()?.join("nccl"))
}

/// cudarc opens `libnccl.so` (or `.so.<CUDA major>`), but the torch wheel ships only
/// `libnccl.so.2` — which libtorch_cuda has already loaded into this process. Link that file as
/// `libnccl.so` in `nccl/` beside the binary, on its run path, so cudarc's lookup finds the same
/// library. The loader notes at start-up which run-path folders do not exist and never looks
/// in them again, so when the folder is new the process starts itself over; call this first
/// in `main`, before MPI starts.
pub fn ensure_libnccl() -> Result<(), DistError> {
    let dir =
        nccl_dir().ok_or_else(|| DistError::Collective("cannot locate the executable".into()))?;
    let link = dir.join("libnccl.so");
    if link.exists() {
        return Ok(());
    }
    let existed = dir.is_dir();
    let loaded = loaded_library("libnccl.so").ok_or_else(|| {
        DistError::Collective(
            "libnccl is not loaded (libtorch_cuda brings it in); put the folder of libnccl.so on LD_LIBRARY_PATH".into(),
        )
    })?;
    let made = std::fs::create_dir_all(&dir).and_then(|_| {
        let tmp = dir.join(format!(".libnccl.so.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&loaded, &tmp)?;
        std::fs::rename(&tmp, &link)
    });
    made.map_err(|e| {
        DistError::Collective(format!(
            "cannot link {} as {}: {e}; make that link yourself or put a folder holding libnccl.so on LD_LIBRARY_PATH",
            loaded.display(),
            link.display()
        ))
    })?;
    if existed || std::env::var_os(RESTARTED).is_some() {
        return Ok(());
    }
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().map_err(|e| DistError::Collective(e.to_string()))?;
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(RESTARTED, "1")
        .exec();
    Err(DistError::Collective(format!(
        "cannot restart after linking libnccl.so: {err}"
    )))
}

/// Set in the environment of the one restart `ensure_libnccl` may do.
const RESTARTED: &str = "TSIMCNE_DIST_NCCL_LINKED";

/// The path of a shared library loaded into this process whose file name starts with `prefix`.
fn loaded_library(prefix: &str) -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(Path::new)
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .map(Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs no GPU: libtorch_cuda loads libnccl.so.2, we link it where cudarc looks, and
    /// NCCL then makes an id. (A first run of a fresh build restarts itself once.)
    #[test]
    fn cudarc_finds_the_nccl_that_torch_loaded() {
        ensure_libnccl().unwrap();
        assert!(nccl_dir().unwrap().join("libnccl.so").exists());
        let version = result::get_nccl_version().unwrap();
        assert!(version >= 22800, "NCCL {version}");
        let id = result::get_uniqueid().unwrap();
        assert!(id.internal.iter().any(|&c| c != 0));
    }
}
