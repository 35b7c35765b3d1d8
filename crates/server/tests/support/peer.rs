//! An independently written next hop for the relay tests: Python's aiosmtpd
//! (`tests/peers/aiosmtpd_peer.py`), SMTP or LMTP on a loopback port.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A Python with aiosmtpd (scripts/test.sh installs Debian's python3-aiosmtpd).
pub fn python() -> &'static str {
    for candidate in ["/usr/bin/python3", "python3"] {
        let ok = Command::new(candidate)
            .args(["-c", "import aiosmtpd"])
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return candidate;
        }
    }
    panic!("no python3 with aiosmtpd: run scripts/test.sh, which installs python3-aiosmtpd");
}

/// The aiosmtpd next hop; stopped when dropped (its stdin closes).
pub struct Peer {
    child: Child,
    pub port: u16,
}

impl Peer {
    pub fn start(kind: &str, dir: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::start_on(kind, dir, port)
    }

    /// Starts the peer on `port` (a next hop that was down comes up).
    pub fn start_on(kind: &str, dir: &Path, port: u16) -> Self {
        Self::start_with(kind, dir, port, &[])
    }

    /// Starts a peer that offers STARTTLS with this certificate (chain) and key, PEM files.
    pub fn start_tls(kind: &str, dir: &Path, cert: &Path, key: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
        Self::start_with(kind, dir, port, &["--tls-cert", cert, "--tls-key", key])
    }

    fn start_with(kind: &str, dir: &Path, port: u16, extra: &[&str]) -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/aiosmtpd_peer.py");
        let mut child = Command::new(python())
            .arg(script)
            .args([kind, &port.to_string()])
            .arg(dir)
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "READY");
        Self { child, port }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The messages the peer stored, in order.
pub fn stored(dir: &Path) -> Vec<String> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .collect();
    names.sort();
    names
        .iter()
        .map(|p| String::from_utf8(std::fs::read(p).unwrap()).unwrap())
        .collect()
}
