//! Repository files on a `cairn serve` server, over HTTP or HTTPS.
//!
//! A location `cairn:http(s)://HOST[:PORT]/NAME` names the server and one of
//! its repositories. Each trait call is one request (`crate::serve` lists
//! them), sent with the client's bearer token. As in `S3Backend`, the
//! backend owns a small tokio runtime, and each call blocks its calling
//! thread, so that threads calling at once have requests in flight in
//! parallel.
//!
//! Failed requests (no connection, time-outs, status 5xx other than 501 and
//! 507, 408 and 429) are retried with exponential backoff until a time limit.
//! Retrying a write is safe because the server accepts a write of the bytes
//! that a file already has.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::{self, HeaderValue};
use reqwest::{Method, StatusCode};

use super::Backend;
use crate::serve::config::read_token_file;
use crate::serve::{
    LIST_QUERY, LIST_RECURSIVE_QUERY, REMOVE_TEMPORARY_QUERY, ROLE_QUERY, RoleInfo,
};

/// The prefix that marks a repository location as a `cairn serve` URL.
pub const URL_PREFIX: &str = "cairn:";

/// Default of `CAIRN_HTTP_REQUEST_TIMEOUT`, as for S3: a 16 MiB pack takes
/// about 134 s at 1 Mbit/s.
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// Default of `CAIRN_HTTP_RETRY_TIMEOUT`.
const DEFAULT_RETRY_TIMEOUT: Duration = Duration::from_secs(60);
/// Time allowed to open a TCP connection and the TLS session on it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A response that moves no byte for this long counts as stalled.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// First wait between attempts, doubled after each until [`MAX_BACKOFF`].
const INITIAL_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Threads of the runtime that drives the connections.
const RUNTIME_THREADS: usize = 2;

/// `--token-file`, which takes precedence over the environment.
static TOKEN_FILE: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Sets the token file given on the command line. `cairn run` parses a
/// command line per step, with the token file of that step's repository, so
/// the last call counts.
pub fn set_token_file(path: PathBuf) {
    *TOKEN_FILE.lock().unwrap_or_else(|e| e.into_inner()) = Some(path);
}

/// The parts of a `cairn:` repository URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerUrl {
    /// `http://HOST[:PORT]` or `https://HOST[:PORT]`, without a path.
    pub endpoint: String,
    /// Name of the repository on the server.
    pub repository: String,
}

impl ServerUrl {
    /// Parses `cairn:http(s)://HOST[:PORT]/NAME`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let usage = "use cairn:http(s)://HOST[:PORT]/NAME";
        let rest = text.strip_prefix(URL_PREFIX).ok_or_else(|| {
            format!("invalid server URL {text:?}: it must start with cairn:; {usage}")
        })?;
        let url = url::Url::parse(rest)
            .map_err(|e| format!("invalid server URL {text:?}: {e}; {usage}"))?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(format!(
                "invalid server URL {text:?}: the scheme after cairn: must be http or https, not {}; {usage}",
                url.scheme()
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!("invalid server URL {text:?}: no host; {usage}"));
        }
        // Tokens come only from a file or the environment, so that they never
        // end up in shell history, configuration files or error messages.
        if !url.username().is_empty() || url.password().is_some() {
            return Err("invalid server URL: it contains a user name or password; remove it and set CAIRN_TOKEN_FILE or CAIRN_TOKEN instead".to_string());
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!(
                "invalid server URL {text:?}: a query (?…) or fragment (#…) is not allowed; {usage}"
            ));
        }
        let path = url.path().trim_matches('/');
        let valid = !path.is_empty()
            && !path.starts_with('.')
            && path
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !valid {
            return Err(format!(
                "invalid server URL {text:?}: the path must be one repository name of letters, digits, -, _ and .; {usage}"
            ));
        }
        Ok(Self {
            endpoint: url[..url::Position::AfterPort].to_string(),
            repository: path.to_string(),
        })
    }

    /// Returns the HTTP URL of a repository file, or of the repository itself
    /// for an empty name.
    fn http_url(&self, name: &str) -> String {
        if name.is_empty() {
            format!("{}/{}", self.endpoint, self.repository)
        } else {
            format!("{}/{}/{name}", self.endpoint, self.repository)
        }
    }

    /// Returns the `cairn:` URL of one file, for messages.
    pub fn file_url(&self, name: &str) -> String {
        format!("{URL_PREFIX}{}", self.http_url(name))
    }
}

impl fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{URL_PREFIX}{}/{}", self.endpoint, self.repository)
    }
}

/// Token, trusted certificates and time limits of a connection.
#[derive(Clone)]
pub struct HttpSettings {
    /// The bearer token.
    pub token: String,
    /// PEM file of the only certificate authorities to trust, from
    /// `CAIRN_CA_FILE`; the system's roots when `None`.
    pub ca_file: Option<PathBuf>,
    /// Limit of one request from connecting to the last byte of the response.
    pub request_timeout: Duration,
    /// How long a failing request is retried, counted from its first attempt.
    pub retry_timeout: Duration,
}

// Written by hand so that the token never reaches a log.
impl fmt::Debug for HttpSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpSettings")
            .field("token", &"<redacted>")
            .field("ca_file", &self.ca_file)
            .field("request_timeout", &self.request_timeout)
            .field("retry_timeout", &self.retry_timeout)
            .finish()
    }
}

impl HttpSettings {
    /// Reads the token from `token_file` when given, else `--token-file`,
    /// else `CAIRN_TOKEN_FILE`, else `CAIRN_TOKEN`, and the other settings
    /// from `CAIRN_CA_FILE`, `CAIRN_HTTP_REQUEST_TIMEOUT` and
    /// `CAIRN_HTTP_RETRY_TIMEOUT`.
    pub fn from_env(token_file: Option<&Path>) -> Result<Self, String> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let token_file = token_file
            .map(Path::to_path_buf)
            .or_else(|| TOKEN_FILE.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .or_else(|| var("CAIRN_TOKEN_FILE").map(PathBuf::from));
        let token = match token_file {
            Some(path) => String::from_utf8(read_token_file(&path)?)
                .map_err(|_| format!("token file {} is not UTF-8", path.display()))?,
            None => var("CAIRN_TOKEN").ok_or_else(|| {
                "no token given: repositories on a cairn serve server need --token-file, CAIRN_TOKEN_FILE or CAIRN_TOKEN".to_string()
            })?,
        };
        if HeaderValue::from_str(&format!("Bearer {token}")).is_err() {
            return Err(
                "the token contains characters that cannot be sent in an HTTP header".into(),
            );
        }
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
            token,
            ca_file: var("CAIRN_CA_FILE").map(PathBuf::from),
            request_timeout: seconds("CAIRN_HTTP_REQUEST_TIMEOUT", DEFAULT_REQUEST_TIMEOUT)?,
            retry_timeout: seconds("CAIRN_HTTP_RETRY_TIMEOUT", DEFAULT_RETRY_TIMEOUT)?,
        })
    }
}

/// A response that ended the retries.
struct Reply {
    status: StatusCode,
    headers: header::HeaderMap,
    body: Bytes,
    /// True when an earlier attempt failed in transit, so the server may have
    /// carried out the request already.
    after_lost_attempt: bool,
}

impl Reply {
    fn message(&self) -> String {
        String::from_utf8_lossy(&self.body).trim().to_string()
    }
}

/// A repository on a `cairn serve` server.
pub struct HttpBackend {
    url: ServerUrl,
    client: reqwest::Client,
    runtime: tokio::runtime::Runtime,
    authorization: HeaderValue,
    retry_timeout: Duration,
    /// The client's name and role, as the server reported them on connect.
    role: RoleInfo,
}

impl fmt::Debug for HttpBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HttpBackend({})", self.url)
    }
}

fn load_certificates(path: &Path) -> Result<Vec<reqwest::Certificate>, String> {
    let pem = std::fs::read(path)
        .map_err(|e| format!("cannot read CAIRN_CA_FILE {}: {e}", path.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
        format!(
            "CAIRN_CA_FILE {} is not a PEM certificate bundle: {e}",
            path.display()
        )
    })?;
    if certs.is_empty() {
        return Err(format!(
            "CAIRN_CA_FILE {} contains no certificate",
            path.display()
        ));
    }
    Ok(certs)
}

impl HttpBackend {
    /// Sets up a client for `url` and requests this token's role from the server,
    /// so that a wrong address, repository name or token fails here with a
    /// clear error rather than in the middle of a command.
    pub fn connect(url: ServerUrl, settings: &HttpSettings) -> io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(RUNTIME_THREADS)
            .thread_name("cairn-http")
            .enable_all()
            .build()?;
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(STALL_TIMEOUT)
            .timeout(settings.request_timeout)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(path) = &settings.ca_file {
            builder = builder.tls_certs_only(load_certificates(path).map_err(io::Error::other)?);
        }
        let client = {
            let _context = runtime.enter();
            builder.build().map_err(|e| {
                io::Error::other(format!("cannot set up an HTTP client for {url}: {e}"))
            })?
        };
        let mut authorization = HeaderValue::from_str(&format!("Bearer {}", settings.token))
            .map_err(|_| io::Error::other("the token cannot be sent in an HTTP header"))?;
        authorization.set_sensitive(true);

        let mut backend = Self {
            url,
            client,
            runtime,
            authorization,
            retry_timeout: settings.retry_timeout,
            role: RoleInfo {
                client: String::new(),
                repository: String::new(),
                role: String::new(),
            },
        };
        let reply = backend.request(Method::GET, "", Some(ROLE_QUERY), None, None)?;
        let reply = backend.expect_success("open", "", reply)?;
        backend.role = serde_json::from_slice(&reply.body).map_err(|e| {
            io::Error::other(format!(
                "{} did not return a client role ({e}); check that the URL points to cairn serve",
                backend.url
            ))
        })?;
        tracing::debug!(
            "connected to {} as client {} with the {} role",
            backend.url,
            backend.role.client,
            backend.role.role
        );
        Ok(backend)
    }

    /// Sends one request, retrying failures in transit and the retryable
    /// statuses until the retry time is used up.
    fn request(
        &self,
        method: Method,
        name: &str,
        query: Option<&str>,
        range: Option<(u64, usize)>,
        body: Option<&[u8]>,
    ) -> io::Result<Reply> {
        let mut url = self.url.http_url(name);
        if let Some(query) = query {
            url.push('?');
            url.push_str(query);
        }
        let body = body.map(Bytes::copy_from_slice);
        self.runtime.block_on(async {
            let started = Instant::now();
            let mut delay = INITIAL_BACKOFF;
            let mut after_lost_attempt = false;
            loop {
                let mut request = self
                    .client
                    .request(method.clone(), &url)
                    .header(header::AUTHORIZATION, self.authorization.clone());
                if let Some((offset, len)) = range {
                    let last = offset + len as u64 - 1;
                    request = request.header(header::RANGE, format!("bytes={offset}-{last}"));
                }
                if let Some(body) = &body {
                    request = request.body(body.clone());
                }
                let outcome = match request.send().await {
                    Ok(response) => {
                        let status = response.status();
                        let headers = response.headers().clone();
                        response.bytes().await.map(|body| (status, headers, body))
                    }
                    Err(e) => Err(e),
                };
                let failure = match outcome {
                    Ok((status, headers, body)) if !is_retryable(status) => {
                        return Ok(Reply {
                            status,
                            headers,
                            body,
                            after_lost_attempt,
                        });
                    }
                    Ok((status, _, body)) => {
                        format!("status {status}: {}", String::from_utf8_lossy(&body).trim())
                    }
                    Err(e) => {
                        let chain = error_chain(&e);
                        // A certificate that fails now fails on every retry.
                        if let Some(hint) = certificate_hint(&chain) {
                            return Err(io::Error::new(
                                io::ErrorKind::InvalidData,
                                format!("{method} {url} failed: {chain}; {hint}"),
                            ));
                        }
                        after_lost_attempt = true;
                        chain
                    }
                };
                if started.elapsed() + delay > self.retry_timeout {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "{method} {url} failed after retrying for up to {} s: {failure}; check that cairn serve runs and is reachable at {}, and that the repository URL names the right host and port",
                            self.retry_timeout.as_secs(),
                            self.url.endpoint
                        ),
                    ));
                }
                tracing::info!("{method} {url} failed ({failure}); retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_BACKOFF);
            }
        })
    }

    /// Turns a reply with an error status into an `io::Error` that names the
    /// file, the rejected operation and what to do.
    fn expect_success(&self, operation: &str, name: &str, reply: Reply) -> io::Result<Reply> {
        if reply.status.is_success() {
            return Ok(reply);
        }
        let file = if name.is_empty() {
            self.url.to_string()
        } else {
            self.url.file_url(name)
        };
        let message = reply.message();
        let (kind, text) = match reply.status {
            StatusCode::NOT_FOUND => (
                io::ErrorKind::NotFound,
                format!("{file}: not found ({message})"),
            ),
            StatusCode::UNAUTHORIZED => (
                io::ErrorKind::PermissionDenied,
                format!(
                    "the server at {} rejected the token: {message}; check --token-file, CAIRN_TOKEN_FILE or CAIRN_TOKEN",
                    self.url.endpoint
                ),
            ),
            StatusCode::FORBIDDEN | StatusCode::CONFLICT => (
                if reply.status == StatusCode::CONFLICT {
                    io::ErrorKind::AlreadyExists
                } else {
                    io::ErrorKind::PermissionDenied
                },
                format!("the server rejected the request to {operation} {file}: {message}"),
            ),
            StatusCode::PAYLOAD_TOO_LARGE => (
                io::ErrorKind::FileTooLarge,
                format!("{operation} {file}: {message}"),
            ),
            StatusCode::RANGE_NOT_SATISFIABLE => {
                (io::ErrorKind::UnexpectedEof, format!("{file}: {message}"))
            }
            StatusCode::INSUFFICIENT_STORAGE => (
                io::ErrorKind::StorageFull,
                format!("{operation} {file}: {message}"),
            ),
            status => (
                io::ErrorKind::Other,
                format!("{operation} {file} failed with status {status}: {message}"),
            ),
        };
        Err(io::Error::new(kind, text))
    }

    fn call(
        &self,
        operation: &str,
        method: Method,
        name: &str,
        query: Option<&str>,
        range: Option<(u64, usize)>,
        body: Option<&[u8]>,
    ) -> io::Result<Reply> {
        let reply = self.request(method, name, query, range, body)?;
        self.expect_success(operation, name, reply)
    }

    fn list_query(&self, dir: &str, query: &str) -> io::Result<Vec<String>> {
        let reply = self.call("list", Method::GET, dir, Some(query), None, None)?;
        let text = String::from_utf8(reply.body.to_vec()).map_err(|_| {
            io::Error::other(format!(
                "the listing of {} is not UTF-8",
                self.url.file_url(dir)
            ))
        })?;
        let mut names: Vec<String> = text
            .lines()
            .filter(|line| !line.is_empty())
            .map(str::to_string)
            .collect();
        names.sort();
        Ok(names)
    }
}

/// True for statuses that a later attempt may not get: the server failed
/// for a reason other than a full disk (507) or a missing feature (501), or
/// asked the client to slow down.
fn is_retryable(status: StatusCode) -> bool {
    (status.is_server_error()
        && status != StatusCode::NOT_IMPLEMENTED
        && status != StatusCode::INSUFFICIENT_STORAGE)
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
}

/// Joins the messages of an error and its sources, leaving out a source whose
/// message the previous one already contains.
/// Returns what to do about a rejected server certificate, or `None` when
/// `chain`, an error and its causes, is about something else.
fn certificate_hint(chain: &str) -> Option<&'static str> {
    if !chain.contains("invalid peer certificate") {
        return None;
    }
    Some(if chain.contains("CaUsedAsEndEntity") {
        "the server presents a CA certificate as its own; make its self-signed certificate with `-addext basicConstraints=critical,CA:FALSE` (see the README), or one signed by a CA"
    } else if chain.contains("UnknownIssuer") {
        "no trusted authority signed the server's certificate: set CAIRN_CA_FILE to a PEM file with the server's self-signed certificate or its CA's certificate"
    } else if chain.contains("NotValidForName") {
        "the server's certificate does not name the host of the repository URL: use a host name or IP address that its subjectAltName lists"
    } else if chain.contains("Expired") || chain.contains("NotValidYet") {
        "the server's certificate is outside its validity period: renew it, and check both machines' clocks"
    } else {
        "check the server's certificate and CAIRN_CA_FILE"
    })
}

fn error_chain(error: &dyn std::error::Error) -> String {
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

impl Backend for HttpBackend {
    fn location(&self) -> String {
        self.url.to_string()
    }

    fn read_concurrency(&self) -> usize {
        super::backend::REMOTE_READS
    }

    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        Ok(self
            .call("read", Method::GET, name, None, None, None)?
            .body
            .to_vec())
    }

    fn read_at(&self, name: &str, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let reply = self.call("read", Method::GET, name, None, Some((offset, len)), None)?;
        if reply.status != StatusCode::PARTIAL_CONTENT || reply.body.len() != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{}: read {} bytes at offset {offset} with status {}, expected {len} with 206",
                    self.url.file_url(name),
                    reply.body.len(),
                    reply.status
                ),
            ));
        }
        Ok(reply.body.to_vec())
    }

    fn size(&self, name: &str) -> io::Result<u64> {
        let reply = self.call("read the size of", Method::HEAD, name, None, None, None)?;
        reply
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| {
                io::Error::other(format!(
                    "{}: the server sent no Content-Length",
                    self.url.file_url(name)
                ))
            })
    }

    fn write_atomic(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let started = Instant::now();
        self.call("write", Method::PUT, name, None, None, Some(bytes))?;
        tracing::debug!(
            "PUT {name}: {} bytes in {} ms",
            bytes.len(),
            started.elapsed().as_millis()
        );
        Ok(())
    }

    fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        self.list_query(dir, LIST_QUERY)
    }

    fn list_recursive(&self, dir: &str) -> io::Result<Vec<String>> {
        self.list_query(dir, LIST_RECURSIVE_QUERY)
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        let reply = self.request(Method::DELETE, name, None, None, None)?;
        // An attempt whose response was lost may have deleted the file.
        if reply.status == StatusCode::NOT_FOUND && reply.after_lost_attempt {
            return Ok(());
        }
        self.expect_success("delete", name, reply).map(drop)
    }

    fn free_space(&self) -> Option<u64> {
        None
    }

    fn remove_temporary_files(&self) -> io::Result<u64> {
        let reply = self.call(
            "remove temporary files in",
            Method::POST,
            "",
            Some(REMOVE_TEMPORARY_QUERY),
            None,
            None,
        )?;
        reply.message().parse().map_err(|_| {
            io::Error::other(format!(
                "{}: the server returned no count of removed temporary files",
                self.url
            ))
        })
    }

    fn check_can_delete(&self, command: &str) -> io::Result<()> {
        if self.role.role == "admin" {
            return Ok(());
        }
        let may = if self.role.role == "append" {
            "may add files and manage its own locks, but not delete or replace files"
        } else {
            "may only read"
        };
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{command} needs a token with the admin role on {}: this token (client {}) has the {} role, which {may}",
                self.url, self.role.client, self.role.role
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The texts are those of rustls's errors as `error_chain` prints them.
    #[test]
    fn certificate_errors_get_a_hint_and_others_none() {
        let ca = "client error (Connect): invalid peer certificate: Other(OtherError(CaUsedAsEndEntity))";
        assert!(certificate_hint(ca).unwrap().contains("CA:FALSE"));
        let unknown = "client error (Connect): invalid peer certificate: UnknownIssuer";
        assert!(certificate_hint(unknown).unwrap().contains("CAIRN_CA_FILE"));
        let name = "invalid peer certificate: NotValidForNameContext { expected: .. }";
        assert!(certificate_hint(name).unwrap().contains("subjectAltName"));
        assert!(certificate_hint("client error (Connect): connection refused").is_none());
    }

    #[test]
    fn url_with_port_and_name() {
        let url = ServerUrl::parse("cairn:http://127.0.0.1:8420/main").unwrap();
        assert_eq!(url.endpoint, "http://127.0.0.1:8420");
        assert_eq!(url.repository, "main");
        assert_eq!(url.to_string(), "cairn:http://127.0.0.1:8420/main");
        assert_eq!(
            url.file_url("data/ab/cd"),
            "cairn:http://127.0.0.1:8420/main/data/ab/cd"
        );
    }

    #[test]
    fn url_rejects_invalid_forms() {
        for text in [
            "http://127.0.0.1/main",
            "cairn:ftp://127.0.0.1/main",
            "cairn:http://127.0.0.1",
            "cairn:http://127.0.0.1/",
            "cairn:http://127.0.0.1/a/b",
            "cairn:http://127.0.0.1/.hidden",
            "cairn:http://127.0.0.1/main?x=1",
            "cairn:http://user:secret@127.0.0.1/main",
        ] {
            assert!(ServerUrl::parse(text).is_err(), "{text} was accepted");
        }
    }

    #[test]
    fn retryable_statuses() {
        assert!(is_retryable(StatusCode::SERVICE_UNAVAILABLE));
        assert!(is_retryable(StatusCode::TOO_MANY_REQUESTS));
        assert!(!is_retryable(StatusCode::INSUFFICIENT_STORAGE));
        assert!(!is_retryable(StatusCode::FORBIDDEN));
        assert!(!is_retryable(StatusCode::NOT_FOUND));
    }

    #[test]
    fn settings_debug_hides_token() {
        let settings = HttpSettings {
            token: "very-secret".into(),
            ca_file: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            retry_timeout: DEFAULT_RETRY_TIMEOUT,
        };
        assert!(!format!("{settings:?}").contains("very-secret"));
    }
}
