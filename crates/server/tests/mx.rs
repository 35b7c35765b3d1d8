#![allow(clippy::disallowed_methods, clippy::unwrap_used, clippy::expect_used)]
//! MX resolution against the fake DNS server on real loopback sockets (real time).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_resolver::proto::rr::RecordType;
use portcullis::dns::fake::FakeDns;
use portcullis::dns::mx::{
    HickoryMx, MAX_ADDRS_PER_HOST, MAX_MX_HOSTS, MxError, MxLookup, StaticMx, Target,
};

const TIMEOUT: Duration = Duration::from_secs(3);
/// Short, for the stalled-name tests; real time, so real sockets time out for real.
const SHORT: Duration = Duration::from_millis(300);
/// Scheduling slack on top of a timeout.
const SLACK: Duration = Duration::from_millis(500);

fn v4(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, n)
}

fn v6(n: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, n)
}

async fn fake() -> FakeDns {
    FakeDns::start().await.expect("fake DNS starts")
}

fn resolver(dns: &FakeDns, timeout: Duration) -> HickoryMx {
    HickoryMx::new(&[dns.addr()], timeout)
        .expect("resolver builds")
        .with_seed(1)
}

async fn lookup(dns: &FakeDns, domain: &str) -> Result<Vec<Target>, MxError> {
    resolver(dns, TIMEOUT).lookup(domain).await
}

fn target(host: &str, preference: u16, addrs: &[IpAddr]) -> Target {
    Target {
        host: host.to_owned(),
        preference,
        addrs: addrs.to_vec(),
    }
}

fn hosts(targets: &[Target]) -> Vec<(u16, &str)> {
    targets
        .iter()
        .map(|t| (t.preference, t.host.as_str()))
        .collect()
}

#[tokio::test]
async fn sorted_by_preference() {
    let dns = fake().await;
    dns.mx("example.net", 30, "mx3.example.net");
    dns.mx("example.net", 10, "mx1.example.net");
    dns.mx("example.net", 20, "mx2.example.org");
    dns.a("mx1.example.net", v4(1));
    dns.a("mx2.example.org", v4(2));
    dns.aaaa("mx3.example.net", v6(3));
    let found = lookup(&dns, "example.net").await.unwrap();
    assert_eq!(
        found,
        [
            target("mx1.example.net", 10, &[v4(1).into()]),
            target("mx2.example.org", 20, &[v4(2).into()]),
            target("mx3.example.net", 30, &[v6(3).into()]),
        ]
    );
    assert_eq!(
        dns.queries(),
        1 + 3 * 2,
        "one MX query, A and AAAA per host"
    );
}

#[tokio::test]
async fn ipv4_addresses_come_first() {
    let dns = fake().await;
    dns.mx("example.net", 10, "mx.example.net");
    dns.aaaa("mx.example.net", v6(1));
    dns.a("mx.example.net", v4(1));
    dns.aaaa("mx.example.net", v6(2));
    dns.a("mx.example.net", v4(2));
    let found = lookup(&dns, "example.net").await.unwrap();
    assert_eq!(
        found[0].addrs,
        [
            IpAddr::from(v4(1)),
            v4(2).into(),
            v6(1).into(),
            v6(2).into()
        ]
    );
}

#[tokio::test]
async fn equal_preferences_are_shuffled() {
    let dns = fake().await;
    dns.mx("example.net", 5, "best.example.net");
    for name in ["a.example.net", "b.example.net", "c.example.net"] {
        dns.mx("example.net", 10, name);
        dns.a(name, v4(10));
    }
    dns.a("best.example.net", v4(5));
    let mx = resolver(&dns, TIMEOUT);
    let mut orders = HashSet::new();
    for _ in 0..40 {
        let found = mx.lookup("example.net").await.unwrap();
        assert_eq!(hosts(&found)[0], (5, "best.example.net"));
        let rest: Vec<&str> = found[1..].iter().map(|t| t.host.as_str()).collect();
        let mut sorted = rest.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, ["a.example.net", "b.example.net", "c.example.net"]);
        orders.insert(rest.join(","));
    }
    assert!(orders.len() > 1, "always {orders:?}");

    // The same seed gives the same sequence of orders.
    let first = resolver(&dns, TIMEOUT);
    let second = resolver(&dns, TIMEOUT);
    for _ in 0..5 {
        assert_eq!(
            first.lookup("example.net").await.unwrap(),
            second.lookup("example.net").await.unwrap()
        );
    }
}

#[tokio::test]
async fn no_mx_means_the_implicit_mx() {
    let dns = fake().await;
    dns.a("example.net", v4(1));
    dns.aaaa("example.net", v6(1));
    assert_eq!(
        lookup(&dns, "example.net").await,
        Ok(vec![target(
            "example.net",
            0,
            &[v4(1).into(), v6(1).into()]
        )])
    );
    assert_eq!(
        dns.queries(),
        3,
        "MX (NODATA), then A and AAAA of the domain"
    );
}

#[tokio::test]
async fn implicit_mx_without_addresses() {
    let dns = fake().await;
    dns.exists("example.net");
    assert_eq!(
        lookup(&dns, "example.net").await,
        Err(MxError::NoAddresses("example.net".into()))
    );
}

#[tokio::test]
async fn implicit_mx_temporary_failure() {
    // The MX query says NODATA, then the address queries fail.
    let dns = fake().await;
    dns.exists("example.net");
    dns.servfail_type("example.net", RecordType::A);
    dns.servfail_type("example.net", RecordType::AAAA);
    let result = lookup(&dns, "example.net").await;
    match result {
        Err(MxError::Temporary(text)) => assert!(text.contains("example.net"), "{text}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn null_mx() {
    let dns = fake().await;
    dns.mx("example.net", 0, ".");
    dns.a("example.net", v4(1));
    let result = lookup(&dns, "example.net").await;
    assert_eq!(result, Err(MxError::NullMx));
    assert!(result.unwrap_err().is_permanent());
    assert_eq!(dns.queries(), 1, "no address lookup after a null MX");
}

#[tokio::test]
async fn null_mx_with_another_preference_is_still_null() {
    let dns = fake().await;
    dns.mx("example.net", 10, ".");
    assert_eq!(lookup(&dns, "example.net").await, Err(MxError::NullMx));
}

#[tokio::test]
async fn root_exchange_among_others_is_skipped() {
    let dns = fake().await;
    dns.mx("example.net", 0, ".");
    dns.mx("example.net", 10, "mx.example.net");
    dns.a("mx.example.net", v4(1));
    assert_eq!(
        lookup(&dns, "example.net").await,
        Ok(vec![target("mx.example.net", 10, &[v4(1).into()])])
    );
}

#[tokio::test]
async fn nxdomain_is_no_such_domain() {
    let dns = fake().await;
    let result = lookup(&dns, "nowhere.example").await;
    assert_eq!(result, Err(MxError::NoSuchDomain));
    assert!(result.unwrap_err().is_permanent());
    assert_eq!(dns.queries(), 1, "no hosts file with explicit servers");
}

#[tokio::test]
async fn invalid_domain_is_no_such_domain() {
    let dns = fake().await;
    for domain in ["bad domain.example", "192.0.2.1", "", "a..b"] {
        assert_eq!(
            lookup(&dns, domain).await,
            Err(MxError::NoSuchDomain),
            "{domain:?}"
        );
    }
    assert_eq!(dns.queries(), 0);
}

#[tokio::test]
async fn servfail_is_temporary() {
    let dns = fake().await;
    dns.servfail("example.net");
    let result = lookup(&dns, "example.net").await;
    match &result {
        Err(MxError::Temporary(text)) => assert!(text.contains("example.net"), "{text}"),
        other => panic!("{other:?}"),
    }
    assert!(!result.unwrap_err().is_permanent());
}

#[tokio::test]
async fn stalled_domain_is_temporary_within_the_timeout() {
    let dns = fake().await;
    dns.stall("example.net");
    let start = Instant::now();
    let result = resolver(&dns, SHORT).lookup("example.net").await;
    let elapsed = start.elapsed();
    assert!(matches!(result, Err(MxError::Temporary(_))), "{result:?}");
    assert!(elapsed < SHORT + SLACK, "took {elapsed:?}");
    assert!(dns.queries() >= 1);
}

#[tokio::test]
async fn stalled_hosts_are_temporary_within_the_timeout() {
    let dns = fake().await;
    for name in ["mx1.example.net", "mx2.example.net"] {
        dns.mx("example.net", 10, name);
        dns.stall(name);
    }
    let start = Instant::now();
    let result = resolver(&dns, SHORT).lookup("example.net").await;
    let elapsed = start.elapsed();
    assert!(matches!(result, Err(MxError::Temporary(_))), "{result:?}");
    assert!(elapsed < SHORT + SLACK, "took {elapsed:?}");
}

#[tokio::test]
async fn a_stalled_host_does_not_hide_the_others() {
    let dns = fake().await;
    dns.mx("example.net", 10, "slow.example.net");
    dns.mx("example.net", 20, "ok.example.net");
    dns.stall("slow.example.net");
    dns.a("ok.example.net", v4(2));
    let start = Instant::now();
    let result = resolver(&dns, SHORT).lookup("example.net").await;
    let elapsed = start.elapsed();
    assert_eq!(
        result,
        Ok(vec![target("ok.example.net", 20, &[v4(2).into()])])
    );
    assert!(elapsed < SHORT + SLACK, "took {elapsed:?}");
}

#[tokio::test]
async fn hosts_without_addresses_are_skipped() {
    let dns = fake().await;
    dns.mx("example.net", 10, "gone.example.net"); // NXDOMAIN
    dns.mx("example.net", 20, "mx-only.example.net"); // NODATA for A and AAAA
    dns.mx("mx-only.example.net", 10, "elsewhere.example.net");
    dns.mx("example.net", 30, "ok.example.net");
    dns.aaaa("ok.example.net", v6(3));
    assert_eq!(
        lookup(&dns, "example.net").await,
        Ok(vec![target("ok.example.net", 30, &[v6(3).into()])])
    );
}

#[tokio::test]
async fn no_host_with_an_address_is_no_addresses() {
    let dns = fake().await;
    dns.mx("example.net", 10, "gone.example.net");
    dns.mx("example.net", 20, "mx-only.example.net");
    dns.mx("mx-only.example.net", 10, "elsewhere.example.net");
    let result = lookup(&dns, "example.net").await;
    // The last host in MX order is the one named, as Sendmail does.
    assert_eq!(
        result,
        Err(MxError::NoAddresses("mx-only.example.net".into()))
    );
    assert!(result.unwrap_err().is_permanent());
}

#[tokio::test]
async fn a_temporary_failure_dominates_missing_addresses() {
    let dns = fake().await;
    dns.mx("example.net", 10, "gone.example.net");
    dns.mx("example.net", 20, "broken.example.net");
    dns.servfail("broken.example.net");
    let result = lookup(&dns, "example.net").await;
    match result {
        Err(MxError::Temporary(text)) => assert!(text.contains("broken.example.net"), "{text}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_host_with_one_family_failing_keeps_the_other() {
    // A server that answers A but fails AAAA (Sendmail's WorkAroundBrokenAAAA case).
    let dns = fake().await;
    dns.mx("example.net", 10, "mx.example.net");
    dns.a("mx.example.net", v4(1));
    dns.servfail_type("mx.example.net", RecordType::AAAA);
    assert_eq!(
        lookup(&dns, "example.net").await,
        Ok(vec![target("mx.example.net", 10, &[v4(1).into()])])
    );
}

#[tokio::test]
async fn a_host_with_both_families_failing_is_skipped() {
    let dns = fake().await;
    dns.mx("example.net", 10, "broken.example.net");
    dns.mx("example.net", 20, "ok.example.net");
    dns.servfail("broken.example.net");
    dns.a("ok.example.net", v4(2));
    assert_eq!(
        lookup(&dns, "example.net").await,
        Ok(vec![target("ok.example.net", 20, &[v4(2).into()])])
    );
}

#[tokio::test]
async fn at_most_ten_hosts() {
    let dns = fake().await;
    for i in 0..(MAX_MX_HOSTS as u16 + 2) {
        let name = format!("mx{i:02}.example.net");
        dns.mx("example.net", i, &name);
        dns.a(&name, v4(u8::try_from(i).unwrap()));
    }
    let found = lookup(&dns, "example.net").await.unwrap();
    assert_eq!(found.len(), MAX_MX_HOSTS);
    assert_eq!(found.last().unwrap().host, "mx09.example.net");
    assert_eq!(
        dns.queries(),
        1 + 2 * MAX_MX_HOSTS,
        "no query for the hosts cut off"
    );
}

#[tokio::test]
async fn at_most_ten_addresses_per_host() {
    let dns = fake().await;
    dns.mx("example.net", 10, "many.example.net");
    dns.mx("example.net", 20, "both.example.net");
    for i in 0..12 {
        dns.a("many.example.net", v4(i));
    }
    for i in 0..8 {
        dns.a("both.example.net", v4(100 + i));
        dns.aaaa("both.example.net", v6(u16::from(i)));
    }
    let found = lookup(&dns, "example.net").await.unwrap();
    assert_eq!(found[0].addrs.len(), MAX_ADDRS_PER_HOST);
    assert_eq!(
        found[0].addrs,
        (0..10).map(|i| IpAddr::from(v4(i))).collect::<Vec<_>>()
    );
    // Both families survive the cap.
    let both = &found[1].addrs;
    assert_eq!(both.len(), MAX_ADDRS_PER_HOST);
    assert_eq!(both.iter().filter(|a| a.is_ipv4()).count(), 5);
    assert_eq!(both.iter().filter(|a| a.is_ipv6()).count(), 5);
}

#[tokio::test]
async fn invalid_exchanges_are_skipped() {
    let dns = fake().await;
    dns.mx("example.net", 10, "bad host.example.net");
    dns.mx("example.net", 20, "192.0.2.1");
    dns.mx("example.net", 30, "-dash.example.net");
    dns.mx("example.net", 40, "ok.example.net");
    dns.a("bad host.example.net", v4(1));
    dns.a("192.0.2.1", v4(1));
    dns.a("-dash.example.net", v4(1));
    dns.a("ok.example.net", v4(4));
    assert_eq!(
        lookup(&dns, "example.net").await,
        Ok(vec![target("ok.example.net", 40, &[v4(4).into()])])
    );
    assert_eq!(dns.queries(), 1 + 2, "no address query for invalid names");
}

#[tokio::test]
async fn only_invalid_exchanges_is_no_addresses() {
    let dns = fake().await;
    dns.mx("example.net", 10, "bad host.example.net");
    dns.a("bad host.example.net", v4(1));
    dns.a("example.net", v4(2));
    // MX records exist, so there is no implicit MX.
    assert_eq!(
        lookup(&dns, "example.net").await,
        Err(MxError::NoAddresses("example.net".into()))
    );
}

#[tokio::test]
async fn repeated_hosts_are_tried_once() {
    let dns = fake().await;
    dns.mx("example.net", 20, "mx.example.net");
    dns.mx("example.net", 10, "MX.example.net.");
    dns.a("mx.example.net", v4(1));
    assert_eq!(
        lookup(&dns, "example.net").await,
        Ok(vec![target("mx.example.net", 10, &[v4(1).into()])])
    );
}

#[tokio::test]
async fn case_and_trailing_dots_are_normalised() {
    let dns = fake().await;
    dns.mx("example.net", 10, "MX1.Example.NET.");
    dns.a("mx1.example.net", v4(1));
    dns.a("example.org", v4(2));
    let mx = resolver(&dns, TIMEOUT);
    let want = Ok(vec![target("mx1.example.net", 10, &[v4(1).into()])]);
    assert_eq!(mx.lookup("Example.NET.").await, want);
    assert_eq!(mx.lookup("example.net").await, want);
    assert_eq!(
        mx.lookup("EXAMPLE.ORG.").await,
        Ok(vec![target("example.org", 0, &[v4(2).into()])])
    );
}

#[tokio::test]
async fn answers_are_cached_but_shuffled_per_lookup() {
    let dns = fake().await;
    dns.mx("example.net", 10, "a.example.net");
    dns.mx("example.net", 10, "b.example.net");
    dns.a("a.example.net", v4(1));
    dns.a("b.example.net", v4(2));
    // Positive answers only: the fake's NODATA carries no SOA, so it has no negative TTL.
    dns.aaaa("a.example.net", v6(1));
    dns.aaaa("b.example.net", v6(2));
    let mx = resolver(&dns, TIMEOUT);
    let mut first = HashSet::new();
    for _ in 0..20 {
        first.insert(mx.lookup("example.net").await.unwrap()[0].host.clone());
    }
    assert_eq!(
        dns.queries(),
        1 + 2 * 2,
        "later lookups come from the cache"
    );
    assert_eq!(first.len(), 2, "both hosts come first sometimes: {first:?}");
}

#[tokio::test]
async fn lookup_future_is_static_and_send() {
    let dns = fake().await;
    dns.mx("example.net", 10, "mx.example.net");
    dns.a("mx.example.net", v4(1));
    let mx: Arc<dyn MxLookup> = Arc::new(resolver(&dns, TIMEOUT));
    let future = mx.lookup("example.net");
    let size = std::mem::size_of_val(&*future);
    println!("HickoryMx::lookup future: {size} bytes (boxed)");
    drop(mx);
    assert_eq!(
        tokio::spawn(future).await.unwrap(),
        Ok(vec![target("mx.example.net", 10, &[v4(1).into()])])
    );
}

#[test]
fn resolver_builds_outside_a_runtime() {
    let addr = "127.0.0.1:53".parse().unwrap();
    HickoryMx::new(&[addr], TIMEOUT).unwrap();
}

#[tokio::test]
async fn static_mx() {
    let mx = StaticMx::new([
        (
            "Example.NET.".to_owned(),
            vec![target("mx.example.net", 10, &[v4(1).into()])],
        ),
        ("empty.example".to_owned(), Vec::new()),
        ("not a domain".to_owned(), Vec::new()),
    ])
    .with_error("null.example", MxError::NullMx)
    .with_error("later.example", MxError::Temporary("test".into()));
    assert_eq!(
        mx.lookup("example.net").await,
        Ok(vec![target("mx.example.net", 10, &[v4(1).into()])])
    );
    assert_eq!(
        mx.lookup("empty.example").await,
        Err(MxError::NoAddresses("empty.example".into()))
    );
    assert_eq!(mx.lookup("null.example").await, Err(MxError::NullMx));
    assert_eq!(
        mx.lookup("LATER.example.").await,
        Err(MxError::Temporary("test".into()))
    );
    assert_eq!(
        mx.lookup("unknown.example").await,
        Err(MxError::NoSuchDomain)
    );
    assert_eq!(mx.lookup("not a domain").await, Err(MxError::NoSuchDomain));
}

#[tokio::test]
async fn fake_server_serves_mx_and_nodata_for_mx_only_names() {
    use hickory_resolver::proto::op::{Message, Query, ResponseCode};
    use hickory_resolver::proto::rr::{Name, RData};

    let dns = fake().await;
    dns.mx("example.net", 0, ".");
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(dns.addr()).await.unwrap();
    let ask = |record_type| {
        let mut query = Message::query();
        query.add_query(Query::query(
            Name::from_ascii("example.net.").unwrap(),
            record_type,
        ));
        query.to_vec().unwrap()
    };
    let mut buf = vec![0; 4096];

    socket.send(&ask(RecordType::MX)).await.unwrap();
    let len = socket.recv(&mut buf).await.unwrap();
    let reply = Message::from_vec(&buf[..len]).unwrap();
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert_eq!(reply.answers.len(), 1);
    match &reply.answers[0].data {
        RData::MX(mx) => {
            assert_eq!(mx.preference, 0);
            assert!(mx.exchange.is_root());
        }
        other => panic!("{other:?}"),
    }

    socket.send(&ask(RecordType::A)).await.unwrap();
    let len = socket.recv(&mut buf).await.unwrap();
    let reply = Message::from_vec(&buf[..len]).unwrap();
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert!(reply.answers.is_empty(), "NODATA, not NXDOMAIN");
}
