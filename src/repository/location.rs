//! Repository locations as users give them: a local directory, an
//! `s3:http(s)://HOST[:PORT]/BUCKET[/PREFIX]` URL, or a
//! `cairn:http(s)://HOST[:PORT]/NAME` URL of a `cairn serve` server.

use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::http::{self, HttpBackend, HttpSettings, ServerUrl};
use super::s3::{self, S3Backend, S3Settings, S3Url};
use super::{Backend, LocalBackend, RepoError};

/// The storage of a repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A directory on a local or mounted file system.
    Local(PathBuf),
    /// A key prefix in an S3 bucket.
    S3(S3Url),
    /// A repository on a `cairn serve` server.
    Server(ServerUrl),
}

impl Location {
    /// Parses a location from `--repo`, `CAIRN_REPO` or a configuration file.
    /// A value that starts with `s3:` is an S3 URL, one that starts with
    /// `cairn:` is a server URL, and any other value is a directory, so a
    /// local directory named `s3:…` or `cairn:…` must be given as `./s3:…`.
    pub fn parse(value: &OsStr) -> Result<Self, RepoError> {
        let bytes = value.as_bytes();
        let (kind, is_s3) = if bytes.starts_with(s3::URL_PREFIX.as_bytes()) {
            ("S3", true)
        } else if bytes.starts_with(http::URL_PREFIX.as_bytes()) {
            ("server", false)
        } else {
            return Ok(Self::Local(PathBuf::from(value)));
        };
        let text = value.to_str().ok_or_else(|| {
            RepoError::Location(format!(
                "invalid {kind} URL {}: it is not UTF-8",
                value.to_string_lossy()
            ))
        })?;
        if is_s3 {
            S3Url::parse(text).map(Self::S3)
        } else {
            ServerUrl::parse(text).map(Self::Server)
        }
        .map_err(RepoError::Location)
    }

    /// Returns a backend for this location. For S3 this reads the credentials
    /// from the environment and checks that the bucket can be listed, and for
    /// a server it reads the token and asks the server for the token's role.
    pub fn connect(&self) -> Result<Box<dyn Backend>, RepoError> {
        self.connect_with_token(None)
    }

    /// Like [`Location::connect`], but a server's token comes from
    /// `token_file` when given, before `--token-file` and the environment.
    pub fn connect_with_token(
        &self,
        token_file: Option<&Path>,
    ) -> Result<Box<dyn Backend>, RepoError> {
        match self {
            Self::Local(path) => Ok(Box::new(LocalBackend::new(path))),
            Self::S3(url) => {
                let settings = S3Settings::from_env()
                    .map_err(|e| RepoError::Location(format!("cannot open {url}: {e}")))?;
                Ok(Box::new(S3Backend::connect(url.clone(), &settings)?))
            }
            Self::Server(url) => {
                let settings = HttpSettings::from_env(token_file)
                    .map_err(|e| RepoError::Location(format!("cannot open {url}: {e}")))?;
                Ok(Box::new(HttpBackend::connect(url.clone(), &settings)?))
            }
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Local(path) => write!(f, "{}", path.display()),
            Self::S3(url) => write!(f, "{url}"),
            Self::Server(url) => write!(f, "{url}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_kinds_by_prefix() {
        assert_eq!(
            Location::parse(OsStr::new("/srv/backup")).unwrap(),
            Location::Local(PathBuf::from("/srv/backup"))
        );
        assert_eq!(
            Location::parse(OsStr::new("./s3:odd")).unwrap(),
            Location::Local(PathBuf::from("./s3:odd"))
        );
        let s3 = Location::parse(OsStr::new("s3:http://127.0.0.1:9000/b/p")).unwrap();
        assert_eq!(s3.to_string(), "s3:http://127.0.0.1:9000/b/p");
        let server = Location::parse(OsStr::new("cairn:https://backup.example:8420/main")).unwrap();
        assert!(matches!(server, Location::Server(_)), "{server:?}");
        assert_eq!(server.to_string(), "cairn:https://backup.example:8420/main");
        assert_eq!(
            Location::parse(OsStr::new("./cairn:odd")).unwrap(),
            Location::Local(PathBuf::from("./cairn:odd"))
        );
    }

    #[test]
    fn invalid_s3_url_is_location_error() {
        let error = Location::parse(OsStr::new("s3:http://127.0.0.1:9000")).unwrap_err();
        assert!(matches!(error, RepoError::Location(_)), "{error}");
        assert!(error.to_string().contains("BUCKET"), "{error}");
    }
}
