//! What can end a run, and which of it is the user's input (exit code 2) rather than a failure
//! while running (1).

use crate::checkpoint::CheckpointError;
use crate::data::DataError;
use crate::dist::DistError;
use crate::optim::LayoutError;
use crate::outputs::folder::FolderError;
use crate::outputs::OutputError;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error(transparent)]
    Dist(#[from] DistError),
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Folder(#[from] FolderError),
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("{0}")]
    Setup(String),
    #[error("the loss became {loss} at step {step} ({stage} stage, epoch {epoch}); nothing was saved after the last good checkpoint ({last}); try a lower optim.lr or a longer warm-up")]
    NotFinite {
        loss: f64,
        step: u64,
        stage: &'static str,
        epoch: usize,
        last: String,
    },
    #[error("the parameters became NaN or infinite by step {step}; nothing was saved after the last good checkpoint ({last}); try a lower optim.lr or clipping (optim.clip_value)")]
    NotFiniteParameters { step: u64, last: String },
}

impl TrainError {
    /// Errors in what the user gave (exit code 2) as opposed to failures while running.
    pub fn is_input_error(&self) -> bool {
        matches!(
            self,
            TrainError::Config(_)
                | TrainError::Data(_)
                | TrainError::Setup(_)
                | TrainError::Dist(DistError::NoGpu)
                | TrainError::Folder(_)
                | TrainError::Checkpoint(CheckpointError::DataDiffers { .. })
                | TrainError::Checkpoint(CheckpointError::NoneUsable { .. })
                | TrainError::Checkpoint(CheckpointError::Mismatch { .. })
        )
    }
}
