//! Collectives over MPI on host memory: CPU ranks, tests and laptops; also the bootstrap and the
//! host reductions of the NCCL path.

use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;
use tch::{Device, Kind, Tensor};

use super::{Collectives, DistError};

pub struct MpiCollectives {
    // Dropping the universe finalises MPI: it lives as long as the collectives.
    _universe: Universe,
    world: SimpleCommunicator,
    local: (usize, usize),
}

impl MpiCollectives {
    pub fn init() -> Result<MpiCollectives, DistError> {
        let universe = mpi::initialize().ok_or(DistError::NoMpi)?;
        let world = universe.world();
        let node = world.split_shared(world.rank());
        let local = (node.size() as usize, node.rank() as usize);
        Ok(MpiCollectives {
            _universe: universe,
            world,
            local,
        })
    }
}

/// A tensor's elements as host f32 values (the wire format of the MPI path).
fn host_f32(t: &Tensor) -> Result<Vec<f32>, DistError> {
    let flat = t
        .to_device(Device::Cpu)
        .to_kind(Kind::Float)
        .contiguous()
        .view([-1]);
    Ok(Vec::<f32>::try_from(&flat)?)
}

impl Collectives for MpiCollectives {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn world(&self) -> usize {
        self.world.size() as usize
    }

    fn local(&self) -> (usize, usize) {
        self.local
    }

    fn all_gather(&self, t: &Tensor) -> Result<Tensor, DistError> {
        let send = host_f32(t)?;
        let mut recv = vec![0f32; send.len() * self.world()];
        self.world.all_gather_into(&send[..], &mut recv[..]);
        let mut shape = t.size();
        shape[0] *= self.world() as i64;
        Ok(Tensor::from_slice(&recv)
            .view(&shape[..])
            .to_kind(t.kind())
            .to(t.device()))
    }

    fn all_reduce_sum_(&self, t: &Tensor) -> Result<(), DistError> {
        if self.world() == 1 {
            return Ok(());
        }
        let send = host_f32(t)?;
        let mut recv = vec![0f32; send.len()];
        self.world
            .all_reduce_into(&send[..], &mut recv[..], SystemOperation::sum());
        tch::no_grad(|| {
            t.shallow_clone()
                .copy_(&Tensor::from_slice(&recv).view(&t.size()[..]))
        });
        Ok(())
    }

    fn reduce_scatter_sum(&self, t: &Tensor) -> Result<Tensor, DistError> {
        let mut shape = t.size();
        shape[0] /= self.world() as i64;
        if self.world() == 1 {
            return Ok(t.shallow_clone());
        }
        let send = host_f32(t)?;
        let mut recv = vec![0f32; send.len() / self.world()];
        self.world
            .reduce_scatter_block_into(&send[..], &mut recv[..], SystemOperation::sum());
        Ok(Tensor::from_slice(&recv)
            .view(&shape[..])
            .to_kind(t.kind())
            .to(t.device()))
    }

    fn max_host(&self, values: &[f64]) -> Vec<f64> {
        let mut out = vec![0.0; values.len()];
        self.world
            .all_reduce_into(values, &mut out[..], SystemOperation::max());
        out
    }

    fn broadcast_host(&self, bytes: &mut [u8]) {
        self.world.process_at_rank(0).broadcast_into(bytes);
    }

    fn barrier(&self) {
        self.world.barrier();
    }

    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}
