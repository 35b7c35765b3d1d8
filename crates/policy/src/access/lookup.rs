//! The lookup walks: Sendmail's rulesets `D`, `A`, `F`, `U` over the stored keys.
//!
//! Role: turn one question (a host name, a client address, a mail address) into the
//! sequence of keys Sendmail would try, and return the first entry found.
//! Must not: allocate (keys are probed as borrowed pieces: `user` `@` `domain`), or try a
//! key Sendmail would not (no default, no untagged key unless asked).
//! Invariants: at every step the tagged key comes before the untagged one; a walk ends.

use std::net::IpAddr;

use super::index::{IpKey, Lens};
use super::{AccessMap, Entry, Tag, UserStep};

impl AccessMap {
    /// One key, tagged first, then untagged when asked (`<+ Tag>`); [`Tag::Untagged`]
    /// probes the untagged key alone.
    /// A tag without name keys is not probed: maps often hold only addresses for a tag
    /// (GreetPause, ClientRate), and each probe is a likely cache miss.
    fn probe(&self, tag: Tag, untagged: bool, parts: &[&str]) -> Option<Entry<'_>> {
        if tag != Tag::Untagged
            && self.has_host_keys(tag)
            && let Some(e) = self.find_name(tag, parts)
        {
            return Some(e);
        }
        if (untagged || tag == Tag::Untagged) && self.has_host_keys(Tag::Untagged) {
            return self.find_name(Tag::Untagged, parts);
        }
        None
    }

    /// Ruleset `D`: the name, then each parent domain (leading label stripped).
    pub(super) fn walk_domain(&self, tag: Tag, untagged: bool, name: &str) -> Option<Entry<'_>> {
        let name = name.strip_suffix('.').unwrap_or(name);
        if let Some(inner) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
            return self.walk_literal(tag, untagged, inner);
        }
        let mut level = name;
        loop {
            if level.is_empty() {
                return None;
            }
            if let Some(e) = self.probe(tag, untagged, &[level]) {
                return Some(e);
            }
            level = level.split_once('.')?.1;
        }
    }

    /// `D` on an address literal: `[a.b.c.d]`, `[a.b.c]` ... (`[IPv6:...]` by groups), the
    /// shortening happening inside the brackets.
    fn walk_literal(&self, tag: Tag, untagged: bool, inner: &str) -> Option<Entry<'_>> {
        let mut level = inner;
        loop {
            if let Some(e) = self.probe(tag, untagged, &["[", level, "]"]) {
                return Some(e);
            }
            level = shorter_literal(level)?;
        }
    }

    /// Ruleset `A`, generalised to any prefix length: every length present for the tag (or
    /// for untagged keys, when asked), longest first; tagged before untagged at each.
    pub(super) fn walk_addr(&self, tag: Tag, untagged: bool, addr: IpAddr) -> Option<Entry<'_>> {
        let (v6, bits) = match addr {
            IpAddr::V4(a) => (false, u128::from(u32::from(a))),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => (false, u128::from(u32::from(v4))),
                None => (true, u128::from(a)),
            },
        };
        let table = if v6 { &self.v6_lens } else { &self.v4_lens };
        let lens = |t: Tag| table.get(t.index()).copied().unwrap_or_default();
        let tagged = if tag == Tag::Untagged {
            Lens::default()
        } else {
            lens(tag)
        };
        let plain = if untagged || tag == Tag::Untagged {
            lens(Tag::Untagged)
        } else {
            Lens::default()
        };
        let key = |t: Tag, len: u8| {
            if v6 {
                IpKey::v6(t, bits, len)
            } else {
                IpKey::v4(t, bits as u32, len)
            }
        };
        let mut todo = tagged.union(plain);
        while let Some(len) = todo.pop_longest() {
            if tagged.contains(len)
                && let Some(e) = self.find_addr(key(tag, len))
            {
                return Some(e);
            }
            if plain.contains(len)
                && let Some(e) = self.find_addr(key(Tag::Untagged, len))
            {
                return Some(e);
            }
        }
        None
    }

    /// The `SearchList` of a mail address: `F`, then `U` and `D` in the order asked.
    pub(super) fn walk_mail(
        &self,
        tag: Tag,
        untagged: bool,
        local: &str,
        domain: &str,
        user: UserStep,
    ) -> Option<Entry<'_>> {
        let domain = domain.strip_suffix('.').unwrap_or(domain);
        if domain.is_empty() {
            // An unqualified address: Sendmail's lists are `<U:user@>` alone.
            return self.walk_user(tag, untagged, local);
        }
        let user_first = user == UserStep::BeforeDomain;
        let user_last = user == UserStep::AfterDomain;
        self.walk_full(tag, untagged, local, domain)
            .or_else(|| user_first.then(|| self.walk_user(tag, untagged, local))?)
            .or_else(|| self.walk_domain(tag, untagged, domain))
            .or_else(|| user_last.then(|| self.walk_user(tag, untagged, local))?)
    }

    /// Ruleset `F`: `user+detail@domain`, then `user+*@domain`, then `user@domain`.
    fn walk_full(&self, tag: Tag, untagged: bool, local: &str, domain: &str) -> Option<Entry<'_>> {
        if local.is_empty() {
            return None;
        }
        if let Some(e) = self.probe(tag, untagged, &[local, "@", domain]) {
            return Some(e);
        }
        let (base, _) = split_detail(local)?;
        self.probe(tag, untagged, &[base, "+*@", domain])
            .or_else(|| self.probe(tag, untagged, &[base, "@", domain]))
    }

    /// Ruleset `U`: `user+detail@`, then `user+*@`, then `user@`.
    fn walk_user(&self, tag: Tag, untagged: bool, local: &str) -> Option<Entry<'_>> {
        if local.is_empty() {
            return None;
        }
        if let Some(e) = self.probe(tag, untagged, &[local, "@"]) {
            return Some(e);
        }
        let (base, _) = split_detail(local)?;
        self.probe(tag, untagged, &[base, "+*@"])
            .or_else(|| self.probe(tag, untagged, &[base, "@"]))
    }
}

/// `user+detail` → (`user`, `detail`). Sendmail's pattern `$+ + $*` gives `user` at least one
/// token, so a leading `+` belongs to the user and the split is at the next one.
fn split_detail(local: &str) -> Option<(&str, &str)> {
    let first = local.chars().next()?.len_utf8();
    let at = local.get(first..)?.find('+')? + first;
    Some((local.get(..at)?, local.get(at + 1..)?))
}

/// One step of `D` inside brackets: drop the last `.x` (IPv4), else `::x`, else `:x`, where
/// `x` is a single token; `None` when nothing is left to drop.
fn shorter_literal(inner: &str) -> Option<&str> {
    const OPERATORS: &[char] = &['.', ':', '%', '@', '!', '^', '/', '[', ']', '+'];
    let one_token = |s: &str| !s.is_empty() && !s.contains(OPERATORS);
    if let Some((head, last)) = inner.rsplit_once('.')
        && !head.is_empty()
        && one_token(last)
    {
        return Some(head);
    }
    let (head, last) = inner.rsplit_once(':')?;
    if !one_token(last) {
        return None;
    }
    match head.strip_suffix(':') {
        Some(h) if !h.is_empty() => Some(h),
        _ if !head.is_empty() => Some(head),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details() {
        assert_eq!(split_detail("user+ext"), Some(("user", "ext")));
        assert_eq!(split_detail("a+b+c"), Some(("a", "b+c")));
        assert_eq!(split_detail("user+"), Some(("user", "")));
        assert_eq!(split_detail("+x+y"), Some(("+x", "y")));
        assert_eq!(split_detail("++y"), Some(("+", "y")));
        assert_eq!(split_detail("+x"), None);
        assert_eq!(split_detail("user"), None);
        assert_eq!(split_detail(""), None);
        assert_eq!(split_detail("é+x"), Some(("é", "x")));
    }

    #[test]
    fn literals_shorten_like_ruleset_d() {
        let walk = |s: &str| {
            let mut out = vec![s.to_owned()];
            let mut cur = s;
            while let Some(next) = shorter_literal(cur) {
                out.push(next.to_owned());
                cur = next;
            }
            out
        };
        assert_eq!(walk("1.2.3.4"), ["1.2.3.4", "1.2.3", "1.2", "1"]);
        assert_eq!(
            walk("IPv6:2001:db8:0:0:0:0:0:1"),
            [
                "IPv6:2001:db8:0:0:0:0:0:1",
                "IPv6:2001:db8:0:0:0:0:0",
                "IPv6:2001:db8:0:0:0:0",
                "IPv6:2001:db8:0:0:0",
                "IPv6:2001:db8:0:0",
                "IPv6:2001:db8:0",
                "IPv6:2001:db8",
                "IPv6:2001",
                "IPv6",
            ]
        );
        assert_eq!(walk("IPv6:::1"), ["IPv6:::1", "IPv6:"]);
        assert_eq!(walk(""), [""]);
        assert_eq!(walk("x"), ["x"]);
        assert_eq!(walk(".1"), [".1"]);
    }
}
