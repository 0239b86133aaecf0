//! Rules that leave entries out of a backup: gitignore-style patterns, marker
//! files and cache directories.
//!
//! Patterns follow the syntax and matching rules of gitignore(5), applied to
//! absolute paths as if the `.gitignore` file were in `/`:
//!
//! - a pattern without a slash, such as `*.o` or `node_modules`, matches a name
//!   at any depth;
//! - a pattern with a slash at the start or in the middle, such as `/srv/tmp` or
//!   `srv/*/cache`, is anchored at `/`;
//! - a trailing slash, as in `build/`, matches directories only;
//! - `*` and `?` do not match `/`, `**` matches any number of directories, and
//!   `[a-z]` matches a character class;
//! - a leading `!` re-includes what an earlier pattern excluded, except below an
//!   excluded directory, whose entries are never listed.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use ignore::gitignore::{Gitignore, GitignoreBuilder};

/// Name of the cache directory tag file defined by the Cache Directory Tagging
/// Specification (<https://bford.info/cachedir/>).
pub const CACHEDIR_TAG: &str = "CACHEDIR.TAG";

/// Bytes a valid `CACHEDIR.TAG` starts with, as the specification requires.
pub const CACHEDIR_TAG_SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";

/// Errors of building exclude rules.
#[derive(Debug, thiserror::Error)]
pub enum ExcludeError {
    /// A pattern does not parse.
    #[error("invalid exclude pattern {pattern:?}{}: {reason}", source_suffix(.source_file, *.line))]
    InvalidPattern {
        /// The pattern as given.
        pattern: String,
        /// File the pattern came from, if any.
        source_file: Option<PathBuf>,
        /// Line number in that file, starting at 1.
        line: usize,
        /// Message of the glob parser.
        reason: String,
    },
    /// An exclude file cannot be read.
    #[error("cannot read exclude file {}: {error}", .path.display())]
    UnreadableFile {
        /// The file.
        path: PathBuf,
        /// The error.
        error: io::Error,
    },
    /// The patterns parsed one by one but could not be compiled together.
    #[error("exclude patterns could not be compiled: {0}")]
    Compile(String),
    /// An `--exclude-if-present` name is empty or contains a slash.
    #[error(
        "invalid file name {0:?} for --exclude-if-present: give a plain name such as .nobackup"
    )]
    InvalidMarkerName(String),
}

fn source_suffix(file: &Option<PathBuf>, line: usize) -> String {
    match file {
        Some(file) => format!(" in {} line {line}", file.display()),
        None => String::new(),
    }
}

/// Settings from which [`Excludes`] are built.
#[derive(Clone, Debug, Default)]
pub struct ExcludeOptions {
    /// Gitignore-style patterns.
    pub patterns: Vec<String>,
    /// Files with one pattern per line; blank lines and lines starting with `#`
    /// are skipped.
    pub pattern_files: Vec<PathBuf>,
    /// A directory that contains an entry with one of these names is left out.
    pub if_present: Vec<OsString>,
    /// Leave out directories that contain a valid `CACHEDIR.TAG`.
    pub caches: bool,
}

/// Reason an entry was left out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExcludeReason {
    /// The path matches a pattern.
    Pattern(String),
    /// The directory contains a marker file of `--exclude-if-present`.
    MarkerFile(OsString),
    /// The directory contains a valid `CACHEDIR.TAG`.
    CacheDirectory,
    /// The entry is on another file system than the backed-up path above it.
    OtherFileSystem,
}

impl std::fmt::Display for ExcludeReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExcludeReason::Pattern(pattern) => write!(f, "matches pattern {pattern:?}"),
            ExcludeReason::MarkerFile(name) => write!(f, "contains {}", name.to_string_lossy()),
            ExcludeReason::CacheDirectory => write!(f, "contains a valid {CACHEDIR_TAG}"),
            ExcludeReason::OtherFileSystem => write!(f, "on another file system"),
        }
    }
}

/// Compiled exclude rules.
#[derive(Clone, Debug)]
pub struct Excludes {
    patterns: Gitignore,
    if_present: Vec<OsString>,
    caches: bool,
}

impl Default for Excludes {
    fn default() -> Self {
        Self {
            patterns: Gitignore::empty(),
            if_present: Vec::new(),
            caches: false,
        }
    }
}

impl Excludes {
    /// Compiles the patterns and reads the pattern files.
    pub fn new(options: &ExcludeOptions) -> Result<Self, ExcludeError> {
        let mut builder = GitignoreBuilder::new("/");
        for pattern in &options.patterns {
            add_pattern(&mut builder, pattern, None, 0)?;
        }
        for path in &options.pattern_files {
            let text =
                std::fs::read_to_string(path).map_err(|error| ExcludeError::UnreadableFile {
                    path: path.clone(),
                    error,
                })?;
            for (index, line) in text.lines().enumerate() {
                add_pattern(&mut builder, line, Some(path), index + 1)?;
            }
        }
        let patterns = builder
            .build()
            .map_err(|e| ExcludeError::Compile(e.to_string()))?;
        for name in &options.if_present {
            let bytes = name.as_bytes();
            if bytes.is_empty() || bytes.contains(&b'/') || bytes == b"." || bytes == b".." {
                return Err(ExcludeError::InvalidMarkerName(
                    name.to_string_lossy().into_owned(),
                ));
            }
        }
        Ok(Self {
            patterns,
            if_present: options.if_present.clone(),
            caches: options.caches,
        })
    }

    /// True when no rule is set, so nothing can be excluded.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty() && self.if_present.is_empty() && !self.caches
    }

    /// Checks an absolute path against the patterns.
    pub fn match_pattern(&self, path: &Path, is_dir: bool) -> Option<ExcludeReason> {
        pattern_reason(self.patterns.matched(path, is_dir))
    }

    /// Checks an absolute path and each of its ancestors against the patterns,
    /// for backup roots whose parents are never walked.
    pub fn match_pattern_or_parent(&self, path: &Path, is_dir: bool) -> Option<ExcludeReason> {
        if path == Path::new("/") {
            return None;
        }
        pattern_reason(self.patterns.matched_path_or_any_parents(path, is_dir))
    }

    /// Checks a directory for marker files and a cache directory tag. A marker
    /// counts when an entry of that name exists, whatever its type.
    pub fn match_directory(&self, dir: &Path) -> Option<ExcludeReason> {
        for name in &self.if_present {
            if std::fs::symlink_metadata(dir.join(name)).is_ok() {
                return Some(ExcludeReason::MarkerFile(name.clone()));
            }
        }
        if self.caches && has_cachedir_tag(dir) {
            return Some(ExcludeReason::CacheDirectory);
        }
        None
    }
}

fn add_pattern(
    builder: &mut GitignoreBuilder,
    pattern: &str,
    source_file: Option<&PathBuf>,
    line: usize,
) -> Result<(), ExcludeError> {
    builder
        .add_line(source_file.cloned(), pattern)
        .map(|_| ())
        .map_err(|e| ExcludeError::InvalidPattern {
            pattern: pattern.to_string(),
            source_file: source_file.cloned(),
            line,
            reason: e.to_string(),
        })
}

fn pattern_reason(matched: ignore::Match<&ignore::gitignore::Glob>) -> Option<ExcludeReason> {
    match matched {
        ignore::Match::Ignore(glob) => Some(ExcludeReason::Pattern(glob.original().to_string())),
        ignore::Match::None | ignore::Match::Whitelist(_) => None,
    }
}

/// True when `dir` contains a regular file `CACHEDIR.TAG` that starts with the
/// signature. A symlink named `CACHEDIR.TAG` does not count.
fn has_cachedir_tag(dir: &Path) -> bool {
    let path = dir.join(CACHEDIR_TAG);
    match std::fs::symlink_metadata(&path) {
        Ok(md) if md.is_file() => {}
        _ => return false,
    }
    let mut start = [0u8; CACHEDIR_TAG_SIGNATURE.len()];
    File::open(&path)
        .and_then(|mut file| file.read_exact(&mut start))
        .is_ok_and(|()| start == CACHEDIR_TAG_SIGNATURE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn excludes(patterns: &[&str]) -> Excludes {
        Excludes::new(&ExcludeOptions {
            patterns: patterns.iter().map(|p| p.to_string()).collect(),
            ..ExcludeOptions::default()
        })
        .unwrap()
    }

    #[test]
    fn name_pattern_matches_at_any_depth() {
        let rules = excludes(&["*.o"]);
        assert!(rules.match_pattern(Path::new("/a.o"), false).is_some());
        assert!(rules.match_pattern(Path::new("/x/y/a.o"), false).is_some());
        assert!(rules.match_pattern(Path::new("/x/y/a.c"), false).is_none());
    }

    #[test]
    fn anchored_pattern_matches_only_below_root() {
        let rules = excludes(&["/srv/tmp/**"]);
        assert!(
            rules
                .match_pattern(Path::new("/srv/tmp/a"), false)
                .is_some()
        );
        assert!(
            rules
                .match_pattern(Path::new("/srv/tmp/a/b"), true)
                .is_some()
        );
        assert!(
            rules
                .match_pattern(Path::new("/x/srv/tmp/a"), false)
                .is_none()
        );
    }

    #[test]
    fn middle_slash_anchors_pattern() {
        let rules = excludes(&["srv/cache"]);
        assert!(rules.match_pattern(Path::new("/srv/cache"), true).is_some());
        assert!(
            rules
                .match_pattern(Path::new("/x/srv/cache"), true)
                .is_none()
        );
    }

    #[test]
    fn double_star_prefix_matches_anywhere() {
        let rules = excludes(&["**/node_modules"]);
        assert!(
            rules
                .match_pattern(Path::new("/w/app/node_modules"), true)
                .is_some()
        );
        assert!(
            rules
                .match_pattern(Path::new("/node_modules"), true)
                .is_some()
        );
    }

    #[test]
    fn trailing_slash_matches_directories_only() {
        let rules = excludes(&["build/"]);
        assert!(rules.match_pattern(Path::new("/w/build"), true).is_some());
        assert!(rules.match_pattern(Path::new("/w/build"), false).is_none());
    }

    #[test]
    fn negation_re_includes() {
        let rules = excludes(&["*.log", "!keep.log"]);
        assert!(rules.match_pattern(Path::new("/a/x.log"), false).is_some());
        assert!(
            rules
                .match_pattern(Path::new("/a/keep.log"), false)
                .is_none()
        );
    }

    #[test]
    fn root_below_excluded_directory_matches() {
        let rules = excludes(&["/srv/"]);
        assert!(
            rules
                .match_pattern_or_parent(Path::new("/srv/a/b"), false)
                .is_some()
        );
        assert!(
            rules
                .match_pattern_or_parent(Path::new("/"), true)
                .is_none()
        );
    }

    #[test]
    fn marker_name_with_slash_is_rejected() {
        let result = Excludes::new(&ExcludeOptions {
            if_present: vec!["a/b".into()],
            ..ExcludeOptions::default()
        });
        assert!(matches!(result, Err(ExcludeError::InvalidMarkerName(_))));
    }

    #[test]
    fn cachedir_tag_needs_signature() {
        let dir = tempfile::tempdir().unwrap();
        let rules = Excludes::new(&ExcludeOptions {
            caches: true,
            ..ExcludeOptions::default()
        })
        .unwrap();
        assert_eq!(rules.match_directory(dir.path()), None);
        std::fs::write(dir.path().join(CACHEDIR_TAG), b"Signature: wrong").unwrap();
        assert_eq!(rules.match_directory(dir.path()), None);
        let mut valid = CACHEDIR_TAG_SIGNATURE.to_vec();
        valid.extend_from_slice(b"\n# a cache\n");
        std::fs::write(dir.path().join(CACHEDIR_TAG), valid).unwrap();
        assert_eq!(
            rules.match_directory(dir.path()),
            Some(ExcludeReason::CacheDirectory)
        );
    }
}
