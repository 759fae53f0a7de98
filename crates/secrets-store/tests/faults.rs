//! Fault suites of the hardening issue: the real node agent is SIGKILLed and restarted at random
//! points while a secret rotates and a reader checks every file set it observes.
//!
//! Counts are short by default (`make test`); `make soak` runs the same tests with bigger counts
//! (`SOAK_ROTATIONS`).
//!
//! The scenarios live in `faults/`: SIGKILLs of the agent (`kills`) checked by the reader of
//! `generations` on the schedule of `schedule`, and AWS outages and throttling (`aws_faults`)
//! injected by `proxy`.

mod common;
mod e2e;

#[path = "faults/aws_faults.rs"]
mod aws_faults;
#[path = "faults/generations.rs"]
mod generations;
#[path = "faults/kills.rs"]
mod kills;
#[path = "faults/proxy.rs"]
mod proxy;
#[path = "faults/schedule.rs"]
mod schedule;

use std::time::Duration;

/// How long any one convergence may take.
const WAIT: Duration = Duration::from_secs(60);
/// The seed's AWS secret (also its file name in the volume).
const SECRET: &str = "CSI-driver-test-secret";
