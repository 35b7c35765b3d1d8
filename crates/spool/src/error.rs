//! Error types of the spool.
//!
//! Role: one error enum for every spool operation ([`SpoolError`]) and one for the
//! committer's admission check ([`SubmitError`]).
//! Must not: lose the path or the OS error; every variant that concerns a file names it,
//! so the server's log line says which file failed and why.
//! Invariants: "no space" and "quota exceeded" are always [`SpoolError::Full`] (the server
//! answers 452 4.3.1 for it, RFC 3463 §3.5), never a generic I/O error.

use std::io;
use std::path::{Path, PathBuf};

/// Why a spool operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpoolError {
    /// The file system is out of space or the quota is exceeded (ENOSPC, EDQUOT).
    #[error("spool full (no space or quota exceeded) writing {}", path.display())]
    Full { path: PathBuf },
    /// Any other I/O error.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A spool file does not follow the format (torn write, foreign file, damage).
    #[error("corrupt spool file {}: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    /// A Maildir path component or unique name would escape or break the mailbox.
    #[error("invalid mailbox: {reason}")]
    InvalidMailbox { reason: String },
    /// The target file already exists and must not be overwritten.
    #[error("{} already exists", path.display())]
    Exists { path: PathBuf },
    /// No queue file for this id.
    #[error("queue file {id} not found")]
    NotFound { id: String },
}

impl SpoolError {
    /// Classifies an I/O error on `path`: ENOSPC/EDQUOT become `Full`, EEXIST becomes
    /// `Exists` (we only see it from `create_new` and no-replace renames), the rest `Io`.
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        let full = [
            nix::errno::Errno::ENOSPC as i32,
            nix::errno::Errno::EDQUOT as i32,
        ];
        match source.raw_os_error() {
            Some(code) if full.contains(&code) => Self::Full {
                path: path.to_path_buf(),
            },
            _ if source.kind() == io::ErrorKind::AlreadyExists => Self::Exists {
                path: path.to_path_buf(),
            },
            _ => Self::Io {
                path: path.to_path_buf(),
                source,
            },
        }
    }
}

/// Why [`crate::Committer::submit`] refused a message. The message and its callback are
/// dropped; the caller answers the client itself (452 4.3.1 for `Full`, 421 for `Closed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The commit queue is at capacity: the disk is not keeping up.
    #[error("spool commit queue is full")]
    Full,
    /// The committer has been shut down.
    #[error("spool committer is shut down")]
    Closed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enospc_and_edquot_are_full() {
        for errno in [nix::errno::Errno::ENOSPC, nix::errno::Errno::EDQUOT] {
            let e = SpoolError::io(Path::new("/x"), io::Error::from(errno));
            assert!(matches!(e, SpoolError::Full { .. }), "{e:?}");
        }
    }

    #[test]
    fn other_errors_keep_path_and_source() {
        let e = SpoolError::io(Path::new("/x/y"), io::Error::from(nix::errno::Errno::EIO));
        assert!(matches!(&e, SpoolError::Io { path, .. } if path == Path::new("/x/y")));
        assert!(e.to_string().contains("/x/y"), "{e}");
        let e = SpoolError::io(
            Path::new("/x"),
            io::Error::from(io::ErrorKind::AlreadyExists),
        );
        assert!(matches!(e, SpoolError::Exists { .. }));
    }
}
