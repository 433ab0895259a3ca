//! The daemon log's writer. A log line that cannot be written (a full
//! disk, an I/O error) is dropped and counted: logging must never fail,
//! panic or poison a lock, or the daemon would stop answering and stopping
//! when the disk fills, which is when it is needed most.

use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use tracing_subscriber::fmt::MakeWriter;

#[derive(Debug)]
pub struct LogFile {
    file: Mutex<File>,
    dropped: AtomicU64,
}

impl LogFile {
    pub fn new(file: File) -> Self {
        Self {
            file: Mutex::new(file),
            dropped: AtomicU64::new(0),
        }
    }

    /// Log lines lost to write errors so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// One event's write, under the file's lock.
#[derive(Debug)]
pub struct LogLine<'a> {
    file: MutexGuard<'a, File>,
    dropped: &'a AtomicU64,
    failed: bool,
}

impl<'a> MakeWriter<'a> for LogFile {
    type Writer = LogLine<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LogLine {
            // A panic elsewhere while holding it leaves a file, not a
            // broken invariant: the poison is ignored.
            file: self.file.lock().unwrap_or_else(|p| p.into_inner()),
            dropped: &self.dropped,
            failed: false,
        }
    }
}

impl Write for LogLine<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if !self.failed && self.file.write_all(buf).is_err() {
            self.failed = true;
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = self.file.flush();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/dev/full` answers every write with ENOSPC, as a full disk does.
    #[test]
    fn a_full_disk_drops_lines_and_never_fails_or_panics() {
        let full = std::fs::OpenOptions::new()
            .append(true)
            .open("/dev/full")
            .unwrap();
        let log = std::sync::Arc::new(LogFile::new(full));
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(LogFileRef(log.clone()))
            .log_internal_errors(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..3 {
                tracing::info!(i, "a line the disk has no room for");
            }
        });
        assert_eq!(log.dropped(), 3);
        // The lock is usable, not poisoned.
        let mut line = log.make_writer();
        assert_eq!(line.write(b"x").unwrap(), 1);
    }

    #[test]
    fn lines_reach_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("bangerd.log");
        let log = LogFile::new(File::create(&path).unwrap());
        log.make_writer().write_all(b"one line\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "one line\n");
        assert_eq!(log.dropped(), 0);
    }

    /// Lets a test keep the `LogFile` it gives the subscriber.
    struct LogFileRef(std::sync::Arc<LogFile>);

    impl<'a> MakeWriter<'a> for LogFileRef {
        type Writer = LogLine<'a>;
        fn make_writer(&'a self) -> Self::Writer {
            self.0.make_writer()
        }
    }
}
