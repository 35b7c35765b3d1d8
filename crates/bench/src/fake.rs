//! Test-only fake SMTP responder on 127.0.0.1:0: answers 220, EHLO (with
//! PIPELINING), MAIL/RCPT 250, DATA 354 … 250, QUIT 221. In the rejecting variant every
//! client but one address gets a slammer's treatment instead: a `554` banner, EHLO 250,
//! then `550` to everything else, and the connection is never closed by the fake.
//!
//! It must not listen beyond loopback, check anything, or outlive its test (abort the handle).

use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Starts the responder; returns its address and the accept-loop handle.
pub(crate) async fn start() -> (SocketAddr, JoinHandle<()>) {
    start_with(None).await
}

/// Starts a responder that rejects every client except `welcome` (see the module doc).
pub(crate) async fn start_rejecting_all_but(welcome: IpAddr) -> (SocketAddr, JoinHandle<()>) {
    start_with(Some(welcome)).await
}

async fn start_with(only: Option<IpAddr>) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = tokio::spawn(async move {
        for _ in 0..100_000 {
            let Ok((stream, peer)) = listener.accept().await else {
                break;
            };
            let reject = only.is_some_and(|ip| ip != peer.ip());
            tokio::spawn(serve(stream, reject));
        }
    });
    (addr, handle)
}

async fn serve(stream: TcpStream, reject: bool) -> std::io::Result<()> {
    let mut io = BufReader::new(stream);
    let banner: &[u8] = if reject {
        b"554 fake.localhost ESMTP not accepting messages\r\n"
    } else {
        b"220 fake.localhost ESMTP\r\n"
    };
    io.get_mut().write_all(banner).await?;
    let mut line = Vec::new();
    let mut in_data = false;
    for _ in 0..10_000_000 {
        line.clear();
        if (&mut io).take(4096).read_until(b'\n', &mut line).await? == 0 {
            break;
        }
        if in_data {
            if line == b".\r\n" {
                in_data = false;
                io.get_mut().write_all(b"250 2.0.0 queued\r\n").await?;
            }
            continue;
        }
        let verb = line.get(..4).unwrap_or_default().to_ascii_uppercase();
        let reply: &[u8] = match &verb[..] {
            b"EHLO" if reject => b"250-fake.localhost\r\n250 ENHANCEDSTATUSCODES\r\n",
            b"EHLO" => b"250-fake.localhost\r\n250-PIPELINING\r\n250 SIZE 100000000\r\n",
            b"QUIT" => {
                io.get_mut().write_all(b"221 2.0.0 bye\r\n").await?;
                break;
            }
            _ if reject => b"550 5.0.0 Command rejected\r\n",
            b"MAIL" | b"RCPT" => b"250 2.1.0 ok\r\n",
            b"DATA" => {
                in_data = true;
                b"354 go ahead\r\n"
            }
            _ => b"500 5.5.2 what\r\n",
        };
        io.get_mut().write_all(reply).await?;
    }
    Ok(())
}
