//! The newest audit entry that this client wrote or verified, kept per
//! repository id in a small file on the client, so that `audit verify` notices
//! when entries were deleted from the end of the log.
//!
//! The directory is `$CAIRN_STATE_DIR`, else `$XDG_STATE_HOME/cairn`, else
//! `~/.local/state/cairn`. Each repository has the file
//! `audit-head-<32 hex of the repository id>` with one line:
//! `<sequence number> <file name> <64 hex of the entry hash>`.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Environment variable that overrides the state directory.
pub const STATE_DIR_VARIABLE: &str = "CAIRN_STATE_DIR";

/// The newest audit entry that this client saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RememberedHead {
    /// Sequence number.
    pub seq: u64,
    /// File name, without the directory.
    pub name: String,
    /// BLAKE3 hash of its stored bytes.
    pub hash: [u8; 32],
}

/// Returns the state directory, or `None` when neither the variables nor
/// `$HOME` name one.
pub fn state_dir() -> Option<PathBuf> {
    let from = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty());
    if let Some(dir) = from(STATE_DIR_VARIABLE) {
        return Some(PathBuf::from(dir));
    }
    if let Some(dir) = from("XDG_STATE_HOME") {
        return Some(Path::new(&dir).join("cairn"));
    }
    from("HOME").map(|home| Path::new(&home).join(".local/state/cairn"))
}

fn state_file(dir: &Path, repo_id: &[u8; 16]) -> PathBuf {
    dir.join(format!("audit-head-{}", hex::encode(repo_id)))
}

/// Reads the remembered head of a repository. A missing file is `None`.
pub fn load(dir: &Path, repo_id: &[u8; 16]) -> io::Result<Option<RememberedHead>> {
    let path = state_file(dir, repo_id);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
    };
    let invalid = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is not a valid audit head file: delete it to start over",
                path.display()
            ),
        )
    };
    let mut fields = text.split_whitespace();
    let seq = fields
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(invalid)?;
    let name = fields.next().ok_or_else(invalid)?.to_string();
    let hash = fields
        .next()
        .and_then(|h| hex::decode(h).ok())
        .and_then(|h| <[u8; 32]>::try_from(h).ok())
        .ok_or_else(invalid)?;
    Ok(Some(RememberedHead { seq, name, hash }))
}

/// Remembers `head` for a repository, replacing the file atomically. A head
/// with a lower sequence number than the remembered one is not stored, so that
/// a slow concurrent writer does not move the mark backwards.
pub fn store(dir: &Path, repo_id: &[u8; 16], head: &RememberedHead) -> io::Result<()> {
    if let Ok(Some(current)) = load(dir, repo_id)
        && current.seq > head.seq
    {
        return Ok(());
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
    let path = state_file(dir, repo_id);
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    writeln!(
        file,
        "{} {} {}",
        head.seq,
        head.name,
        hex::encode(head.hash)
    )?;
    file.as_file().sync_all()?;
    file.persist(&path)
        .map_err(|e| io::Error::new(e.error.kind(), format!("{}: {}", path.display(), e.error)))?;
    Ok(())
}
