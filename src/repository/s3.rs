//! Repository files as objects in a bucket of an S3-compatible object store.
//!
//! A repository URL `s3:http(s)://HOST[:PORT]/BUCKET[/PREFIX]` names the
//! endpoint, the bucket and a key prefix. The file `data/3f/3f…` of the
//! repository is the object `PREFIX/data/3f/3f…`. Requests use path-style
//! addressing (`http://HOST:PORT/BUCKET/KEY`), so the endpoint needs no DNS name
//! per bucket, as MinIO, Ceph and other self-hosted servers expect.
//!
//! The client, `object_store`, is asynchronous. The backend owns a small tokio
//! runtime, and each call blocks its calling thread until the request is done.
//! Threads that call at the same time, such as the seal workers of a backup or
//! the request threads of a mount, therefore have requests in flight in
//! parallel over a pool of kept-alive connections.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures_util::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, AwsCredential};
use object_store::client::{HttpError, HttpErrorKind};
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, ClientOptions, ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
    StaticCredentialProvider,
};

use super::Backend;

/// The prefix that marks a repository location as an S3 URL.
pub const URL_PREFIX: &str = "s3:";

/// Region used when neither `AWS_REGION` nor `AWS_DEFAULT_REGION` is set.
const DEFAULT_REGION: &str = "us-east-1";
/// Default of `CAIRN_S3_REQUEST_TIMEOUT`. A 16 MiB pack takes about 134 s at
/// 1 Mbit/s, so slow uplinks still finish within one request.
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// Default of `CAIRN_S3_RETRY_TIMEOUT`.
const DEFAULT_RETRY_TIMEOUT: Duration = Duration::from_secs(60);
/// Time allowed to open a TCP connection, and the TLS session on it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A response or upload that moves no byte for this long counts as stalled and
/// is retried, even before the request timeout.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Threads of the runtime that drives the connections. Requests themselves run
/// on the calling threads.
const RUNTIME_THREADS: usize = 2;

/// The parts of an `s3:` repository URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Url {
    /// `http://HOST[:PORT]` or `https://HOST[:PORT]`, without a path.
    pub endpoint: String,
    /// Bucket name, the first path segment.
    pub bucket: String,
    /// Key prefix without leading or trailing `/`, empty for the bucket's root.
    pub prefix: String,
}

impl S3Url {
    /// Parses `s3:http(s)://HOST[:PORT]/BUCKET[/PREFIX]`. Percent-encoded
    /// characters in the bucket and prefix are decoded.
    pub fn parse(text: &str) -> Result<Self, String> {
        let usage = "use s3:http(s)://HOST[:PORT]/BUCKET[/PREFIX]";
        let rest = text
            .strip_prefix(URL_PREFIX)
            .ok_or_else(|| format!("invalid S3 URL {text:?}: it must start with s3:; {usage}"))?;
        let url =
            url::Url::parse(rest).map_err(|e| format!("invalid S3 URL {text:?}: {e}; {usage}"))?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(format!(
                "invalid S3 URL {text:?}: the scheme after s3: must be http or https, not {}; {usage}",
                url.scheme()
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!("invalid S3 URL {text:?}: no host; {usage}"));
        }
        // Credentials come only from the environment, so that they never end up
        // in shell history, configuration files or error messages.
        if !url.username().is_empty() || url.password().is_some() {
            return Err("invalid S3 URL: it contains a user name or password; remove it from the URL and set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY instead".to_string());
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!(
                "invalid S3 URL {text:?}: a query (?…) or fragment (#…) is not allowed; {usage}"
            ));
        }

        let mut segments = Vec::new();
        let path = url.path().strip_prefix('/').unwrap_or(url.path());
        let path = path.strip_suffix('/').unwrap_or(path);
        if path.is_empty() {
            return Err(format!(
                "invalid S3 URL {text:?}: no bucket after the host; {usage}"
            ));
        }
        for raw in path.split('/') {
            let segment = percent_encoding::percent_decode_str(raw)
                .decode_utf8()
                .map_err(|_| {
                    format!("invalid S3 URL {text:?}: {raw:?} is not UTF-8 once decoded")
                })?;
            if segment.is_empty() || segment.contains('/') {
                return Err(format!(
                    "invalid S3 URL {text:?}: empty path segment or encoded `/`; {usage}"
                ));
            }
            segments.push(segment.into_owned());
        }
        let bucket = segments.remove(0);
        let prefix = segments.join("/");
        if !prefix.is_empty() {
            ObjectPath::parse(&prefix)
                .map_err(|e| format!("invalid S3 URL {text:?}: key prefix {prefix:?}: {e}"))?;
        }
        let endpoint = url[..url::Position::AfterPort].to_string();
        Ok(Self {
            endpoint,
            bucket,
            prefix,
        })
    }

    /// Returns the URL of one object of the repository, for messages.
    pub fn object_url(&self, name: &str) -> String {
        let repository = self.to_string();
        if name.is_empty() {
            repository
        } else {
            format!("{repository}/{name}")
        }
    }
}

impl fmt::Display for S3Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{URL_PREFIX}{}/{}", self.endpoint, self.bucket)?;
        if !self.prefix.is_empty() {
            write!(f, "/{}", self.prefix)?;
        }
        Ok(())
    }
}

/// Credentials, region and time limits of an S3 connection.
#[derive(Clone)]
pub struct S3Settings {
    /// `AWS_ACCESS_KEY_ID`.
    pub access_key_id: String,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: String,
    /// `AWS_SESSION_TOKEN`, for temporary credentials.
    pub session_token: Option<String>,
    /// `AWS_REGION`, else `AWS_DEFAULT_REGION`, else `us-east-1`.
    pub region: String,
    /// Limit of one request from connecting to the last byte of the response.
    pub request_timeout: Duration,
    /// How long a failing request is retried, counted from its first attempt.
    pub retry_timeout: Duration,
}

// Written by hand so that the secret key and session token never reach a log.
impl fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Settings")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .field("region", &self.region)
            .field("request_timeout", &self.request_timeout)
            .field("retry_timeout", &self.retry_timeout)
            .finish()
    }
}

impl S3Settings {
    /// Reads the settings from the `AWS_*` and `CAIRN_S3_*` environment
    /// variables. Missing credentials are an error: no other source, such as
    /// an instance metadata service, is asked.
    pub fn from_env() -> Result<Self, String> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let missing = |name: &str| {
            format!(
                "{name} is not set: S3 repositories take their credentials from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary credentials)"
            )
        };
        let access_key_id = var("AWS_ACCESS_KEY_ID").ok_or_else(|| missing("AWS_ACCESS_KEY_ID"))?;
        let secret_access_key =
            var("AWS_SECRET_ACCESS_KEY").ok_or_else(|| missing("AWS_SECRET_ACCESS_KEY"))?;
        let region = var("AWS_REGION")
            .or_else(|| var("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| DEFAULT_REGION.to_string());
        let seconds = |name: &str, default: Duration| match var(name) {
            None => Ok(default),
            Some(text) => match text.parse::<u64>() {
                Ok(secs) if secs > 0 => Ok(Duration::from_secs(secs)),
                _ => Err(format!(
                    "invalid {name}={text:?}: expected a whole number of seconds above 0"
                )),
            },
        };
        Ok(Self {
            access_key_id,
            secret_access_key,
            session_token: var("AWS_SESSION_TOKEN"),
            region,
            request_timeout: seconds("CAIRN_S3_REQUEST_TIMEOUT", DEFAULT_REQUEST_TIMEOUT)?,
            retry_timeout: seconds("CAIRN_S3_RETRY_TIMEOUT", DEFAULT_RETRY_TIMEOUT)?,
        })
    }
}

/// A repository stored under a key prefix in an S3 bucket.
pub struct S3Backend {
    url: S3Url,
    store: AmazonS3,
    runtime: tokio::runtime::Runtime,
    /// Copy of [`S3Settings::retry_timeout`] for messages, because the store
    /// does not show its settings.
    retry_timeout: Duration,
}

impl fmt::Debug for S3Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "S3Backend({})", self.url)
    }
}

impl S3Backend {
    /// Sets up a client for `url` and lists the repository's top level once, so
    /// that a wrong endpoint, bucket or credentials fail here with a clear error
    /// rather than in the middle of a command.
    pub fn connect(url: S3Url, settings: &S3Settings) -> io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(RUNTIME_THREADS)
            .thread_name("cairn-s3")
            .enable_all()
            .build()?;

        let credentials = StaticCredentialProvider::new(AwsCredential {
            key_id: settings.access_key_id.clone(),
            secret_key: settings.secret_access_key.clone(),
            token: settings.session_token.clone(),
        });
        let client = ClientOptions::new()
            .with_allow_http(url.endpoint.starts_with("http:"))
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_read_timeout(STALL_TIMEOUT)
            .with_timeout(settings.request_timeout);

        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(200),
                max_backoff: Duration::from_secs(10),
                base: 2.0,
            },
            // The time limit ends the retries. The count only guards against
            // a retry loop that fails without waiting.
            max_retries: 1000,
            retry_timeout: settings.retry_timeout,
        };

        // `new` rather than `from_env`, so that no AWS_* variable other than the
        // ones read in `S3Settings::from_env` changes where requests go. With
        // static credentials the client never asks a metadata service.
        let store = AmazonS3Builder::new()
            .with_endpoint(&url.endpoint)
            .with_bucket_name(&url.bucket)
            .with_region(&settings.region)
            .with_credentials(Arc::new(credentials))
            .with_virtual_hosted_style_request(false)
            .with_client_options(client)
            .with_retry(retry)
            .build()
            .map_err(|e| io::Error::other(format!("cannot use S3 repository {url}: {e}")))?;

        let backend = Self {
            url,
            store,
            runtime,
            retry_timeout: settings.retry_timeout,
        };
        let top = backend.key("")?;
        backend.call("list", "", backend.store.list_with_delimiter(top.as_ref()))?;
        tracing::debug!("connected to {} in region {}", backend.url, settings.region);
        Ok(backend)
    }

    /// Returns the object key of a repository file, or `None` for the top level
    /// of a repository at the bucket's root.
    fn key(&self, name: &str) -> io::Result<Option<ObjectPath>> {
        let full = match (self.url.prefix.is_empty(), name.is_empty()) {
            (true, true) => return Ok(None),
            (true, false) => name.to_string(),
            (false, true) => self.url.prefix.clone(),
            (false, false) => format!("{}/{name}", self.url.prefix),
        };
        ObjectPath::parse(&full).map(Some).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid object name {}: {e}", self.url.object_url(name)),
            )
        })
    }

    fn object_key(&self, name: &str) -> io::Result<ObjectPath> {
        Ok(self.key(name)?.expect("a repository file has a name"))
    }

    /// Runs one request to completion on the calling thread and turns its error
    /// into an `io::Error` that names the object and what to check.
    fn call<T>(
        &self,
        operation: &str,
        name: &str,
        request: impl Future<Output = object_store::Result<T>>,
    ) -> io::Result<T> {
        self.runtime
            .block_on(request)
            .map_err(|e| self.describe_error(operation, name, &e))
    }

    fn describe_error(
        &self,
        operation: &str,
        name: &str,
        error: &object_store::Error,
    ) -> io::Error {
        let object = self.url.object_url(name);
        let detail = error_chain(error);
        // S3 error codes come in the XML body of the response, which the
        // client's message includes. A HEAD response has no body, so a missing
        // bucket shows only on other requests.
        if detail.contains("NoSuchBucket") {
            return io::Error::other(format!(
                "{operation} {object} failed: bucket {:?} does not exist at {}; create it, or correct the bucket in the repository URL",
                self.url.bucket, self.url.endpoint
            ));
        }
        let denied = [
            "AccessDenied",
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
        ];
        if matches!(
            error,
            object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. }
        ) || denied.iter().any(|code| detail.contains(code))
        {
            return io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{operation} {object} was denied: {detail}; check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN and AWS_REGION, and the bucket's access policy"
                ),
            );
        }
        if let object_store::Error::NotFound { .. } = error {
            return io::Error::new(io::ErrorKind::NotFound, format!("{object}: not found"));
        }
        if let Some(kind) = transport_error_kind(error) {
            return io::Error::new(
                kind,
                format!(
                    "{operation} {object} failed after retrying for up to {} s: {detail}; check that the S3 server at {} is running and reachable, and that the repository URL names the right host and port",
                    self.retry_timeout.as_secs(),
                    self.url.endpoint
                ),
            );
        }
        io::Error::other(format!("{operation} {object} failed: {detail}"))
    }
}

/// Joins the messages of an error and its sources, leaving out a source whose
/// message the previous one already contains.
fn error_chain(error: &dyn StdError) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let message = inner.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        source = inner.source();
    }
    text
}

/// Returns the `io::ErrorKind` of a failure to reach the server, or `None` when
/// the server sent a response.
fn transport_error_kind(error: &object_store::Error) -> Option<io::ErrorKind> {
    let mut source: Option<&dyn StdError> = Some(error);
    while let Some(inner) = source {
        if let Some(http) = inner.downcast_ref::<HttpError>() {
            return Some(match http.kind() {
                HttpErrorKind::Timeout => io::ErrorKind::TimedOut,
                HttpErrorKind::Connect => io::ErrorKind::ConnectionRefused,
                HttpErrorKind::Interrupted => io::ErrorKind::ConnectionReset,
                _ => io::ErrorKind::Other,
            });
        }
        source = inner.source();
    }
    None
}

impl Backend for S3Backend {
    fn location(&self) -> String {
        self.url.to_string()
    }

    fn read_concurrency(&self) -> usize {
        super::backend::REMOTE_READS
    }

    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        let key = self.object_key(name)?;
        let store = &self.store;
        let bytes = self.call(
            "GET",
            name,
            async move { store.get(&key).await?.bytes().await },
        )?;
        Ok(bytes.to_vec())
    }

    fn read_at(&self, name: &str, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let key = self.object_key(name)?;
        let range = offset..offset + len as u64;
        let bytes = self.call("GET", name, self.store.get_range(&key, range))?;
        if bytes.len() != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{}: read {} bytes at offset {offset}, expected {len}",
                    self.url.object_url(name),
                    bytes.len()
                ),
            ));
        }
        Ok(bytes.to_vec())
    }

    fn size(&self, name: &str) -> io::Result<u64> {
        let key = self.object_key(name)?;
        Ok(self.call("HEAD", name, self.store.head(&key))?.size)
    }

    fn write_atomic(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        // A PUT replaces the object as a whole: readers see the old object or
        // the new one, never a part, and S3 reports success only once the
        // object is stored durably.
        let key = self.object_key(name)?;
        let payload = PutPayload::from(bytes.to_vec());
        let started = std::time::Instant::now();
        self.call("PUT", name, self.store.put(&key, payload))?;
        tracing::debug!(
            "PUT {name}: {} bytes in {} ms",
            bytes.len(),
            started.elapsed().as_millis()
        );
        Ok(())
    }

    fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        let prefix = self.key(dir)?;
        let listing = self.call("list", dir, self.store.list_with_delimiter(prefix.as_ref()))?;
        // Objects directly below the prefix are files, and common prefixes are
        // the directories that hold more objects, as `read_dir` shows them.
        let mut names: Vec<String> = listing
            .objects
            .iter()
            .filter_map(|object| object.location.filename())
            .chain(
                listing
                    .common_prefixes
                    .iter()
                    .filter_map(|prefix| prefix.filename()),
            )
            .filter(|name| !name.starts_with('.'))
            .map(str::to_string)
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    fn list_recursive(&self, dir: &str) -> io::Result<Vec<String>> {
        let files = self.list_recursive_sizes(dir)?;
        Ok(files.into_iter().map(|(name, _)| name).collect())
    }

    /// Lists like the default, but takes the sizes from the listing itself
    /// rather than from a HEAD request per object.
    fn list_recursive_sizes(&self, dir: &str) -> io::Result<Vec<(String, u64)>> {
        let prefix = self.key(dir)?;
        let store = &self.store;
        let objects: Vec<ObjectMeta> = self.call("list", dir, async {
            store.list(prefix.as_ref()).try_collect().await
        })?;
        let skip = prefix.as_ref().map_or(0, |p| p.as_ref().len() + 1);
        let mut files: Vec<(String, u64)> = objects
            .iter()
            .filter_map(|object| {
                let relative = object.location.as_ref().get(skip..)?;
                Some((relative.to_string(), object.size))
            })
            .filter(|(relative, _)| !relative.split('/').any(|part| part.starts_with('.')))
            .collect();
        files.sort();
        Ok(files)
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        let key = self.object_key(name)?;
        self.call("DELETE", name, self.store.delete(&key))
    }

    fn free_space(&self) -> Option<u64> {
        None
    }

    fn remove_temporary_files(&self) -> io::Result<u64> {
        // Every write is a single PUT, so no temporary objects exist.
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_with_port_and_prefix() {
        let url = S3Url::parse("s3:http://127.0.0.1:9000/backups/host/a").unwrap();
        assert_eq!(url.endpoint, "http://127.0.0.1:9000");
        assert_eq!(url.bucket, "backups");
        assert_eq!(url.prefix, "host/a");
        assert_eq!(url.to_string(), "s3:http://127.0.0.1:9000/backups/host/a");
    }

    #[test]
    fn url_without_prefix_or_port() {
        let url = S3Url::parse("s3:https://s3.example.com/backups/").unwrap();
        assert_eq!(url.endpoint, "https://s3.example.com");
        assert_eq!(url.bucket, "backups");
        assert_eq!(url.prefix, "");
        assert_eq!(url.to_string(), "s3:https://s3.example.com/backups");
        assert_eq!(
            url.object_url("data/ab/cd"),
            "s3:https://s3.example.com/backups/data/ab/cd"
        );
    }

    #[test]
    fn url_decodes_percent_escapes() {
        let url = S3Url::parse("s3:http://[::1]:9000/b/with%20space").unwrap();
        assert_eq!(url.endpoint, "http://[::1]:9000");
        assert_eq!(url.prefix, "with space");
    }

    #[test]
    fn url_rejects_invalid_forms() {
        for text in [
            "http://127.0.0.1/bucket",
            "s3:ftp://127.0.0.1/bucket",
            "s3:http://127.0.0.1",
            "s3:http://127.0.0.1/",
            "s3:http://127.0.0.1/bucket//prefix",
            "s3:http://127.0.0.1/bucket/a%2Fb",
            "s3:http://127.0.0.1/bucket?x=1",
            "s3:http://key:secret@127.0.0.1/bucket",
            "s3:127.0.0.1/bucket",
        ] {
            assert!(S3Url::parse(text).is_err(), "{text} was accepted");
        }
    }

    #[test]
    fn url_error_hides_password() {
        let error = S3Url::parse("s3:http://key:hunter2@127.0.0.1/bucket").unwrap_err();
        assert!(!error.contains("hunter2"), "{error}");
    }

    #[test]
    fn settings_debug_hides_secrets() {
        let settings = S3Settings {
            access_key_id: "AKID".into(),
            secret_access_key: "very-secret".into(),
            session_token: Some("token-secret".into()),
            region: DEFAULT_REGION.into(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            retry_timeout: DEFAULT_RETRY_TIMEOUT,
        };
        let text = format!("{settings:?}");
        assert!(!text.contains("very-secret"), "{text}");
        assert!(!text.contains("token-secret"), "{text}");
        assert!(text.contains("AKID"), "{text}");
    }
}
