//! Memory and CPU of node-side processes, read from `/proc`.

use std::time::Duration;

/// Resident memory of one process, in KiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// `VmRSS`: resident now.
    pub rss_kib: u64,
    /// `VmHWM`: the resident peak since start.
    pub hwm_kib: u64,
}

/// `VmRSS` and `VmHWM` of `pid`.
pub fn memory(pid: u32) -> anyhow::Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .ok_or_else(|| anyhow::anyhow!("/proc/{pid}/status has no {name}"))?;
        let kib = line
            .split_whitespace()
            .nth(1)
            .ok_or_else(|| anyhow::anyhow!("malformed {name} line"))?;
        Ok(kib.parse()?)
    };
    Ok(Memory {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
    })
}

/// Summed memory of several processes (a stack can be more than one process).
pub fn memory_sum(pids: &[u32]) -> anyhow::Result<Memory> {
    pids.iter().try_fold(Memory::default(), |acc, pid| {
        let m = memory(*pid)?;
        Ok(Memory {
            rss_kib: acc.rss_kib + m.rss_kib,
            hwm_kib: acc.hwm_kib + m.hwm_kib,
        })
    })
}

/// `/proc/<pid>/stat` counts in USER_HZ, which the kernel fixes at 100 for this ABI.
const USER_HZ: f64 = 100.0;

/// User + system CPU time `pid` has used so far.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may contain spaces and parentheses; the fields start after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow::anyhow!("malformed /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3 of stat(5), so utime (14) and stime (15) are at 11 and 12.
    let ticks = |i: usize| -> anyhow::Result<u64> {
        Ok(fields
            .get(i)
            .ok_or_else(|| anyhow::anyhow!("short /proc/{pid}/stat"))?
            .parse()?)
    };
    let total = ticks(11)? + ticks(12)?;
    Ok(Duration::from_secs_f64(total as f64 / USER_HZ))
}

/// Summed CPU time of several processes.
pub fn cpu_time_sum(pids: &[u32]) -> anyhow::Result<Duration> {
    pids.iter().map(|p| cpu_time(*p)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        let m = memory(me).unwrap();
        assert!(m.rss_kib > 0 && m.hwm_kib >= m.rss_kib);
        // Burn a little CPU so the counter is certainly above zero.
        let mut x = 0u64;
        while cpu_time(me).unwrap().is_zero() {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0 || !cpu_time(me).unwrap().is_zero());
    }
}
