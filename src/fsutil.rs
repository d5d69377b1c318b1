//! Crash-safe file writes: a reader (or the next start after a power cut) sees the old content
//! or the new, never a mixture or a truncated file.
//!
//! The sequence is the classic one: write a temp file beside the target, fsync it, rename it
//! over the target (atomic within one filesystem), fsync the folder so the rename itself is on
//! disk. Hand-written because it is ten lines and the crates that do it (atomicwrites,
//! tempfile's `persist`) either skip the folder fsync or pull more than they give.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Why a state file (`library.json`, `channels.json`...) could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateFileError {
    /// A file operation failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What we were doing ("write", "create", "remove"...).
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The file was written by a newer mohd; refusing to read it protects its data.
    #[error(
        "{} has format version {version}, newer than this mohd understands ({understood}); \
         upgrade mohd",
        path.display()
    )]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// Its version.
        version: u32,
        /// The newest version this mohd reads.
        understood: u32,
    },
}

impl StateFileError {
    pub fn io(action: &'static str, path: &Path, source: io::Error) -> StateFileError {
        StateFileError::Io {
            action,
            path: path.to_owned(),
            source,
        }
    }

    /// 507 when the disk is full, else 500: either way the server's side.
    pub fn http_status(&self) -> u16 {
        match self {
            StateFileError::Io { source, .. } if is_disk_full(source) => 507,
            StateFileError::Io { .. } | StateFileError::UnsupportedVersion { .. } => 500,
        }
    }
}

/// Replaces `path` with `bytes` atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = parent_dir(path);
    let tmp = temp_path_beside(path);
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        fsync_dir(&dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Makes a folder's entries (creations, renames, removals) durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// `NAME.tmp-<random>` in the same folder, so the rename never crosses filesystems.
pub fn temp_path_beside(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".to_owned());
    parent_dir(path).join(format!("{name}.tmp-{:016x}", rand::random::<u64>()))
}

/// What [`read_state_file`] found.
#[derive(Debug)]
pub enum StateFile<T> {
    /// No file yet.
    Missing,
    /// The file did not parse; it was renamed aside (see [`set_aside`]) and an error logged.
    SetAside,
    /// The file's content.
    Read(T),
}

/// Reads a JSON state file that has a top-level `version`: a version newer than `understood`
/// is refused (before anything else is parsed, so a newer shape is never mistaken for
/// corruption); a file that does not parse is set aside with an error logged saying
/// `consequence` (e.g. "starting without managed channels").
pub fn read_state_file<T: serde::de::DeserializeOwned>(
    path: &Path,
    understood: u32,
    consequence: &str,
) -> Result<StateFile<T>, StateFileError> {
    #[derive(serde::Deserialize)]
    struct Version {
        version: u32,
    }
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(StateFile::Missing),
        Err(e) => return Err(StateFileError::io("read", path, e)),
    };
    if let Ok(Version { version }) = serde_json::from_slice(&bytes)
        && version > understood
    {
        return Err(StateFileError::UnsupportedVersion {
            path: path.to_owned(),
            version,
            understood,
        });
    }
    match serde_json::from_slice(&bytes) {
        Ok(doc) => Ok(StateFile::Read(doc)),
        Err(e) => {
            let aside = set_aside(path).map_err(|e| StateFileError::io("rename", path, e))?;
            tracing::error!(
                path = %path.display(),
                moved_to = %aside.display(),
                error = %e,
                "the file is corrupt; {consequence}"
            );
            Ok(StateFile::SetAside)
        }
    }
}

/// Renames a file that cannot be read to `NAME.corrupt-<unix time>` (never over an earlier
/// one), so what it held can still be looked at while a fresh one replaces it.
pub fn set_aside(path: &Path) -> io::Result<PathBuf> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let base = format!("{}.corrupt-{now}", path.display());
    let mut aside = PathBuf::from(&base);
    let mut n = 1;
    while fs::symlink_metadata(&aside).is_ok() {
        aside = PathBuf::from(format!("{base}-{n}"));
        n += 1;
    }
    fs::rename(path, &aside)?;
    Ok(aside)
}

/// Removes the `NAME.tmp-*` files [`write_atomic`] leaves in `dir` when a crash interrupts it,
/// for each of `names` (other files' temps are their owners' to clean).
pub fn remove_stale_temps(dir: &Path, names: &[&str]) {
    let Ok(rd) = fs::read_dir(dir) else {
        return;
    };
    for entry in rd.filter_map(Result::ok) {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if names
            .iter()
            .any(|base| name.starts_with(&format!("{base}.tmp-")))
        {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// ENOSPC or EDQUOT: the disk (or the user's quota) is full.
pub fn is_disk_full(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(c) if c == nix::errno::Errno::ENOSPC as i32 || c == nix::errno::Errno::EDQUOT as i32
    )
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_content_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("library.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "only the target remains");
    }

    #[test]
    fn a_failed_write_leaves_the_old_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        write_atomic(&p, b"old").unwrap();
        // A target that is a non-empty folder cannot be replaced by rename.
        let d = dir.path().join("sub");
        fs::create_dir(&d).unwrap();
        fs::write(d.join("f"), b"").unwrap();
        assert!(write_atomic(&d, b"new").is_err());
        assert_eq!(fs::read(&p).unwrap(), b"old");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            2,
            "no temp file left"
        );
    }
}
