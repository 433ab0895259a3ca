//! The guest agent: runs one command per vsock connection for
//! `banger vm exec`, streaming its stdin, stdout and stderr as frames
//! (`banger_proto::agent`), with a PTY when asked. A host that goes away
//! hangs the command up (SIGHUP to its process group), as SSH does.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use banger_proto::agent::{
    self, ExecRequest, ExitStatus, Frame, Kind, WindowSize, read_frame, write_frame,
};

/// The environment every command starts from; `--env` adds to it.
const BASE_ENV: [(&str, &str); 5] = [
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("HOME", "/root"),
    ("USER", "root"),
    ("LOGNAME", "root"),
    ("LANG", "C.UTF-8"),
];

type Shared<W> = Arc<Mutex<W>>;

fn send<W: Write>(out: &Shared<W>, kind: Kind, payload: &[u8]) -> io::Result<()> {
    write_frame(
        &mut *out.lock().unwrap_or_else(|p| p.into_inner()),
        kind,
        payload,
    )
}

/// A connection the agent serves: vsock's (a `TcpStream` over the
/// socket) in the guest, a `UnixStream` in tests.
pub trait Duplex: Read + Write + Send + Sized + 'static {
    fn duplicate(&self) -> io::Result<Self>;
    /// Ends the writing half; the peer reads end of file.
    fn close_write(&self) -> io::Result<()>;
    /// Ends both halves, waking a reader blocked on a duplicate.
    fn close_both(&self) -> io::Result<()>;
}

impl Duplex for std::net::TcpStream {
    fn duplicate(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn close_write(&self) -> io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
    fn close_both(&self) -> io::Result<()> {
        self.shutdown(std::net::Shutdown::Both)
    }
}

impl Duplex for std::os::unix::net::UnixStream {
    fn duplicate(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn close_write(&self) -> io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
    fn close_both(&self) -> io::Result<()> {
        self.shutdown(std::net::Shutdown::Both)
    }
}

/// Serves one connection: a command (Exec) or a port (Connect). Returns
/// when the command has ended and its status is sent, or when both
/// directions of the forwarded connection have ended.
pub fn serve<S: Duplex>(stream: S) -> io::Result<()> {
    let mut input = stream.duplicate()?;
    match read_frame(&mut input) {
        Ok(Some(Frame {
            kind: Kind::Connect,
            payload,
        })) => forward(&payload, input, stream),
        Ok(None) => Ok(()),
        first => exec(first, input, stream),
    }
}

/// Connects to the guest's 127.0.0.1:port (which 0.0.0.0 listeners also
/// answer), then carries bytes both ways until each side ends.
fn forward<S: Duplex>(payload: &[u8], mut input: S, mut output: S) -> io::Result<()> {
    let port = match serde_json::from_slice::<agent::ConnectRequest>(payload) {
        Ok(request) => request.port,
        Err(e) => {
            return write_frame(
                &mut output,
                Kind::Error,
                format!("a bad connect request: {e}").as_bytes(),
            );
        }
    };
    let tcp = match std::net::TcpStream::connect(("127.0.0.1", port)) {
        Ok(tcp) => tcp,
        Err(e) => {
            let message =
                format!("nothing in the guest accepts connections on 127.0.0.1:{port} ({e})");
            return write_frame(&mut output, Kind::Error, message.as_bytes());
        }
    };
    write_frame(&mut output, Kind::Connected, b"")?;
    let mut to_guest = tcp.try_clone()?;
    let (done, upstream_ended) = std::sync::mpsc::channel();
    let upstream = std::thread::spawn(move || {
        let _ = io::copy(&mut input, &mut to_guest);
        let _ = to_guest.shutdown(std::net::Shutdown::Write);
        let _ = done.send(());
    });
    let mut from_guest = tcp;
    let _ = io::copy(&mut from_guest, &mut output);
    let _ = output.close_write();
    // The guest's service has finished. Half a vsock connection does not
    // always close on the host's side (vhost-user muxers pass on only a
    // full shutdown), so a client still sending would wait for ever: after
    // a grace period, as socat does, both halves close.
    if upstream_ended.recv_timeout(HALF_CLOSE_GRACE).is_err() {
        let _ = output.close_both();
        let _ = from_guest.shutdown(std::net::Shutdown::Both);
    }
    let _ = upstream.join();
    Ok(())
}

/// How long a forwarded connection the guest's service has closed waits
/// for the host's side to finish too.
const HALF_CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

fn exec<R, W>(
    first: Result<Option<Frame>, agent::FrameError>,
    input: R,
    output: W,
) -> io::Result<()>
where
    R: Read + Send + 'static,
    W: Write + Send + 'static,
{
    let output = Arc::new(Mutex::new(output));
    let request = match first {
        Ok(Some(Frame {
            kind: Kind::Exec,
            payload,
        })) => serde_json::from_slice::<ExecRequest>(&payload)
            .map_err(|e| format!("a bad exec request: {e}")),
        Ok(Some(frame)) => Err(format!("expected an exec request, got {:?}", frame.kind)),
        Ok(None) => return Ok(()),
        Err(e) => Err(e.to_string()),
    };
    let request = match request {
        Ok(request) if !request.argv.is_empty() => request,
        Ok(_) => return send(&output, Kind::Error, b"no command given"),
        Err(message) => return send(&output, Kind::Error, message.as_bytes()),
    };
    let session = match Session::spawn(&request) {
        Ok(session) => session,
        Err(e) => {
            // As a shell would: 127 for a missing command, 126 otherwise.
            let code = if e.kind() == io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            let message = format!("banger: cannot run {}: {e}\n", request.argv[0]);
            send(&output, Kind::Stderr, message.as_bytes())?;
            return send_exit(
                &output,
                ExitStatus {
                    code: Some(code),
                    signal: None,
                },
            );
        }
    };
    session.run(input, output)
}

fn send_exit<W: Write>(output: &Shared<W>, status: ExitStatus) -> io::Result<()> {
    let json = serde_json::to_vec(&status).map_err(io::Error::other)?;
    send(output, Kind::Exit, &json)
}

/// A running command and the descriptors its output comes from.
struct Session {
    child: Child,
    /// Where stdin goes: the pipe, or the PTY's master.
    stdin: Option<Box<dyn Write + Send>>,
    stdout: Box<dyn Read + Send>,
    stderr: Option<Box<dyn Read + Send>>,
    /// The PTY's master, for window sizes.
    pty: Option<Arc<OwnedFd>>,
}

impl Session {
    fn spawn(request: &ExecRequest) -> io::Result<Self> {
        let mut command = Command::new(&request.argv[0]);
        command
            .args(&request.argv[1..])
            .env_clear()
            .envs(BASE_ENV)
            .envs(request.env.iter().map(|(k, v)| (k, v)))
            .current_dir(request.workdir.as_deref().unwrap_or("/root"));
        match request.tty {
            None => {
                command
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    // Its own group, so a signal reaches its children too.
                    .process_group(0);
                let mut child = command.spawn()?;
                let stdin = child
                    .stdin
                    .take()
                    .map(|s| Box::new(s) as Box<dyn Write + Send>);
                let stdout = Box::new(child.stdout.take().expect("piped"));
                let stderr = child
                    .stderr
                    .take()
                    .map(|s| Box::new(s) as Box<dyn Read + Send>);
                Ok(Self {
                    child,
                    stdin,
                    stdout,
                    stderr,
                    pty: None,
                })
            }
            Some(size) => {
                let (master, slave) = open_pty(size)?;
                if !request.env.iter().any(|(k, _)| k == "TERM") {
                    command.env("TERM", "xterm-256color");
                }
                command
                    .stdin(Stdio::from(slave.try_clone()?))
                    .stdout(Stdio::from(slave.try_clone()?))
                    .stderr(Stdio::from(slave));
                // SAFETY: setsid and ioctl are async-signal-safe; they make
                // the child a session leader whose terminal is the PTY.
                unsafe {
                    command.pre_exec(|| {
                        if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                            return Err(io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
                let child = command.spawn()?;
                let master = Arc::new(master);
                Ok(Self {
                    child,
                    stdin: Some(Box::new(std::fs::File::from(master.try_clone()?))),
                    stdout: Box::new(PtyReader(std::fs::File::from(master.try_clone()?))),
                    stderr: None,
                    pty: Some(master),
                })
            }
        }
    }

    fn run<R, W>(mut self, input: R, output: Shared<W>) -> io::Result<()>
    where
        R: Read + Send + 'static,
        W: Write + Send + 'static,
    {
        let pgid = i32::try_from(self.child.id()).unwrap_or(0);
        let pumps: Vec<_> = [
            Some((self.stdout, Kind::Stdout)),
            self.stderr.map(|e| (e, Kind::Stderr)),
        ]
        .into_iter()
        .flatten()
        .map(|(reader, kind)| {
            let output = Arc::clone(&output);
            std::thread::spawn(move || pump(reader, kind, &output))
        })
        .collect();
        let stdin = self.stdin;
        let pty = self.pty;
        // Once the command is reaped its group ID may be reused: the feed
        // must not signal it any more.
        let ended = Arc::new(AtomicBool::new(false));
        let ended_for_feed = Arc::clone(&ended);
        std::thread::spawn(move || feed(input, stdin, pty.as_deref(), pgid, &ended_for_feed));
        let status = self.child.wait();
        ended.store(true, Ordering::SeqCst);
        let status = status?;
        for pump in pumps {
            let _ = pump.join();
        }
        send_exit(
            &output,
            ExitStatus {
                code: status.code(),
                signal: status.signal(),
            },
        )
    }
}

/// Copies one output stream into frames until it ends.
fn pump<W: Write>(mut reader: Box<dyn Read + Send>, kind: Kind, output: &Shared<W>) {
    let mut buf = vec![0u8; agent::CHUNK];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if send(output, kind, &buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Applies the host's frames: stdin, window sizes, signals. When the host
/// goes away, the command's group gets SIGHUP.
fn feed<R: Read>(
    mut input: R,
    mut stdin: Option<Box<dyn Write + Send>>,
    pty: Option<&OwnedFd>,
    pgid: i32,
    ended: &AtomicBool,
) {
    let signal = |signal: i32| {
        if pgid > 0 && !ended.load(Ordering::SeqCst) {
            // SAFETY: signalling the process group this session started,
            // which has not been reaped yet.
            unsafe { libc::kill(-pgid, signal) };
        }
    };
    loop {
        let frame = match read_frame(&mut input) {
            Ok(Some(frame)) => frame,
            Ok(None) | Err(_) => {
                signal(libc::SIGHUP);
                return;
            }
        };
        match frame.kind {
            Kind::Stdin => {
                // A command that stopped reading (or exited) drops the rest.
                if let Some(writer) = stdin.as_mut()
                    && writer.write_all(&frame.payload).is_err()
                {
                    stdin = None;
                }
            }
            Kind::StdinEof => {
                if pty.is_some() {
                    // End of input on a terminal is Ctrl-D.
                    if let Some(writer) = stdin.as_mut() {
                        let _ = writer.write_all(&[4]);
                    }
                } else {
                    stdin = None;
                }
            }
            Kind::Resize => {
                if let (Some(master), Some(size)) = (pty, WindowSize::from_payload(&frame.payload))
                {
                    let _ = set_window_size(master, size);
                }
            }
            Kind::Signal => {
                if let Some(number) = agent::signal_from_payload(&frame.payload) {
                    signal(number);
                }
            }
            _ => {}
        }
    }
}

/// A PTY master reads EIO once every holder of the slave has closed it:
/// that is its end of file.
struct PtyReader(std::fs::File);

impl Read for PtyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.0.read(buf) {
            Err(e) if e.raw_os_error() == Some(libc::EIO) => Ok(0),
            other => other,
        }
    }
}

fn open_pty(size: WindowSize) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut master = -1;
    let mut slave = -1;
    let winsize = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two descriptors into the given ints; the name
    // and termios pointers may be null; winsize is a valid struct.
    let rc = unsafe {
        libc::openpty(
            &raw mut master,
            &raw mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &raw const winsize,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are new and ours.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    for fd in [&master, &slave] {
        // SAFETY: setting close-on-exec on descriptors we own.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok((master, slave))
}

fn set_window_size(master: &OwnedFd, size: WindowSize) -> io::Result<()> {
    let winsize = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ on a PTY master we own, with a valid winsize.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &raw const winsize) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    /// Runs a session over a socket pair; returns the host's end.
    fn session(request: &ExecRequest) -> UnixStream {
        let (host, guest) = UnixStream::pair().unwrap();
        std::thread::spawn(move || serve(guest));
        let mut writer = &host;
        write_frame(
            &mut writer,
            Kind::Exec,
            &serde_json::to_vec(request).unwrap(),
        )
        .unwrap();
        host
    }

    fn exec(argv: &[&str]) -> ExecRequest {
        ExecRequest {
            argv: argv.iter().map(|s| (*s).to_owned()).collect(),
            workdir: Some("/".into()),
            ..ExecRequest::default()
        }
    }

    /// Everything the guest sent until Exit: stdout, stderr, status.
    fn collect(host: &UnixStream) -> (Vec<u8>, Vec<u8>, ExitStatus) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut reader = host;
        loop {
            let frame = read_frame(&mut reader).unwrap().expect("an exit frame");
            match frame.kind {
                Kind::Stdout => out.extend(frame.payload),
                Kind::Stderr => err.extend(frame.payload),
                Kind::Exit => {
                    return (out, err, serde_json::from_slice(&frame.payload).unwrap());
                }
                Kind::Error => panic!("{}", String::from_utf8_lossy(&frame.payload)),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn streams_and_exit_codes_come_back_apart() {
        let host = session(&exec(&["sh", "-c", "echo out; echo err >&2; exit 3"]));
        let (out, err, status) = collect(&host);
        assert_eq!(
            (out.as_slice(), err.as_slice()),
            (&b"out\n"[..], &b"err\n"[..])
        );
        assert_eq!(status.code, Some(3));
    }

    #[test]
    fn stdin_reaches_the_command_and_eof_ends_it() {
        let host = session(&exec(&["sha256sum"]));
        let data = vec![7u8; 3 * agent::CHUNK + 5];
        let mut writer = &host;
        for chunk in data.chunks(agent::CHUNK) {
            write_frame(&mut writer, Kind::Stdin, chunk).unwrap();
        }
        write_frame(&mut writer, Kind::StdinEof, b"").unwrap();
        let (out, _, status) = collect(&host);
        let expected = Command::new("sh")
            .args([
                "-c",
                "head -c 196613 /dev/zero | tr '\\0' '\\7' | sha256sum",
            ])
            .output()
            .unwrap()
            .stdout;
        assert_eq!(out, expected);
        assert_eq!(status.code, Some(0));
    }

    #[test]
    fn a_command_that_ignores_stdin_still_ends() {
        let host = session(&exec(&["true"]));
        let mut writer = &host;
        // More than a pipe holds, sent while the command has already exited.
        for _ in 0..40 {
            if write_frame(&mut writer, Kind::Stdin, &[1u8; agent::CHUNK]).is_err() {
                break;
            }
        }
        assert_eq!(collect(&host).2.code, Some(0));
    }

    #[test]
    fn a_signal_reaches_the_command() {
        let host = session(&exec(&["sleep", "100"]));
        std::thread::sleep(std::time::Duration::from_millis(100));
        let mut writer = &host;
        write_frame(
            &mut writer,
            Kind::Signal,
            &agent::signal_payload(libc::SIGINT),
        )
        .unwrap();
        let status = collect(&host).2;
        assert_eq!(status.signal, Some(libc::SIGINT));
        assert_eq!(status.shell_code(), 130);
    }

    #[test]
    fn a_tty_session_has_a_terminal_of_the_given_size() {
        let mut request = exec(&["sh", "-c", "tty; stty size"]);
        request.tty = Some(WindowSize {
            rows: 33,
            cols: 101,
        });
        let host = session(&request);
        let (out, err, status) = collect(&host);
        let out = String::from_utf8_lossy(&out);
        assert!(out.contains("/dev/pts/"), "{out}");
        assert!(out.contains("33 101"), "{out}");
        assert!(err.is_empty(), "a terminal merges stderr into its output");
        assert_eq!(status.code, Some(0));
    }

    #[test]
    fn a_missing_command_is_127_with_the_reason() {
        let host = session(&exec(&["/no/such/command"]));
        let (_, err, status) = collect(&host);
        assert!(String::from_utf8_lossy(&err).contains("cannot run /no/such/command"));
        assert_eq!(status.code, Some(127));
    }

    #[test]
    fn a_bad_first_frame_gets_an_error() {
        let (host, guest) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || serve(guest));
        let mut writer = &host;
        write_frame(&mut writer, Kind::Stdin, b"hello").unwrap();
        let mut reader = &host;
        let frame = read_frame(&mut reader).unwrap().unwrap();
        assert_eq!(frame.kind, Kind::Error);
        server.join().unwrap().unwrap();
        // A truncated frame, then a hang-up: no panic, no reply.
        let (host, guest) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || serve(guest));
        (&host).write_all(&[Kind::Exec as u8, 0, 0, 1]).unwrap();
        host.shutdown(std::net::Shutdown::Write).unwrap();
        server.join().unwrap().unwrap();
    }

    #[test]
    fn connect_carries_a_tcp_conversation_both_ways() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            conn.read_to_end(&mut request).unwrap();
            conn.write_all(&request.repeat(2)).unwrap();
        });
        let (host, guest) = UnixStream::pair().unwrap();
        std::thread::spawn(move || serve(guest));
        let connect = serde_json::to_vec(&agent::ConnectRequest { port }).unwrap();
        write_frame(&mut &host, Kind::Connect, &connect).unwrap();
        assert_eq!(
            read_frame(&mut &host).unwrap().unwrap().kind,
            Kind::Connected
        );
        (&host).write_all(b"ping").unwrap();
        host.shutdown(std::net::Shutdown::Write).unwrap();
        let mut answer = Vec::new();
        (&host).read_to_end(&mut answer).unwrap();
        assert_eq!(answer, b"pingping");
        server.join().unwrap();

        // A port nobody listens on is an error the host can show.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let (host, guest) = UnixStream::pair().unwrap();
        std::thread::spawn(move || serve(guest));
        let connect = serde_json::to_vec(&agent::ConnectRequest { port }).unwrap();
        write_frame(&mut &host, Kind::Connect, &connect).unwrap();
        let frame = read_frame(&mut &host).unwrap().unwrap();
        assert_eq!(frame.kind, Kind::Error);
        assert!(String::from_utf8_lossy(&frame.payload).contains(&format!("127.0.0.1:{port}")));
    }

    #[test]
    fn a_service_that_closes_first_ends_the_connection_though_the_host_keeps_sending() {
        // An HTTP/1.0 server: answers, closes, and never reads to the end.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            conn.write_all(b"HTTP/1.0 200 OK\r\n\r\nhello").unwrap();
        });
        let (host, guest) = UnixStream::pair().unwrap();
        let (done, served) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = serve(guest);
            let _ = done.send(());
        });
        let connect = serde_json::to_vec(&agent::ConnectRequest { port }).unwrap();
        write_frame(&mut &host, Kind::Connect, &connect).unwrap();
        assert_eq!(
            read_frame(&mut &host).unwrap().unwrap().kind,
            Kind::Connected
        );
        (&host).write_all(b"GET / HTTP/1.0\r\n").unwrap();
        // The host never ends its half; the agent lets go after its grace.
        served
            .recv_timeout(HALF_CLOSE_GRACE * 3)
            .expect("the agent ended the connection");
        let mut answer = Vec::new();
        (&host).read_to_end(&mut answer).unwrap();
        assert!(answer.ends_with(b"hello"), "{answer:?}");
    }

    #[test]
    fn many_sessions_at_once() {
        let hosts: Vec<_> = (0..24)
            .map(|i| (i, session(&exec(&["sh", "-c", &format!("echo {i}")]))))
            .collect();
        for (i, host) in hosts {
            let (out, _, status) = collect(&host);
            assert_eq!(String::from_utf8_lossy(&out), format!("{i}\n"));
            assert_eq!(status.code, Some(0));
        }
    }

    #[test]
    fn a_host_that_hangs_up_ends_the_command() {
        let host = session(&exec(&["sleep", "100"]));
        std::thread::sleep(std::time::Duration::from_millis(100));
        let pids_before = sleepers();
        drop(host);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while sleepers().iter().any(|p| pids_before.contains(p)) {
            assert!(
                std::time::Instant::now() < deadline,
                "the command outlived its host"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// PIDs of `sleep 100` processes whose parent is this test process.
    fn sleepers() -> Vec<u32> {
        let me = std::process::id().to_string();
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                stat.rsplit(") ").next().and_then(|r| r.split(' ').nth(1)) == Some(me.as_str())
                    && cmd == b"sleep\x00100\x00"
            })
            .collect()
    }
}
