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

/// What a process asked of the kernel, summed over its live threads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCounts {
    /// Context switches: the thread waited (`voluntary_ctxt_switches`) or was preempted
    /// (`nonvoluntary_ctxt_switches`).
    pub voluntary_switches: u64,
    pub involuntary_switches: u64,
    /// Read and write system calls (`/proc/<pid>/io` `syscr`, `syscw`: every read-like and
    /// write-like call, sockets included).
    pub read_syscalls: u64,
    pub write_syscalls: u64,
}

/// `voluntary_ctxt_switches` and `nonvoluntary_ctxt_switches` of one `/proc/…/status`.
pub fn parse_switches(status: &str) -> (u64, u64) {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().parse().ok())
            .unwrap_or(0)
    };
    (
        field("voluntary_ctxt_switches:"),
        field("nonvoluntary_ctxt_switches:"),
    )
}

/// `syscr` and `syscw` of a `/proc/<pid>/io`.
pub fn parse_io_syscalls(io: &str) -> (u64, u64) {
    let field = |name: &str| {
        io.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().parse().ok())
            .unwrap_or(0)
    };
    (field("syscr:"), field("syscw:"))
}

/// The kernel counts of `pid` now (threads that ended since are not in the switch counts;
/// `/proc/<pid>/io` keeps theirs).
pub fn kernel_counts(pid: u32) -> Option<KernelCounts> {
    let io = fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    let (read_syscalls, write_syscalls) = parse_io_syscalls(&io);
    let mut counts = KernelCounts {
        read_syscalls,
        write_syscalls,
        ..KernelCounts::default()
    };
    for task in fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        if let Ok(status) = fs::read_to_string(task.path().join("status")) {
            let (voluntary, involuntary) = parse_switches(&status);
            counts.voluntary_switches += voluntary;
            counts.involuntary_switches += involuntary;
        }
    }
    Some(counts)
}

/// Datagrams and segments the whole machine moved (`/proc/net/snmp` and `snmp6`): on
/// loopback every packet is counted once out and once in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetCounts {
    pub udp_in: u64,
    pub udp_out: u64,
    pub tcp_in: u64,
    pub tcp_out: u64,
}

/// The value under `column` of the `proto:` table in `/proc/net/snmp` (a header line of names
/// followed by a line of values).
pub fn snmp_field(snmp: &str, proto: &str, column: &str) -> u64 {
    let mut lines = snmp
        .lines()
        .filter(|line| line.starts_with(&format!("{proto}:")));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == column)
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0)
}

/// A `name value` field of `/proc/net/snmp6`.
pub fn snmp6_field(snmp6: &str, name: &str) -> u64 {
    snmp6
        .lines()
        .find_map(|line| {
            let (key, value) = line.split_once(char::is_whitespace)?;
            (key == name).then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0)
}

pub fn net_counts() -> NetCounts {
    let snmp = fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let snmp6 = fs::read_to_string("/proc/net/snmp6").unwrap_or_default();
    NetCounts {
        udp_in: snmp_field(&snmp, "Udp", "InDatagrams") + snmp6_field(&snmp6, "Udp6InDatagrams"),
        udp_out: snmp_field(&snmp, "Udp", "OutDatagrams") + snmp6_field(&snmp6, "Udp6OutDatagrams"),
        // TCP counts both families in /proc/net/snmp.
        tcp_in: snmp_field(&snmp, "Tcp", "InSegs"),
        tcp_out: snmp_field(&snmp, "Tcp", "OutSegs"),
    }
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

    #[test]
    fn kernel_and_network_counters_parse() {
        let status = "Name:\tgw\nvoluntary_ctxt_switches:\t1200\nnonvoluntary_ctxt_switches:\t34\n";
        assert_eq!(parse_switches(status), (1200, 34));
        let io = "rchar: 10\nwchar: 20\nsyscr: 345\nsyscw: 678\nread_bytes: 0\n";
        assert_eq!(parse_io_syscalls(io), (345, 678));
        let snmp = "Udp: InDatagrams NoPorts InErrors OutDatagrams\nUdp: 1000 2 3 990\n\
                    Tcp: RtoAlgorithm InSegs OutSegs\nTcp: 1 55 66\n";
        assert_eq!(snmp_field(snmp, "Udp", "InDatagrams"), 1000);
        assert_eq!(snmp_field(snmp, "Udp", "OutDatagrams"), 990);
        assert_eq!(snmp_field(snmp, "Tcp", "OutSegs"), 66);
        assert_eq!(snmp_field(snmp, "Icmp", "InMsgs"), 0);
        let snmp6 = "Udp6InDatagrams                 \t7\nUdp6OutDatagrams                \t9\n";
        assert_eq!(snmp6_field(snmp6, "Udp6OutDatagrams"), 9);
        assert_eq!(snmp6_field(snmp6, "Udp6NoPorts"), 0);
    }
}
