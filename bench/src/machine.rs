//! A description of the machine the benchmark ran on (cores, CPU model, memory, kernel, OS,
//! date), read from `/proc` and `/etc/os-release`, for the head of `bench/RESULTS.md`.

use std::fmt;

/// What the machine is.
#[derive(Debug, Clone)]
pub struct Machine {
    /// Logical CPUs the process may use.
    pub cores: usize,
    /// `model name` of the first processor in `/proc/cpuinfo`.
    pub model: String,
    /// `MemTotal` of `/proc/meminfo`, in GiB.
    pub memory_gib: f64,
    /// `/proc/sys/kernel/osrelease`.
    pub kernel: String,
    /// `PRETTY_NAME` of `/etc/os-release`.
    pub os: String,
    /// When the run started (UTC, RFC 3339).
    pub date: String,
}

impl Machine {
    /// Reads the description; unknown parts read "unknown".
    pub fn describe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let model = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .and_then(|r| r.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_gib = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kb| kb / (1024.0 * 1024.0))
            .unwrap_or(0.0);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        let os = std::fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|t| {
                t.lines().find_map(|l| {
                    l.strip_prefix("PRETTY_NAME=")
                        .map(|v| v.trim_matches('"').to_string())
                })
            })
            .unwrap_or_else(|| "unknown".into());
        Machine {
            cores,
            model,
            memory_gib,
            kernel,
            os,
            date: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        }
    }
}

impl fmt::Display for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} cores ({}), {:.1} GiB RAM, Linux {}, {}, {}",
            self.cores, self.model, self.memory_gib, self.kernel, self.os, self.date
        )
    }
}

/// Peak resident set size (`VmHWM`) of process `pid`, in bytes, if it is still there.
pub fn peak_rss(pid: u32) -> Option<u64> {
    proc_status_kb(pid, "VmHWM:").map(|kb| kb * 1024)
}

/// A `kB` field of `/proc/<pid>/status`.
fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        l.strip_prefix(field)
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // The description of this machine has at least one core and a kernel release.
    #[test]
    fn describes_this_machine() {
        let m = Machine::describe();
        assert!(m.cores >= 1);
        assert_ne!(m.kernel, "");
        assert!(m.to_string().contains("cores"));
    }

    // The peak RSS of this very process is readable and non-zero.
    #[test]
    fn reads_own_peak_rss() {
        let rss = peak_rss(std::process::id()).expect("VmHWM of self");
        assert!(rss > 0);
    }
}
