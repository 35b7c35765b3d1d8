//! Which recipients we accept: local domains and users; never an open relay.
//!
//! Defends against: open relaying (RFC 5321 §3.9, §7.1) and, with a user list, directory
//! harvesting that would otherwise reach the mail store. Sendmail equivalents: class `w`
//! (local host names, `Cw`), the local user database / aliases (`550 5.1.1 User unknown`),
//! and `check_rcpt` relay denial (`550 5.7.1 ... Relaying denied`).
//!
//! Rules: a recipient whose domain is one of ours is accepted when the user list is empty
//! (every local part) or lists the local part (case-insensitive); otherwise
//! `550 5.1.1 <addr>... User unknown`. `<Postmaster>` is always accepted (RFC 5321 §4.5.1).
//! A recipient elsewhere is relayed (Sendmail's `Relay_ok`/`Rcpt_ok`) when the client may
//! relay (`[relay] networks`, `Connect:<client> RELAY`: any domain, address literals too),
//! or when its domain is a relay domain (`[relay] domains`, `To:<domain> RELAY`) and its
//! local part carries no routing of its own (`%`, `!`, or a quoted `@`: Sendmail without
//! `FEATURE(loose_relay_check)` refuses `user%elsewhere@relaydomain` the same way). Any
//! other recipient, and every address literal from a client that may not relay, is
//! `550 5.7.1 <addr>... Relaying denied`.
//!
//! When every local part is accepted, the local part becomes a mailbox directory name, so it
//! must be a safe one: a quoted local part, or one with characters outside
//! `[a-z0-9._+-]`, or one starting with a dot, is "User unknown" rather than a path.
//! The classic relay tricks (`user%other@local`, `user!host@local`, `"a@b"@local`) are local
//! parts that no user list names and that fail that check, so they are refused.

use std::collections::HashSet;

use portcullis_smtp::{Mailbox, Reply, ReversePath, Verdict, reply};

/// The outcome for one recipient, before it becomes a reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecipientVerdict {
    /// Ours: deliver to this mailbox directory (`domain`, `local`), both lowercased.
    Local {
        /// The local domain, lowercased.
        domain: String,
        /// The mailbox name, lowercased.
        local: String,
    },
    /// `<Postmaster>` without a domain.
    Postmaster,
    /// A local domain but no such user.
    UnknownUser,
    /// Not ours, relayed onward to this domain (lowercased; an address literal as written).
    Remote {
        /// Where it goes.
        domain: String,
    },
    /// Not ours and not relayable.
    RelayDenied,
}

/// What lets a recipient elsewhere through, besides the relay domains.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayRights {
    /// The client may relay to any domain (`[relay] networks`, `Connect:<client> RELAY`).
    pub client: bool,
    /// The recipient's domain has `To:<domain> RELAY` in the access map.
    pub recipient_domain: bool,
}

/// The local domains and users, resolved from the configuration once per load.
#[derive(Clone, Debug, Default)]
pub struct LocalRecipients {
    domains: Vec<String>,
    users: HashSet<String>,
    /// `[relay] domains`: `example.net`, or `.example.net` for its subdomains.
    relay_domains: Vec<String>,
}

impl LocalRecipients {
    /// `domains` and `users` as configured (any case; a trailing dot on a domain is ignored).
    pub fn new(
        domains: impl IntoIterator<Item = String>,
        users: impl IntoIterator<Item = String>,
    ) -> Self {
        Self {
            domains: domains.into_iter().map(|d| normalize_domain(&d)).collect(),
            users: users.into_iter().map(|u| u.to_lowercase()).collect(),
            relay_domains: Vec::new(),
        }
    }

    /// The relay domains (`example.net`, or `.example.net` for every subdomain).
    #[must_use]
    pub fn with_relay_domains(mut self, domains: impl IntoIterator<Item = String>) -> Self {
        self.relay_domains = domains.into_iter().map(|d| normalize_domain(&d)).collect();
        self
    }

    /// True when `domain` is a relay domain.
    pub fn is_relay_domain(&self, domain: &str) -> bool {
        let d = normalize_domain(domain);
        self.relay_domains
            .iter()
            .any(|r| match r.strip_prefix('.') {
                Some(parent) => d
                    .strip_suffix(parent)
                    .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
                None => *r == d,
            })
    }

    /// True when `domain` is one of ours.
    pub fn is_local_domain(&self, domain: &str) -> bool {
        let d = normalize_domain(domain);
        self.domains.contains(&d)
    }

    /// The first local domain (where mail to `<Postmaster>` is delivered).
    pub fn primary_domain(&self) -> Option<&str> {
        self.domains.first().map(String::as_str)
    }

    /// Classifies a RCPT forward-path for a client with these relaying rights.
    pub fn classify(&self, path: &ReversePath, rights: RelayRights) -> RecipientVerdict {
        let mailbox = match path {
            ReversePath::Postmaster => return RecipientVerdict::Postmaster,
            ReversePath::Null => return RecipientVerdict::RelayDenied,
            ReversePath::Mailbox(m) => m,
        };
        let literal = mailbox.is_address_literal();
        if literal || !self.is_local_domain(&mailbox.domain) {
            let remote = RecipientVerdict::Remote {
                domain: if literal {
                    mailbox.domain.clone()
                } else {
                    normalize_domain(&mailbox.domain)
                },
            };
            if rights.client {
                return remote;
            }
            let relay_domain =
                !literal && (rights.recipient_domain || self.is_relay_domain(&mailbox.domain));
            if relay_domain && !has_own_routing(&mailbox.local) {
                return remote;
            }
            return RecipientVerdict::RelayDenied;
        }
        let local = mailbox.local.to_lowercase();
        // RFC 5321 §4.5.1: postmaster at every domain of ours, listed or not.
        let known = if local == "postmaster" && !mailbox.quoted {
            true
        } else if self.users.is_empty() {
            !mailbox.quoted && is_safe_mailbox_name(&local)
        } else {
            // A listed user is safe by construction (the config refuses unsafe names).
            !mailbox.quoted && self.users.contains(&local)
        };
        if known {
            RecipientVerdict::Local {
                domain: normalize_domain(&mailbox.domain),
                local,
            }
        } else {
            RecipientVerdict::UnknownUser
        }
    }

    /// The verdict and reply for RCPT (the session's question).
    pub fn check_rcpt(&self, path: &ReversePath, rights: RelayRights) -> Verdict {
        self.verdict(&self.classify(path, rights), path)
    }

    /// The verdict and reply for a recipient already classified (a caller that needs the
    /// class too, e.g. to log a relay refusal, classifies once).
    pub fn verdict(&self, class: &RecipientVerdict, path: &ReversePath) -> Verdict {
        match (class, path) {
            (
                RecipientVerdict::Local { .. }
                | RecipientVerdict::Postmaster
                | RecipientVerdict::Remote { .. },
                _,
            ) => Verdict::Accept,
            (RecipientVerdict::UnknownUser, ReversePath::Mailbox(m)) => {
                Verdict::Reject(reply::user_unknown(m))
            }
            (_, ReversePath::Mailbox(m)) => Verdict::Reject(reply::relaying_denied(m)),
            (_, _) => Verdict::Reject(Reply::new(550, "5.1.3 Bad recipient address syntax")),
        }
    }

    /// Where mail to this mailbox goes, if it is ours (used at delivery time, after the
    /// message was accepted for it).
    pub fn mailbox_for(&self, recipient: &Mailbox) -> Option<(String, String)> {
        match self.classify(
            &ReversePath::Mailbox(recipient.clone()),
            RelayRights::default(),
        ) {
            RecipientVerdict::Local { domain, local } => Some((domain, local)),
            _ => None,
        }
    }
}

fn normalize_domain(d: &str) -> String {
    d.strip_suffix('.').unwrap_or(d).to_ascii_lowercase()
}

/// A local part that routes by itself: `user%host`, `host!user`, or a quoted `"user@host"`.
/// Relayed to a relay domain, the next hop might send it on to `host`.
fn has_own_routing(local: &str) -> bool {
    local.contains(['%', '!', '@'])
}

/// A local part we are willing to turn into a directory name.
fn is_safe_mailbox_name(local: &str) -> bool {
    !local.is_empty()
        && !local.starts_with('.')
        && local
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._+-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(s: &str) -> ReversePath {
        portcullis_smtp::address::parse_path(s).unwrap()
    }

    fn open_users() -> LocalRecipients {
        LocalRecipients::new(["localhost".into(), "Example.TEST.".into()], Vec::new())
    }

    fn listed_users() -> LocalRecipients {
        LocalRecipients::new(["localhost".into()], ["Alice".into(), "bob".into()])
    }

    #[test]
    fn classifies_recipients() {
        let local = |d: &str, l: &str| RecipientVerdict::Local {
            domain: d.into(),
            local: l.into(),
        };
        let table: &[(&LocalRecipients, &str, RecipientVerdict)] = &[
            (
                &open_users(),
                "alice@localhost",
                local("localhost", "alice"),
            ),
            (
                &open_users(),
                "Alice@LOCALHOST",
                local("localhost", "alice"),
            ),
            (&open_users(), "x@example.test", local("example.test", "x")),
            (&open_users(), "Postmaster", RecipientVerdict::Postmaster),
            (
                &open_users(),
                "x@elsewhere.example",
                RecipientVerdict::RelayDenied,
            ),
            (
                &open_users(),
                "x@[127.0.0.1]",
                RecipientVerdict::RelayDenied,
            ),
            // Relay tricks aimed at a local domain are never turned into mailboxes.
            (
                &open_users(),
                "user%other.example@localhost",
                RecipientVerdict::UnknownUser,
            ),
            (
                &open_users(),
                "other.example!user@localhost",
                RecipientVerdict::UnknownUser,
            ),
            (
                &open_users(),
                "\"user@other.example\"@localhost",
                RecipientVerdict::UnknownUser,
            ),
            (
                &open_users(),
                "@localhost:user@other.example",
                RecipientVerdict::RelayDenied,
            ),
            (
                &open_users(),
                "\"a\"@localhost",
                RecipientVerdict::UnknownUser,
            ),
            (
                &open_users(),
                "a/b@localhost",
                RecipientVerdict::UnknownUser,
            ),
            (
                &listed_users(),
                "alice@localhost",
                local("localhost", "alice"),
            ),
            (&listed_users(), "BOB@localhost", local("localhost", "bob")),
            (
                &listed_users(),
                "PostMaster@localhost",
                local("localhost", "postmaster"),
            ),
            (
                &listed_users(),
                "carol@localhost",
                RecipientVerdict::UnknownUser,
            ),
            (
                &listed_users(),
                "alice@elsewhere.example",
                RecipientVerdict::RelayDenied,
            ),
        ];
        for (policy, input, want) in table {
            assert_eq!(
                &policy.classify(&path(input), RelayRights::default()),
                want,
                "{input}"
            );
        }
    }

    #[test]
    fn replies_match_sendmail() {
        let p = listed_users();
        assert_eq!(
            p.check_rcpt(&path("alice@localhost"), RelayRights::default()),
            Verdict::Accept
        );
        let text = |v: Verdict| match v {
            Verdict::Reject(r) => r.to_log_string(),
            other => format!("{other:?}"),
        };
        assert_eq!(
            text(p.check_rcpt(&path("carol@localhost"), RelayRights::default())),
            "550 5.1.1 <carol@localhost>... User unknown"
        );
        assert_eq!(
            text(p.check_rcpt(&path("x@relay.example"), RelayRights::default())),
            "550 5.7.1 <x@relay.example>... Relaying denied"
        );
    }

    /// The relay tricks of RFC 2505 and the classic relay tests, from a client that may not
    /// relay, against a relay domain: all refused. The same recipients from a client that
    /// may relay go through.
    #[test]
    fn relay_domains_refuse_the_tricks() {
        let p = LocalRecipients::new(["localhost".into()], Vec::new())
            .with_relay_domains(["relay.example".into(), ".sub.example".into()]);
        let none = RelayRights::default();
        let client = RelayRights {
            client: true,
            recipient_domain: false,
        };
        let to = RelayRights {
            client: false,
            recipient_domain: true,
        };
        let remote = |d: &str| RecipientVerdict::Remote { domain: d.into() };
        let denied = RecipientVerdict::RelayDenied;
        let table: &[(&str, RelayRights, RecipientVerdict)] = &[
            ("user@relay.example", none, remote("relay.example")),
            ("user@RELAY.Example", none, remote("relay.example")),
            ("user@mx.sub.example", none, remote("mx.sub.example")),
            ("user@sub.example", none, denied.clone()),
            ("user@elsewhere.example", none, denied.clone()),
            ("user%elsewhere.example@relay.example", none, denied.clone()),
            ("elsewhere.example!user@relay.example", none, denied.clone()),
            (
                "\"user@elsewhere.example\"@relay.example",
                none,
                denied.clone(),
            ),
            ("\"user%elsewhere\"@relay.example", none, denied.clone()),
            (
                "@relay.example:user@elsewhere.example",
                none,
                denied.clone(),
            ),
            (
                "@relay.example,@localhost:user@elsewhere.example",
                none,
                denied.clone(),
            ),
            ("user@[192.0.2.1]", none, denied.clone()),
            ("user@[IPv6:2001:db8::1]", none, denied.clone()),
            ("user@[192.0.2.1]", to, denied.clone()),
            ("user@elsewhere.example", to, remote("elsewhere.example")),
            ("user%x@elsewhere.example", to, denied),
            (
                "user@elsewhere.example",
                client,
                remote("elsewhere.example"),
            ),
            (
                "user%x@elsewhere.example",
                client,
                remote("elsewhere.example"),
            ),
            ("user@[192.0.2.1]", client, remote("[192.0.2.1]")),
            (
                "user@localhost",
                client,
                RecipientVerdict::Local {
                    domain: "localhost".into(),
                    local: "user".into(),
                },
            ),
            ("user%x@localhost", client, RecipientVerdict::UnknownUser),
        ];
        for (input, rights, want) in table {
            assert_eq!(
                &p.classify(&path(input), *rights),
                want,
                "{input} {rights:?}"
            );
        }
        assert_eq!(
            p.check_rcpt(&path("a@relay.example"), none),
            Verdict::Accept
        );
        match p.check_rcpt(&path("a%b@relay.example"), none) {
            Verdict::Reject(r) => assert_eq!(
                r.to_log_string(),
                "550 5.7.1 <a%b@relay.example>... Relaying denied"
            ),
            other => panic!("{other:?}"),
        }
    }
}
