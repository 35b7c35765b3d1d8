// These tests drive a real `portcullis serve` process over real loopback sockets.
#![allow(clippy::disallowed_methods, clippy::unwrap_used, clippy::expect_used)]

//! End-to-end tests of the relay rules: relay domains for anyone, any domain for clients in
//! `[relay] networks` or with `Connect:<addr> RELAY`, `To:<domain> RELAY`, and the classic
//! relay tricks refused from a client that may not relay.

mod support;

use support::{Smtp, local, server_with_access};

const ACCESS: &str = "Connect:127.0.0.10\tRELAY\nTo:torelay.example\tRELAY\n";
const CONFIG: &str = "[relay]\ndomains = [\"relay.example\", \".sub.example\"]\n\
                      networks = [\"127.0.0.9/32\"]\n";

fn rcpt_replies(c: &mut Smtp, recipients: &[&str]) -> Vec<(String, u16, String)> {
    assert_eq!(c.cmd("MAIL FROM:<sender@example.org>").0, 250);
    let replies = recipients
        .iter()
        .map(|r| {
            let (code, text) = c.cmd(&format!("RCPT TO:<{r}>"));
            ((*r).to_owned(), code, text)
        })
        .collect();
    assert_eq!(c.cmd("RSET").0, 250);
    replies
}

#[test]
fn no_open_relay_the_classic_tricks_are_refused() {
    let server = server_with_access(ACCESS, CONFIG);
    let mut c = Smtp::connect_from(server.addr(), local(7));
    c.greet_ehlo("outsider.example.org");
    let tricks = [
        "victim@elsewhere.example",
        "victim%elsewhere.example@relay.example",
        "elsewhere.example!victim@relay.example",
        "\"victim@elsewhere.example\"@relay.example",
        "@relay.example:victim@elsewhere.example",
        "@relay.example,@localhost:victim@elsewhere.example",
        "victim@[127.0.0.1]",
        "victim@[192.0.2.1]",
        "victim@[IPv6:::1]",
        "victim%elsewhere.example@torelay.example",
        "victim@sub.example",
        "victim@relay.example.elsewhere.example",
    ];
    for (rcpt, code, text) in rcpt_replies(&mut c, &tricks) {
        assert_eq!(code, 550, "{rcpt}: {text}");
        assert!(text.ends_with("Relaying denied"), "{rcpt}: {text}");
    }
    // Aimed at a local domain, the same tricks are unknown users, never mailboxes.
    let local_tricks = [
        "victim%elsewhere.example@localhost",
        "elsewhere.example!victim@localhost",
        "\"victim@elsewhere.example\"@localhost",
    ];
    for (rcpt, code, text) in rcpt_replies(&mut c, &local_tricks) {
        assert_eq!(code, 550, "{rcpt}: {text}");
        assert!(text.ends_with("User unknown"), "{rcpt}: {text}");
    }
    let fine = [
        "someone@relay.example",
        "someone@mx.sub.example",
        "someone@torelay.example",
        "someone@mx.torelay.example",
        "someone@localhost",
    ];
    for (rcpt, code, text) in rcpt_replies(&mut c, &fine) {
        assert_eq!(code, 250, "{rcpt}: {text}");
    }
    assert_eq!(c.cmd("QUIT").0, 221);
    assert!(
        server.wait_log(
            "reject=550 5.7.1 <victim%elsewhere.example@relay.example>... Relaying denied",
            std::time::Duration::from_secs(5)
        ),
        "{}",
        server.log()
    );
}

#[test]
fn relay_networks_and_connect_relay_may_send_anywhere() {
    let server = server_with_access(ACCESS, CONFIG);
    for client in [9, 10] {
        let mut c = Smtp::connect_from(server.addr(), local(client));
        c.greet_ehlo("inside.example.org");
        let anywhere = [
            "someone@elsewhere.example",
            "someone@[192.0.2.1]",
            "someone@relay.example",
        ];
        for (rcpt, code, text) in rcpt_replies(&mut c, &anywhere) {
            assert_eq!(code, 250, "127.0.0.{client} {rcpt}: {text}");
        }
        assert_eq!(c.cmd("QUIT").0, 221);
    }
    // The neighbour of a relay network is not in it.
    let mut c = Smtp::connect_from(server.addr(), local(11));
    c.greet_ehlo("outsider.example.org");
    let replies = rcpt_replies(&mut c, &["someone@elsewhere.example"]);
    assert_eq!(replies[0].1, 550, "{replies:?}");
}
