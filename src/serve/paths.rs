//! Request paths of `cairn serve`: `/REPOSITORY/FILE`, where `FILE` must be
//! one of the names that `docs/format.md` (section 1) lists, such as
//! `data/3f/3fa1…` or `locks/5d0c7a1e2b3f4a69`. Anything else is rejected
//! before it reaches the file system.

use std::fmt;

/// The kinds of repository files, which the roles treat differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// `config`, written once by `init`.
    Config,
    /// `keys`, replaced whole by the `key` commands.
    Keys,
    /// `data/<2 hex>/<64 hex>`.
    Pack,
    /// `index/<64 hex>`.
    Index,
    /// `snapshots/<64 hex>`.
    Snapshot,
    /// `locks/<16 hex>`, rewritten by its owner and deleted when released.
    Lock,
    /// `audit/<20 digits>-<16 hex>`, an audit log entry whose name ends with
    /// the start of the BLAKE3 hash of its bytes.
    Audit,
}

impl FileKind {
    /// True for the kinds whose name is the BLAKE3 hash of their bytes, so that
    /// a name can hold only one content.
    pub fn is_content_addressed(self) -> bool {
        matches!(
            self,
            Self::Pack | Self::Index | Self::Snapshot | Self::Audit
        )
    }

    /// Returns the hex hash, or for an audit entry the start of it, that names
    /// a content-addressed file.
    pub fn content_hash(self, path: &str) -> Option<&str> {
        let name = path.rsplit('/').next()?;
        match self {
            Self::Audit => name.split_once('-').map(|(_, hash)| hash),
            _ if self.is_content_addressed() => Some(name),
            _ => None,
        }
    }
}

/// File or directory that a request path names inside a repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A file, with its path relative to the repository root.
    File(FileKind, String),
    /// A directory that can be listed: the top level (empty path), `data`,
    /// `data/<2 hex>`, `index`, `snapshots`, `locks` or `audit`.
    Directory(String),
}

/// Reason for rejecting a request path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathError {
    /// Not a valid path at all: `..`, `.`, an empty segment, an encoded `/`,
    /// or a name that starts with `.`. The server returns 400.
    Invalid(String),
    /// A well-formed path that names no repository file. The server returns 404.
    Unknown(String),
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Invalid(detail) => write!(f, "invalid path: {detail}"),
            Self::Unknown(path) => write!(
                f,
                "{path} is not a repository file: the server serves only config, keys, data/, index/, snapshots/, locks/ and audit/"
            ),
        }
    }
}

/// Splits a raw request path (`/main/data/3f/3fa1…`, still percent-encoded)
/// into the repository name and the decoded segments after it.
pub fn split_request_path(raw: &str) -> Result<(String, Vec<String>), PathError> {
    let Some(rest) = raw.strip_prefix('/') else {
        return Err(PathError::Invalid(format!("{raw:?} does not start with /")));
    };
    let mut segments = Vec::new();
    for encoded in rest.split('/') {
        let segment = percent_encoding::percent_decode_str(encoded)
            .decode_utf8()
            .map_err(|_| PathError::Invalid(format!("{encoded:?} is not UTF-8 once decoded")))?;
        if segment.is_empty() {
            return Err(PathError::Invalid(format!("{raw:?} has an empty segment")));
        }
        if segment.starts_with('.') {
            return Err(PathError::Invalid(format!(
                "segment {segment:?} of {raw:?} starts with a dot"
            )));
        }
        if segment.contains(['/', '\\', '\0']) {
            return Err(PathError::Invalid(format!(
                "segment {segment:?} of {raw:?} contains /, \\ or NUL"
            )));
        }
        segments.push(segment.into_owned());
    }
    let repository = segments.remove(0);
    Ok((repository, segments))
}

/// Classifies the segments after the repository name.
pub fn classify(segments: &[String]) -> Result<Target, PathError> {
    let parts: Vec<&str> = segments.iter().map(String::as_str).collect();
    let file = |kind, path: String| Ok(Target::File(kind, path));
    match parts.as_slice() {
        [] => Ok(Target::Directory(String::new())),
        ["config"] => file(FileKind::Config, "config".into()),
        ["keys"] => file(FileKind::Keys, "keys".into()),
        [dir @ ("data" | "index" | "snapshots" | "locks" | "audit")] => {
            Ok(Target::Directory(dir.to_string()))
        }
        ["data", prefix] if is_hex(prefix, 2) => Ok(Target::Directory(format!("data/{prefix}"))),
        ["data", prefix, name] if is_hex(name, 64) && name.starts_with(prefix) => {
            file(FileKind::Pack, format!("data/{prefix}/{name}"))
        }
        ["index", name] if is_hex(name, 64) => file(FileKind::Index, format!("index/{name}")),
        ["snapshots", name] if is_hex(name, 64) => {
            file(FileKind::Snapshot, format!("snapshots/{name}"))
        }
        ["locks", name] if is_hex(name, 16) => file(FileKind::Lock, format!("locks/{name}")),
        ["audit", name] if crate::audit::parse_entry_name(name).is_some() => {
            file(FileKind::Audit, format!("audit/{name}"))
        }
        _ => Err(PathError::Unknown(parts.join("/"))),
    }
}

/// True for `len` lowercase hex characters, the form of every name that
/// cairn writes.
fn is_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(raw: &str) -> Result<Target, PathError> {
        let (repository, segments) = split_request_path(raw)?;
        assert_eq!(repository, "main");
        classify(&segments)
    }

    #[test]
    fn repository_files_are_classified() {
        let pack = format!("3f{}", "a".repeat(62));
        assert_eq!(
            target(&format!("/main/data/3f/{pack}")),
            Ok(Target::File(FileKind::Pack, format!("data/3f/{pack}")))
        );
        assert_eq!(
            target("/main/locks/5d0c7a1e2b3f4a69"),
            Ok(Target::File(
                FileKind::Lock,
                "locks/5d0c7a1e2b3f4a69".into()
            ))
        );
        assert_eq!(
            target("/main/keys"),
            Ok(Target::File(FileKind::Keys, "keys".into()))
        );
        assert_eq!(target("/main"), Ok(Target::Directory(String::new())));
        assert_eq!(
            target("/main/data/3f"),
            Ok(Target::Directory("data/3f".into()))
        );
    }

    #[test]
    fn traversal_and_odd_segments_are_invalid() {
        for raw in [
            "/main/../x",
            "/main/%2e%2e/x",
            "/main/%2E%2E/x",
            "/main/./config",
            "/main//etc/passwd",
            "/main/data%2f3f",
            "/main/.tmp-0123456789abcdef",
            "/main/locks/.owner-5d0c7a1e2b3f4a69",
            "/main/config/",
            "main/config",
            "/main/%ff",
        ] {
            assert!(
                matches!(target(raw), Err(PathError::Invalid(_))),
                "{raw} was not rejected as invalid: {:?}",
                target(raw)
            );
        }
    }

    #[test]
    fn unknown_names_are_not_found() {
        let pack = format!("3f{}", "a".repeat(62));
        for raw in [
            "/main/etc/passwd".to_string(),
            "/main/config.bak".to_string(),
            format!("/main/data/ab/{pack}"),
            format!("/main/data/3f/{}", pack.to_uppercase()),
            "/main/index/abc".to_string(),
            "/main/locks/5d0c7a1e2b3f4a6".to_string(),
            "/main/data/3f/x/y".to_string(),
        ] {
            assert!(
                matches!(target(&raw), Err(PathError::Unknown(_))),
                "{raw} was not rejected as unknown: {:?}",
                target(&raw)
            );
        }
    }
}
