//! `[local]`: the domains we deliver for and the local parts we accept there.
//!
//! Role: normalize `domains` (lowercase, one trailing dot stripped, deduplicated), check and
//! lowercase `users`, read `users_file` and merge it in. Problems inside `users_file` are
//! reported against that file (`users_file_path:line:col`); a file that cannot be read is
//! reported at the `users_file` line of the config.
//! Must not: resolve or create directories, or read any other file. Relative paths are kept
//! as written: they resolve against the working directory when the server uses them.
//! Invariants: an empty user set with no `users_file` means "accept every local part" (and
//! is warned about); a `users_file` that lists nobody means "accept nobody".

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use toml::Spanned;

use crate::diagnostic::{Diagnostic, Report};
use crate::model::{DEFAULT_DOMAIN, DEFAULT_MAILDIR_ROOT, LocalConfig};
use crate::names::{normalize_domain, normalize_local_part};
use crate::raw::{RawLocal, Text, TextList};
use crate::validate::path;

pub(crate) fn local(raw: &RawLocal, report: &mut Report<'_>) -> LocalConfig {
    let mut users = users(&raw.users, report);
    let users_file = raw.users_file.as_ref().map(|p| PathBuf::from(p.get_ref()));
    let from_file = users_file_entries(&raw.users_file, report);
    let file_listed_nobody = from_file.as_ref().is_some_and(HashSet::is_empty);
    users.extend(from_file.unwrap_or_default());
    // Judge the list as written: a list whose only entries were invalid is an error, not
    // a request to accept everyone.
    let none_listed = raw.users.as_ref().is_none_or(|l| l.get_ref().is_empty());
    warn_about_user_set(
        raw,
        none_listed && users.is_empty(),
        file_listed_nobody,
        report,
    );
    LocalConfig {
        domains: domains(&raw.domains, report),
        maildir_root: path(
            &raw.maildir_root,
            "local.maildir_root",
            DEFAULT_MAILDIR_ROOT,
            "a directory",
            report,
        ),
        users,
        users_file,
    }
}

fn domains(raw: &TextList, report: &mut Report<'_>) -> Vec<String> {
    let Some(list) = raw else {
        return vec![DEFAULT_DOMAIN.to_owned()];
    };
    if list.get_ref().is_empty() {
        report.error(
            Some(list.span()),
            "`local.domains` is empty; list at least one domain to accept mail for".to_owned(),
        );
    }
    let mut domains = Vec::new();
    for item in list.get_ref() {
        match normalize_domain(item.get_ref()) {
            Err(why) => report.error(
                Some(item.span()),
                format!("`local.domains`: {:?} {why}", item.get_ref()),
            ),
            // Duplicates (e.g. "Example.test" and "example.test.") are harmless: drop them.
            Ok(domain) if domains.contains(&domain) => {}
            Ok(domain) => domains.push(domain),
        }
    }
    domains
}

fn users(raw: &TextList, report: &mut Report<'_>) -> HashSet<String> {
    let mut users = HashSet::new();
    for item in raw.iter().flat_map(|list| list.get_ref()) {
        match normalize_local_part(item.get_ref()) {
            Ok(user) => {
                users.insert(user);
            }
            Err(why) => report.error(
                Some(item.span()),
                format!("`local.users`: local part {:?} {why}", item.get_ref()),
            ),
        }
    }
    users
}

/// The local parts listed in `users_file`, or None when there is no such file or it cannot
/// be read (then the error is reported at the `users_file` line).
fn users_file_entries(raw: &Text, report: &mut Report<'_>) -> Option<HashSet<String>> {
    let value = raw.as_ref()?;
    let file = Path::new(value.get_ref());
    match std::fs::read_to_string(file) {
        Ok(text) => {
            let (users, diagnostics) = parse_users_file(&text, value.get_ref());
            report.extend(diagnostics);
            Some(users)
        }
        Err(why) => {
            report.error(
                Some(value.span()),
                format!(
                    "`local.users_file`: cannot read {:?}: {why}",
                    value.get_ref()
                ),
            );
            None
        }
    }
}

/// One local part per line; blank lines and lines starting with '#' are skipped. A line
/// holding two words is an error rather than two users, so a typo cannot widen the list.
pub(crate) fn parse_users_file(text: &str, file: &str) -> (HashSet<String>, Vec<Diagnostic>) {
    let mut report = Report::new(file, text);
    let mut users = HashSet::new();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let start = offset + (line.len() - line.trim_start().len());
        offset += line.len();
        let entry = line.trim();
        if entry.is_empty() || entry.starts_with('#') {
            continue;
        }
        match normalize_local_part(entry) {
            Ok(user) => {
                users.insert(user);
            }
            Err(why) => report.error(Some(start..start), format!("local part {entry:?} {why}")),
        }
    }
    (users, report.into_sorted())
}

fn warn_about_user_set(
    raw: &RawLocal,
    users_empty: bool,
    file_listed_nobody: bool,
    report: &mut Report<'_>,
) {
    if !users_empty {
        return;
    }
    if raw.users_file.is_none() {
        let span = raw.users.as_ref().map(Spanned::span);
        report.warning(
            span,
            "`local.users` is empty and no `local.users_file` is set: \
             every local part at the local domains is accepted"
                .to_owned(),
        );
    } else if file_listed_nobody {
        let span = raw.users_file.as_ref().map(Spanned::span);
        report.warning(
            span,
            "`local.users_file` lists no local parts and `local.users` is empty: \
             every recipient at the local domains will be refused"
                .to_owned(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_file_lines() {
        let text = "# staff\nAlice\n\n  bob  \r\n#carol\nbad user\n.hidden\nDave@x\n\ttab\n";
        let (users, diags) = parse_users_file(text, "users.txt");
        let mut users: Vec<_> = users.into_iter().collect();
        users.sort();
        assert_eq!(users, ["alice", "bob", "tab"]);
        let got: Vec<_> = diags
            .iter()
            .map(|d| (d.line, d.column, d.file.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (6, 1, "users.txt"),
                (7, 1, "users.txt"),
                (8, 1, "users.txt")
            ]
        );
        assert!(diags[0].message.contains("whitespace"), "{diags:?}");
        assert!(diags[1].message.contains("starts with '.'"), "{diags:?}");
        assert!(diags[2].message.contains("'@'"), "{diags:?}");
    }

    #[test]
    fn users_file_column_skips_indentation() {
        let (_, diags) = parse_users_file("ok\n   a/b\n", "u");
        assert_eq!((diags[0].line, diags[0].column), (2, 4));
    }

    #[test]
    fn users_file_without_final_newline() {
        let (users, diags) = parse_users_file("alice\nbob", "u");
        assert!(diags.is_empty());
        assert_eq!(users.len(), 2);
    }
}
