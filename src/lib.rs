//! tsimcne-dist: t-SimCNE (Böhm, Berens & Kobak, ICLR 2023) trained on many devices at once,
//! one MPI rank per device, with the contrastive loss over the global batch.
pub mod augment;
pub mod batches;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod dist;
pub mod error;
pub mod loss;
pub mod metrics;
pub mod model;
pub mod neighbours;
pub mod opcount;
pub mod optim;
pub mod outputs;
pub mod plot;
pub mod precision;
pub mod rng;
pub mod schedule;
pub mod timing;
pub mod train;
