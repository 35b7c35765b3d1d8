//! Client host names: reverse DNS with forward confirmation.
//!
//! Role: turn a client's address into a [`ClientName`] once per connection, while the
//! connection waits in the greeting pause. The driver holds an `Arc<dyn ReverseLookup>`:
//! [`HickoryLookup`] in production, [`StaticNames`] for tests and `--host` in the CLI,
//! [`NoLookup`] when DNS is disabled. The mail exchangers of a domain, for relay delivery,
//! are [`mx`]'s; it builds its resolver with the same options (below).
//!
//! Equivalents: Sendmail resolves `${client_name}` with `gethostbyaddr` and then looks the name
//! up forward; when the address is not among the answers it keeps the name but marks it
//! "(may be forged)" and sets `${client_resolve}` to `FORGED` (`OK`, `FAIL`, `TEMP` otherwise).
//! Postfix smtpd keeps a "reverse" name (any PTR) and a "verified" name (the PTR name that
//! resolves back, else `unknown`), with a temporary status when a lookup fails for a while.
//! [`ClientName::Confirmed`] is Sendmail's `OK` / Postfix's verified name,
//! [`ClientName::Unconfirmed`] is `FORGED`, [`ClientName::NoName`] is `FAIL`,
//! [`ClientName::TempFail`] is `TEMP`.
//!
//! Forward confirmation: the PTR names are taken in answer order (only PTR records count: with
//! RFC 2317 classless delegation the recursive server answers a CNAME, then the PTR records
//! of its target); names that are not valid host names are skipped
//! and at most [`MAX_PTR_NAMES`] are checked; each is looked up for A (IPv4 client) or AAAA
//! (IPv6 client), and the first whose records contain the client address is confirmed.
//! IPv4-mapped IPv6 clients (`::ffff:192.0.2.1`) are IPv4 clients. When no name confirms and a
//! forward lookup failed temporarily, the answer is `TempFail`, not `Unconfirmed`: we cannot
//! tell a forgery from a slow server (Postfix does the same).
//!
//! Resolver options (hickory-resolver 0.26) and why:
//! - the whole lookup is bounded by one `timeout` (`tokio::time::timeout`); on expiry the
//!   answer is `TempFail`;
//! - each query try gets `timeout / 4` and one retry (`attempts = 1`, hickory counts retries):
//!   a PTR query and one forward query, each tried twice, fit in the budget, so a lost UDP
//!   datagram costs a retry rather than the answer (for [`mx`]: the MX query, then the
//!   address queries of all its hosts at once);
//! - the response cache holds [`CACHE_SIZE`] responses: busy clients reconnect often, and
//!   the cache must stay bounded (design.md §3.7);
//! - no search domains and no default domain, and every name is absolute (PTR names under
//!   in-addr.arpa / ip6.arpa, forward names from the PTR data, MX hosts from the MX data),
//!   so `ndots` never applies and a name is never completed with our own domain;
//! - the hosts file: with explicit servers, never (the operator asked for those servers, and
//!   the tests need a fake DNS to be the only source). With the system configuration, it is
//!   used when `/etc/nsswitch.conf` lists `files` for `hosts` (or has no `hosts` line or no
//!   file: glibc's default includes `files`), because that is what Sendmail and Postfix get
//!   from libc; hickory reads it before DNS, whatever the order on the `hosts` line.
//!
//! Must not: block a thread, read the clock, panic on odd answers, or return a name that is
//! not a valid host name.
//!
//! Invariants: a name inside a [`ClientName`] is lowercase, has no trailing dot and passes
//! [`normalize_host_name`]; a lookup never takes longer than its timeout (plus scheduling);
//! the future returned by [`ReverseLookup::lookup`] owns everything it uses (`'static + Send`).

#[doc(hidden)]
pub mod fake;
pub mod mx;

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{Name, RData, RecordType};

/// PTR names checked forward at most (as many forward queries, one after another).
pub const MAX_PTR_NAMES: usize = 10;

/// Responses kept in the resolver's cache.
pub const CACHE_SIZE: u64 = 4096;

/// Longest host name in text form, without the trailing dot (RFC 1035 §2.3.4: 255 octets on
/// the wire).
const MAX_NAME_LEN: usize = 253;

/// Longest label (RFC 1035 §2.3.4).
const MAX_LABEL_LEN: usize = 63;

/// Where `/etc/nsswitch.conf` says which sources answer host lookups.
const NSSWITCH_CONF: &str = "/etc/nsswitch.conf";

/// What reverse DNS says about a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientName {
    /// A PTR name whose A/AAAA records include the address (lowercase, no trailing dot).
    Confirmed(String),
    /// PTR names exist but none resolves back to the address (Sendmail's "may be forged");
    /// the first valid PTR name.
    Unconfirmed(String),
    /// NXDOMAIN, no PTR records, or no PTR name that is a valid host name.
    NoName,
    /// Timeout, SERVFAIL, network error, in the PTR or a forward lookup.
    TempFail,
}

impl ClientName {
    /// The confirmed name, the only one fit to be trusted (access map host keys, Received:).
    pub fn confirmed(&self) -> Option<&str> {
        match self {
            Self::Confirmed(name) => Some(name),
            Self::Unconfirmed(_) | Self::NoName | Self::TempFail => None,
        }
    }
}

/// The future a lookup returns: owned, boxed, sendable.
pub type LookupFuture = Pin<Box<dyn Future<Output = ClientName> + Send + 'static>>;

/// Resolves client names. Object-safe, so the driver holds `Arc<dyn ReverseLookup>`.
pub trait ReverseLookup: Send + Sync + 'static {
    /// The name of `addr`, bounded in time by the implementation.
    fn lookup(&self, addr: IpAddr) -> LookupFuture;
}

/// The production lookup, on hickory-resolver.
#[derive(Clone)]
pub struct HickoryLookup {
    resolver: Arc<TokioResolver>,
    timeout: Duration,
}

impl std::fmt::Debug for HickoryLookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HickoryLookup")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl HickoryLookup {
    /// `servers` empty = the system configuration (/etc/resolv.conf); otherwise these UDP/TCP
    /// servers (ip:port). `timeout` bounds the whole lookup (PTR + forward queries).
    pub fn new(servers: &[SocketAddr], timeout: Duration) -> Result<Self, String> {
        let built = build_resolver(servers, timeout)?;
        Ok(Self {
            resolver: built.resolver,
            timeout,
        })
    }
}

impl ReverseLookup for HickoryLookup {
    fn lookup(&self, addr: IpAddr) -> LookupFuture {
        let resolver = Arc::clone(&self.resolver);
        let timeout = self.timeout;
        Box::pin(async move {
            tokio::time::timeout(timeout, resolve(resolver, addr.to_canonical()))
                .await
                .unwrap_or(ClientName::TempFail)
        })
    }
}

/// A resolver with the options in this module's header, shared by [`HickoryLookup`] and
/// [`mx::HickoryMx`] so both treat servers, the hosts file and timeouts alike.
struct BuiltResolver {
    resolver: Arc<TokioResolver>,
    /// Whether it reads the hosts file before DNS (system configuration only).
    hosts_file: bool,
}

/// Builds the resolver: `servers` empty = the system configuration (/etc/resolv.conf),
/// otherwise these UDP/TCP servers (ip:port); `timeout` bounds one whole lookup, each query
/// try gets a quarter of it.
fn build_resolver(servers: &[SocketAddr], timeout: Duration) -> Result<BuiltResolver, String> {
    let (name_servers, mut options) = if servers.is_empty() {
        let (config, options) = hickory_resolver::system_conf::read_system_conf()
            .map_err(|e| format!("cannot read the system DNS configuration: {e}"))?;
        let (_domain, _search, name_servers) = config.into_parts();
        (name_servers, options)
    } else {
        let name_servers = servers.iter().map(|s| name_server(*s)).collect();
        (name_servers, ResolverOpts::default())
    };
    let hosts_file = servers.is_empty() && system_uses_hosts_file();
    options.use_hosts_file = if hosts_file {
        ResolveHosts::Always
    } else {
        ResolveHosts::Never
    };
    options.timeout = (timeout / 4).max(Duration::from_millis(1));
    options.attempts = 1;
    options.cache_size = CACHE_SIZE;
    options.ndots = 0;
    // Absolute names only: no domain, no search list.
    let config = ResolverConfig::from_parts(None, Vec::new(), name_servers);
    let resolver = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
        .with_options(options)
        .build()
        .map_err(|e| format!("cannot build the DNS resolver: {e}"))?;
    Ok(BuiltResolver {
        resolver: Arc::new(resolver),
        hosts_file,
    })
}

/// A server at `addr`, over UDP and TCP on its port.
fn name_server(addr: SocketAddr) -> NameServerConfig {
    let mut udp = ConnectionConfig::udp();
    udp.port = addr.port();
    let mut tcp = ConnectionConfig::tcp();
    tcp.port = addr.port();
    NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
}

/// Whether the system's name service switch reads the hosts file for host lookups.
fn system_uses_hosts_file() -> bool {
    let text = std::fs::read_to_string(NSSWITCH_CONF).ok();
    nsswitch_uses_files(text.as_deref())
}

/// Whether an nsswitch.conf text (or its absence) lists `files` for `hosts`. Without the file
/// or the line, glibc's default (`dns [!UNAVAIL=return] files`) includes it.
fn nsswitch_uses_files(text: Option<&str>) -> bool {
    let Some(text) = text else { return true };
    let hosts = text.lines().find_map(|line| {
        let line = line.split('#').next().unwrap_or_default().trim_start();
        line.strip_prefix("hosts:")
    });
    hosts.is_none_or(|sources| sources.split_whitespace().any(|s| s == "files"))
}

/// PTR then forward confirmation; `addr` is canonical (no IPv4-mapped IPv6).
async fn resolve(resolver: Arc<TokioResolver>, addr: IpAddr) -> ClientName {
    let mut arpa = Name::from(addr);
    arpa.set_fqdn(true);
    let names = match resolver.lookup(arpa, RecordType::PTR).await {
        Ok(lookup) => ptr_names(lookup.answers()),
        Err(e) if e.is_no_records_found() => return ClientName::NoName,
        Err(_) => return ClientName::TempFail,
    };
    let Some((_, first)) = names.first() else {
        return ClientName::NoName;
    };
    let first = first.clone();
    let mut temp_fail = false;
    for (name, text) in names {
        match forward(&resolver, name, addr).await {
            Forward::Match => return ClientName::Confirmed(text),
            Forward::NoMatch => {}
            Forward::TempFail => temp_fail = true,
        }
    }
    if temp_fail {
        ClientName::TempFail
    } else {
        ClientName::Unconfirmed(first)
    }
}

/// The valid host names among PTR answers, in answer order, at most [`MAX_PTR_NAMES`]:
/// the absolute name to query and its normalised text.
fn ptr_names(answers: &[hickory_resolver::proto::rr::Record]) -> Vec<(Name, String)> {
    answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::PTR(ptr) => {
                let text = host_name_from_labels(ptr.0.iter())?;
                let mut name = ptr.0.clone();
                name.set_fqdn(true);
                Some((name, text))
            }
            _ => None,
        })
        .take(MAX_PTR_NAMES)
        .collect()
}

/// What one forward lookup says.
enum Forward {
    Match,
    NoMatch,
    TempFail,
}

/// Look `name` up for A or AAAA (as `addr` is) and tell whether `addr` is among the answers.
async fn forward(resolver: &TokioResolver, name: Name, addr: IpAddr) -> Forward {
    let record_type = match addr {
        IpAddr::V4(_) => RecordType::A,
        IpAddr::V6(_) => RecordType::AAAA,
    };
    match resolver.lookup(name, record_type).await {
        Ok(lookup)
            if lookup
                .answers()
                .iter()
                .any(|r| r.data.ip_addr() == Some(addr)) =>
        {
            Forward::Match
        }
        Ok(_) => Forward::NoMatch,
        Err(e) => forward_error(&e),
    }
}

/// NXDOMAIN or no records: the name does not resolve back (forged); anything else: temporary.
fn forward_error(e: &NetError) -> Forward {
    if e.is_no_records_found() {
        Forward::NoMatch
    } else {
        Forward::TempFail
    }
}

/// A host name in the form we keep: lowercase, no trailing dot; `None` when `name` is not a
/// valid host name.
///
/// Valid: labels of 1 to 63 letters, digits, `-` (not first or last) and `_` (tolerated, as
/// Postfix's `valid_hostname` does), 253 octets at most, and a last label that is not all
/// digits, so that a PTR record such as `192.0.2.1` can never pass for an address literal.
pub fn normalize_host_name(name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    host_name_from_labels(name.split('.').map(str::as_bytes))
}

/// [`normalize_host_name`] over raw labels (as DNS carries them: any octets).
fn host_name_from_labels<'a>(labels: impl Iterator<Item = &'a [u8]>) -> Option<String> {
    let mut text = String::new();
    let mut last_numeric = false;
    for label in labels {
        if !valid_label(label) {
            return None;
        }
        if !text.is_empty() {
            text.push('.');
        }
        if text.len() + label.len() > MAX_NAME_LEN {
            return None;
        }
        text.extend(label.iter().map(|b| char::from(b.to_ascii_lowercase())));
        last_numeric = label.iter().all(u8::is_ascii_digit);
    }
    (!text.is_empty() && !last_numeric).then_some(text)
}

/// RFC 1123 §2.1 label, plus `_`.
fn valid_label(label: &[u8]) -> bool {
    let allowed = |b: &u8| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_';
    (1..=MAX_LABEL_LEN).contains(&label.len())
        && label.iter().all(allowed)
        && label.first() != Some(&b'-')
        && label.last() != Some(&b'-')
}

/// A fixed address → name table, for tests and `--host` in the CLI. Names are `Confirmed`;
/// unknown addresses are `NoName`. IPv4-mapped addresses match their IPv4 entry.
#[derive(Clone, Debug, Default)]
pub struct StaticNames {
    names: HashMap<IpAddr, String>,
}

impl StaticNames {
    /// The table; names are normalised ([`normalize_host_name`]) and entries whose name is not
    /// a valid host name are left out (check names with it first to report them).
    pub fn new(iter: impl IntoIterator<Item = (IpAddr, String)>) -> Self {
        let names = iter
            .into_iter()
            .filter_map(|(addr, name)| Some((addr.to_canonical(), normalize_host_name(&name)?)))
            .collect();
        Self { names }
    }
}

impl ReverseLookup for StaticNames {
    fn lookup(&self, addr: IpAddr) -> LookupFuture {
        let name = match self.names.get(&addr.to_canonical()) {
            Some(name) => ClientName::Confirmed(name.clone()),
            None => ClientName::NoName,
        };
        Box::pin(std::future::ready(name))
    }
}

/// DNS disabled: always `NoName`, at once.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoLookup;

impl ReverseLookup for NoLookup {
    fn lookup(&self, _addr: IpAddr) -> LookupFuture {
        Box::pin(std::future::ready(ClientName::NoName))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names() {
        let cases: &[(&str, Option<&str>)] = &[
            ("Mail.Example.COM.", Some("mail.example.com")),
            ("mail.example.com", Some("mail.example.com")),
            ("localhost", Some("localhost")),
            ("a-b_c.example", Some("a-b_c.example")),
            ("1host.example", Some("1host.example")),
            ("", None),
            (".", None),
            ("a..b", None),
            ("bad host.example", None),
            ("-a.example", None),
            ("a-.example", None),
            ("192.0.2.1", None),
            ("host.123", None),
            ("a\\.b.example", None),
            ("caf\u{e9}.example", None),
        ];
        for (name, want) in cases {
            assert_eq!(normalize_host_name(name).as_deref(), *want, "{name:?}");
        }
        let label = "a".repeat(63);
        let long = [label.as_str(); 4].join(".");
        assert_eq!(long.len(), 255);
        assert_eq!(normalize_host_name(&long), None);
        assert!(normalize_host_name(&long[2..]).is_some());
        assert_eq!(normalize_host_name(&"a".repeat(64)), None);
    }

    #[test]
    fn nsswitch() {
        assert!(nsswitch_uses_files(None));
        assert!(nsswitch_uses_files(Some("passwd: files\n")));
        assert!(nsswitch_uses_files(Some("hosts: files dns\n")));
        assert!(nsswitch_uses_files(Some(
            "hosts:  dns [!UNAVAIL=return] files # x\n"
        )));
        assert!(!nsswitch_uses_files(Some(
            "# hosts: files\nhosts: dns myhostname\n"
        )));
        assert!(!nsswitch_uses_files(Some("hosts: dns # files\n")));
    }

    #[test]
    fn confirmed_only_for_confirmed() {
        assert_eq!(
            ClientName::Confirmed("a.example".into()).confirmed(),
            Some("a.example")
        );
        assert_eq!(
            ClientName::Unconfirmed("a.example".into()).confirmed(),
            None
        );
        assert_eq!(ClientName::NoName.confirmed(), None);
        assert_eq!(ClientName::TempFail.confirmed(), None);
    }
}
