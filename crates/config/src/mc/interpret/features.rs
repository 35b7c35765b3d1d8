//! `FEATURE(...)`: the ones Portcullis rebuilds, with m4's ordering diagnostics.
//!
//! Role: for `greet_pause`, `access_db`, `ratecontrol`, `conncontrol` and `delay_checks`,
//! print what Sendmail's feature file prints (same text, same condition, same order) and
//! record what the generated `.cf` would do; then, at the end of the file, write the keys.
//! Must not: change the m4 texts: admins and scripts match them.

use super::super::lex::Call;
use super::super::values;
use super::super::{McKind, printable};
use super::{Control, Greet, Interp};

/// Sendmail clamps a greet pause of 300 s or more to exactly 300 s (RFC 5321 §4.5.3.2).
const GREET_PAUSE_CLAMP_MS: i64 = 300_000;

impl Interp<'_> {
    pub(super) fn feature(&mut self, call: &Call) {
        if self.mailer {
            self.m4(
                call.line,
                "*** ERROR: FEATURE() should be before MAILER()\n",
                "Sendmail's cf files want every FEATURE before the first MAILER (the feature \
                 is still read)",
            );
        }
        let name = call.args.first().map(|s| s.trim()).unwrap_or_default();
        match name {
            "greet_pause" => self.greet_pause(call),
            "access_db" => self.access_db_feature(call),
            "ratecontrol" => self.control(call, true),
            "conncontrol" => self.control(call, false),
            "delay_checks" => self.delay_checks_feature(call),
            "no_default_msa" => self.no_default_msa = true,
            // Portcullis never checks that a sender's domain resolves: already the same.
            "accept_unresolvable_domains" => {}
            other => {
                let reason = feature_reason(other);
                self.not_translated(call.line, format!("{} ({reason})", printable(&call.text)));
            }
        }
    }

    fn greet_pause(&mut self, call: &Call) {
        let arg = call.args.get(1).cloned().unwrap_or_default();
        if arg.is_empty() && self.access_db.is_none() {
            self.m4(
                call.line,
                "*** ERROR: FEATURE(`greet_pause') requires FEATURE(`access_db')\n",
                "without a value the pause can only come from GreetPause: entries, and there \
                 is no access map yet (Sendmail then never pauses)",
            );
        }
        if let Some(first) = &self.greet {
            let line = first.line;
            self.diag(
                call.line,
                McKind::Warning,
                format!(
                    "FEATURE(`greet_pause') again: the ruleset of line {line} answers first \
                     in Sendmail, so line {line} is translated"
                ),
            );
            return;
        }
        self.greet = Some(Greet {
            line: call.line,
            arg,
            before_access: self.access_db.is_none(),
        });
    }

    fn access_db_feature(&mut self, call: &Call) {
        let spec = call.args.get(1).cloned().unwrap_or_default();
        if !spec.is_empty()
            && spec != "LDAP"
            && !spec.starts_with("sequence ")
            && !spec.contains("<TMPF>")
        {
            let text = format!(
                "*** WARNING: missing -T<TMPF> in argument of FEATURE(`access_db', {spec})\n"
            );
            self.m4(
                call.line,
                &text,
                "Sendmail's m4 adds -T<TMPF> itself (temporary lookup failures answer 4xx)",
            );
        }
        if self.greet.is_some() {
            self.m4(
                call.line,
                "*** WARNING: FEATURE(`greet_pause') before FEATURE(`access_db')\n\tgreet_pause will not use access_db!",
                "Sendmail then pauses every client the same and never reads GreetPause: \
                 entries (see the comment in [greet_pause])",
            );
        }
        for extra in call.args.iter().skip(2).filter(|a| !a.trim().is_empty()) {
            self.not_translated(
                call.line,
                format!(
                    "FEATURE(`access_db') option {:?} (Portcullis's lookups are fixed: \
                     docs/config.md [access])",
                    printable(extra)
                ),
            );
        }
        if let Some((earlier, _)) = &self.access_db {
            let earlier = *earlier;
            self.diag(
                call.line,
                McKind::Warning,
                format!("FEATURE(`access_db') again (line {earlier}); the later one is used"),
            );
        }
        match values::access_db(&spec) {
            Ok(db) => self.access_db = Some((call.line, Some(db))),
            Err(why) => {
                self.not_translated(call.line, format!("{} ({why})", printable(&call.text)));
                self.access_db = Some((call.line, None));
            }
        }
    }

    /// `ratecontrol` (`rate`) or `conncontrol`: cf/feature/ratecontrol.m4, conncontrol.m4.
    fn control(&mut self, call: &Call, rate: bool) {
        let feat = if rate { "ratecontrol" } else { "conncontrol" };
        let arg = |i: usize| call.args.get(i).cloned().unwrap_or_default();
        let mut control = Control {
            line: call.line,
            active: self.access_db.is_some(),
            terminate: false,
            immediate: false,
        };
        if !control.active {
            let text = format!("*** ERROR: FEATURE(`{feat}') requires FEATURE(`access_db')\n");
            self.m4(
                call.line,
                &text,
                "the generated sendmail.cf has no limits at all (see the comment in the TOML)",
            );
        } else {
            let (first, second) = (arg(1), arg(2));
            if first.is_empty() {
            } else if first.eq_ignore_ascii_case("nodelay") {
                if self.delay_checks.is_some() {
                    control.immediate = true;
                } else {
                    let text = format!(
                        "*** ERROR: FEATURE(`{feat}', `nodelay') requires FEATURE(`delay_checks')"
                    );
                    self.m4(
                        call.line,
                        &text,
                        "`nodelay` only means something after FEATURE(`delay_checks')",
                    );
                }
            } else {
                let text =
                    format!("*** ERROR: unknown parameter \"{first}\" for FEATURE(`{feat}')");
                self.m4(
                    call.line,
                    &text,
                    "the second argument may only be `nodelay`",
                );
            }
            if second == "terminate" {
                control.terminate = true;
            } else if !second.is_empty() {
                let text = format!("*** ERROR: FEATURE(`{feat}'): unknown argument \"{second}\"\n");
                self.m4(
                    call.line,
                    &text,
                    "the third argument may only be `terminate`; Sendmail answers 452",
                );
            }
        }
        let slot = if rate { &mut self.rate } else { &mut self.conn };
        // m4 defines the reply once: a later `terminate` turns it to 421, never back.
        if let Some(old) = slot.as_ref() {
            control.terminate |= old.terminate && old.active;
        }
        *slot = Some(control);
    }

    fn delay_checks_feature(&mut self, call: &Call) {
        let arg = call.args.get(1).cloned().unwrap_or_default();
        let mode = match arg.chars().next().map(|c| c.to_ascii_lowercase()) {
            None => "true",
            Some('f') => {
                self.spam_friend = true;
                "friend"
            }
            Some('h') => {
                self.spam_hater = true;
                "hater"
            }
            Some(_) => {
                // Sendmail's text says `_ARG_` literally: the name sits inside quotes there.
                self.m4(
                    call.line,
                    "*** ERROR: illegal argument _ARG_ for FEATURE(delay_checks)\n",
                    "the argument may only be `friend` or `hater`; plain delay_checks is used",
                );
                "true"
            }
        };
        self.delay_checks = Some((call.line, mode));
    }

    pub(super) fn finish_greet_pause(&mut self) {
        let key = ("greet_pause", "default");
        let access = self.access_db.is_some();
        let Some(g) = self.greet.clone() else {
            let mut comments = vec![
                "no FEATURE(`greet_pause'): Sendmail greets at once (Portcullis's default \
                 pauses 1s)"
                    .to_owned(),
            ];
            if access {
                comments.push(
                    "Portcullis still honours GreetPause: entries of the access file, which \
                     Sendmail ignores without the feature"
                        .to_owned(),
                );
            }
            self.out.set(key, values::toml_string("0s"), 0, comments);
            return;
        };
        let mut comments = vec![format!(
            "{}:{}: FEATURE(`greet_pause', `{}')",
            self.origin,
            g.line,
            printable(&g.arg)
        )];
        let ms = if g.arg.is_empty() {
            comments
                .push("no value: clients without a GreetPause: entry are not paused".to_owned());
            0
        } else {
            let (n, odd) = values::strtol(&g.arg);
            if odd {
                let msg = format!(
                    "{:?} is not a number of milliseconds; Sendmail reads it as {n} (strtol)",
                    printable(&g.arg)
                );
                self.diag(g.line, McKind::Warning, msg.clone());
                comments.push(msg);
            }
            if n >= GREET_PAUSE_CLAMP_MS {
                comments.push(format!(
                    "{n} ms: Sendmail waits 300 s at most (RFC 5321 §4.5.3.2)"
                ));
            }
            if n <= 0 {
                comments.push(format!("{n}: no pause (Sendmail pauses only above 0)"));
            }
            n.clamp(0, GREET_PAUSE_CLAMP_MS)
        };
        if g.before_access && access {
            comments.push(format!(
                "line {} comes before FEATURE(`access_db'): m4 warned \"greet_pause will not \
                 use access_db!\" and Sendmail pauses every client {}, ignoring GreetPause: \
                 entries. Portcullis reads GreetPause: entries from the access file whatever \
                 the order, so a client with an entry gets its own pause here",
                g.line,
                values::duration_ms(u64::try_from(ms).unwrap_or(0))
            ));
            self.diag(
                g.line,
                McKind::Warning,
                "greet_pause before access_db: Sendmail ignores GreetPause: entries, \
                 Portcullis reads them"
                    .to_owned(),
            );
        }
        comments.push(
            "greet_pause.pass_ttl (Portcullis only): a client that waited is not paused again \
             for 24h; \"0s\" pauses every connection as Sendmail does"
                .to_owned(),
        );
        let value = values::toml_string(&values::duration_ms(u64::try_from(ms).unwrap_or(0)));
        self.out.set(key, value, g.line, comments);
    }

    /// `[rate_control]` (`rate`) or `[conn_control]`.
    pub(super) fn finish_control(&mut self, rate: bool) {
        let (feat, section, tag) = if rate {
            ("ratecontrol", "rate_control", "ClientRate:")
        } else {
            ("conncontrol", "conn_control", "ClientConn:")
        };
        let control = if rate {
            self.rate.clone()
        } else {
            self.conn.clone()
        };
        let ignore = values::toml_string("ignore");
        let Some(c) = control else {
            if self.access_db.is_some() {
                let comments = vec![format!(
                    "no FEATURE(`{feat}'): Sendmail never enforces {tag} entries; \"ignore\" \
                     only logs the clients over them (set \"enforce\" to enforce)"
                )];
                self.out.set((section, "action"), ignore, 0, comments);
            }
            return;
        };
        let source = format!("{}:{}: FEATURE(`{feat}'...)", self.origin, c.line);
        if !c.active {
            let comments = vec![
                source,
                format!(
                    "it comes before (or without) FEATURE(`access_db'): m4 printed an ERROR and \
                     the generated sendmail.cf has no {feat}, so {tag} entries were never \
                     enforced; \"ignore\" only logs (set \"enforce\" to enforce)"
                ),
            ];
            self.out.set((section, "action"), ignore, c.line, comments);
            return;
        }
        let mut comments = vec![source];
        comments.push(if c.terminate {
            "terminate: 421 in place of the greeting, then close".to_owned()
        } else {
            "no `terminate`: the greeting, then 452 to MAIL, RCPT and DATA".to_owned()
        });
        if self.delay_checks.is_some() && !c.immediate {
            let msg = "with FEATURE(`delay_checks') and without `nodelay`, Sendmail refuses at \
                       each RCPT (421, connection kept open); Portcullis refuses at connection \
                       time, as `nodelay` does"
                .to_owned();
            self.diag(c.line, McKind::Warning, format!("FEATURE(`{feat}'): {msg}"));
            comments.push(msg);
        }
        self.out.set(
            (section, "terminate"),
            c.terminate.to_string(),
            c.line,
            comments,
        );
    }
}

/// Why a feature is not translated.
fn feature_reason(name: &str) -> &'static str {
    match name {
        "mailertable" => "write [[route]] entries: Portcullis reads no mailertable",
        "virtusertable" | "genericstable" | "domaintable" => "no address tables in Portcullis",
        "use_cw_file" => "list the domains in local.domains",
        "relay_hosts_only"
        | "relay_entire_domain"
        | "relay_based_on_MX"
        | "relay_local_from"
        | "relay_mail_from"
        | "loose_relay_check"
        | "promiscuous_relay" => {
            "Portcullis's relay rules are [relay] and RELAY entries (docs/config.md)"
        }
        "dnsbl" | "enhdnsbl" | "rhsbl" => "Portcullis has no DNS blocklist checks yet",
        "smrsh" | "local_procmail" | "local_lmtp" => {
            "local delivery is Maildir (or LMTP through a [[route]])"
        }
        "always_add_domain"
        | "masquerade_envelope"
        | "masquerade_entire_domain"
        | "allmasquerade"
        | "limited_masquerade"
        | "local_no_masquerade" => "no address rewriting in Portcullis",
        "msp" | "nullclient" => "Portcullis is an MX, not a submission client",
        "blocklist_recipients" | "blacklist_recipients" => {
            "Portcullis applies To: entries as docs/defences.md describes"
        }
        "" => "no feature name",
        _ => "no Portcullis equivalent",
    }
}
