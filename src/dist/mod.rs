//! Everything that crosses ranks goes through [`Collectives`]: MPI on host memory
//! ([`mpi::MpiCollectives`], CPU ranks) or NCCL on device memory (`nccl::NcclCollectives`, the
//! `cuda` feature). The trainer does not know which one it has.

pub mod mpi;
#[cfg(feature = "cuda")]
pub mod nccl;
pub mod placement;
pub mod watchdog;

use tch::{nn, Device, Kind, Tensor};

use crate::config::DeviceChoice;

#[derive(Debug, thiserror::Error)]
pub enum DistError {
    #[error("MPI could not start; launch with mpirun or srun (is OpenMPI installed?)")]
    NoMpi,
    #[error("a collective failed: {0}")]
    Collective(String),
    #[error("tensor {0}")]
    Tensor(#[from] tch::TchError),
    #[error("device = \"cuda\" but torch sees no GPU (a binary built without --features cuda, or no visible device); use device = \"cpu\" or \"auto\"")]
    NoGpu,
}

/// The collectives the trainer uses. Tensor collectives work on any device the implementation
/// supports; the `_host` ones move a few numbers (flags, timings, losses) and always use MPI.
pub trait Collectives {
    fn rank(&self) -> usize;
    fn world(&self) -> usize;
    /// This node's ranks and this rank's place among them (its device index).
    fn local(&self) -> (usize, usize);
    /// Every rank's `t` (same shape everywhere) stacked along dimension 0 in rank order.
    fn all_gather(&self, t: &Tensor) -> Result<Tensor, DistError>;
    /// Replaces `t` (contiguous float32) by the element-wise sum of every rank's `t`, in place:
    /// the gradients are reduced where the backward pass wrote them.
    fn all_reduce_sum_(&self, t: &Tensor) -> Result<(), DistError>;
    /// This rank's block of the element-wise sum of every rank's `t`: dimension 0 split into
    /// `world` equal blocks, rank r receiving block r (half an all-reduce's traffic).
    fn reduce_scatter_sum(&self, t: &Tensor) -> Result<Tensor, DistError>;
    fn max_host(&self, values: &[f64]) -> Vec<f64>;
    /// Rank 0's `bytes` on every rank.
    fn broadcast_host(&self, bytes: &mut [u8]);
    fn barrier(&self);
    /// Ends every rank of the job now (MPI_Abort): for an error some ranks may not have seen,
    /// where waiting for them would hang the job.
    fn abort(&self, code: i32) -> !;

    /// The lowest rank for which `failed` is true, agreed by all ranks; `None` if no rank failed.
    fn first_failing(&self, failed: bool) -> Option<usize> {
        let mine = if failed {
            -(self.rank() as f64)
        } else {
            f64::NEG_INFINITY
        };
        let worst = self.max_host(&[mine])[0];
        (worst > f64::NEG_INFINITY).then(|| (-worst) as usize)
    }

    fn is_root(&self) -> bool {
        self.rank() == 0
    }
}

/// The collectives for ranks computing on `device`: NCCL between CUDA devices (with the `cuda`
/// feature), MPI otherwise.
pub fn connect(
    mpi: mpi::MpiCollectives,
    device: tch::Device,
) -> Result<Box<dyn Collectives>, DistError> {
    #[cfg(feature = "cuda")]
    if let tch::Device::Cuda(ordinal) = device {
        return Ok(Box::new(nccl::NcclCollectives::init(mpi, ordinal)?));
    }
    let _ = device;
    Ok(Box::new(mpi))
}

/// The device of the rank that is `local_rank` on its node.
pub fn choose_device(choice: DeviceChoice, local_rank: usize) -> Result<Device, DistError> {
    let gpus = tch::Cuda::device_count() as usize;
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Auto if gpus == 0 => Ok(Device::Cpu),
        DeviceChoice::Cuda if gpus == 0 => Err(DistError::NoGpu),
        _ => Ok(Device::Cuda(local_rank % gpus)),
    }
}

/// Averages the variables of `vs` that are not trained (batch-norm running statistics) over
/// ranks, in one all-reduce, so that what rank 0 saves and embeds with reflects every rank's
/// images.
pub fn average_buffers(comm: &dyn Collectives, vs: &nn::VarStore) -> Result<(), DistError> {
    let world = comm.world();
    let mut buffers: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| !t.requires_grad())
        .collect();
    if world == 1 || buffers.is_empty() {
        return Ok(());
    }
    buffers.sort_by(|a, b| a.0.cmp(&b.0));
    let _guard = tch::no_grad_guard();
    let flat: Vec<Tensor> = buffers
        .iter()
        .map(|(_, t)| t.to_kind(Kind::Float).view([-1]))
        .collect();
    let flat = Tensor::cat(&flat, 0);
    comm.all_reduce_sum_(&flat)?;
    let mut offset = 0;
    for (_, t) in &buffers {
        let n = t.numel() as i64;
        let mean = flat.narrow(0, offset, n).view(&t.size()[..]) / world as f64;
        t.shallow_clone().copy_(&mean);
        offset += n;
    }
    Ok(())
}
