//! Where a step's time goes, when the config asks (`phase_timing`): seconds in data, compute,
//! waiting for the slowest rank and communication, and with benchmarks/opcount.cpp preloaded
//! the operators dispatched outside and inside the network.

use std::time::Instant;

use tch::Device;

use crate::dist::Collectives;
use crate::opcount;
use crate::outputs::Phases;

/// The phases a step's time is split into.
#[derive(Debug, Clone, Copy)]
pub enum Phase {
    Data,
    Compute,
    /// The all-gather of the projections.
    Gather,
    /// The reduce-scatter of their gradients.
    Scatter,
    /// The all-reduce of the parameters' gradients.
    Reduce,
}

/// Splits a step's wall time into phases when `phase_timing` is on. Then it synchronises the
/// device before each reading, so that a phase is charged with its own kernels, and waits for
/// every rank before each collective, so that a collective's time is transfer time and
/// imbalance shows as wait time. Off, it does nothing: the host runs ahead of the device.
pub struct PhaseClock {
    on: Option<Laps>,
    device: Device,
}

/// The readings of a step so far: time and (with the counter preloaded) operators.
struct Laps {
    last: Instant,
    phases: Phases,
    ops_start: Option<u64>,
    ops_last: Option<u64>,
    ops_network: u64,
}

impl PhaseClock {
    pub fn new(on: bool, device: Device) -> PhaseClock {
        let ops = opcount::count();
        PhaseClock {
            on: on.then(|| Laps {
                last: Instant::now(),
                phases: Phases::default(),
                ops_start: ops,
                ops_last: ops,
                ops_network: 0,
            }),
            device,
        }
    }

    /// Charges the time since the last reading to `phase`; returns the operators since then.
    pub fn lap(&mut self, phase: Phase) -> u64 {
        let Some(l) = &mut self.on else { return 0 };
        if let Device::Cuda(i) = self.device {
            tch::Cuda::synchronize(i as i64);
        }
        let s = l.last.elapsed().as_secs_f64();
        l.last = Instant::now();
        let t = &mut l.phases;
        *match phase {
            Phase::Data => &mut t.data_s,
            Phase::Compute => &mut t.compute_s,
            Phase::Gather => &mut t.gather_s,
            Phase::Scatter => &mut t.scatter_s,
            Phase::Reduce => &mut t.reduce_s,
        } += s;
        let ops = opcount::count();
        let since = ops.zip(l.ops_last).map_or(0, |(now, last)| now - last);
        l.ops_last = ops;
        since
    }

    /// As `lap`, for a stretch that ran the network (forward or backward).
    pub fn lap_network(&mut self, phase: Phase) {
        let ops = self.lap(phase);
        if let Some(l) = &mut self.on {
            l.ops_network += ops;
        }
    }

    /// Waits for the slowest rank before a collective.
    pub fn wait_for_all(&mut self, comm: &dyn Collectives) {
        if let Some(l) = &mut self.on {
            comm.barrier();
            l.phases.wait_s += l.last.elapsed().as_secs_f64();
            l.last = Instant::now();
        }
    }

    /// The step's phases, the slowest rank's seconds for each; this rank's operators.
    pub fn finish(self, comm: &dyn Collectives) -> Option<Phases> {
        let l = self.on?;
        let t = l.phases;
        let s = comm.max_host(&[
            t.data_s,
            t.compute_s,
            t.wait_s,
            t.gather_s,
            t.scatter_s,
            t.reduce_s,
        ]);
        let total = l.ops_last.zip(l.ops_start).map(|(end, start)| end - start);
        Some(Phases {
            data_s: s[0],
            compute_s: s[1],
            wait_s: s[2],
            comm_s: s[3] + s[4] + s[5],
            gather_s: s[3],
            scatter_s: s[4],
            reduce_s: s[5],
            ops_outside_network: total.map(|n| n - l.ops_network),
            ops_network: total.map(|_| l.ops_network),
        })
    }
}
