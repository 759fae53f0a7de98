//! Malformed input, table-driven, against the crates' public pure APIs: SecretProviderClass
//! parameters, kubelet volume contexts and hostile provider responses (in process and over a
//! real upstream-API gRPC unix socket). Every case must be rejected with an error that names
//! the field or object at fault, never panic, and never write anything outside the target
//! directory (nor inside it: a rejected payload leaves the volume as it was).

#[path = "bad_input/params.rs"]
mod params;
#[path = "bad_input/params_fields.rs"]
mod params_fields;
#[path = "bad_input/responses.rs"]
mod responses;
#[path = "bad_input/volume_context.rs"]
mod volume_context;

use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// Collects every case's label and checks that no two cases are the same input.
#[derive(Default)]
pub struct Tally {
    labels: BTreeSet<String>,
    inputs: BTreeSet<String>,
    failures: Vec<String>,
}

impl Tally {
    /// Runs one case: `run` returns the rejection message, or `Err` with why the case failed.
    pub fn case(
        &mut self,
        label: impl Into<String>,
        input: impl Into<String>,
        run: impl FnOnce() -> Result<(), String>,
    ) {
        let label = label.into();
        assert!(
            self.labels.insert(label.clone()),
            "duplicate case label {label}"
        );
        assert!(
            self.inputs.insert(input.into()),
            "case {label} repeats the input of another case"
        );
        match catch_unwind(AssertUnwindSafe(run)) {
            Ok(Ok(())) => {}
            Ok(Err(why)) => self.failures.push(format!("{label}: {why}")),
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                self.failures.push(format!("{label}: PANIC {msg}"));
            }
        }
    }

    /// Fails the test with every failed case listed; returns how many cases ran.
    pub fn finish(self, min_cases: usize) -> usize {
        assert!(
            self.failures.is_empty(),
            "{} of {} cases failed:\n{}",
            self.failures.len(),
            self.labels.len(),
            self.failures.join("\n")
        );
        assert!(
            self.labels.len() >= min_cases,
            "only {} cases (want ≥ {min_cases})",
            self.labels.len()
        );
        self.labels.len()
    }
}

/// `message` must contain every one of `needles`.
pub fn expect_names(message: &str, needles: &[&str]) -> Result<(), String> {
    match needles.iter().find(|n| !message.contains(*n)) {
        None => Ok(()),
        Some(missing) => Err(format!("message does not name {missing:?}: {message}")),
    }
}

#[test]
fn at_least_200_distinct_malformed_inputs_are_rejected() {
    let p = params::run();
    let v = volume_context::run();
    let r = responses::run();
    let total = p + v + r;
    eprintln!(
        "bad input: {p} parameter cases, {v} volume-context cases, {r} response cases, {total} in all"
    );
    assert!(total >= 200, "only {total} cases");
}
