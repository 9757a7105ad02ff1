//! What the kernel says about a process: CPU time (`/proc/<pid>/stat`), resident memory
//! (`/proc/<pid>/status`), parent and name. The parsers are plain functions of the file text,
//! tested on captured lines; the readers are thin.

use std::fs;
use std::path::Path;

/// One process at one instant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    pub pid: u32,
    pub comm: String,
    pub ppid: u32,
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
}

/// Parses `/proc/<pid>/stat`. The command name is in parentheses and may itself contain
/// spaces and parentheses, so fields are counted from the *last* `)`.
pub fn parse_stat(text: &str) -> Option<Sample> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let pid = text[..open].trim().parse().ok()?;
    let comm = text.get(open + 1..close)?.to_owned();
    // After ")": field 3 (state) is index 0, so field n is index n - 3.
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    let ppid = rest.get(1)?.parse().ok()?;
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some(Sample {
        pid,
        comm,
        ppid,
        cpu_ticks: utime + stime,
    })
}

/// `VmRSS` from `/proc/<pid>/status`, in KiB.
pub fn parse_vm_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

pub fn sample(pid: u32) -> Option<Sample> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

pub fn rss_kib(pid: u32) -> Option<u64> {
    parse_vm_rss_kib(&fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// Every live process whose parent is `ppid`.
pub fn children(ppid: u32) -> Vec<Sample> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(sample)
        .filter(|s| s.ppid == ppid)
        .collect()
}

/// Live processes whose `comm` is `name` (15 characters at most, as the kernel keeps it).
pub fn by_name(name: &str) -> Vec<Sample> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let name = &name[..name.len().min(15)];
    dir.filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(sample)
        .filter(|s| s.comm == name)
        .collect()
}

/// The first line of a pid file, if it names a live process.
pub fn pid_from_file(path: &Path) -> Option<u32> {
    let text = fs::read_to_string(path).ok()?;
    let pid = text.lines().next()?.trim().parse().ok()?;
    sample(pid).map(|_| pid)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on every Linux this runs on). Asked of
/// `getconf` because `sysconf` would need `unsafe`.
pub fn clock_ticks_per_sec() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .filter(|&ticks| ticks > 0)
        .unwrap_or(100)
}

/// The 1-minute load average.
pub fn load_average() -> Option<f64> {
    fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn stat_lines_parse_from_the_last_parenthesis() {
        let line = "15141 (haberci-gateway) S 1 15140 15140 0 -1 4194560 60346 0 0 0 1234 567 0 0 20 0 6 0 2214 1234567 4096 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.pid, 15141);
        assert_eq!(s.comm, "haberci-gateway");
        assert_eq!(s.ppid, 1);
        assert_eq!(s.cpu_ticks, 1234 + 567);
        let odd = "7 (a) b (c)) R 3 0 0 0 -1 0 0 0 0 0 10 20 0 0 20 0 1 0 0 0 0";
        let s = parse_stat(odd).unwrap();
        assert_eq!(s.comm, "a) b (c)");
        assert_eq!((s.ppid, s.cpu_ticks), (3, 30));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 0"), None);
    }

    #[test]
    fn vm_rss_is_read_in_kib() {
        let status = "Name:\tredis-server\nVmPeak:\t  100 kB\nVmRSS:\t   23456 kB\nThreads:\t5\n";
        assert_eq!(parse_vm_rss_kib(status), Some(23456));
        assert_eq!(parse_vm_rss_kib("Name:\tkthreadd\n"), None);
    }

    #[test]
    fn this_process_is_visible() {
        let me = std::process::id();
        let s = sample(me).unwrap();
        assert_eq!(s.pid, me);
        assert!(rss_kib(me).unwrap() > 0);
    }
}
