//! Repository locations as users give them: a local directory, or an
//! `s3:http(s)://HOST[:PORT]/BUCKET[/PREFIX]` URL.

use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use super::s3::{S3Backend, S3Settings, S3Url, URL_PREFIX};
use super::{Backend, LocalBackend, RepoError};

/// The storage of a repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A directory on a local or mounted file system.
    Local(PathBuf),
    /// A key prefix in an S3 bucket.
    S3(S3Url),
}

impl Location {
    /// Parses a location from `--repo`, `CAIRN_REPO` or a configuration file.
    /// A value that starts with `s3:` is an S3 URL, and any other value is a
    /// directory, so a local directory named `s3:…` must be given as `./s3:…`.
    pub fn parse(value: &OsStr) -> Result<Self, RepoError> {
        if !value.as_bytes().starts_with(URL_PREFIX.as_bytes()) {
            return Ok(Self::Local(PathBuf::from(value)));
        }
        let text = value.to_str().ok_or_else(|| {
            RepoError::Location(format!(
                "invalid S3 URL {}: it is not UTF-8",
                value.to_string_lossy()
            ))
        })?;
        S3Url::parse(text)
            .map(Self::S3)
            .map_err(RepoError::Location)
    }

    /// Returns a backend for this location. For S3 this reads the credentials
    /// from the environment and checks that the bucket can be listed.
    pub fn connect(&self) -> Result<Box<dyn Backend>, RepoError> {
        match self {
            Self::Local(path) => Ok(Box::new(LocalBackend::new(path))),
            Self::S3(url) => {
                let settings = S3Settings::from_env()
                    .map_err(|e| RepoError::Location(format!("cannot open {url}: {e}")))?;
                Ok(Box::new(S3Backend::connect(url.clone(), &settings)?))
            }
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Local(path) => write!(f, "{}", path.display()),
            Self::S3(url) => write!(f, "{url}"),
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
    }

    #[test]
    fn invalid_s3_url_is_location_error() {
        let error = Location::parse(OsStr::new("s3:http://127.0.0.1:9000")).unwrap_err();
        assert!(matches!(error, RepoError::Location(_)), "{error}");
        assert!(error.to_string().contains("BUCKET"), "{error}");
    }
}
