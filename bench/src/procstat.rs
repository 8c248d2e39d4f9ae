//! CPU time and resident memory of processes, and the machine's CPU, from `/proc`.

use std::io;

/// Kernel clock ticks per second in `/proc/*/stat` (`USER_HZ`, 100 on Linux).
const USER_HZ: u64 = 100;

/// One reading of a process: CPU time used so far and resident memory now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcSample {
    /// `utime + stime`, all threads, in microseconds (10 ms resolution).
    pub cpu_us: u64,
    /// `VmRSS` in KiB.
    pub rss_kib: u64,
}

impl ProcSample {
    /// Reads `/proc/<pid>` (`None`: this process).
    ///
    /// # Errors
    /// When the process is gone or `/proc` is not readable.
    pub fn read(pid: Option<u32>) -> io::Result<Self> {
        let dir = pid.map_or_else(|| "/proc/self".to_owned(), |p| format!("/proc/{p}"));
        let stat = std::fs::read_to_string(format!("{dir}/stat"))?;
        let status = std::fs::read_to_string(format!("{dir}/status"))?;
        Ok(Self {
            cpu_us: parse_cpu_us(&stat).ok_or_else(|| bad(&dir, "stat"))?,
            rss_kib: parse_rss_kib(&status).ok_or_else(|| bad(&dir, "status"))?,
        })
    }

    /// Sum of readings of several processes; `None` for an empty list or when
    /// one of them cannot be read.
    pub fn read_all(pids: &[u32]) -> Option<Self> {
        if pids.is_empty() {
            return None;
        }
        let mut sum = Self::default();
        for &pid in pids {
            let s = Self::read(Some(pid)).ok()?;
            sum.cpu_us += s.cpu_us;
            sum.rss_kib += s.rss_kib;
        }
        Some(sum)
    }
}

fn bad(dir: &str, file: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("cannot parse {dir}/{file}"),
    )
}

/// `utime + stime` (fields 14 and 15) in µs. The command name (field 2) may
/// hold spaces and parentheses, so fields are counted after its last `)`.
fn parse_cpu_us(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11); // field 3 is the first after ')'
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) * (1_000_000 / USER_HZ))
}

fn parse_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Busy and total jiffies of the whole machine (first line of `/proc/stat`).
#[derive(Debug, Clone, Copy, Default)]
pub struct MachineSample {
    busy: u64,
    total: u64,
}

impl MachineSample {
    /// Reads `/proc/stat`; zeros when it cannot.
    pub fn read() -> Self {
        std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| parse_machine(&s))
            .unwrap_or_default()
    }

    /// Percentage of all cores busy between `self` and the later `end`.
    pub fn busy_pct_until(self, end: Self) -> f64 {
        let total = end.total.saturating_sub(self.total);
        if total == 0 {
            return 0.0;
        }
        100.0 * end.busy.saturating_sub(self.busy) as f64 / total as f64
    }
}

fn parse_machine(stat: &str) -> Option<MachineSample> {
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let values: Vec<u64> = line
        .split_whitespace()
        .take(8) // user nice system idle iowait irq softirq steal
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = values.iter().sum();
    let idle = values.get(3)? + values.get(4).copied().unwrap_or(0);
    Some(MachineSample {
        busy: total - idle,
        total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let stat = "1234 (we ird) (name)) S 1 2 3 4 5 6 7 8 9 10 250 75 0 0 20 0 3 0 100 1000 50";
        assert_eq!(parse_cpu_us(stat), Some(325 * 10_000));
    }

    #[test]
    fn parses_rss() {
        let status = "Name:\tx\nVmPeak:\t  999 kB\nVmRSS:\t    4321 kB\nThreads: 2\n";
        assert_eq!(parse_rss_kib(status), Some(4321));
    }

    #[test]
    fn reads_this_process_and_the_machine() {
        let me = ProcSample::read(None).unwrap();
        assert!(me.rss_kib > 0);
        let a = MachineSample::read();
        assert!(a.total > 0);
        assert!(a.busy_pct_until(a) == 0.0);
    }
}
