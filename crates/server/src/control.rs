//! The control socket: how `portcullis queue ...` reaches the running server.
//!
//! Role: both ends of a tiny local protocol on `<spool_dir>/control.sock`, a Unix stream
//! socket of mode 0600. The client ([`request`]) sends one request line, the wire form of an
//! [`Op`] (`flush 6ALBkA0000234567\n`); the server ([`serve`]) answers with a status line,
//! `ok` or `error`, then the text to print, and closes. The server side runs each request
//! through a [`QueueControl`] handler: the server's own (which must also tell its queue
//! runner), or [`OfflineControl`] (plain [`queue_ops::execute`] on a blocking thread).
//!
//! Must not: trust the peer. A request is at most [`MAX_REQUEST`] bytes and must arrive
//! within the request timeout; the reply must be taken within the reply timeout; at most
//! [`MAX_CONNECTIONS`] are served at once (the others wait in the listen backlog). Bad input
//! gets an `error` answer, never a panic. Must not remove anything at the socket's path but
//! a stale socket (a regular file there is left alone, and binding fails).
//!
//! Invariants: the socket is created 0600 and its directory is the spool directory (0700),
//! so only the spool's owner (and root) can connect. On Linux the mode is set on the socket
//! before `bind`, which creates the file with it (`unix_bind` takes the socket inode's mode,
//! minus the umask), so there is no window at all; `chmod` after `bind` makes sure of it on
//! other kernels, where the 0700 directory covers the instant in between. A client tells "no
//! server" (the path is missing, or nothing listens: ECONNREFUSED, a stale socket) from every
//! other failure, because only then may the command work on the spool itself.

use std::fmt;
use std::future::Future;
use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener as StdUnixListener, UnixStream as StdUnixStream};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use portcullis_spool::Spool;
use socket2::{Domain, SockAddr, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::clock;
use crate::queue_ops::{self, Op, Response};

/// The socket's name in the spool directory.
pub const SOCKET_NAME: &str = "control.sock";
/// The longest request line, its line end included.
pub const MAX_REQUEST: usize = 1024;
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 8;
/// The longest answer a client reads (a listing of a very large queue fits).
pub const MAX_REPLY: usize = 256 * 1024 * 1024;
/// How long a client may take to send its request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client may take to read the answer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long requests in progress may finish after shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long `bind` waits for a server already on the path to take its probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Pending connections the kernel keeps while all slots are busy.
const BACKLOG: i32 = 32;

/// `<spool_dir>/control.sock`.
pub fn socket_path(spool_dir: &Path) -> PathBuf {
    spool_dir.join(SOCKET_NAME)
}

/// Binds the control socket at `path` (mode 0600), non-blocking, ready for
/// `tokio::net::UnixListener::from_std` and [`serve`]. A socket already there is probed: if
/// a server answers, this fails (`AddrInUse`, "another server is running on this spool"); if
/// nothing listens (a crash left it), it is removed and replaced. Anything else at the path
/// is left alone and binding fails. The caller removes the socket when it stops (a stale one
/// is harmless: clients and the next `bind` see ECONNREFUSED). Blocking (the probe waits up
/// to a second for a busy server): call it before the runtime or on a blocking thread.
pub fn bind(path: &Path) -> io::Result<StdUnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{} exists and is not a socket; not removing it",
                        path.display()
                    ),
                ));
            }
            match connect(path, PROBE_TIMEOUT) {
                Err(e) if is_not_running(&e) => remove_stale(path)?,
                // It answered, or it is too busy to (backlog full): it is alive.
                Ok(_) => return Err(in_use(path)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(in_use(path)),
                Err(e) => {
                    let why = format!("cannot probe {}: {e}", path.display());
                    return Err(io::Error::new(e.kind(), why));
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    let owner_only = nix::sys::stat::Mode::from_bits_truncate(0o600);
    // Linux creates the socket file with this mode; elsewhere it may be ignored (see below).
    let _ = nix::sys::stat::fchmod(&socket, owner_only);
    match socket.bind(&SockAddr::unix(path)?) {
        Ok(()) => {}
        // Another server bound it between our probe and our bind.
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => return Err(in_use(path)),
        Err(e) => return Err(e),
    }
    use std::os::unix::fs::PermissionsExt;
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

fn in_use(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::AddrInUse,
        format!(
            "another server is running on this spool ({} answers)",
            path.display()
        ),
    )
}

fn remove_stale(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// A blocking connect that gives up after `timeout` (a full backlog makes a Unix-socket
/// connect wait; Linux bounds that wait with the send timeout).
fn connect(path: &Path, timeout: Duration) -> io::Result<StdUnixStream> {
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    socket.set_write_timeout(Some(timeout.max(Duration::from_millis(1))))?;
    socket.connect(&SockAddr::unix(path)?)?;
    Ok(socket.into())
}

/// ENOENT: no socket; ECONNREFUSED: nothing listens on it (stale, or not a socket).
fn is_not_running(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
    )
}

/// What runs a request on the server's side of the socket.
pub trait QueueControl: Send + Sync + 'static {
    /// Runs `op` and answers. Must not block the runtime: spool work belongs on a blocking
    /// thread.
    fn execute(&self, op: Op) -> Pin<Box<dyn Future<Output = Response> + Send>>;
}

/// A [`QueueControl`] that works on the spool alone ([`queue_ops::execute`] on a blocking
/// thread). The server's own handler must do more: a flushed or released message must be
/// rescheduled by its queue runner ([`Response::due_now`]).
pub struct OfflineControl {
    spool: Arc<Spool>,
}

impl OfflineControl {
    /// A handler for `spool`.
    pub fn new(spool: Arc<Spool>) -> Self {
        Self { spool }
    }
}

impl QueueControl for OfflineControl {
    fn execute(&self, op: Op) -> Pin<Box<dyn Future<Output = Response> + Send>> {
        let spool = self.spool.clone();
        Box::pin(async move {
            let run = move || queue_ops::execute(&spool, &op, clock::unix_secs());
            tokio::task::spawn_blocking(run)
                .await
                .unwrap_or_else(|e| Response::error(format!("the queue operation failed: {e}\n")))
        })
    }
}

/// The server side's time limits.
#[derive(Clone, Copy, Debug)]
struct Limits {
    request: Duration,
    reply: Duration,
    grace: Duration,
}

const LIMITS: Limits = Limits {
    request: REQUEST_TIMEOUT,
    reply: REPLY_TIMEOUT,
    grace: SHUTDOWN_GRACE,
};

/// Accepts control connections until `shutdown`, at most [`MAX_CONNECTIONS`] at once, each
/// answered by `handler`. After `shutdown`, requests in progress get a few seconds to finish;
/// then they are dropped. Does not remove the socket file.
pub async fn serve(
    listener: UnixListener,
    handler: Arc<dyn QueueControl>,
    shutdown: CancellationToken,
) {
    serve_with(listener, handler, shutdown, LIMITS).await;
}

async fn serve_with(
    listener: UnixListener,
    handler: Arc<dyn QueueControl>,
    shutdown: CancellationToken,
    limits: Limits,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut tasks = JoinSet::new();
    loop {
        let slot = tokio::select! {
            () = shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => slot,
        };
        let Ok(slot) = slot else { break };
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                let handler = handler.clone();
                tasks.spawn(async move {
                    answer(stream, handler.as_ref(), limits).await;
                    drop(slot);
                });
            }
            // EMFILE and friends: back off instead of spinning.
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
        while tasks.try_join_next().is_some() {}
    }
    let drain = async { while tasks.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(limits.grace, drain).await;
}

/// One connection: read the request line, run it, write the answer, close.
async fn answer(mut stream: UnixStream, handler: &dyn QueueControl, limits: Limits) {
    let response = match tokio::time::timeout(limits.request, read_request(&mut stream)).await {
        // The peer connected and left without a word (`bind`'s probe does that).
        Ok(Ok(None)) => return,
        Ok(Ok(Some(line))) => match line.parse::<Op>() {
            Ok(op) => handler.execute(op).await,
            Err(e) => Response::error(format!("{e}\n")),
        },
        Ok(Err(why)) => Response::error(format!("{why}\n")),
        Err(_) => Response::error(format!("no request line within {:?}\n", limits.request)),
    };
    let status: &[u8] = if response.ok { b"ok\n" } else { b"error\n" };
    let write = async {
        stream.write_all(status).await?;
        stream.write_all(response.text.as_bytes()).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(limits.reply, write).await;
}

/// Reads up to the first line end. `Ok(None)`: closed before sending anything.
async fn read_request(stream: &mut UnixStream) -> io::Result<Option<String>> {
    let mut buf = Vec::with_capacity(128);
    let mut chunk = [0u8; 256];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            return Err(invalid("incomplete request (no line end)"));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.iter().position(|&b| b == b'\n') {
            if end >= MAX_REQUEST {
                break;
            }
            buf.truncate(end);
            let line = String::from_utf8(buf).map_err(|_| invalid("request is not UTF-8"))?;
            return Ok(Some(line));
        }
        if buf.len() >= MAX_REQUEST {
            break;
        }
    }
    Err(invalid(&format!(
        "request longer than {MAX_REQUEST} bytes refused"
    )))
}

fn invalid(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_owned())
}

/// Why [`request`] got no answer.
#[derive(Debug)]
pub enum ClientError {
    /// No server: the socket is missing, or nothing listens on it (stale). The command may
    /// work on the spool directly.
    NotRunning,
    /// A server is there but did not answer in time. Not a reason to touch the spool.
    TimedOut {
        /// The socket.
        path: PathBuf,
        /// The limit that passed.
        timeout: Duration,
    },
    /// Any other failure (permission denied, connection reset...).
    Io {
        /// The socket.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// The answer does not follow the protocol.
    Protocol {
        /// The socket.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotRunning => f.write_str("no server is running (no control socket)"),
            Self::TimedOut { path, timeout } => write!(
                f,
                "the server at {} did not answer within {} s",
                path.display(),
                timeout.as_secs_f32()
            ),
            Self::Io { path, source } => {
                write!(
                    f,
                    "cannot talk to the server at {}: {source}",
                    path.display()
                )
            }
            Self::Protocol { path, reason } => {
                write!(
                    f,
                    "bad answer from the server at {}: {reason}",
                    path.display()
                )
            }
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Sends `op` to the server listening at `path` and returns its answer; blocking, bounded
/// by `timeout` as a whole. [`ClientError::NotRunning`] only when no server is there.
pub fn request(path: &Path, op: &Op, timeout: Duration) -> Result<Response, ClientError> {
    let deadline = clock::now() + timeout;
    let failed = |source: io::Error| {
        if matches!(
            source.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            ClientError::TimedOut {
                path: path.to_owned(),
                timeout,
            }
        } else {
            ClientError::Io {
                path: path.to_owned(),
                source,
            }
        }
    };
    let mut stream = match connect(path, timeout) {
        Ok(stream) => stream,
        Err(e) if is_not_running(&e) => return Err(ClientError::NotRunning),
        Err(e) => return Err(failed(e)),
    };
    stream
        .write_all(format!("{op}\n").as_bytes())
        .map_err(failed)?;
    let mut reply = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(clock::now());
        if left.is_zero() {
            return Err(failed(io::ErrorKind::TimedOut.into()));
        }
        stream.set_read_timeout(Some(left)).map_err(failed)?;
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) if reply.len() + n > MAX_REPLY => {
                return Err(protocol(path, "answer too long"));
            }
            Ok(n) => reply.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(failed(e)),
        }
    }
    parse_reply(&reply).ok_or_else(|| protocol(path, "no ok/error status line"))
}

fn protocol(path: &Path, reason: &str) -> ClientError {
    ClientError::Protocol {
        path: path.to_owned(),
        reason: reason.to_owned(),
    }
}

fn parse_reply(reply: &[u8]) -> Option<Response> {
    let end = reply.iter().position(|&b| b == b'\n')?;
    let text = String::from_utf8_lossy(&reply[end + 1..]).into_owned();
    match &reply[..end] {
        b"ok" => Some(Response::ok(text)),
        b"error" => Some(Response::error(text)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const T: Duration = Duration::from_secs(10);

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    /// A handler that echoes the request, counting how many run at once.
    #[derive(Default)]
    struct Echo {
        counts: Arc<Counts>,
    }

    #[derive(Default)]
    struct Counts {
        active: AtomicUsize,
        most: AtomicUsize,
    }

    impl QueueControl for Echo {
        fn execute(&self, op: Op) -> Pin<Box<dyn Future<Output = Response> + Send>> {
            let counts = self.counts.clone();
            Box::pin(async move {
                let now = counts.active.fetch_add(1, Ordering::SeqCst) + 1;
                counts.most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                counts.active.fetch_sub(1, Ordering::SeqCst);
                Response::ok(format!("did {op}\n"))
            })
        }
    }

    /// Serves `handler` on a fresh socket; returns the directory, the path and the token.
    fn start(
        handler: Arc<dyn QueueControl>,
        limits: Limits,
    ) -> (
        tempfile::TempDir,
        PathBuf,
        CancellationToken,
        tokio::task::JoinHandle<()>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = socket_path(dir.path());
        let listener = UnixListener::from_std(bind(&path).unwrap()).unwrap();
        let token = CancellationToken::new();
        let task = tokio::spawn(serve_with(listener, handler, token.clone(), limits));
        (dir, path, token, task)
    }

    /// Sends raw bytes, returns the raw answer.
    async fn raw(path: PathBuf, bytes: Vec<u8>) -> String {
        tokio::task::spawn_blocking(move || {
            let mut s = StdUnixStream::connect(&path).unwrap();
            s.set_read_timeout(Some(T)).unwrap();
            let _ = s.write_all(&bytes);
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out);
            String::from_utf8_lossy(&out).into_owned()
        })
        .await
        .unwrap()
    }

    #[test]
    fn bind_is_owner_only_and_refuses_a_live_server() {
        let dir = tempfile::tempdir().unwrap();
        let path = socket_path(dir.path());
        let live = bind(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        let err = bind(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(
            err.to_string()
                .contains("another server is running on this spool"),
            "{err}"
        );
        drop(live);
        assert!(path.exists(), "a dropped listener leaves a stale socket");
        let again = bind(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        drop(again);
    }

    #[test]
    fn bind_leaves_anything_but_a_socket_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = socket_path(dir.path());
        std::fs::write(&path, "precious").unwrap();
        let err = bind(&path).unwrap_err();
        assert!(err.to_string().contains("is not a socket"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    }

    #[test]
    fn no_socket_or_a_stale_one_is_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let path = socket_path(dir.path());
        assert!(matches!(
            request(&path, &Op::List, T),
            Err(ClientError::NotRunning)
        ));
        drop(bind(&path).unwrap());
        assert!(matches!(
            request(&path, &Op::List, T),
            Err(ClientError::NotRunning)
        ));
    }

    #[test]
    fn a_server_that_never_answers_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = socket_path(dir.path());
        let _silent = bind(&path).unwrap(); // listens, never accepts
        let err = request(&path, &Op::List, Duration::from_millis(300)).unwrap_err();
        assert!(matches!(err, ClientError::TimedOut { .. }), "{err:?}");
        assert!(err.to_string().contains("did not answer"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn offline_control_answers_over_the_socket() {
        let spool_dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::open(spool_dir.path()).unwrap());
        let (_dir, path, token, task) = start(Arc::new(OfflineControl::new(spool)), LIMITS);
        let client = path.clone();
        let (list, hold) = tokio::task::spawn_blocking(move || {
            let list = request(&client, &Op::List, T).unwrap();
            let id = "6ALBkA0000234567".parse().unwrap();
            (list, request(&client, &Op::Hold(id), T).unwrap())
        })
        .await
        .unwrap();
        assert_eq!(list, Response::ok("Mail queue is empty\n"));
        assert_eq!(hold, Response::error("no such message: 6ALBkA0000234567\n"));
        token.cancel();
        tokio::time::timeout(T, task).await.unwrap().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_requests_get_an_error_answer() {
        let limits = Limits {
            request: Duration::from_millis(300),
            ..LIMITS
        };
        let (_dir, path, token, task) = start(Arc::new(Echo::default()), limits);
        for (bytes, want) in [
            (
                b"hold 6ALBkA0000234567\n".to_vec(),
                "ok\ndid hold 6ALBkA0000234567\n",
            ),
            (b"bogus\n".to_vec(), "error\nunknown request \"bogus\"\n"),
            (b"show ../x\n".to_vec(), "error\nno such message: ../x"),
            (b"list".to_vec(), "error\nno request line within 300ms\n"),
            (
                vec![b'a'; 5000],
                "error\nrequest longer than 1024 bytes refused\n",
            ),
            (
                [&[b'a'; 1030][..], b"\n"].concat(),
                "error\nrequest longer than 1024",
            ),
            (b"\xff\xfe\n".to_vec(), "error\nrequest is not UTF-8\n"),
        ] {
            let got = raw(path.clone(), bytes).await;
            assert!(
                got.starts_with(want),
                "{got:?} does not start with {want:?}"
            );
        }
        token.cancel();
        tokio::time::timeout(T, task).await.unwrap().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_most_eight_connections_are_served_at_once() {
        let echo = Arc::new(Echo::default());
        let (_dir, path, token, task) = start(echo.clone(), LIMITS);
        let clients: Vec<_> = (0..20)
            .map(|_| {
                let path = path.clone();
                tokio::task::spawn_blocking(move || request(&path, &Op::List, T))
            })
            .collect();
        for client in clients {
            assert_eq!(client.await.unwrap().unwrap().text, "did list\n");
        }
        let most = echo.counts.most.load(Ordering::SeqCst);
        assert!((1..=MAX_CONNECTIONS).contains(&most), "{most} at once");
        token.cancel();
        tokio::time::timeout(T, task).await.unwrap().unwrap();
    }

    #[test]
    fn reply_parsing() {
        assert_eq!(parse_reply(b"ok\nhello\n"), Some(Response::ok("hello\n")));
        assert_eq!(parse_reply(b"error\n"), Some(Response::error("")));
        assert_eq!(parse_reply(b"ok"), None);
        assert_eq!(parse_reply(b"maybe\nx"), None);
    }
}
