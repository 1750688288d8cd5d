//! Progress shared between the pipeline's threads and whoever reports it
//! (the CLI's JSON lines, the agent's reports to the controller), plus the
//! abort flag the controller can raise.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

use byoi_wire::Stage;

const STAGES: [Stage; 5] =
    [Stage::WaitingForAgent, Stage::Downloading, Stage::Writing, Stage::Finishing, Stage::Rebooting];
const UNKNOWN: u64 = u64::MAX;

/// Lock-free progress counters.
#[derive(Debug)]
pub struct Progress {
    stage: AtomicU8,
    done: AtomicU64,
    total: AtomicU64,
    abort: AtomicBool,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            stage: AtomicU8::new(1),
            done: AtomicU64::new(0),
            total: AtomicU64::new(UNKNOWN),
            abort: AtomicBool::new(false),
        }
    }
}

impl Progress {
    /// Moves to `stage`.
    pub fn set_stage(&self, stage: Stage) {
        let idx = STAGES.iter().position(|s| *s == stage).unwrap_or(0);
        self.stage.store(idx as u8, Ordering::Relaxed);
    }

    /// The current stage.
    pub fn stage(&self) -> Stage {
        STAGES[usize::from(self.stage.load(Ordering::Relaxed)).min(STAGES.len() - 1)]
    }

    /// Records the total size of the image as served.
    pub fn set_total(&self, total: Option<u64>) {
        self.total.store(total.unwrap_or(UNKNOWN), Ordering::Relaxed);
    }

    /// Adds to the bytes received.
    pub fn add_done(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }

    /// Bytes received so far, and the total when known.
    pub fn bytes(&self) -> (u64, Option<u64>) {
        let total = self.total.load(Ordering::Relaxed);
        (self.done.load(Ordering::Relaxed), (total != UNKNOWN).then_some(total))
    }

    /// Asks the pipeline to stop; it fails with `Aborted` at its next step.
    pub fn request_abort(&self) {
        self.abort.store(true, Ordering::Relaxed);
    }

    /// Whether an abort was requested.
    pub fn abort_requested(&self) -> bool {
        self.abort.load(Ordering::Relaxed)
    }
}
