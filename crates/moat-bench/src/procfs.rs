//! What the harness reads from `/proc`: CPU time and resident memory of a process, and the
//! open-files limit. Parsing is kept apart from reading so it can be tested on fixed text.

use std::time::Duration;

/// Clock ticks per second in `/proc/PID/stat`. Linux fixes USER_HZ at 100 in its ABI on every
/// mainstream architecture; reading it through `sysconf` would need `unsafe` for no gain.
const USER_HZ: u64 = 100;

/// CPU time (user + system, all threads, living and exited) that process `pid` has used.
pub fn cpu_time(pid: u32) -> Result<Duration, String> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
    parse_stat_cpu(&text).ok_or_else(|| format!("cannot parse {path}"))
}

/// CPU time used by this process.
pub fn own_cpu_time() -> Result<Duration, String> {
    cpu_time(std::process::id())
}

/// CPU time the whole machine spent busy (all cores, all processes) since boot.
pub fn machine_busy_time() -> Result<Duration, String> {
    let text =
        std::fs::read_to_string("/proc/stat").map_err(|e| format!("reading /proc/stat: {e}"))?;
    parse_machine_busy(&text).ok_or_else(|| "cannot parse /proc/stat".to_owned())
}

/// Resident set size of process `pid`, in bytes.
pub fn rss_bytes(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
    parse_vm_rss(&text).ok_or_else(|| format!("no VmRSS in {path}"))
}

/// The soft and hard limits on open files of this process.
pub fn own_nofile_limits() -> Result<(u64, u64), String> {
    let text = std::fs::read_to_string("/proc/self/limits")
        .map_err(|e| format!("reading /proc/self/limits: {e}"))?;
    parse_nofile_limits(&text).ok_or_else(|| "cannot parse /proc/self/limits".to_owned())
}

/// Raises this process's open-files limit to at least `wanted` with util-linux `prlimit`
/// (brokers spawned afterwards inherit it). Going past the hard limit needs
/// CAP_SYS_RESOURCE; without it the soft limit is raised to the hard one. Returns the soft
/// limit in force afterwards.
pub fn raise_nofile_limit(wanted: u64) -> Result<u64, String> {
    let (soft, hard) = own_nofile_limits()?;
    if soft >= wanted {
        return Ok(soft);
    }
    let set = |limit: u64| {
        std::process::Command::new("prlimit")
            .arg("--pid")
            .arg(std::process::id().to_string())
            .arg(format!("--nofile={limit}:{limit}"))
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !set(wanted) && hard > soft {
        set(hard);
    }
    Ok(own_nofile_limits()?.0)
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line. The command name (field 2)
/// is in parentheses and may itself contain spaces and parentheses, so fields are counted
/// from the last `)`.
pub fn parse_stat_cpu(stat: &str) -> Option<Duration> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // After the command name come field 3 (state) onwards; utime is field 14.
    let mut fields = after_comm.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let ticks = utime + stime;
    Some(Duration::from_millis(ticks * 1000 / USER_HZ))
}

/// Busy time from the aggregate `cpu` line of `/proc/stat`: every column (user, nice,
/// system, idle, iowait, irq, softirq, steal) except idle and iowait. Guest time is already
/// counted in user time, so the guest columns are left out.
pub fn parse_machine_busy(stat: &str) -> Option<Duration> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let columns: Vec<u64> = line
        .split_ascii_whitespace()
        .skip(1)
        .take(8)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    let [user, nice, system, _idle, _iowait, irq, softirq, steal] = columns.try_into().ok()?;
    let ticks = user + nice + system + irq + softirq + steal;
    Some(Duration::from_millis(ticks * 1000 / USER_HZ))
}

/// The `VmRSS:` line of `/proc/PID/status`, in bytes.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut parts = line["VmRSS:".len()..].split_ascii_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    match parts.next()? {
        "kB" => Some(value * 1024),
        _ => None,
    }
}

/// The soft and hard limits of the "Max open files" line of `/proc/PID/limits`.
pub fn parse_nofile_limits(limits: &str) -> Option<(u64, u64)> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut values = line["Max open files".len()..]
        .split_ascii_whitespace()
        .map(|v| match v {
            "unlimited" => Some(u64::MAX),
            n => n.parse().ok(),
        });
    Some((values.next()??, values.next()??))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu_counts_from_the_last_parenthesis() {
        let stat = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 50 0 0 20 0 \
                    3 0 123456 1000000 500 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0";
        assert_eq!(parse_stat_cpu(stat), Some(Duration::from_millis(3000)));
    }

    #[test]
    fn stat_cpu_rejects_truncated_lines() {
        assert_eq!(parse_stat_cpu("1 (x) S 1 2 3"), None);
        assert_eq!(parse_stat_cpu("no parenthesis"), None);
    }

    #[test]
    fn machine_busy_leaves_out_idle_and_iowait() {
        let stat = "cpu  100 20 30 5000 40 5 6 7 0 0\ncpu0 50 10 15 2500 20 2 3 3 0 0\n";
        assert_eq!(
            parse_machine_busy(stat),
            Some(Duration::from_millis((100 + 20 + 30 + 5 + 6 + 7) * 10))
        );
        assert_eq!(parse_machine_busy("cpu  1 2 3\n"), None);
    }

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status = "Name:\tmosquitto\nVmPeak:\t  9000 kB\nVmRSS:\t    6144 kB\nThreads:\t1\n";
        assert_eq!(parse_vm_rss(status), Some(6144 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
    }

    #[test]
    fn nofile_limits() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             95000                95000                processes \n\
                      Max open files            1024                 20000                files     \n";
        assert_eq!(parse_nofile_limits(limits), Some((1024, 20000)));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_nofile_limits(unlimited), Some((u64::MAX, u64::MAX)));
        assert_eq!(parse_nofile_limits("Max open files  12\n"), None);
    }
}
