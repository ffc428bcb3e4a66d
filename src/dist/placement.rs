//! Where a rank runs: its node, its place among the node's ranks, and the NCCL settings it was
//! given. Every rank logs this once at start, so that a multi-node job's log says which rank ran
//! where and why it took the device it took.

use std::fmt;

/// The environment variables through which launchers tell a process its node-local rank, in the
/// order they are trusted: mpirun's own (set for each process it starts, also inside a SLURM
/// allocation, where SLURM_LOCALID is that of mpirun's daemon), then srun's.
const LAUNCHER_LOCAL_RANK: [&str; 2] = ["OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID"];

/// NCCL's settings that a multi-node job passes to every rank (the network interface, the
/// InfiniBand adapters, the log level, ...): every `NCCL_*` variable is reported.
const NCCL_PREFIX: &str = "NCCL_";

#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    /// SLURM's name of the node (SLURMD_NODENAME), else the host name.
    pub node: String,
    /// This rank's index among the ranks that share the node's memory (MPI's shared-memory
    /// communicator): the device index of a rank that sees all of the node's GPUs.
    pub local_rank: usize,
    pub local_size: usize,
    /// The node-local rank as the launcher gave it, and the variable it came in.
    pub launcher_local_rank: Option<(&'static str, usize)>,
    /// `NCCL_*` variables as this rank sees them, sorted by name.
    pub nccl: Vec<(String, String)>,
}

impl Placement {
    /// This process's placement from its environment and MPI's node-local `(size, rank)`.
    pub fn here(local: (usize, usize)) -> Placement {
        Placement::from_env(
            local,
            |k| std::env::var(k).ok(),
            std::env::vars(),
            host_name(),
        )
    }

    fn from_env(
        (local_size, local_rank): (usize, usize),
        var: impl Fn(&str) -> Option<String>,
        all: impl Iterator<Item = (String, String)>,
        host: String,
    ) -> Placement {
        let launcher_local_rank = LAUNCHER_LOCAL_RANK
            .iter()
            .find_map(|&k| Some((k, var(k)?.trim().parse().ok()?)));
        let mut nccl: Vec<(String, String)> =
            all.filter(|(k, _)| k.starts_with(NCCL_PREFIX)).collect();
        nccl.sort();
        Placement {
            node: var("SLURMD_NODENAME").unwrap_or(host),
            local_rank,
            local_size,
            launcher_local_rank,
            nccl,
        }
    }

    /// Why the launcher's node-local rank and MPI's differ, if they do: the device is chosen by
    /// MPI's (ranks sharing one machine's memory share its GPUs), so a launcher that places
    /// several of its "nodes" on one machine is told so.
    pub fn disagreement(&self) -> Option<String> {
        let (var, theirs) = self.launcher_local_rank?;
        (theirs != self.local_rank).then(|| {
            format!(
                "the launcher's {var}={theirs} differs from this rank's place among the {} ranks \
                 sharing this machine ({}); the device follows the latter",
                self.local_size, self.local_rank
            )
        })
    }
}

impl fmt::Display for Placement {
    /// `node=n2 local_rank=0/1 SLURM_LOCALID=0 nccl="NCCL_SOCKET_IFNAME=ib0"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "node={} local_rank={}/{}",
            self.node, self.local_rank, self.local_size
        )?;
        if let Some((var, r)) = self.launcher_local_rank {
            write!(f, " {var}={r}")?;
        }
        let nccl: Vec<String> = self.nccl.iter().map(|(k, v)| format!("{k}={v}")).collect();
        write!(f, " nccl=\"{}\"", nccl.join(" "))
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placement(local: (usize, usize), env: &[(&str, &str)]) -> Placement {
        let owned: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let lookup = owned.clone();
        Placement::from_env(
            local,
            move |k| lookup.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()),
            owned.into_iter(),
            "host7".into(),
        )
    }

    #[test]
    fn mpiruns_local_rank_wins_over_slurms_inside_an_allocation() {
        let p = placement(
            (4, 3),
            &[
                ("SLURM_LOCALID", "0"),
                ("OMPI_COMM_WORLD_LOCAL_RANK", "3"),
                ("SLURMD_NODENAME", "gpu12"),
            ],
        );
        assert_eq!(
            p.launcher_local_rank,
            Some(("OMPI_COMM_WORLD_LOCAL_RANK", 3))
        );
        assert_eq!(p.node, "gpu12");
        assert_eq!(p.disagreement(), None);
    }

    #[test]
    fn a_launcher_that_puts_two_nodes_on_one_machine_is_reported() {
        let p = placement((2, 1), &[("SLURM_LOCALID", "0")]);
        assert_eq!(p.node, "host7");
        let why = p.disagreement().expect("0 against 1 must be reported");
        assert!(
            why.contains("SLURM_LOCALID=0") && why.contains("(1)"),
            "{why}"
        );
    }

    #[test]
    fn nccl_settings_are_listed_sorted_and_nothing_else() {
        let p = placement(
            (1, 0),
            &[
                ("NCCL_SOCKET_IFNAME", "ib0"),
                ("HOME", "/root"),
                ("NCCL_IB_HCA", "mlx5_0"),
            ],
        );
        assert_eq!(
            p.to_string(),
            "node=host7 local_rank=0/1 nccl=\"NCCL_IB_HCA=mlx5_0 NCCL_SOCKET_IFNAME=ib0\""
        );
    }
}
