//! What `/proc` says about a process: whether it still runs, when it
//! started (so a recycled PID is never mistaken for ours), CPU and memory.

use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// `R`, `S`, `Z`, ... from field 3.
    pub state: char,
    /// Clock ticks since boot at which the process started (field 22).
    pub start_time: u64,
    /// User and system CPU time in clock ticks (fields 14 and 15).
    pub utime: u64,
    pub stime: u64,
}

pub fn stat(pid: u32) -> Option<ProcStat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Parses `/proc/<pid>/stat`; the command name may contain spaces and
/// parentheses, so fields are counted after the last `)`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state).
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        utime: fields.get(11)?.parse().ok()?,
        stime: fields.get(12)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// True while `pid` runs (not a zombie) and, if given, started at `start_time`.
pub fn is_running(pid: u32, start_time: Option<u64>) -> bool {
    match stat(pid) {
        Some(s) => s.state != 'Z' && start_time.is_none_or(|t| t == s.start_time),
        None => false,
    }
}

pub fn rss_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|t| *t > 0).unwrap_or(100)
}

/// Allocated and apparent bytes of a file.
pub fn disk_usage(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.blocks() * 512, meta.len()))
}

/// The last `lines` non-empty lines of a log file (empty if unreadable),
/// for error messages that show why a process died.
pub fn log_tail(path: &Path, lines: usize) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|l| (*l).to_owned())
        .collect()
}

/// `:\n    line\n    line` after a message, or nothing without lines.
pub fn tail_suffix(lines: &[String]) -> String {
    if lines.is_empty() {
        String::new()
    } else {
        format!(":\n    {}", lines.join("\n    "))
    }
}

/// The process listening on TCP `port` (any address), as (PID, command
/// name), when `/proc` shows it: for "port in use" errors.
pub fn tcp_port_holder(port: u16) -> Option<(u32, String)> {
    let inode = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .find_map(|text| listening_inode(&text, port))?;
    let wanted = format!("socket:[{inode}]");
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let holds = std::fs::read_dir(entry.path().join("fd"))
                .ok()?
                .flatten()
                .any(|fd| {
                    std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == wanted.as_str())
                });
            holds.then(|| {
                let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
                (pid, comm.trim().to_owned())
            })
        })
}

/// The inode of the socket listening on `port` in a `/proc/net/tcp` table.
pub fn listening_inode(table: &str, port: u16) -> Option<u64> {
    const LISTEN: &str = "0A";
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let local_port = fields.get(1)?.rsplit(':').next()?;
        (u16::from_str_radix(local_port, 16).ok()? == port && *fields.get(3)? == LISTEN)
            .then(|| fields.get(9)?.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holder_of_a_listening_port_is_found() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 424242 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F91 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 555 1 0000000000000000 100 0 0 10 0";
        assert_eq!(listening_inode(table, 8080), Some(424242));
        assert_eq!(
            listening_inode(table, 8081),
            None,
            "established, not listening"
        );
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (pid, _) = tcp_port_holder(port).expect("this test holds it");
        assert_eq!(pid, std::process::id());
    }

    #[test]
    fn log_tails_skip_blank_lines() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("log");
        std::fs::write(&log, "one\n\ntwo\nthree\n").unwrap();
        assert_eq!(log_tail(&log, 2), ["two", "three"]);
        assert_eq!(tail_suffix(&log_tail(&log, 1)), ":\n    three");
        assert!(log_tail(&tmp.path().join("missing"), 3).is_empty());
    }

    #[test]
    fn parses_names_with_spaces_and_parens() {
        let text = "1234 (fire cracker) (x)) S 1 1234 1234 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 987654 1000 50";
        let stat = parse_stat(text).unwrap();
        assert_eq!(
            stat,
            ProcStat {
                state: 'S',
                start_time: 987654,
                utime: 7,
                stime: 3
            }
        );
    }

    #[test]
    fn this_process_is_running_and_a_wrong_start_time_is_not_us() {
        let me = std::process::id();
        let mine = stat(me).unwrap();
        assert!(is_running(me, Some(mine.start_time)));
        assert!(!is_running(me, Some(mine.start_time + 1)));
        assert!(rss_bytes(me).unwrap() > 0);
        assert!(!is_running(u32::MAX - 1, None));
    }
}
