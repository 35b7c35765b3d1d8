//! File-system primitives for durability, shared by the spool and Maildir delivery.
//!
//! Role: directory fsync, durable directory creation, no-replace rename, synced writes.
//! Must not: hide an error (each is returned with its path) or overwrite a file that
//! callers asked to keep.
//! Invariants: a directory created here has mode 0700 (minus umask) and its parent is
//! fsynced before we return, so the new entry survives a crash.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use crate::error::SpoolError;

/// fsyncs a directory so entries created, renamed or removed in it are durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| SpoolError::io(dir, e))
}

/// Creates `path` (and missing ancestors) with mode 0700, fsyncing the parent of each
/// directory created. An existing directory is left as it is.
pub(crate) fn create_dir_durable(path: &Path) -> Result<(), SpoolError> {
    if path.is_dir() {
        return Ok(());
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    create_dir_durable(parent)?;
    match DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => {}
        // Lost a race with another creator: its parent fsync may not have happened yet,
        // so do ours too rather than trust it.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => {}
        Err(e) => return Err(SpoolError::io(path, e)),
    }
    fsync_dir(parent)
}

/// Creates `path` exclusively (mode 0600), writes `parts` and fdatasyncs it. On any
/// failure after creation the file is removed; a file that already existed is not ours
/// and is never touched (`SpoolError::Exists`).
pub(crate) fn write_new_synced(path: &Path, parts: &[&[u8]]) -> Result<(), SpoolError> {
    write_new(path, parts, true).map(drop)
}

/// Creates `path` (never overwriting), writes `parts`, and fdatasyncs it when `sync` is set.
/// Returns the open file, so a caller that syncs a whole batch at once (`syncfs`) can do it
/// through a descriptor opened before the writes (Linux reports writeback errors to
/// `syncfs` for descriptors opened before they happened). On error the file is removed.
pub(crate) fn write_new(path: &Path, parts: &[&[u8]], sync: bool) -> Result<File, SpoolError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| SpoolError::io(path, e))?;
    let written = parts
        .iter()
        .try_for_each(|part| file.write_all(part))
        .and_then(|()| if sync { file.sync_data() } else { Ok(()) });
    if let Err(e) = written {
        drop(file);
        // Best effort: the write already failed, which is the error worth reporting.
        let _ = fs::remove_file(path);
        return Err(SpoolError::io(path, e));
    }
    Ok(file)
}

/// Flushes the whole filesystem holding `file` (data and metadata): one device flush for a
/// batch instead of one per file. Used only for batches; see the callers' notes.
pub(crate) fn syncfs(file: &File, path: &Path) -> Result<(), SpoolError> {
    nix::unistd::syncfs(file).map_err(|e| SpoolError::io(path, io::Error::from(e)))
}

/// Renames `from` to `to`, failing with `SpoolError::Exists` if `to` exists.
pub(crate) fn rename_noreplace(from: &Path, to: &Path) -> Result<(), SpoolError> {
    rename_noreplace_io(from, to).map_err(|e| SpoolError::io(to, e))
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn rename_noreplace_io(from: &Path, to: &Path) -> io::Result<()> {
    use nix::errno::Errno;
    use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
    match renameat2(AT_FDCWD, from, AT_FDCWD, to, RenameFlags::RENAME_NOREPLACE) {
        Ok(()) => Ok(()),
        // The file system does not support RENAME_NOREPLACE.
        Err(Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP) => link_then_unlink(from, to),
        Err(e) => Err(e.into()),
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn rename_noreplace_io(from: &Path, to: &Path) -> io::Result<()> {
    link_then_unlink(from, to)
}

/// Portable no-replace rename: `link(2)` fails atomically with EEXIST. A crash between
/// the two steps leaves a second name for the same file in the source directory, which
/// recovery quarantines (never loses).
fn link_then_unlink(from: &Path, to: &Path) -> io::Result<()> {
    fs::hard_link(from, to)?;
    fs::remove_file(from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rename_noreplace_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        fs::write(&a, "new").unwrap();
        fs::write(&b, "old").unwrap();
        let err = rename_noreplace(&a, &b).unwrap_err();
        assert!(
            matches!(err, SpoolError::Exists { ref path } if *path == b),
            "{err:?}"
        );
        assert_eq!(fs::read(&b).unwrap(), b"old");
        assert_eq!(fs::read(&a).unwrap(), b"new");
        fs::remove_file(&b).unwrap();
        rename_noreplace(&a, &b).unwrap();
        assert!(!a.exists());
        assert_eq!(fs::read(&b).unwrap(), b"new");
    }

    #[test]
    fn write_new_synced_never_clobbers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write_new_synced(&path, &[b"ab", b"cd"]).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"abcd");
        let err = write_new_synced(&path, &[b"zz"]).unwrap_err();
        assert!(matches!(err, SpoolError::Exists { .. }));
        assert_eq!(fs::read(&path).unwrap(), b"abcd", "existing file untouched");
    }

    #[test]
    fn create_dir_durable_makes_ancestors_0700() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b/c");
        create_dir_durable(&deep).unwrap();
        create_dir_durable(&deep).unwrap();
        let mode = fs::metadata(&deep).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "mode {mode:o}");
    }
}
