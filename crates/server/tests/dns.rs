#![allow(clippy::disallowed_methods, clippy::unwrap_used, clippy::expect_used)]
//! Client name lookup against the fake DNS server on real loopback sockets (real time).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use portcullis::dns::fake::FakeDns;
use portcullis::dns::{ClientName, HickoryLookup, NoLookup, ReverseLookup, StaticNames};

const TIMEOUT: Duration = Duration::from_secs(3);
const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 25);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x25);

async fn fake() -> FakeDns {
    FakeDns::start().await.expect("fake DNS starts")
}

fn resolver(dns: &FakeDns, timeout: Duration) -> HickoryLookup {
    HickoryLookup::new(&[dns.addr()], timeout).expect("resolver builds")
}

async fn lookup(dns: &FakeDns, addr: impl Into<IpAddr>) -> ClientName {
    resolver(dns, TIMEOUT).lookup(addr.into()).await
}

fn confirmed(name: &str) -> ClientName {
    ClientName::Confirmed(name.to_owned())
}

#[tokio::test]
async fn confirmed_name() {
    let dns = fake().await;
    dns.ptr(CLIENT.into(), "mail.example.com.");
    dns.a("mail.example.com.", CLIENT);
    let name = lookup(&dns, CLIENT).await;
    assert_eq!(name, confirmed("mail.example.com"));
    assert_eq!(name.confirmed(), Some("mail.example.com"));
    assert_eq!(dns.queries(), 2, "one PTR and one A query");
}

#[tokio::test]
async fn forward_lookup_without_the_address_is_unconfirmed() {
    let dns = fake().await;
    dns.ptr(CLIENT.into(), "forged.example.com");
    dns.a("forged.example.com", Ipv4Addr::new(198, 51, 100, 1));
    let name = lookup(&dns, CLIENT).await;
    assert_eq!(name, ClientName::Unconfirmed("forged.example.com".into()));
    assert_eq!(name.confirmed(), None);
}

#[tokio::test]
async fn forward_nxdomain_is_unconfirmed() {
    let dns = fake().await;
    dns.ptr(CLIENT.into(), "gone.example.com");
    assert_eq!(
        lookup(&dns, CLIENT).await,
        ClientName::Unconfirmed("gone.example.com".into())
    );
}

#[tokio::test]
async fn forward_nodata_is_unconfirmed() {
    let dns = fake().await;
    dns.ptr(CLIENT.into(), "v6only.example.com");
    dns.aaaa("v6only.example.com", CLIENT6);
    assert_eq!(
        lookup(&dns, CLIENT).await,
        ClientName::Unconfirmed("v6only.example.com".into())
    );
}

#[tokio::test]
async fn second_ptr_name_confirms() {
    let dns = fake().await;
    dns.ptr(CLIENT.into(), "first.example.com");
    dns.ptr(CLIENT.into(), "second.example.com");
    dns.a("first.example.com", Ipv4Addr::new(198, 51, 100, 1));
    dns.a("second.example.com", Ipv4Addr::new(198, 51, 100, 2));
    dns.a("second.example.com", CLIENT);
    assert_eq!(lookup(&dns, CLIENT).await, confirmed("second.example.com"));
}

#[tokio::test]
async fn unconfirmed_reports_the_first_ptr_name() {
    let dns = fake().await;
    dns.ptr(CLIENT.into(), "one.example.com");
    dns.ptr(CLIENT.into(), "two.example.com");
    assert_eq!(
        lookup(&dns, CLIENT).await,
        ClientName::Unconfirmed("one.example.com".into())
    );
}

#[tokio::test]
async fn no_ptr_is_no_name() {
    let dns = fake().await;
    assert_eq!(lookup(&dns, CLIENT).await, ClientName::NoName);
    assert_eq!(dns.queries(), 1, "NXDOMAIN is trusted, not retried");
}

#[tokio::test]
async fn ptr_nodata_is_no_name() {
    let dns = fake().await;
    // The PTR owner exists (an A record there) but has no PTR.
    dns.a(&arpa(CLIENT.into()), CLIENT);
    assert_eq!(lookup(&dns, CLIENT).await, ClientName::NoName);
}

#[tokio::test]
async fn stalled_ptr_is_temp_fail_within_the_timeout() {
    let dns = fake().await;
    dns.stall_ptr(CLIENT.into());
    let timeout = Duration::from_millis(600);
    let start = Instant::now();
    let name = resolver(&dns, timeout).lookup(CLIENT.into()).await;
    let elapsed = start.elapsed();
    assert_eq!(name, ClientName::TempFail);
    assert!(
        elapsed < timeout + Duration::from_secs(1),
        "took {elapsed:?}"
    );
    assert!(dns.queries() >= 1);
}

#[tokio::test]
async fn stalled_forward_lookup_is_temp_fail_within_the_timeout() {
    let dns = fake().await;
    dns.ptr(CLIENT.into(), "slow.example.com");
    dns.stall("slow.example.com");
    let timeout = Duration::from_millis(600);
    let start = Instant::now();
    let name = resolver(&dns, timeout).lookup(CLIENT.into()).await;
    let elapsed = start.elapsed();
    assert_eq!(name, ClientName::TempFail);
    assert!(
        elapsed < timeout + Duration::from_secs(1),
        "took {elapsed:?}"
    );
}

#[tokio::test]
async fn whole_lookup_is_bounded_by_the_timeout() {
    // Ten PTR names whose forward lookups never answer: each alone stays within hickory's
    // per-query budget, together they exceed the lookup's timeout, which must cut them off.
    let dns = fake().await;
    for i in 0..10 {
        let name = format!("n{i}.example.com");
        dns.ptr(CLIENT.into(), &name);
        dns.stall(&name);
    }
    let timeout = Duration::from_millis(600);
    let start = Instant::now();
    let name = resolver(&dns, timeout).lookup(CLIENT.into()).await;
    let elapsed = start.elapsed();
    assert_eq!(name, ClientName::TempFail);
    assert!(elapsed >= timeout, "took {elapsed:?}");
    assert!(
        elapsed < timeout + Duration::from_secs(1),
        "took {elapsed:?}"
    );
}

#[tokio::test]
async fn servfail_ptr_is_temp_fail() {
    let dns = fake().await;
    dns.servfail_ptr(CLIENT.into());
    assert_eq!(lookup(&dns, CLIENT).await, ClientName::TempFail);
}

#[tokio::test]
async fn servfail_forward_is_temp_fail_unless_another_name_confirms() {
    let dns = fake().await;
    dns.ptr(CLIENT.into(), "broken.example.com");
    dns.servfail("broken.example.com");
    assert_eq!(lookup(&dns, CLIENT).await, ClientName::TempFail);

    dns.ptr(CLIENT.into(), "good.example.com");
    dns.a("good.example.com", CLIENT);
    assert_eq!(lookup(&dns, CLIENT).await, confirmed("good.example.com"));
}

#[tokio::test]
async fn ipv6_client() {
    let dns = fake().await;
    dns.ptr(CLIENT6.into(), "six.example.com");
    dns.aaaa("six.example.com", CLIENT6);
    // An A record with the "same" address must not matter: an IPv6 client needs AAAA.
    dns.a("six.example.com", CLIENT);
    assert_eq!(lookup(&dns, CLIENT6).await, confirmed("six.example.com"));
}

#[tokio::test]
async fn ipv6_client_with_only_a_records_is_unconfirmed() {
    let dns = fake().await;
    dns.ptr(CLIENT6.into(), "four.example.com");
    dns.a("four.example.com", CLIENT);
    assert_eq!(
        lookup(&dns, CLIENT6).await,
        ClientName::Unconfirmed("four.example.com".into())
    );
}

#[tokio::test]
async fn ipv4_mapped_client_is_an_ipv4_client() {
    let dns = fake().await;
    dns.ptr(CLIENT.into(), "mapped.example.com");
    dns.a("mapped.example.com", CLIENT);
    let mapped: Ipv6Addr = CLIENT.to_ipv6_mapped();
    assert_eq!(lookup(&dns, mapped).await, confirmed("mapped.example.com"));
}

#[tokio::test]
async fn case_and_trailing_dot_are_normalised() {
    let dns = fake().await;
    dns.ptr(CLIENT.into(), "MX1.Example.COM.");
    dns.a("mx1.example.com", CLIENT);
    assert_eq!(lookup(&dns, CLIENT).await, confirmed("mx1.example.com"));

    let dns = fake().await;
    dns.ptr(CLIENT.into(), "Forged.Example.COM.");
    assert_eq!(
        lookup(&dns, CLIENT).await,
        ClientName::Unconfirmed("forged.example.com".into())
    );
}

#[tokio::test]
async fn invalid_ptr_names_are_skipped() {
    let dns = fake().await;
    dns.ptr(CLIENT.into(), "bad host.example.com");
    dns.ptr(CLIENT.into(), "192.0.2.25");
    dns.ptr(CLIENT.into(), "-dash.example.com");
    dns.ptr(CLIENT.into(), "ok.example.com");
    dns.a("bad host.example.com", CLIENT);
    dns.a("192.0.2.25", CLIENT);
    dns.a("ok.example.com", CLIENT);
    assert_eq!(lookup(&dns, CLIENT).await, confirmed("ok.example.com"));
    assert_eq!(dns.queries(), 2, "no forward query for the invalid names");
}

#[tokio::test]
async fn only_invalid_ptr_names_is_no_name() {
    let dns = fake().await;
    dns.ptr(CLIENT.into(), "bad host.example.com");
    dns.a("bad host.example.com", CLIENT);
    assert_eq!(lookup(&dns, CLIENT).await, ClientName::NoName);
}

#[tokio::test]
async fn at_most_ten_ptr_names_are_checked() {
    let dns = fake().await;
    for i in 0..11 {
        dns.ptr(CLIENT.into(), &format!("n{i}.example.com"));
    }
    dns.a("n10.example.com", CLIENT);
    assert_eq!(
        lookup(&dns, CLIENT).await,
        ClientName::Unconfirmed("n0.example.com".into())
    );
    assert_eq!(dns.queries(), 1 + 10);
}

#[tokio::test]
async fn answers_are_cached() {
    let dns = fake().await;
    dns.ptr(CLIENT.into(), "mail.example.com");
    dns.a("mail.example.com", CLIENT);
    let resolver = resolver(&dns, TIMEOUT);
    assert_eq!(
        resolver.lookup(CLIENT.into()).await,
        confirmed("mail.example.com")
    );
    assert_eq!(
        resolver.lookup(CLIENT.into()).await,
        confirmed("mail.example.com")
    );
    assert_eq!(dns.queries(), 2);
}

#[tokio::test]
async fn fake_server_answers_over_tcp() {
    use hickory_resolver::proto::op::{Message, Query, ResponseCode};
    use hickory_resolver::proto::rr::{Name, RecordType};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dns = fake().await;
    dns.a("tcp.example.com", CLIENT);
    let mut query = Message::query();
    query.add_query(Query::query(
        Name::from_ascii("tcp.example.com.").unwrap(),
        RecordType::A,
    ));
    let bytes = query.to_vec().unwrap();
    let mut stream = tokio::net::TcpStream::connect(dns.addr()).await.unwrap();
    stream.write_u16(bytes.len() as u16).await.unwrap();
    stream.write_all(&bytes).await.unwrap();
    let len = stream.read_u16().await.unwrap();
    let mut reply = vec![0; usize::from(len)];
    stream.read_exact(&mut reply).await.unwrap();
    let reply = Message::from_vec(&reply).unwrap();
    assert_eq!(reply.metadata.id, query.metadata.id);
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert_eq!(reply.answers.len(), 1);
    assert_eq!(reply.answers[0].data.ip_addr(), Some(CLIENT.into()));
}

#[tokio::test]
async fn lookup_future_is_small_and_static() {
    let dns = fake().await;
    let resolver: std::sync::Arc<dyn ReverseLookup> = std::sync::Arc::new(resolver(&dns, TIMEOUT));
    let future = resolver.lookup(CLIENT.into());
    let size = std::mem::size_of_val(&*future);
    println!("HickoryLookup::lookup future: {size} bytes (boxed)");
    assert!(size <= 4096, "{size} bytes");
    // 'static + Send: it runs on another task after the lookup object is gone.
    drop(resolver);
    assert_eq!(tokio::spawn(future).await.unwrap(), ClientName::NoName);
}

#[test]
fn resolver_builds_outside_a_runtime() {
    let addr = "127.0.0.1:53".parse().unwrap();
    HickoryLookup::new(&[addr], TIMEOUT).unwrap();
}

#[tokio::test]
async fn static_names() {
    let names = StaticNames::new([
        (IpAddr::from(CLIENT), "Host.Example.".to_owned()),
        (IpAddr::from(CLIENT6), "six.example".to_owned()),
        (
            IpAddr::from(Ipv4Addr::new(192, 0, 2, 99)),
            "not a host".to_owned(),
        ),
    ]);
    assert_eq!(names.lookup(CLIENT.into()).await, confirmed("host.example"));
    assert_eq!(
        names.lookup(CLIENT.to_ipv6_mapped().into()).await,
        confirmed("host.example")
    );
    assert_eq!(names.lookup(CLIENT6.into()).await, confirmed("six.example"));
    assert_eq!(
        names.lookup(Ipv4Addr::new(192, 0, 2, 99).into()).await,
        ClientName::NoName
    );
    assert_eq!(
        names.lookup(Ipv4Addr::new(192, 0, 2, 1).into()).await,
        ClientName::NoName
    );
}

#[tokio::test]
async fn no_lookup() {
    assert_eq!(NoLookup.lookup(CLIENT.into()).await, ClientName::NoName);
    assert_eq!(NoLookup.lookup(CLIENT6.into()).await, ClientName::NoName);
}

/// The reverse name of `ip`, as text (`25.2.0.192.in-addr.arpa.`).
fn arpa(ip: IpAddr) -> String {
    hickory_resolver::proto::rr::Name::from(ip).to_ascii()
}
