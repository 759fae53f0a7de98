//! Polling until a condition holds, for the harness's start-up and restarts.

use std::time::{Duration, Instant};

use crate::Error;
use crate::process::Proc;

/// Polls `check` every 50 ms until it returns `Ok(true)`, failing after `timeout` with the last
/// error seen.
pub(crate) async fn wait_for<F, Fut>(what: &str, timeout: Duration, check: F) -> Result<(), Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, String>>,
{
    wait_for_while_running(what, timeout, &[], check).await
}

/// Like [`wait_for`], failing at once when one of `procs` has exited.
pub(crate) async fn wait_for_while_running<F, Fut>(
    what: &str,
    timeout: Duration,
    procs: &[&Proc],
    mut check: F,
) -> Result<(), Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, String>>,
{
    let deadline = Instant::now() + timeout;
    let mut last = String::from("condition not met");
    loop {
        for p in procs {
            p.check_running()?;
        }
        match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last = e,
        }
        if Instant::now() > deadline {
            return Err(Error::Timeout {
                what: what.to_string(),
                detail: last,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
