//! A fake DNS server on loopback, for tests (this crate's and the end-to-end tests, which
//! point the real binary at it).
//!
//! Role: answer PTR, A, AAAA and MX queries from a table the test fills, over UDP and TCP on
//! the same 127.0.0.1 port; make chosen names never answer ([`FakeDns::stall`]) or answer
//! SERVFAIL ([`FakeDns::servfail`], or for one type only with [`FakeDns::servfail_type`], as
//! servers that mishandle AAAA do); count the queries. Unknown names get NXDOMAIN, known
//! names asked for another type get an empty NOERROR (NODATA): a name with only MX records
//! has no A records, and [`FakeDns::exists`] makes a name with no records at all.
//!
//! Must not: be used outside tests; recurse, follow CNAMEs or do anything a real server
//! does beyond echoing the question with the answers.
//!
//! Invariants: the server tasks run on the tokio runtime that called [`FakeDns::start`] and
//! stop when the [`FakeDns`] is dropped; the table can change while it runs.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use hickory_resolver::proto::op::{Edns, Message, MessageType, ResponseCode};
use hickory_resolver::proto::rr::domain::Label;
use hickory_resolver::proto::rr::rdata::{A, AAAA, MX, PTR};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

/// TTL of every answer (the resolver under test may cache them).
const TTL: u32 = 60;

/// How many times to look for a port free for both UDP and TCP.
const BIND_TRIES: usize = 20;

/// A running fake DNS server; dropping it stops the server.
#[derive(Debug)]
pub struct FakeDns {
    addr: SocketAddr,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

/// What the server tasks and the test share.
#[derive(Debug, Default)]
struct Shared {
    zone: Mutex<Zone>,
    queries: AtomicUsize,
}

/// The records and the misbehaving names; names are lowercase and absolute.
#[derive(Debug, Default)]
struct Zone {
    records: HashMap<Name, Vec<RData>>,
    stalled: HashSet<Name>,
    servfail: HashSet<Name>,
    servfail_types: HashSet<(Name, RecordType)>,
}

/// What to do with one query.
enum Answer {
    Reply(Message),
    Stall,
}

impl FakeDns {
    /// Bind 127.0.0.1 on one port for UDP and TCP and serve on the current runtime.
    pub async fn start() -> io::Result<Self> {
        let (udp, tcp) = bind().await?;
        let addr = udp.local_addr()?;
        let shared = Arc::new(Shared::default());
        let tasks = vec![
            tokio::spawn(serve_udp(udp, Arc::clone(&shared))),
            tokio::spawn(serve_tcp(tcp, Arc::clone(&shared))),
        ];
        Ok(Self {
            addr,
            shared,
            tasks,
        })
    }

    /// Where the server listens (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Queries received so far (UDP and TCP, answered or not).
    pub fn queries(&self) -> usize {
        self.shared.queries.load(Ordering::Relaxed)
    }

    /// Add a PTR record for `ip` (under in-addr.arpa or ip6.arpa). `name` is taken as raw
    /// labels split on dots, so invalid host names (`"bad host.example"`) can be served.
    pub fn ptr(&self, ip: IpAddr, name: &str) {
        if let Some(target) = raw_name(name) {
            self.add(Name::from(ip), RData::PTR(PTR(target)));
        }
    }

    /// Add an A record.
    pub fn a(&self, name: &str, ip: Ipv4Addr) {
        if let Some(owner) = raw_name(name) {
            self.add(owner, RData::A(A(ip)));
        }
    }

    /// Add an AAAA record.
    pub fn aaaa(&self, name: &str, ip: Ipv6Addr) {
        if let Some(owner) = raw_name(name) {
            self.add(owner, RData::AAAA(AAAA(ip)));
        }
    }

    /// Add an MX record for `domain`. `exchange` is taken as raw labels split on dots, like
    /// PTR names; `"."` (or `""`) is the root, for a null MX (RFC 7505).
    pub fn mx(&self, domain: &str, preference: u16, exchange: &str) {
        let exchange = if exchange.is_empty() || exchange == "." {
            Some(Name::root())
        } else {
            raw_name(exchange)
        };
        if let (Some(owner), Some(exchange)) = (raw_name(domain), exchange) {
            self.add(owner, RData::MX(MX::new(preference, exchange)));
        }
    }

    /// Make `name` exist with no records: every type answers NODATA, none NXDOMAIN.
    pub fn exists(&self, name: &str) {
        if let Some(name) = raw_name(name) {
            self.zone().records.entry(key(&name)).or_default();
        }
    }

    /// Never answer queries for `name` (any type).
    pub fn stall(&self, name: &str) {
        if let Some(name) = raw_name(name) {
            self.zone().stalled.insert(key(&name));
        }
    }

    /// Never answer PTR queries for `ip`.
    pub fn stall_ptr(&self, ip: IpAddr) {
        self.zone().stalled.insert(key(&Name::from(ip)));
    }

    /// Answer SERVFAIL to queries for `name` (any type).
    pub fn servfail(&self, name: &str) {
        if let Some(name) = raw_name(name) {
            self.zone().servfail.insert(key(&name));
        }
    }

    /// Answer SERVFAIL to queries for `name` of type `record_type` only.
    pub fn servfail_type(&self, name: &str, record_type: RecordType) {
        if let Some(name) = raw_name(name) {
            self.zone().servfail_types.insert((key(&name), record_type));
        }
    }

    /// Answer SERVFAIL to PTR queries for `ip`.
    pub fn servfail_ptr(&self, ip: IpAddr) {
        self.zone().servfail.insert(key(&Name::from(ip)));
    }

    fn add(&self, owner: Name, data: RData) {
        self.zone()
            .records
            .entry(key(&owner))
            .or_default()
            .push(data);
    }

    fn zone(&self) -> std::sync::MutexGuard<'_, Zone> {
        self.shared
            .zone
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for FakeDns {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// UDP and TCP sockets on the same loopback port.
async fn bind() -> io::Result<(UdpSocket, TcpListener)> {
    let mut last = io::Error::other("no port tried");
    for _ in 0..BIND_TRIES {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        match TcpListener::bind(udp.local_addr()?).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// A name from text, labels split on dots and taken as raw octets; absolute.
fn raw_name(text: &str) -> Option<Name> {
    let text = text.strip_suffix('.').unwrap_or(text);
    let labels = text
        .split('.')
        .map(|l| Label::from_raw_bytes(l.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .ok()?;
    let mut name = Name::from_labels(labels).ok()?;
    name.set_fqdn(true);
    Some(name)
}

/// The table key of a name: lowercase and absolute.
fn key(name: &Name) -> Name {
    let mut name = name.to_lowercase();
    name.set_fqdn(true);
    name
}

async fn serve_udp(socket: UdpSocket, shared: Arc<Shared>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let Some(bytes) = buf.get(..len) else {
            continue;
        };
        if let Some(reply) = handle(&shared, bytes) {
            let _ = socket.send_to(&reply, peer).await;
        }
    }
}

async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        if let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_tcp_conn(stream, Arc::clone(&shared)));
        }
    }
}

/// RFC 1035 §4.2.2: each message is preceded by its length in two octets.
async fn serve_tcp_conn(mut stream: TcpStream, shared: Arc<Shared>) {
    loop {
        let Ok(len) = stream.read_u16().await else {
            return;
        };
        let mut bytes = vec![0u8; usize::from(len)];
        if stream.read_exact(&mut bytes).await.is_err() {
            return;
        }
        let Some(reply) = handle(&shared, &bytes) else {
            continue;
        };
        let Ok(reply_len) = u16::try_from(reply.len()) else {
            continue;
        };
        if stream.write_u16(reply_len).await.is_err() || stream.write_all(&reply).await.is_err() {
            return;
        }
    }
}

/// The encoded reply to one encoded query, if any.
fn handle(shared: &Shared, bytes: &[u8]) -> Option<Vec<u8>> {
    shared.queries.fetch_add(1, Ordering::Relaxed);
    let query = Message::from_vec(bytes).ok()?;
    if query.metadata.message_type != MessageType::Query {
        return None;
    }
    let zone = shared.zone.lock().unwrap_or_else(PoisonError::into_inner);
    match answer(&zone, &query) {
        Answer::Reply(reply) => reply.to_vec().ok(),
        Answer::Stall => None,
    }
}

/// The answer to one question from the zone.
fn answer(zone: &Zone, query: &Message) -> Answer {
    let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    if query.edns.is_some() {
        reply.set_edns(Edns::new());
    }
    let Some(question) = query.queries.first() else {
        reply.metadata.response_code = ResponseCode::FormErr;
        return Answer::Reply(reply);
    };
    reply.add_query(question.clone());
    let name = key(question.name());
    if zone.stalled.contains(&name) {
        return Answer::Stall;
    }
    let wanted = question.query_type();
    if zone.servfail.contains(&name) || zone.servfail_types.contains(&(name.clone(), wanted)) {
        reply.metadata.response_code = ResponseCode::ServFail;
        return Answer::Reply(reply);
    }
    let Some(records) = zone.records.get(&name) else {
        reply.metadata.response_code = ResponseCode::NXDomain;
        return Answer::Reply(reply);
    };
    reply.metadata.authoritative = true;
    for data in records
        .iter()
        .filter(|d| d.record_type() == wanted || wanted == RecordType::ANY)
    {
        reply.add_answer(Record::from_rdata(
            question.name().clone(),
            TTL,
            data.clone(),
        ));
    }
    Answer::Reply(reply)
}
