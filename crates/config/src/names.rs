//! Syntax of the names the configuration holds: host names, domains, local parts.
//!
//! Role: pure checks that say why a name is bad, so the caller can put the reason in a
//! diagnostic. Must not: look anything up (no DNS, no files) or know about spans.
//! Invariants: host names follow RFC 1123 §2.1 (letters, digits, hyphens; labels 1..=63
//! characters, not starting or ending with a hyphen; at most 253 characters in total).
//! Local parts are compared lowercase; ones that could escape the Maildir root or split a
//! line ('/', whitespace, control characters, '@', a leading '.') are refused.

use thiserror::Error;

/// Why a host or domain name is not acceptable.
#[derive(Debug, Error, PartialEq, Eq)]
pub(crate) enum NameError {
    #[error("is empty")]
    Empty,
    #[error("is longer than 253 characters")]
    TooLong,
    #[error("has an empty label (two dots in a row, or a dot at an end)")]
    EmptyLabel,
    #[error("has a label longer than 63 characters")]
    LabelTooLong,
    #[error("has a label that starts or ends with '-'")]
    HyphenAtLabelEdge,
    #[error("contains {0:?}; only letters, digits, '-' and '.' are allowed")]
    BadCharacter(char),
}

/// Checks RFC 1123 host name syntax (no trailing dot; the caller strips one if allowed).
pub(crate) fn check_hostname(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > 253 {
        return Err(NameError::TooLong);
    }
    name.split('.').try_for_each(check_label)
}

fn check_label(label: &str) -> Result<(), NameError> {
    if label.is_empty() {
        return Err(NameError::EmptyLabel);
    }
    if label.len() > 63 {
        return Err(NameError::LabelTooLong);
    }
    if let Some(c) = label
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        return Err(NameError::BadCharacter(c));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(NameError::HyphenAtLabelEdge);
    }
    Ok(())
}

/// Lowercases a domain and strips one trailing dot, then checks its syntax.
pub(crate) fn normalize_domain(domain: &str) -> Result<String, NameError> {
    let bare = domain.strip_suffix('.').unwrap_or(domain);
    check_hostname(bare)?;
    Ok(bare.to_ascii_lowercase())
}

/// Why a local part is not acceptable in `users` / `users_file`.
#[derive(Debug, Error, PartialEq, Eq)]
pub(crate) enum LocalPartError {
    #[error("is empty")]
    Empty,
    #[error("contains '/', which could escape the Maildir root")]
    Slash,
    #[error("contains whitespace or a control character")]
    Space,
    #[error("contains '@'; list local parts only, without the domain")]
    At,
    #[error("starts with '.', which could name a hidden or parent directory")]
    LeadingDot,
}

/// Lowercases a local part after checking it. Lowercase because recipients are matched
/// case-insensitively (Sendmail's local user lookups fold case the same way).
pub(crate) fn normalize_local_part(part: &str) -> Result<String, LocalPartError> {
    if part.is_empty() {
        return Err(LocalPartError::Empty);
    }
    if part.contains('/') {
        return Err(LocalPartError::Slash);
    }
    if part.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(LocalPartError::Space);
    }
    if part.contains('@') {
        return Err(LocalPartError::At);
    }
    if part.starts_with('.') {
        return Err(LocalPartError::LeadingDot);
    }
    Ok(part.to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostname_table() {
        let long_label = "a".repeat(64);
        let max_label = "a".repeat(63);
        let too_long = ["a".repeat(63).as_str(); 5].join("."); // 319 characters
        let table: Vec<(&str, Result<(), NameError>)> = vec![
            ("mx.example.test", Ok(())),
            ("localhost", Ok(())),
            ("MX-1.Example.Test", Ok(())),
            ("1.2.3.4", Ok(())),
            (&max_label, Ok(())),
            ("", Err(NameError::Empty)),
            ("mx..example", Err(NameError::EmptyLabel)),
            ("mx.example.", Err(NameError::EmptyLabel)),
            (".mx", Err(NameError::EmptyLabel)),
            (&long_label, Err(NameError::LabelTooLong)),
            (&too_long, Err(NameError::TooLong)),
            ("mx_1.example", Err(NameError::BadCharacter('_'))),
            ("mx example", Err(NameError::BadCharacter(' '))),
            ("mx.exämple", Err(NameError::BadCharacter('ä'))),
            ("-mx.example", Err(NameError::HyphenAtLabelEdge)),
            ("mx-.example", Err(NameError::HyphenAtLabelEdge)),
        ];
        for (name, expected) in table {
            assert_eq!(check_hostname(name), expected, "{name:?}");
        }
    }

    #[test]
    fn domain_table() {
        let table: &[(&str, Result<&str, NameError>)] = &[
            ("Example.TEST", Ok("example.test")),
            ("example.test.", Ok("example.test")),
            ("example.test..", Err(NameError::EmptyLabel)),
            (".", Err(NameError::Empty)),
            ("exa mple", Err(NameError::BadCharacter(' '))),
        ];
        for (domain, expected) in table {
            assert_eq!(
                normalize_domain(domain).as_deref(),
                expected.as_deref(),
                "{domain:?}"
            );
        }
    }

    #[test]
    fn local_part_table() {
        let table: &[(&str, Result<&str, LocalPartError>)] = &[
            ("alice", Ok("alice")),
            ("Alice.Smith", Ok("alice.smith")),
            ("bob+tag", Ok("bob+tag")),
            ("postmaster", Ok("postmaster")),
            ("", Err(LocalPartError::Empty)),
            ("a/b", Err(LocalPartError::Slash)),
            ("../etc", Err(LocalPartError::Slash)),
            ("a b", Err(LocalPartError::Space)),
            ("a\tb", Err(LocalPartError::Space)),
            ("a\u{7}", Err(LocalPartError::Space)),
            ("a@example.test", Err(LocalPartError::At)),
            (".hidden", Err(LocalPartError::LeadingDot)),
            ("..", Err(LocalPartError::LeadingDot)),
        ];
        for (part, expected) in table {
            assert_eq!(
                normalize_local_part(part).as_deref(),
                expected.as_deref(),
                "{part:?}"
            );
        }
    }
}
