//! How much and when: the random kill schedule (replayable) and the soak-sized counts.

/// A small deterministic PRNG (xorshift), seeded from the clock; the seed is printed so a failing
/// schedule can be replayed with `FAULTS_SEED`.
pub struct Rng(u64);

impl Rng {
    /// Seeds from `FAULTS_SEED`, else from the clock, and prints the seed.
    pub fn from_env() -> Self {
        let seed = std::env::var("FAULTS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("FAULTS_SEED={seed}");
        Self(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The count `name` from the environment (`make soak` raises them), else `default`.
pub fn count_from_env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}
