//! The Sendmail access map: the `access` source text, read as is, and lookups in Sendmail's
//! order.
//!
//! Role: turn the text `makemap hash access < access` would compile into an in-memory map,
//! with every problem reported by line, and answer the lookups the defences ask
//! (`GreetPause:`, `ClientRate:`, `ClientConn:`, `Connect:`, `From:`, `To:`, `Spam:`,
//! `Srv_Features:` and untagged keys). What a value *means* (a pause, a limit, `REJECT`)
//! belongs to each defence; [`number`] and [`action`] read the two value shapes they share.
//!
//! Must not: read files (the caller passes the bytes and a name for messages), read the
//! clock, panic on any input, or allocate on a lookup (the hot path runs for every
//! connection and every MAIL/RCPT).
//!
//! Invariants: keys compare ASCII case-insensitively, as `makemap` folds them; the first of
//! two equal keys wins (makemap without `-r`); every stored entry keeps its key as written
//! and its line, so a decision can be logged as `file:line: Tag:key`. A map that parsed with
//! errors is never returned: the caller keeps its previous map.
//!
//! Sendmail equivalent: `FEATURE(access_db)` plus `makemap`; the lookup order is that of
//! `cf/m4/proto.m4` — ruleset `D` (LookUpDomain: strip the leading label), `A`
//! (LookUpAddress: strip the last octet or IPv6 group, down to the bare `IPv6`), `F` and
//! `U` (full address and `user@`, each also as `user+*` and `user` for `user+detail`), `E`
//! (the exact `Tag:` default) and `SearchList`. Each step tries `Tag:key` first and the
//! untagged `key` after it when asked (Sendmail's `<+ Tag>`; `<! Tag>` is tag only).
//! Our extensions, never needed for a Sendmail map: CIDR keys (`10.0.0.0/8`,
//! `IPv6:2001:db8::/32`), compressed IPv6 keys (`IPv6:::1`), and IPv6 groups written with
//! leading zeros. Address keys of every form sit on one longest-prefix-first walk, which for
//! Sendmail's dotted and colon forms is exactly ruleset `A`'s order.

mod index;
mod key;
mod lookup;
mod parse;
mod value;

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

pub use value::{Action, action, number};

use index::{FastState, Lens, Record};

/// The tag in front of a key (`GreetPause:127.0.0.1`); the tags Portcullis reads.
///
/// Other tags Sendmail knows (`TLS_Clt:`, `Compat:`, `QGRP:` ...) are valid in the file but
/// unused here: the parser drops them with a warning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Tag {
    /// `GreetPause:` — FEATURE(`greet_pause`), milliseconds.
    GreetPause,
    /// `ClientRate:` — FEATURE(`ratecontrol`), connections per window.
    ClientRate,
    /// `ClientConn:` — FEATURE(`conncontrol`), concurrent connections.
    ClientConn,
    /// `Connect:` — `check_relay` at connection time.
    Connect,
    /// `From:` — `check_mail`.
    From,
    /// `To:` — `check_rcpt` (blocklist_recipients, relaying).
    To,
    /// `Spam:` — FEATURE(`delay_checks`) friends and haters.
    Spam,
    /// `Srv_Features:` — per-client server features (e.g. `F`).
    SrvFeatures,
    /// No tag: found by lookups that also try untagged keys (`<+ Tag>`).
    Untagged,
}

impl Tag {
    /// Every tag, in declaration order (`Untagged` last).
    pub const ALL: [Self; 9] = [
        Self::GreetPause,
        Self::ClientRate,
        Self::ClientConn,
        Self::Connect,
        Self::From,
        Self::To,
        Self::Spam,
        Self::SrvFeatures,
        Self::Untagged,
    ];
    /// How many tags there are (sizes the per-tag tables).
    const COUNT: usize = Self::ALL.len();

    /// The tag as written in the file, without the colon (`""` for [`Tag::Untagged`]).
    pub fn name(self) -> &'static str {
        match self {
            Self::GreetPause => "GreetPause",
            Self::ClientRate => "ClientRate",
            Self::ClientConn => "ClientConn",
            Self::Connect => "Connect",
            Self::From => "From",
            Self::To => "To",
            Self::Spam => "Spam",
            Self::SrvFeatures => "Srv_Features",
            Self::Untagged => "",
        }
    }

    /// The tag named `name` (any case, without the colon); `None` for unknown names and for
    /// the empty name (untagged keys have no name to look up by).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|t| *t != Self::Untagged && t.name().eq_ignore_ascii_case(name))
    }

    /// Tags whose value Sendmail reads as a number (`strtol`, `arith`).
    pub fn is_numeric(self) -> bool {
        matches!(self, Self::GreetPause | Self::ClientRate | Self::ClientConn)
    }

    fn index(self) -> usize {
        usize::from(self as u8)
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One problem in the file: `source:line: message`.
///
/// Errors come back from [`AccessMap::parse`] as `Err`, warnings in [`Parsed::warnings`];
/// the position tells which, so the message carries no severity word.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// The name the caller gave the text (normally the file path).
    pub source: String,
    /// 1-based line number.
    pub line: u32,
    /// What is wrong, naming the key as written.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.source, self.line, self.message)
    }
}

impl std::error::Error for Diagnostic {}

/// A map that parsed without errors, and what the parser would still like the admin to see.
#[derive(Debug)]
pub struct Parsed {
    /// The map.
    pub map: AccessMap,
    /// Duplicates, unused tags, keys that can never match, numbers that are not numbers.
    pub warnings: Vec<Diagnostic>,
}

/// One entry found by a lookup, borrowed from the map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The entry's tag.
    pub tag: Tag,
    /// The key after the tag, as written in the file (empty for a `Tag:` default).
    pub key: &'a str,
    /// The value (right-hand side), trailing whitespace removed.
    pub value: &'a str,
    /// 1-based line in the source.
    pub line: u32,
}

impl<'a> Entry<'a> {
    /// The left-hand side: `Tag:key`, or just `key` when untagged.
    pub fn lhs(&self) -> impl fmt::Display + 'a {
        Lhs {
            tag: self.tag,
            key: self.key,
        }
    }

    /// The value as an access action (`OK`, `REJECT`, `ERROR:...`).
    pub fn action(&self) -> Action<'a> {
        action(self.value)
    }

    /// The value as Sendmail's `strtol` reads it.
    pub fn number(&self) -> i64 {
        number(self.value)
    }
}

/// `Tag:key value`, the line as the file would have it (tag spelled canonically).
impl fmt::Display for Entry<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.lhs(), self.value)
    }
}

struct Lhs<'a> {
    tag: Tag,
    key: &'a str,
}

impl fmt::Display for Lhs<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.tag {
            Tag::Untagged => f.write_str(self.key),
            tag => write!(f, "{tag}:{}", self.key),
        }
    }
}

/// Where the `user@` step goes in a mail-address lookup (ruleset `SearchList` lists).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserStep {
    /// `<F:user@domain> <U:user@> <D:domain>`: `check_mail` (From:), and
    /// blocklist_recipients (To:) for a local domain.
    BeforeDomain,
    /// `<F:user@domain> <D:domain> <U:user@>`: delay_checks friends/haters (Spam:) for a
    /// local domain.
    AfterDomain,
    /// `<F:user@domain> <D:domain>`: To:/Spam: for a domain that is not local.
    Skip,
}

impl UserStep {
    /// Sendmail's order for `tag` when the domain is local: `Spam:` tries the domain before
    /// `user@`, every other tag after it.
    pub fn for_tag(tag: Tag) -> Self {
        match tag {
            Tag::Spam => Self::AfterDomain,
            _ => Self::BeforeDomain,
        }
    }
}

/// The parsed access map. Immutable once built; share it with `Arc` (it is `Send + Sync`)
/// and replace it whole on reload.
#[derive(Clone, Default)]
pub struct AccessMap {
    /// The name given to [`AccessMap::parse`], for messages.
    source: String,
    /// Every stored key (as written, after the tag) followed by its value: one allocation
    /// for the whole map instead of two per entry.
    arena: String,
    records: Vec<Record>,
    /// Name keys (host names, domains, e-mail forms, `Tag:` defaults): hash of
    /// (tag, lowercased key) → first record; equal hashes chain through `Record::next`.
    names: HashMap<u64, u32, FastState>,
    /// IPv4 address keys: one table per (tag, prefix length), masked address → record;
    /// empty until the first IPv4 key.
    v4_addrs: Vec<HashMap<u32, u32, FastState>>,
    /// IPv6 address keys, the same way.
    v6_addrs: Vec<HashMap<u128, u32, FastState>>,
    /// Per tag, the IPv4 prefix lengths present, so a lookup probes only those.
    v4_lens: [Lens; Tag::COUNT],
    /// Per tag, the IPv6 prefix lengths present.
    v6_lens: [Lens; Tag::COUNT],
    /// Per tag, how many name keys (not addresses, not the default) there are.
    name_keys: [u32; Tag::COUNT],
}

impl fmt::Debug for AccessMap {
    // A million entries are no use in a log line: say what and how big.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessMap")
            .field("source", &self.source)
            .field("entries", &self.records.len())
            .field("name_keys", &self.names.len())
            .field("address_keys", &self.address_keys())
            .finish()
    }
}

impl AccessMap {
    /// Parses the access source text; `source` names it in diagnostics.
    ///
    /// All errors are collected in one pass and returned together; with none, the map and
    /// the warnings. Errors: a line starting with whitespace, a key without a value, an
    /// unterminated quote in a value, a line that is not UTF-8 or holds a NUL byte, a bad
    /// CIDR key.
    pub fn parse(source: &str, text: &[u8]) -> Result<Parsed, Vec<Diagnostic>> {
        parse::parse(source, text)
    }

    /// The name the map was parsed under.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// How many entries the map holds (duplicates and unused tags not counted).
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True when the map holds no entry.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Every entry, in file order.
    pub fn entries(&self) -> impl Iterator<Item = Entry<'_>> {
        self.records.iter().map(|r| self.entry(r))
    }

    /// Ruleset `D` on a host name: `Tag:host.sub.dom`, `Tag:sub.dom`, `Tag:dom`, each
    /// followed by the untagged key when `untagged`. A trailing dot is ignored (resolvers
    /// return names as `host.example.`). A bracketed literal (`[192.0.2.1]`, Sendmail's
    /// name for a client without reverse DNS) is shortened inside the brackets instead, as
    /// `D` does. An empty name finds nothing.
    pub fn lookup_host(&self, tag: Tag, untagged: bool, host: &str) -> Option<Entry<'_>> {
        self.walk_domain(tag, untagged, host)
    }

    /// Ruleset `A` on a client address: the longest matching prefix first (`a.b.c.d`,
    /// `a.b.c`, `a.b`, `a`; IPv6 one 16-bit group at a time down to the bare `IPv6`; CIDR keys
    /// at their own length), tagged before untagged at each length. An IPv4-mapped IPv6
    /// address (`::ffff:192.0.2.1`) is looked up as IPv4, as Sendmail prints it.
    pub fn lookup_addr(&self, tag: Tag, untagged: bool, addr: IpAddr) -> Option<Entry<'_>> {
        self.walk_addr(tag, untagged, addr)
    }

    /// The client lookup of `check_relay` and `greet_pause`: the host name (when there is
    /// one) with `D`, then the address with `A`. A name match wins over any address match.
    pub fn lookup_client(
        &self,
        tag: Tag,
        untagged: bool,
        host: Option<&str>,
        addr: IpAddr,
    ) -> Option<Entry<'_>> {
        host.and_then(|h| self.walk_domain(tag, untagged, h))
            .or_else(|| self.walk_addr(tag, untagged, addr))
    }

    /// The client lookup the server makes for `tag`, as Sendmail's rulesets do it (one
    /// place, so the server and `portcullis access lookup` cannot disagree):
    /// - `GreetPause:` (greet_pause.m4): host, then address; tag only; no default.
    /// - `ClientRate:`, `ClientConn:` (`SearchList <! Tag> <A:addr> <E:>`): address, then the
    ///   default; no host-name lookup.
    /// - `Srv_Features:`: host, then address, then the default; tag only.
    /// - `Connect:` and the rest (`check_relay`, `+`): host, then address, each tagged then
    ///   untagged.
    pub fn lookup_client_for(
        &self,
        tag: Tag,
        host: Option<&str>,
        addr: IpAddr,
    ) -> Option<Entry<'_>> {
        match tag {
            Tag::GreetPause => self.lookup_client(tag, false, host, addr),
            Tag::ClientRate | Tag::ClientConn => self
                .lookup_addr(tag, false, addr)
                .or_else(|| self.lookup_default(tag)),
            Tag::SrvFeatures => self
                .lookup_client(tag, false, host, addr)
                .or_else(|| self.lookup_default(tag)),
            _ => self.lookup_client(tag, true, host, addr),
        }
    }

    /// The mail-address lookup the server makes for `tag`: `From:` and `To:` fall back to
    /// untagged keys (`<+ From>`, `<+ To>`), `Spam:` does not (`<! Spam>`); the order of the
    /// steps is [`AccessMap::lookup_mail`]'s.
    pub fn lookup_mail_for(&self, tag: Tag, local: &str, domain: &str) -> Option<Entry<'_>> {
        let untagged = matches!(tag, Tag::From | Tag::To | Tag::Untagged);
        self.lookup_mail(tag, untagged, local, domain)
    }

    /// The tag's default, the `Tag:` key with nothing after the colon (ruleset `E` with an
    /// empty key, tag only). Sendmail consults it for `ClientRate:`, `ClientConn:` and
    /// `Srv_Features:`, never for `GreetPause:`; [`Tag::Untagged`] has none.
    pub fn lookup_default(&self, tag: Tag) -> Option<Entry<'_>> {
        match tag {
            Tag::Untagged => None,
            _ => self.find_name(tag, &[""]),
        }
    }

    /// A mail-address lookup in Sendmail's order for `tag` ([`UserStep::for_tag`]): the full
    /// `user@domain`, then `user@` for From:/To: or the domain and its parents for Spam:,
    /// then the other. Use [`AccessMap::lookup_mail_with`] for To:/Spam: with a domain that
    /// is not local (Sendmail skips `user@` there).
    pub fn lookup_mail(
        &self,
        tag: Tag,
        untagged: bool,
        local: &str,
        domain: &str,
    ) -> Option<Entry<'_>> {
        self.walk_mail(tag, untagged, local, domain, UserStep::for_tag(tag))
    }

    /// A mail-address lookup with the `user@` step placed explicitly.
    ///
    /// Steps: `F` (`user+detail@domain`, `user+*@domain`, `user@domain`), `U` (`user+detail@`,
    /// `user+*@`, `user@`), `D` (the domain, then its parents); the `+*` and plain forms are
    /// tried only when the local part has a `+detail`. An empty domain (an unqualified
    /// address) leaves only `U`; an empty local part leaves only `D`.
    pub fn lookup_mail_with(
        &self,
        tag: Tag,
        untagged: bool,
        local: &str,
        domain: &str,
        user: UserStep,
    ) -> Option<Entry<'_>> {
        self.walk_mail(tag, untagged, local, domain, user)
    }

    /// True when `tag` has at least one key that is not an address (and not the `Tag:`
    /// default): without one, a client lookup need not wait for reverse DNS. Untagged keys
    /// count under [`Tag::Untagged`].
    pub fn has_host_keys(&self, tag: Tag) -> bool {
        self.name_keys.get(tag.index()).is_some_and(|n| *n > 0)
    }

    fn address_keys(&self) -> usize {
        let v4: usize = self.v4_addrs.iter().map(HashMap::len).sum();
        let v6: usize = self.v6_addrs.iter().map(HashMap::len).sum();
        v4 + v6
    }

    fn entry(&self, rec: &Record) -> Entry<'_> {
        let start = rec.start as usize;
        let mid = start + rec.key_len as usize;
        let end = mid + rec.value_len as usize;
        // The offsets were taken from str boundaries when the record was stored; `get`
        // keeps even a broken invariant from panicking.
        Entry {
            tag: rec.tag,
            key: self.arena.get(start..mid).unwrap_or_default(),
            value: self.arena.get(mid..end).unwrap_or_default(),
            line: rec.line,
        }
    }
}

/// `s` without `prefix`, compared ignoring ASCII case (tags, `IPv6:`, `ERROR:`).
fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| s.get(prefix.len()..))
        .flatten()
}

#[cfg(test)]
mod tests;
