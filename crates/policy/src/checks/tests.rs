use std::net::IpAddr;

use portcullis_smtp::address::parse_path;
use proptest::prelude::*;

use super::*;

/// The reference's `ak.access` (section k), line for line.
const AK: &str = "\
Connect:127.0.0.2\tREJECT
Connect:127.0.0.3\tERROR:\"421 4.7.1 Go away, you are blocked\"
Connect:127.0.0.4\tERROR:5.7.2:\"550 Your network is blocked\"
Connect:client11.example.test\tDISCARD
From:spammer@example.org\tREJECT
From:example.com\tERROR:\"550 We do not accept mail from example.com\"
From:enh.example.com\tERROR:5.7.9:\"550 Blocked with custom enhanced code\"
From:tmp.example.com\tERROR:4.3.9:\"451 Temporarily blocked\"
From:friend.example.org\tOK
To:blocked@mx.example.test\tREJECT
To:disabled@mx.example.test\tERROR:\"550 Mailbox disabled for this recipient\"
To:later@mx.example.test\tERROR:4.2.1:\"450 Mailbox busy, try later\"
To:rcpt5@mx.example.test\tDISCARD
";

/// The reference's `akd` map (delay_checks friend), plus a few rows to exercise more.
const AKD: &str = "\
Connect:127.0.0.2\tREJECT
From:spammer@example.org\tREJECT
Spam:rcpt1@mx.example.test\tFRIEND
Spam:rcpt2@mx.example.test\tFRIEND
Connect:127.0.0.3\tERROR:\"421 4.7.1 Go away, you are blocked\"
Connect:127.0.0.4\tERROR:5.7.2:\"550 Your network is blocked\"
Connect:127.0.0.5\tDISCARD
Connect:127.0.0.6\tOK
From:tmp.example.com\tERROR:4.3.9:\"451 Temporarily blocked\"
From:discard.example.com\tDISCARD
From:friend.example.org\tOK
Spam:rcpt4@mx.example.test\tHATER
To:blocked@mx.example.test\tREJECT
";

/// SKIP, untagged keys, unknown values, odd codes, IPv6, Postmaster.
const ODD: &str = "\
127.0.0.1\t0
Connect:127.0.0\tREJECT
Connect:127.0.0.9\tSKIP
Connect:10.0.0.1\tFRIEND
Connect:10.0.0.2\tERROR:\"250 fine\"
Connect:10.0.0.3\tERROR:\"go away\"
Connect:10.0.0.4\tERROR:\"451 try later\"
Connect:10.0.0.5\tERROR:5.1.1:\"550 5.7.3 own code wins\"
Connect:10.0.0.6\t550 spelled as a reply
Connect:10.0.0.7\tERROR:9.9.9:\"550 bad explicit code\"
Connect:10.0.0.8\tERROR:\"999 nonsense\"
Connect:10.0.0.9\tERROR:\"\"
Connect:10.0.0.10\tQUARANTINE:held
Connect:192.0.2.1\tOK
Connect:192.0.2.2\tRELAY
Connect:IPv6:0:0:0:0:0:0:0:1\tREJECT
Connect:IPv6:2001:db8\tERROR:\"421 4.7.1 Go away\"
From:example.com\tREJECT
From:skip.example.com\tSKIP
spam.example\tREJECT
From:relay.example.net\tRELAY
To:postmaster@\tREJECT
To:ok@mx.example.test\tOK
";

fn map(text: &str) -> AccessMap {
    match AccessMap::parse("access", text.as_bytes()) {
        Ok(p) => p.map,
        Err(e) => panic!("{e:?}"),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn path(s: &str) -> ReversePath {
    parse_path(s).unwrap()
}

/// A finding as one comparable string: the reply, `discard`, `OK`, `RELAY`, or `-`.
fn said(f: Option<&Finding>) -> String {
    match f.map(|f| &f.outcome) {
        None => "-".into(),
        Some(Outcome::Reject(r)) => r.to_log_string(),
        Some(Outcome::Discard) => "discard".into(),
        Some(Outcome::Accept) => "OK".into(),
        Some(Outcome::Relay) => "RELAY".into(),
    }
}

fn step(s: &RcptStep) -> String {
    match s {
        RcptStep::Check => "check".into(),
        RcptStep::AcceptUnchecked => "accept unchecked".into(),
        RcptStep::Act(f) => said(Some(f)),
    }
}

fn connect(
    m: &AccessMap,
    mode: DelayChecks,
    host: Option<&str>,
    a: &str,
) -> (SessionChecks, Option<Finding>) {
    SessionChecks::connect(m, mode, host, ip(a))
}

#[test]
fn connect_replies_without_delay_checks() {
    let ak = map(AK);
    let odd = map(ODD);
    let table: &[(&AccessMap, Option<&str>, &str, &str)] = &[
        (
            &ak,
            Some("client2.example.test"),
            "127.0.0.2",
            "550 5.7.1 Access denied",
        ),
        (&ak, None, "127.0.0.3", "421 4.7.1 Go away, you are blocked"),
        (&ak, None, "127.0.0.4", "550 5.7.2 Your network is blocked"),
        (&ak, Some("client11.example.test"), "127.0.1.1", "discard"),
        (&ak, Some("client11.example.test."), "127.0.1.1", "discard"),
        (&ak, Some("localhost"), "127.0.0.1", "-"),
        (&ak, None, "::ffff:127.0.0.2", "550 5.7.1 Access denied"),
        // Untagged key with a stray value (observed: reject=553 5.3.0 0).
        (&odd, Some("localhost"), "127.0.0.1", "553 5.3.0 0"),
        (&odd, None, "127.0.0.8", "550 5.7.1 Access denied"),
        // SKIP ends the lookup: the shorter Connect:127.0.0 is not reached.
        (&odd, None, "127.0.0.9", "-"),
        (&odd, None, "10.0.0.1", "553 5.3.0 FRIEND"),
        (&odd, None, "10.0.0.2", "550 5.0.0 250 fine"),
        (&odd, None, "10.0.0.3", "553 5.3.0 go away"),
        (&odd, None, "10.0.0.4", "451 4.0.0 try later"),
        (&odd, None, "10.0.0.5", "550 5.7.3 own code wins"),
        (&odd, None, "10.0.0.6", "550 5.0.0 spelled as a reply"),
        (&odd, None, "10.0.0.7", "550 5.0.0 bad explicit code"),
        (&odd, None, "10.0.0.8", "550 5.0.0 999 nonsense"),
        (&odd, None, "10.0.0.9", "553 5.3.0"),
        (&odd, None, "10.0.0.10", "553 5.3.0 QUARANTINE:held"),
        (&odd, None, "192.0.2.1", "OK"),
        (&odd, None, "192.0.2.2", "RELAY"),
        (&odd, None, "::1", "550 5.7.1 Access denied"),
        (&odd, None, "2001:db8::25", "421 4.7.1 Go away"),
        (&odd, None, "2001:db9::25", "-"),
    ];
    for (m, host, a, want) in table {
        let (checks, f) = connect(m, DelayChecks::Off, *host, a);
        assert_eq!(said(f.as_ref()), *want, "{host:?} {a}");
        assert!(!checks.discarding(), "{a}: looking never discards");
    }
}

#[test]
fn connect_findings_log_like_sendmail() {
    let ak = map(AK);
    let odd = map(ODD);
    // (map, host, address, relay, entry, line, log text)
    type Case<'a> = (
        &'a AccessMap,
        Option<&'a str>,
        &'a str,
        &'a str,
        &'a str,
        usize,
        &'a str,
    );
    let cases: &[Case<'_>] = &[
        (
            &ak,
            Some("client2.example.test"),
            "127.0.0.2",
            "client2.example.test [127.0.0.2]",
            "Connect:127.0.0.2",
            1,
            "ruleset=check_relay, arg1=client2.example.test, arg2=127.0.0.2, \
                 relay=client2.example.test [127.0.0.2], reject=550 5.7.1 Access denied",
        ),
        (
            &ak,
            None,
            "127.0.0.3",
            "[127.0.0.3]",
            "Connect:127.0.0.3",
            2,
            "ruleset=check_relay, arg1=[127.0.0.3], arg2=127.0.0.3, relay=[127.0.0.3], \
                 reject=421 4.7.1 Go away, you are blocked",
        ),
        (
            &ak,
            Some("client11.example.test"),
            "127.0.1.1",
            "client11.example.test [127.0.1.1]",
            "Connect:client11.example.test",
            4,
            "ruleset=check_relay, arg1=client11.example.test, arg2=127.0.1.1, \
                 relay=client11.example.test [127.0.1.1], discard",
        ),
        (
            &odd,
            Some("localhost"),
            "127.0.0.1",
            "localhost [127.0.0.1]",
            "127.0.0.1",
            1,
            "ruleset=check_relay, arg1=localhost, arg2=127.0.0.1, \
                 relay=localhost [127.0.0.1], reject=553 5.3.0 0",
        ),
        (
            &odd,
            None,
            "::1",
            "localhost [IPv6:0:0:0:0:0:0:0:1]",
            "Connect:IPv6:0:0:0:0:0:0:0:1",
            16,
            "ruleset=check_relay, arg1=[IPv6:0:0:0:0:0:0:0:1], arg2=IPv6:0:0:0:0:0:0:0:1, \
                 relay=localhost [IPv6:0:0:0:0:0:0:0:1], reject=550 5.7.1 Access denied",
        ),
        (
            &odd,
            None,
            "192.0.2.2",
            "[192.0.2.2]",
            "Connect:192.0.2.2",
            15,
            "ruleset=check_relay, arg1=[192.0.2.2], arg2=192.0.2.2, relay=[192.0.2.2], RELAY",
        ),
    ];
    for (m, host, a, relay, entry, line, want) in cases {
        let f = connect(m, DelayChecks::Off, *host, a).1.unwrap();
        assert_eq!(f.log_text(relay), *want);
        assert_eq!((f.entry.as_str(), f.line), (*entry, *line), "{a}");
    }
}

#[test]
fn mail_replies_without_delay_checks() {
    let ak = map(AK);
    let odd = map(ODD);
    let table: &[(&AccessMap, &str, &str)] = &[
        (
            &ak,
            "spammer@example.org",
            "550 5.7.1 <spammer@example.org>... Access denied",
        ),
        (
            &ak,
            "someone@example.com",
            "550 5.0.0 <someone@example.com>... We do not accept mail from example.com",
        ),
        (
            &ak,
            "x@sub.example.com",
            "550 5.0.0 <x@sub.example.com>... We do not accept mail from example.com",
        ),
        (
            &ak,
            "x@enh.example.com",
            "550 5.7.9 <x@enh.example.com>... Blocked with custom enhanced code",
        ),
        // Observed: no "<addr>..." on a 4xx at MAIL.
        (&ak, "x@tmp.example.com", "451 4.3.9 Temporarily blocked"),
        (&ak, "x@friend.example.org", "OK"),
        (&ak, "x@Friend.Example.ORG", "OK"),
        (&ak, "other@example.org", "-"),
        (&ak, "", "-"),
        (&odd, "x@skip.example.com", "-"),
        (
            &odd,
            "x@example.com",
            "550 5.7.1 <x@example.com>... Access denied",
        ),
        (
            &odd,
            "x@spam.example",
            "550 5.7.1 <x@spam.example>... Access denied",
        ),
        (&odd, "x@relay.example.net", "RELAY"),
    ];
    for (m, sender, want) in table {
        let (mut checks, _) = connect(m, DelayChecks::Off, Some("localhost"), "192.0.2.99");
        let f = checks.mail(m, &path(sender));
        assert_eq!(said(f.as_ref()), *want, "{sender}");
    }
}

#[test]
fn mail_finding_logs_like_sendmail() {
    let ak = map(AK);
    let (mut checks, _) = connect(&ak, DelayChecks::Off, Some("localhost"), "127.0.0.1");
    let f = checks.mail(&ak, &path("spammer@example.org")).unwrap();
    assert_eq!(
        f.log_text("localhost [127.0.0.1]"),
        "ruleset=check_mail, arg1=<spammer@example.org>, relay=localhost [127.0.0.1], \
             reject=550 5.7.1 <spammer@example.org>... Access denied"
    );
    assert_eq!((f.entry.as_str(), f.line), ("From:spammer@example.org", 5));
    assert!(f.is_reject());
}

#[test]
fn rcpt_replies_without_delay_checks() {
    let ak = map(AK);
    let odd = map(ODD);
    let table: &[(&AccessMap, &str, &str)] = &[
        (
            &ak,
            "blocked@mx.example.test",
            "550 5.2.1 <blocked@mx.example.test>... Mailbox disabled for this recipient",
        ),
        (
            &ak,
            "disabled@mx.example.test",
            "550 5.0.0 <disabled@mx.example.test>... Mailbox disabled for this recipient",
        ),
        // To: keeps the address on a 4xx (observed).
        (
            &ak,
            "later@mx.example.test",
            "450 4.2.1 <later@mx.example.test>... Mailbox busy, try later",
        ),
        (&ak, "rcpt5@mx.example.test", "discard"),
        (&ak, "rcpt1@mx.example.test", "check"),
        (&ak, "Postmaster", "check"),
        (
            &odd,
            "Postmaster",
            "550 5.2.1 <Postmaster>... Mailbox disabled for this recipient",
        ),
        (&odd, "ok@mx.example.test", "check"),
    ];
    for (m, rcpt, want) in table {
        let (mut checks, _) = connect(m, DelayChecks::Off, Some("localhost"), "192.0.2.99");
        assert_eq!(checks.mail(m, &path("a@b.example")), None);
        assert_eq!(step(&checks.rcpt(m, &path(rcpt), false)), *want, "{rcpt}");
    }
}

#[test]
fn rcpt_finding_logs_like_sendmail() {
    let ak = map(AK);
    let (checks, _) = connect(&ak, DelayChecks::Off, Some("localhost"), "127.0.0.1");
    let RcptStep::Act(f) = checks.rcpt(&ak, &path("blocked@mx.example.test"), false) else {
        panic!("no finding");
    };
    assert_eq!(
        f.log_text("localhost [127.0.0.1]"),
        "ruleset=check_rcpt, arg1=<blocked@mx.example.test>, relay=localhost [127.0.0.1], \
             reject=550 5.2.1 <blocked@mx.example.test>... Mailbox disabled for this recipient"
    );
    let RcptStep::Act(f) = checks.rcpt(&ak, &path("rcpt5@mx.example.test"), false) else {
        panic!("no finding");
    };
    assert_eq!(
        f.log_text("localhost [127.0.0.1]"),
        "ruleset=check_rcpt, arg1=<rcpt5@mx.example.test>, relay=localhost [127.0.0.1], discard"
    );
    assert_eq!((f.entry.as_str(), f.line), ("To:rcpt5@mx.example.test", 13));
}

/// After a To: DISCARD every later RCPT of the transaction is accepted, unknown users
/// included; To: refusals still apply (Sendmail still runs check_rcpt); the next
/// transaction starts clean.
#[test]
fn discard_then_unknown_user() {
    let ak = map(AK);
    let (mut checks, _) = connect(&ak, DelayChecks::Off, Some("localhost"), "127.0.0.1");
    assert_eq!(checks.mail(&ak, &path("a@b.example")), None);
    let s = checks.rcpt(&ak, &path("rcpt5@mx.example.test"), false);
    let RcptStep::Act(f) = &s else {
        panic!("{s:?}")
    };
    checks.apply(f);
    assert!(checks.discarding());
    let after: &[(&str, &str)] = &[
        ("nosuchuser@mx.example.test", "accept unchecked"),
        ("rcpt1@mx.example.test", "accept unchecked"),
        ("rcpt5@mx.example.test", "discard"),
        (
            "blocked@mx.example.test",
            "550 5.2.1 <blocked@mx.example.test>... Mailbox disabled for this recipient",
        ),
    ];
    for (rcpt, want) in after {
        assert_eq!(step(&checks.rcpt(&ak, &path(rcpt), false)), *want, "{rcpt}");
    }
    checks.end_transaction();
    assert!(!checks.discarding());
    assert_eq!(
        step(&checks.rcpt(&ak, &path("nosuchuser@mx.example.test"), false)),
        "check"
    );
}

#[test]
fn mail_discard_applies_to_the_transaction() {
    let akd = map(AKD);
    let (mut checks, _) = connect(&akd, DelayChecks::Off, None, "192.0.2.99");
    let f = checks.mail(&akd, &path("x@discard.example.com")).unwrap();
    assert_eq!(
        f.log_text("[192.0.2.99]"),
        "ruleset=check_mail, arg1=<x@discard.example.com>, relay=[192.0.2.99], discard"
    );
    checks.apply(&f);
    assert!(checks.discarding());
    assert_eq!(
        step(&checks.rcpt(&akd, &path("nosuchuser@mx.example.test"), false)),
        "accept unchecked"
    );
    checks.end_transaction();
    assert!(!checks.discarding());
}

#[test]
fn connect_discard_applies_to_the_session() {
    let ak = map(AK);
    let (mut checks, f) = connect(
        &ak,
        DelayChecks::Off,
        Some("client11.example.test"),
        "127.0.1.1",
    );
    checks.apply(&f.unwrap());
    for _ in 0..2 {
        assert!(checks.discarding());
        assert_eq!(
            checks
                .mail(&ak, &path("x@friend.example.org"))
                .map(|f| f.outcome),
            Some(Outcome::Accept)
        );
        assert_eq!(
            step(&checks.rcpt(&ak, &path("nosuchuser@mx.example.test"), false)),
            "accept unchecked"
        );
        checks.end_transaction();
    }
}

/// With `ignore` the caller never calls apply: nothing the lookups return changes what
/// the next command sees.
#[test]
fn findings_change_nothing_until_applied() {
    let ak = map(AK);
    let (mut checks, f) = connect(
        &ak,
        DelayChecks::Off,
        Some("client11.example.test"),
        "127.0.1.1",
    );
    assert_eq!(said(f.as_ref()), "discard");
    let before = checks.clone();
    assert!(!checks.discarding());
    assert_eq!(
        said(checks.mail(&ak, &path("spammer@example.org")).as_ref()),
        "550 5.7.1 <spammer@example.org>... Access denied"
    );
    assert_eq!(
        step(&checks.rcpt(&ak, &path("rcpt5@mx.example.test"), false)),
        "discard"
    );
    assert_eq!(
        step(&checks.rcpt(&ak, &path("nosuchuser@mx.example.test"), false)),
        "check"
    );
    assert!(!checks.discarding());
    assert_eq!(checks, before);
    // Applying a refusal or an acceptance changes nothing either.
    let f = checks.mail(&ak, &path("spammer@example.org")).unwrap();
    checks.apply(&f);
    let f = checks.mail(&ak, &path("x@friend.example.org")).unwrap();
    checks.apply(&f);
    assert_eq!(checks, before);
}

/// The reference's delay_checks friend session, and more rows on the same map.
#[test]
fn delay_checks_friend() {
    let akd = map(AKD);
    // (client, sender, recipient, expected step)
    let table: &[(&str, &str, &str, &str)] = &[
        (
            "127.0.0.2",
            "a@b.example",
            "rcpt3@mx.example.test",
            "550 5.7.1 <rcpt3@mx.example.test>... Access denied",
        ),
        ("127.0.0.2", "a@b.example", "rcpt1@mx.example.test", "check"),
        ("127.0.0.2", "a@b.example", "rcpt2@mx.example.test", "check"),
        (
            "127.0.0.2",
            "",
            "rcpt3@mx.example.test",
            "550 5.7.1 <rcpt3@mx.example.test>... Access denied",
        ),
        // The access check comes before the user lookup.
        (
            "127.0.0.2",
            "a@b.example",
            "nosuchuser@mx.example.test",
            "550 5.7.1 <nosuchuser@mx.example.test>... Access denied",
        ),
        (
            "127.0.0.1",
            "spammer@example.org",
            "rcpt3@mx.example.test",
            "550 5.7.1 <rcpt3@mx.example.test>... Access denied",
        ),
        (
            "127.0.0.1",
            "spammer@example.org",
            "rcpt1@mx.example.test",
            "check",
        ),
        (
            "127.0.0.1",
            "spammer@example.org",
            "nosuchuser@mx.example.test",
            "550 5.7.1 <nosuchuser@mx.example.test>... Access denied",
        ),
        ("127.0.0.1", "a@b.example", "rcpt3@mx.example.test", "check"),
        // A friend is still subject to To:.
        (
            "127.0.0.1",
            "a@b.example",
            "blocked@mx.example.test",
            "550 5.2.1 <blocked@mx.example.test>... Mailbox disabled for this recipient",
        ),
        // Delayed ERROR texts name the recipient, 4xx included; the 421 closes.
        (
            "127.0.0.3",
            "a@b.example",
            "rcpt3@mx.example.test",
            "421 4.7.1 <rcpt3@mx.example.test>... Go away, you are blocked",
        ),
        (
            "127.0.0.4",
            "a@b.example",
            "rcpt3@mx.example.test",
            "550 5.7.2 <rcpt3@mx.example.test>... Your network is blocked",
        ),
        (
            "127.0.0.1",
            "x@tmp.example.com",
            "rcpt3@mx.example.test",
            "451 4.3.9 <rcpt3@mx.example.test>... Temporarily blocked",
        ),
        (
            "127.0.0.3",
            "x@tmp.example.com",
            "rcpt1@mx.example.test",
            "check",
        ),
        // The From: result comes before the Connect: one (proto.m4's delay-mode check_rcpt).
        (
            "127.0.0.4",
            "spammer@example.org",
            "rcpt3@mx.example.test",
            "550 5.7.1 <rcpt3@mx.example.test>... Access denied",
        ),
        // A From: OK ends the check: the Connect: REJECT client's sender is spared.
        (
            "127.0.0.2",
            "x@friend.example.org",
            "rcpt3@mx.example.test",
            "check",
        ),
        // To: comes first of all.
        (
            "127.0.0.2",
            "a@b.example",
            "blocked@mx.example.test",
            "550 5.2.1 <blocked@mx.example.test>... Mailbox disabled for this recipient",
        ),
        // A connect OK does not exempt the sender.
        (
            "127.0.0.6",
            "spammer@example.org",
            "rcpt3@mx.example.test",
            "550 5.7.1 <rcpt3@mx.example.test>... Access denied",
        ),
        // Delayed discards; To: still comes first.
        (
            "127.0.0.5",
            "a@b.example",
            "rcpt3@mx.example.test",
            "discard",
        ),
        (
            "127.0.0.5",
            "spammer@example.org",
            "blocked@mx.example.test",
            "550 5.2.1 <blocked@mx.example.test>... Mailbox disabled for this recipient",
        ),
        (
            "127.0.0.5",
            "spammer@example.org",
            "rcpt3@mx.example.test",
            "550 5.7.1 <rcpt3@mx.example.test>... Access denied",
        ),
        ("127.0.0.5", "a@b.example", "rcpt1@mx.example.test", "check"),
        (
            "127.0.0.1",
            "x@discard.example.com",
            "rcpt3@mx.example.test",
            "discard",
        ),
        // In friend mode HATER means nothing.
        (
            "127.0.0.2",
            "a@b.example",
            "rcpt4@mx.example.test",
            "550 5.7.1 <rcpt4@mx.example.test>... Access denied",
        ),
    ];
    for (client, sender, rcpt, want) in table {
        let (mut checks, f) = connect(&akd, DelayChecks::Friend, None, client);
        assert_eq!(f, None, "{client}: nothing at connect");
        assert_eq!(
            checks.mail(&akd, &path(sender)),
            None,
            "{sender}: nothing at MAIL"
        );
        let s = checks.rcpt(&akd, &path(rcpt), false);
        assert_eq!(step(&s), *want, "{client} {sender} {rcpt}");
        if let RcptStep::Act(f) = s {
            assert_eq!(
                (f.ruleset, f.arg1.as_str(), f.arg2.as_deref()),
                (CHECK_RCPT, format!("<{rcpt}>").as_str(), None)
            );
        }
    }
}

#[test]
fn delay_checks_findings_log_like_sendmail() {
    let akd = map(AKD);
    let (mut checks, _) = connect(
        &akd,
        DelayChecks::Friend,
        Some("client2.example.test"),
        "127.0.0.2",
    );
    assert_eq!(checks.mail(&akd, &path("a@b.example")), None);
    let RcptStep::Act(f) = checks.rcpt(&akd, &path("rcpt3@mx.example.test"), false) else {
        panic!("no finding");
    };
    assert_eq!(
        f.log_text("client2.example.test [127.0.0.2]"),
        "ruleset=check_rcpt, arg1=<rcpt3@mx.example.test>, relay=client2.example.test [127.0.0.2], \
             reject=550 5.7.1 <rcpt3@mx.example.test>... Access denied"
    );
    // The entry behind a delayed refusal is the Connect: one.
    assert_eq!((f.entry.as_str(), f.line), ("Connect:127.0.0.2", 1));
}

#[test]
fn delay_checks_hater() {
    let akd = map(AKD);
    let table: &[(&str, &str, &str, &str)] = &[
        (
            "127.0.0.2",
            "a@b.example",
            "rcpt4@mx.example.test",
            "550 5.7.1 <rcpt4@mx.example.test>... Access denied",
        ),
        ("127.0.0.2", "a@b.example", "rcpt3@mx.example.test", "check"),
        ("127.0.0.2", "a@b.example", "rcpt1@mx.example.test", "check"),
        (
            "127.0.0.2",
            "a@b.example",
            "nosuchuser@mx.example.test",
            "check",
        ),
        (
            "127.0.0.1",
            "spammer@example.org",
            "rcpt4@mx.example.test",
            "550 5.7.1 <rcpt4@mx.example.test>... Access denied",
        ),
        (
            "127.0.0.1",
            "spammer@example.org",
            "rcpt3@mx.example.test",
            "check",
        ),
        (
            "127.0.0.5",
            "a@b.example",
            "rcpt4@mx.example.test",
            "discard",
        ),
        (
            "127.0.0.2",
            "a@b.example",
            "blocked@mx.example.test",
            "550 5.2.1 <blocked@mx.example.test>... Mailbox disabled for this recipient",
        ),
    ];
    for (client, sender, rcpt, want) in table {
        let (mut checks, f) = connect(&akd, DelayChecks::Hater, None, client);
        assert_eq!(f, None);
        assert_eq!(checks.mail(&akd, &path(sender)), None);
        assert_eq!(
            step(&checks.rcpt(&akd, &path(rcpt), false)),
            *want,
            "{client} {sender} {rcpt}"
        );
    }
}

#[test]
fn end_transaction_forgets_the_mail_refusal_only() {
    let akd = map(AKD);
    let rcpt3 = path("rcpt3@mx.example.test");
    let (mut checks, _) = connect(&akd, DelayChecks::Friend, None, "127.0.0.1");
    assert_eq!(checks.mail(&akd, &path("spammer@example.org")), None);
    assert_eq!(
        step(&checks.rcpt(&akd, &rcpt3, false)),
        "550 5.7.1 <rcpt3@mx.example.test>... Access denied"
    );
    checks.end_transaction();
    assert_eq!(step(&checks.rcpt(&akd, &rcpt3, false)), "check");
    // A new MAIL replaces the held result even without end_transaction.
    assert_eq!(checks.mail(&akd, &path("spammer@example.org")), None);
    assert_eq!(checks.mail(&akd, &path("a@b.example")), None);
    assert_eq!(step(&checks.rcpt(&akd, &rcpt3, false)), "check");

    let (mut checks, _) = connect(&akd, DelayChecks::Friend, None, "127.0.0.2");
    checks.end_transaction();
    assert_eq!(checks.mail(&akd, &path("a@b.example")), None);
    assert_eq!(
        step(&checks.rcpt(&akd, &rcpt3, false)),
        "550 5.7.1 <rcpt3@mx.example.test>... Access denied"
    );
    assert_eq!(checks.mode(), DelayChecks::Friend);
}

#[test]
fn delayed_discard_is_per_transaction() {
    let akd = map(AKD);
    let (mut checks, _) = connect(&akd, DelayChecks::Friend, None, "127.0.0.5");
    assert!(!checks.discarding(), "held, not applied");
    assert_eq!(checks.mail(&akd, &path("a@b.example")), None);
    let RcptStep::Act(f) = checks.rcpt(&akd, &path("rcpt3@mx.example.test"), false) else {
        panic!("no finding");
    };
    assert_eq!(f.ruleset, CHECK_RCPT);
    checks.apply(&f);
    assert!(checks.discarding());
    assert_eq!(
        step(&checks.rcpt(&akd, &path("rcpt1@mx.example.test"), false)),
        "accept unchecked"
    );
    checks.end_transaction();
    assert!(!checks.discarding());
    assert_eq!(
        step(&checks.rcpt(&akd, &path("rcpt1@mx.example.test"), false)),
        "check"
    );
}

#[test]
fn refusal_texts() {
    let table: &[(Option<&str>, &str, &str)] = &[
        (None, "550 text", "550 5.0.0 text"),
        (None, "421 4.7.1 Go away", "421 4.7.1 Go away"),
        (None, "450 busy", "450 4.0.0 busy"),
        (Some("5.7.2"), "550 blocked", "550 5.7.2 blocked"),
        (Some("5.7.2"), "550 5.1.1 text code", "550 5.1.1 text code"),
        (Some("7.7.7"), "550 x", "550 5.0.0 x"),
        (Some("5.7.2"), "550", "553 5.3.0 550"),
        (None, "550-x", "553 5.3.0 550-x"),
        (None, "5500 x", "553 5.3.0 5500 x"),
        (None, "a\r\nb", "553 5.3.0 a  b"),
        (None, "550 a\rb\tc", "550 5.0.0 a b c"),
        (None, "550 5.7.1", "550 5.0.0 5.7.1"),
        (None, "550 5.7.1 ", "550 5.7.1"),
        (None, "550 6.7.1 x", "550 5.0.0 6.7.1 x"),
        (None, "550 5.1234.1 x", "550 5.0.0 5.1234.1 x"),
        (None, "200 ok", "550 5.0.0 200 ok"),
        (None, "", "553 5.3.0"),
        (None, "é", "553 5.3.0 é"),
        (None, "55é x", "553 5.3.0 55é x"),
    ];
    for (explicit, text, want) in table {
        let r = Refusal::from_error(*explicit, text);
        assert_eq!(r.reply().to_log_string(), *want, "{explicit:?} {text:?}");
    }
    assert_eq!(
        Refusal::from_error(None, "550 x\ny")
            .reply_naming("<a\r@b>")
            .to_log_string(),
        "550 5.0.0 <a @b>... x y"
    );
}

proptest! {
    #[test]
    fn any_value_gives_one_refusing_line(value in any::<String>(), enh in "[0-9.]{0,8}") {
        let m = AccessMap::parse("access", format!("Connect:10.1.1.1 {value}\nTo:x@y ERROR:{enh}:{value}\n").as_bytes());
        let Ok(parsed) = m else { return Ok(()) };
        let (checks, f) = SessionChecks::connect(&parsed.map, DelayChecks::Off, Some("h"), ip("10.1.1.1"));
        if let Some(Finding { outcome: Outcome::Reject(r), .. }) = f {
            prop_assert!((400..600).contains(&r.code));
            prop_assert!(r.lines.iter().all(|l| !l.chars().any(char::is_control)));
        }
        if let RcptStep::Act(Finding { outcome: Outcome::Reject(r), .. }) = checks.rcpt(&parsed.map, &path("x@y"), false) {
            prop_assert!((400..600).contains(&r.code));
            prop_assert_eq!(r.lines.len(), 1);
            prop_assert!(r.lines.iter().all(|l| !l.chars().any(char::is_control)));
        }
    }
}

#[test]
fn delay_checks_leave_a_relay_refusal_to_the_caller() {
    // proto.m4: check_rcpt's relay test comes before the held results, so a recipient
    // that may not be relayed to is refused as such, not "Access denied".
    let akd = map(AKD);
    let (mut checks, _) = connect(&akd, DelayChecks::Friend, None, "127.0.0.2");
    checks.mail(&akd, &path("a@b.example"));
    let rcpt = path("x@elsewhere.example");
    assert_eq!(step(&checks.rcpt(&akd, &rcpt, true)), "check");
    assert_eq!(
        step(&checks.rcpt(&akd, &rcpt, false)),
        "550 5.7.1 <x@elsewhere.example>... Access denied"
    );
    // A To: entry still comes first, relayable or not.
    assert_eq!(
        step(&checks.rcpt(&akd, &path("blocked@mx.example.test"), true)),
        "550 5.2.1 <blocked@mx.example.test>... Mailbox disabled for this recipient"
    );
}

/// `Connect:… RELAY` gives the client relaying rights, whatever the delay mode;
/// `To:<domain> RELAY` makes the domain (and its subdomains) a relay domain, but a
/// `To:user@domain RELAY` does not give the domain to anyone.
#[test]
fn relay_rights_from_the_access_map() {
    let m = map("Connect:192.0.2\tRELAY\n\
         Connect:relay.example.test\tRELAY\n\
         Connect:192.0.2.9\tOK\n\
         198.51.100.7\tRELAY\n\
         To:relayed.example\tRELAY\n\
         To:user@single.example\tRELAY\n\
         To:ok.example\tOK\n");
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert!(client_may_relay(&m, None, ip("192.0.2.1")));
    assert!(
        !client_may_relay(&m, None, ip("192.0.2.9")),
        "OK is not RELAY"
    );
    assert!(client_may_relay(
        &m,
        Some("relay.example.test"),
        ip("203.0.113.1")
    ));
    assert!(client_may_relay(&m, None, ip("198.51.100.7")), "untagged");
    assert!(!client_may_relay(&m, None, ip("203.0.113.1")));
    let to = |s: &str| recipient_domain_relays(&m, &parse_path(s).unwrap());
    assert!(to("a@relayed.example"));
    assert!(to("a@mx.relayed.example"));
    assert!(!to("user@single.example"));
    assert!(!to("other@single.example"));
    assert!(!to("a@ok.example"));
    assert!(!to("a@elsewhere.example"));
    assert!(!recipient_domain_relays(&m, &ReversePath::Postmaster));
}
