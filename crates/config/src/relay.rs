//! `[relay]` (who may relay, and to where) and `[[route]]` (Sendmail's mailertable: where a
//! domain's mail goes next).
//!
//! Role: turn the raw tables into [`RelayConfig`] and [`Routes`], reporting every mistake
//! at its line. Sendmail equivalents: class `R` / `relay-domains` and `Connect:… RELAY`
//! for the first, `FEATURE(mailertable)` for the second (`.example.net` matches the
//! subdomains of example.net, as a mailertable key with a leading dot does).
//! A route's `verify` and `ca_file` (TLS towards its next hop) are read by `route_tls`; they
//! belong to the next hop, so routes sharing one must agree on them.
//! Must not: decide about a recipient (the policy crate does) or resolve a next hop.

use std::net::IpAddr;

use ipnet::IpNet;
use toml::Spanned;

use crate::diagnostic::Report;
use crate::names::normalize_domain;
use crate::next_hop::NextHop;
use crate::raw::{RawRelay, RawRoute, TextList};
use crate::route_tls::{RouteTls, route_tls};

/// `[relay]`: relaying rights. Which recipients the domains let through is the policy
/// crate's decision (`LocalRecipients::with_relay_domains`), made in one place.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RelayConfig {
    /// Domains accepted from any client and routed onward; `.example.net` is every
    /// subdomain of example.net. Lowercase, no trailing dot.
    pub domains: Vec<String>,
    /// Clients that may relay to any domain.
    pub networks: Vec<IpNet>,
}

impl RelayConfig {
    /// True when `addr` is in one of `networks` (an IPv4-mapped IPv6 client is its IPv4
    /// address).
    pub fn client_may_relay(&self, addr: IpAddr) -> bool {
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
            v4 => v4,
        };
        self.networks.iter().any(|n| n.contains(&addr))
    }
}

/// Where a route applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteDomain {
    /// `example.net`: that domain only.
    Exact(String),
    /// `.example.net`: every subdomain of example.net (not example.net itself).
    Subdomains(String),
    /// `*`: every domain no other route names.
    Any,
}

/// As written: `example.net`, `.example.net` or `*`.
impl std::fmt::Display for RouteDomain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exact(d) => f.write_str(d),
            Self::Subdomains(parent) => write!(f, ".{parent}"),
            Self::Any => f.write_str("*"),
        }
    }
}

/// One `[[route]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub domain: RouteDomain,
    pub next_hop: NextHop,
    /// STARTTLS towards `next_hop` (`verify`, `ca_file`).
    pub tls: RouteTls,
}

/// The routing table, in the order lookups try it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Routes {
    routes: Vec<Route>,
}

impl Routes {
    /// A table of these routes.
    pub fn new(routes: Vec<Route>) -> Self {
        Self { routes }
    }

    /// The next hop for mail to `domain`, as Sendmail's mailertable finds it: the exact
    /// domain, then `.parent` for each parent from the nearest, then `*`. None: the
    /// domain's own MX hosts.
    pub fn lookup(&self, domain: &str) -> Option<&NextHop> {
        let d = domain
            .strip_suffix('.')
            .unwrap_or(domain)
            .to_ascii_lowercase();
        let find = |want: &dyn Fn(&RouteDomain) -> bool| {
            self.routes
                .iter()
                .find(|r| want(&r.domain))
                .map(|r| &r.next_hop)
        };
        if let Some(hop) = find(&|r| matches!(r, RouteDomain::Exact(e) if *e == d)) {
            return Some(hop);
        }
        let mut rest = d.as_str();
        while let Some((_, parent)) = rest.split_once('.') {
            if let Some(hop) = find(&|r| matches!(r, RouteDomain::Subdomains(s) if s == parent)) {
                return Some(hop);
            }
            rest = parent;
        }
        find(&|r| matches!(r, RouteDomain::Any))
    }

    /// The TLS settings of the routes through `hop` (they agree), or None when no route
    /// names it (opportunistic TLS, any certificate).
    pub fn tls_for(&self, hop: &NextHop) -> Option<&RouteTls> {
        self.routes
            .iter()
            .find(|r| r.next_hop == *hop)
            .map(|r| &r.tls)
    }

    /// Every route, in the order written.
    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }

    /// True when no route is configured.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

/// A domain pattern: `example.net` or `.example.net`, normalised.
fn domain_pattern(text: &str) -> Result<String, String> {
    let (dot, bare) = match text.strip_prefix('.') {
        Some(rest) => (".", rest),
        None => ("", text),
    };
    normalize_domain(bare)
        .map(|d| format!("{dot}{d}"))
        .map_err(|why| format!("{text:?} {why}"))
}

pub(crate) fn relay(raw: &RawRelay, report: &mut Report<'_>) -> RelayConfig {
    let mut domains = Vec::new();
    for item in list(&raw.domains) {
        match domain_pattern(item.get_ref()) {
            Ok(d) if domains.contains(&d) => {}
            Ok(d) => domains.push(d),
            Err(why) => report.error(Some(item.span()), format!("`relay.domains`: {why}")),
        }
    }
    let mut networks = Vec::new();
    for item in list(&raw.networks) {
        match parse_network(item.get_ref()) {
            Ok(net) => {
                if net.prefix_len() == 0 {
                    report.warning(
                        Some(item.span()),
                        format!(
                            "`relay.networks`: {:?} lets every client on the Internet relay \
                             (an open relay)",
                            item.get_ref()
                        ),
                    );
                }
                if !networks.contains(&net) {
                    networks.push(net);
                }
            }
            Err(why) => report.error(Some(item.span()), format!("`relay.networks`: {why}")),
        }
    }
    RelayConfig { domains, networks }
}

/// `192.0.2.0/24`, `2001:db8::/32`, or a single address (`/32` or `/128`). Host bits set
/// below the prefix are an error: `192.0.2.1/24` is probably a typo for something else.
fn parse_network(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<IpAddr>() {
        return Ok(IpNet::from(addr));
    }
    let net: IpNet = text
        .parse()
        .map_err(|_| format!("{text:?} is not an address or a network like 192.0.2.0/24"))?;
    if net.trunc() != net {
        return Err(format!(
            "{text:?} has host bits set below the prefix; did you mean {}?",
            net.trunc()
        ));
    }
    Ok(net)
}

pub(crate) fn routes(
    raw: &[Spanned<RawRoute>],
    local_domains: &[String],
    report: &mut Report<'_>,
) -> Routes {
    let mut routes: Vec<Route> = Vec::new();
    for entry in raw {
        let span = entry.span();
        let r = entry.get_ref();
        let (Some(domain), Some(hop)) = (&r.domain, &r.next_hop) else {
            report.error(
                Some(span),
                "a `[[route]]` needs both `domain` and `next_hop`".to_owned(),
            );
            continue;
        };
        let text = domain.get_ref().trim();
        let parsed = if text == "*" {
            Ok(RouteDomain::Any)
        } else {
            domain_pattern(text).map(|d| match d.strip_prefix('.') {
                Some(parent) => RouteDomain::Subdomains(parent.to_owned()),
                None => RouteDomain::Exact(d),
            })
        };
        let route_domain = match parsed {
            Ok(d) => d,
            Err(why) => {
                report.error(Some(domain.span()), format!("`route.domain`: {why}"));
                continue;
            }
        };
        if routes.iter().any(|x| x.domain == route_domain) {
            report.error(
                Some(domain.span()),
                format!("`route.domain`: {text:?} has a route already"),
            );
            continue;
        }
        if let RouteDomain::Exact(d) = &route_domain
            && local_domains.contains(d)
        {
            report.warning(
                Some(domain.span()),
                format!(
                    "`route.domain`: {d:?} is a local domain (`local.domains`); its mail is \
                     delivered to Maildir and this route is not used"
                ),
            );
        }
        let next_hop = match NextHop::parse(hop.get_ref()) {
            Ok(next_hop) => next_hop,
            Err(why) => {
                report.error(Some(hop.span()), format!("`route.next_hop`: {why}"));
                continue;
            }
        };
        let tls = route_tls(&next_hop, r.verify.as_ref(), r.ca_file.as_ref(), report);
        // One session to a next hop carries the mail of every domain routed there, so the
        // TLS settings are the hop's: two routes that disagree cannot both be honoured.
        if let Some(other) = routes
            .iter()
            .find(|x| x.next_hop == next_hop && x.tls != tls)
        {
            report.error(
                Some(span),
                format!(
                    "`[[route]]`: {next_hop} is also the next hop of the route for {}, with                      other `verify`/`ca_file` settings; one connection carries both domains'                      mail, so give them the same settings",
                    other.domain
                ),
            );
            continue;
        }
        routes.push(Route {
            domain: route_domain,
            next_hop,
            tls,
        });
    }
    Routes { routes }
}

fn list(raw: &TextList) -> impl Iterator<Item = &Spanned<String>> {
    raw.iter().flat_map(|l| l.get_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hop(text: &str) -> NextHop {
        NextHop::parse(text).unwrap()
    }

    #[test]
    fn lookup_order_is_mailertable_order() {
        let routes = Routes::new(vec![
            Route {
                domain: RouteDomain::Any,
                tls: RouteTls::default(),
                next_hop: hop("smtp:[192.0.2.9]"),
            },
            Route {
                domain: RouteDomain::Subdomains("example.net".into()),
                tls: RouteTls::default(),
                next_hop: hop("smtp:[192.0.2.2]"),
            },
            Route {
                domain: RouteDomain::Exact("example.net".into()),
                tls: RouteTls::default(),
                next_hop: hop("smtp:[192.0.2.1]"),
            },
            Route {
                domain: RouteDomain::Subdomains("a.example.net".into()),
                tls: RouteTls::default(),
                next_hop: hop("smtp:[192.0.2.3]"),
            },
        ]);
        let at = |d: &str| routes.lookup(d).map(ToString::to_string);
        assert_eq!(at("Example.NET.").as_deref(), Some("smtp:[192.0.2.1]:25"));
        assert_eq!(at("mx.example.net").as_deref(), Some("smtp:[192.0.2.2]:25"));
        assert_eq!(
            at("b.a.example.net").as_deref(),
            Some("smtp:[192.0.2.3]:25")
        );
        assert_eq!(at("a.example.net").as_deref(), Some("smtp:[192.0.2.2]:25"));
        assert_eq!(at("badexample.net").as_deref(), Some("smtp:[192.0.2.9]:25"));
        assert_eq!(at("example.org").as_deref(), Some("smtp:[192.0.2.9]:25"));
        assert_eq!(Routes::default().lookup("example.net"), None);
    }

    #[test]
    fn relay_networks_match() {
        let relay = RelayConfig {
            domains: vec!["example.net".into(), ".sub.example.org".into()],
            networks: vec![
                "192.0.2.0/24".parse().unwrap(),
                "2001:db8::/32".parse().unwrap(),
            ],
        };
        assert!(relay.client_may_relay("192.0.2.77".parse().unwrap()));
        assert!(relay.client_may_relay("::ffff:192.0.2.77".parse().unwrap()));
        assert!(relay.client_may_relay("2001:db8::5".parse().unwrap()));
        assert!(!relay.client_may_relay("198.51.100.1".parse().unwrap()));
    }

    #[test]
    fn networks_parse_strictly() {
        assert_eq!(
            parse_network("127.0.0.1").unwrap(),
            "127.0.0.1/32".parse::<IpNet>().unwrap()
        );
        assert!(parse_network("10.0.0.0/8").is_ok());
        assert!(
            parse_network("10.0.0.1/8")
                .unwrap_err()
                .contains("10.0.0.0/8")
        );
        assert!(parse_network("10.0.0/8").is_err());
        assert!(parse_network("example.net").is_err());
    }
}
