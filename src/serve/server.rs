//! The listener, authentication and the mapping of requests to
//! [`RepositoryStore`] calls.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

use super::config::{Client, Role, ServeConfig, hash_token};
use super::paths::{FileKind, PathError, Target, classify, split_request_path};
use super::store::{RepositoryStore, StoreError, Written};
use super::{LIST_QUERY, LIST_RECURSIVE_QUERY, REMOVE_TEMPORARY_QUERY, ROLE_QUERY, RoleInfo};

/// Time allowed for a client to send the request line and headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Time allowed to receive a request body. A 64 MiB body takes about 9 min at
/// 1 Mbit/s, so this is generous for packs and still ends stalled uploads.
const BODY_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// Failure to start or run the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration or a repository directory cannot be used.
    #[error("{0}")]
    Config(String),
    /// The certificate or key cannot be loaded.
    #[error("{0}")]
    Tls(String),
    /// Binding or running the listener failed.
    #[error("{context}: {source}")]
    Io {
        /// The step that failed.
        context: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// PEM files of the server's certificate chain and private key.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

struct Server {
    repositories: BTreeMap<String, Arc<RepositoryStore>>,
    clients: Vec<Client>,
    max_body_len: usize,
    /// Requests being served, which a stop on SIGTERM waits for.
    in_flight: AtomicUsize,
}

/// The parts of a request that its log line shows.
#[derive(Default)]
struct RequestLog {
    client: Option<String>,
    repository: Option<String>,
    bytes: u64,
}

/// Builds a response with a plain-text message.
fn text(status: StatusCode, message: impl Into<String>) -> Response<Full<Bytes>> {
    let mut body = message.into();
    body.push('\n');
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn store_error(error: StoreError) -> Response<Full<Bytes>> {
    let (status, message) = match error {
        StoreError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
        StoreError::Forbidden(m) => (StatusCode::FORBIDDEN, m),
        StoreError::NotFound(m) => (StatusCode::NOT_FOUND, m),
        StoreError::Conflict(m) => (StatusCode::CONFLICT, m),
        StoreError::RangeNotSatisfiable(m) => (StatusCode::RANGE_NOT_SATISFIABLE, m),
        StoreError::NoSpace(m) => (StatusCode::INSUFFICIENT_STORAGE, m),
        StoreError::Internal(m) => (StatusCode::INTERNAL_SERVER_ERROR, m),
    };
    text(status, message)
}

/// Largest body accepted for a file of `kind`: the size limit that readers
/// apply to that kind, or the server's limit for packs and index files.
fn body_limit(kind: FileKind, server_limit: usize) -> usize {
    let kind_limit = match kind {
        FileKind::Config | FileKind::Lock => 64 << 10,
        FileKind::Audit => 1 << 20,
        FileKind::Keys => 1 << 20,
        FileKind::Snapshot => crate::snapshot::MAX_SNAPSHOT_LEN,
        FileKind::Pack | FileKind::Index => usize::MAX,
    };
    kind_limit.min(server_limit)
}

/// Parses `bytes=A-B` into an offset and a length.
fn parse_range(value: &str) -> Option<(u64, usize)> {
    let (start, end) = value.strip_prefix("bytes=")?.split_once('-')?;
    let start: u64 = start.parse().ok()?;
    let end: u64 = end.parse().ok()?;
    let len = end.checked_sub(start)?.checked_add(1)?;
    Some((start, usize::try_from(len).ok()?))
}

impl Server {
    /// Finds the client whose token hashes to the bearer token's hash. Every
    /// client's hash is compared in constant time, and all are compared, so
    /// the time taken does not show which one matched.
    fn authenticate(&self, request: &Request<Incoming>) -> Option<&Client> {
        let value = request
            .headers()
            .get(header::AUTHORIZATION)?
            .to_str()
            .ok()?;
        let token = value.strip_prefix("Bearer ")?.trim();
        let hash = hash_token(token.as_bytes());
        let mut found = None;
        for client in &self.clients {
            if bool::from(client.token_hash.ct_eq(&hash)) {
                found = Some(client);
            }
        }
        found
    }

    async fn handle(
        &self,
        request: Request<Incoming>,
        log: &mut RequestLog,
    ) -> Response<Full<Bytes>> {
        let Some(client) = self.authenticate(&request) else {
            let mut response = text(
                StatusCode::UNAUTHORIZED,
                "missing or unknown bearer token: send Authorization: Bearer TOKEN with a token from the server's configuration",
            );
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        };
        log.client = Some(client.name.clone());

        let (repository, segments) = match split_request_path(request.uri().path()) {
            Ok(split) => split,
            Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
        };
        log.repository = Some(repository.clone());
        let Some(store) = self.repositories.get(&repository).cloned() else {
            return text(
                StatusCode::NOT_FOUND,
                format!("no repository {repository} on this server"),
            );
        };
        let Some(&role) = client.roles.get(&repository) else {
            return text(
                StatusCode::FORBIDDEN,
                format!(
                    "client {} has no role in repository {repository}; add it to repositories of [clients.{}] in the server's configuration",
                    client.name, client.name
                ),
            );
        };
        let target = match classify(&segments) {
            Ok(target) => target,
            Err(e @ PathError::Invalid(_)) => return text(StatusCode::BAD_REQUEST, e.to_string()),
            Err(e @ PathError::Unknown(_)) => return text(StatusCode::NOT_FOUND, e.to_string()),
        };

        let method = request.method().clone();
        let query = request.uri().query().map(str::to_string);
        match (target, query.as_deref()) {
            (Target::Directory(dir), Some(q))
                if method == Method::GET && (q == LIST_QUERY || q == LIST_RECURSIVE_QUERY) =>
            {
                let recursive = q == LIST_RECURSIVE_QUERY;
                let result = blocking(move || store.list(&dir, recursive)).await;
                match result {
                    Ok(names) => {
                        let mut body = String::new();
                        for name in names {
                            body.push_str(&name);
                            body.push('\n');
                        }
                        log.bytes = body.len() as u64;
                        text(StatusCode::OK, body.trim_end().to_string())
                    }
                    Err(e) => store_error(e),
                }
            }
            (Target::Directory(dir), Some(ROLE_QUERY))
                if dir.is_empty() && method == Method::GET =>
            {
                let info = RoleInfo {
                    client: client.name.clone(),
                    repository,
                    role: role.name().to_string(),
                };
                let body = serde_json::to_vec(&info).expect("role info encodes");
                let mut response = Response::new(Full::new(Bytes::from(body)));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                response
            }
            (Target::Directory(dir), Some(REMOVE_TEMPORARY_QUERY))
                if dir.is_empty() && method == Method::POST =>
            {
                let name = client.name.clone();
                match blocking(move || store.remove_temporary_files(&name, role)).await {
                    Ok(count) => text(StatusCode::OK, count.to_string()),
                    Err(e) => store_error(e),
                }
            }
            (Target::Directory(_), _) => text(
                StatusCode::BAD_REQUEST,
                "a directory supports only GET with ?list or ?list=recursive, and the repository's top level also GET ?role and POST ?remove-temporary-files",
            ),
            (Target::File(..), Some(_)) => {
                text(StatusCode::BAD_REQUEST, "requests for files take no query")
            }
            (Target::File(kind, path), None) => {
                self.handle_file(request, client, role, store, kind, path, log)
                    .await
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn handle_file(
        &self,
        request: Request<Incoming>,
        client: &Client,
        role: Role,
        store: Arc<RepositoryStore>,
        kind: FileKind,
        path: String,
        log: &mut RequestLog,
    ) -> Response<Full<Bytes>> {
        let name = client.name.clone();
        match *request.method() {
            Method::GET => {
                let range = match request.headers().get(header::RANGE) {
                    None => None,
                    Some(value) => match value.to_str().ok().and_then(parse_range) {
                        Some(range) => Some(range),
                        None => {
                            return text(
                                StatusCode::RANGE_NOT_SATISFIABLE,
                                "only one range of the form bytes=A-B is supported",
                            );
                        }
                    },
                };
                let result = blocking(move || match range {
                    Some((offset, len)) => store.read_range(&path, offset, len),
                    None => store.read(&path),
                })
                .await;
                match result {
                    Ok(bytes) => {
                        log.bytes = bytes.len() as u64;
                        let mut response = Response::new(Full::new(Bytes::from(bytes)));
                        if let Some((offset, len)) = range {
                            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
                            let last = offset + len as u64 - 1;
                            let value = format!("bytes {offset}-{last}/*");
                            response.headers_mut().insert(
                                header::CONTENT_RANGE,
                                HeaderValue::from_str(&value).expect("ASCII header"),
                            );
                        }
                        response
                    }
                    Err(e) => store_error(e),
                }
            }
            Method::HEAD => match blocking(move || store.size(&path)).await {
                Ok(size) => {
                    let mut response = Response::new(Full::new(Bytes::new()));
                    response
                        .headers_mut()
                        .insert(header::CONTENT_LENGTH, HeaderValue::from(size));
                    response
                }
                Err(e) => store_error(e),
            },
            Method::PUT => {
                let limit = body_limit(kind, self.max_body_len);
                let declared = request
                    .headers()
                    .get(header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                if declared.is_some_and(|len| len > limit as u64) {
                    return too_large(&path, limit);
                }
                // NOTE: the whole body is held in memory until it is written, so
                // many large uploads at once cost that much memory on the server.
                let body = Limited::new(request.into_body(), limit);
                let bytes = match tokio::time::timeout(BODY_TIMEOUT, body.collect()).await {
                    Err(_) => {
                        return text(
                            StatusCode::REQUEST_TIMEOUT,
                            format!(
                                "the body of {path} did not arrive within {} s",
                                BODY_TIMEOUT.as_secs()
                            ),
                        );
                    }
                    Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                        return too_large(&path, limit);
                    }
                    Ok(Err(e)) => {
                        return text(
                            StatusCode::BAD_REQUEST,
                            format!("cannot read the body of {path}: {e}"),
                        );
                    }
                    Ok(Ok(collected)) => collected.to_bytes(),
                };
                log.bytes = bytes.len() as u64;
                match blocking(move || store.write(&name, role, kind, &path, &bytes)).await {
                    Ok(Written::Created) => text(StatusCode::CREATED, "created"),
                    Ok(Written::Replaced) => text(StatusCode::OK, "replaced"),
                    Ok(Written::Unchanged) => text(StatusCode::OK, "unchanged"),
                    Err(e) => store_error(e),
                }
            }
            Method::DELETE => {
                match blocking(move || store.delete(&name, role, kind, &path)).await {
                    Ok(()) => text(StatusCode::OK, "deleted"),
                    Err(e) => store_error(e),
                }
            }
            _ => {
                let mut response = text(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "files support GET, HEAD, PUT and DELETE",
                );
                response.headers_mut().insert(
                    header::ALLOW,
                    HeaderValue::from_static("GET, HEAD, PUT, DELETE"),
                );
                response
            }
        }
    }
}

fn too_large(path: &str, limit: usize) -> Response<Full<Bytes>> {
    text(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "the body of {path} is larger than the server's limit of {limit} bytes for such files; for packs and index files, start cairn serve with a larger --max-body-size"
        ),
    )
}

/// Runs a file system call on tokio's blocking threads.
async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(call).await.unwrap_or_else(|e| {
        Err(StoreError::Internal(format!(
            "the request's task failed: {e}"
        )))
    })
}

// NOTE: no test starts the server with TLS yet; the tests use plain HTTP on
// 127.0.0.1, so certificate loading and CAIRN_CA_FILE have never been run.
fn load_tls(files: &TlsFiles) -> Result<TlsAcceptor, ServeError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            ServeError::Tls(format!(
                "cannot read the certificate chain {}: {e}",
                files.cert.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(ServeError::Tls(format!(
            "{} contains no PEM certificate",
            files.cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        ServeError::Tls(format!(
            "cannot read the private key {}: {e}",
            files.key.display()
        ))
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServeError::Tls(format!("TLS set-up failed: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            ServeError::Tls(format!(
                "{} and {} do not form a usable certificate and key: {e}",
                files.cert.display(),
                files.key.display()
            ))
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Checks that every repository directory exists.
fn open_repositories(
    config: &ServeConfig,
) -> Result<BTreeMap<String, Arc<RepositoryStore>>, ServeError> {
    let mut stores = BTreeMap::new();
    for (name, root) in &config.repositories {
        if !Path::new(root).is_dir() {
            return Err(ServeError::Config(format!(
                "the directory {} of repository {name} does not exist; create it, then run `cairn init` through the server with an admin token",
                root.display()
            )));
        }
        stores.insert(name.clone(), Arc::new(RepositoryStore::new(name, root)));
    }
    Ok(stores)
}

/// Serves the repositories of `config` on `listen` until SIGTERM or SIGINT,
/// then waits up to [`DRAIN_TIMEOUT`] for the requests in progress.
/// Prints `listening on http(s)://ADDRESS` on standard output once the port
/// is bound, with the port that the system chose for port 0.
pub fn serve(
    config: ServeConfig,
    listen: SocketAddr,
    tls: Option<TlsFiles>,
    max_body_len: usize,
) -> Result<(), ServeError> {
    let repositories = open_repositories(&config)?;
    let acceptor = tls.as_ref().map(load_tls).transpose()?;
    for (name, store) in &repositories {
        tracing::info!("serving repository {name} from {}", store.root().display());
    }
    let server = Arc::new(Server {
        repositories,
        clients: config.clients,
        max_body_len,
        in_flight: AtomicUsize::new(0),
    });

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("cairn-serve")
        .enable_all()
        .build()
        .map_err(|source| ServeError::Io {
            context: "cannot start the server's runtime".into(),
            source,
        })?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| ServeError::Io {
                context: format!("cannot listen on {listen}"),
                source,
            })?;
        let local = listener.local_addr().map_err(|source| ServeError::Io {
            context: "cannot read the listening address".into(),
            source,
        })?;
        let scheme = if acceptor.is_some() { "https" } else { "http" };
        println!("listening on {scheme}://{local}");
        tracing::info!("listening on {scheme}://{local}");
        if acceptor.is_none() && !local.ip().is_loopback() {
            tracing::warn!(
                "serving plain HTTP on {local}: tokens and file names cross the network unencrypted; use --tls-cert and --tls-key unless the network is trusted"
            );
        }
        let mut terminate = signal(SignalKind::terminate()).map_err(|source| ServeError::Io {
            context: "cannot watch for SIGTERM".into(),
            source,
        })?;
        let mut interrupt = signal(SignalKind::interrupt()).map_err(|source| ServeError::Io {
            context: "cannot watch for SIGINT".into(),
            source,
        })?;
        let stopped_by = loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = terminate.recv() => break "SIGTERM",
                _ = interrupt.recv() => break "SIGINT",
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Such as too many open files; the next accept may work.
                    tracing::error!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let server = server.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                match acceptor {
                    Some(acceptor) => match acceptor.accept(stream).await {
                        Ok(tls_stream) => serve_connection(server, TokioIo::new(tls_stream), peer).await,
                        Err(e) => tracing::warn!("TLS handshake with {peer} failed: {e}"),
                    },
                    None => serve_connection(server, TokioIo::new(stream), peer).await,
                }
            });
        };
        drain(&server, stopped_by).await;
        Ok(())
    })
}

/// Maximum wait after SIGTERM or SIGINT for requests that are being served.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Waits until no request is being served, or [`DRAIN_TIMEOUT`] has passed.
/// A request cut off by the exit leaves no partial file: every write goes
/// to a temporary file that is renamed only once complete.
async fn drain(server: &Server, stopped_by: &str) {
    let busy = server.in_flight.load(Ordering::SeqCst);
    tracing::info!("{stopped_by} received: no new connections; {busy} requests in progress");
    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    while server.in_flight.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = server.in_flight.load(Ordering::SeqCst);
    if left > 0 {
        tracing::warn!(
            "stopping with {left} requests in progress after {} s; their clients see a closed connection",
            DRAIN_TIMEOUT.as_secs()
        );
    }
    tracing::info!("server stopped");
}

/// Counts a request as in progress while it lives.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn start(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Self(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn serve_connection<I>(server: Arc<Server>, io: I, peer: SocketAddr)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let server = server.clone();
        async move {
            let method = request.method().clone();
            let path = request.uri().path().to_string();
            let mut log = RequestLog::default();
            let in_flight = InFlight::start(&server.in_flight);
            let response = server.handle(request, &mut log).await;
            drop(in_flight);
            tracing::info!(
                client = log.client.as_deref().unwrap_or("-"),
                repository = log.repository.as_deref().unwrap_or("-"),
                %method,
                path,
                status = response.status().as_u16(),
                bytes = log.bytes,
                %peer,
                "request"
            );
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let result = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(io, service)
        .await;
    if let Err(e) = result {
        tracing::debug!("connection from {peer} ended with an error: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_header_forms() {
        assert_eq!(parse_range("bytes=0-0"), Some((0, 1)));
        assert_eq!(parse_range("bytes=100-199"), Some((100, 100)));
        assert_eq!(parse_range("bytes=5-4"), None);
        assert_eq!(parse_range("bytes=5-"), None);
        assert_eq!(parse_range("bytes=0-1,4-5"), None);
        assert_eq!(parse_range("items=0-1"), None);
    }

    #[test]
    fn small_files_have_small_limits() {
        assert_eq!(body_limit(FileKind::Lock, 64 << 20), 64 << 10);
        assert_eq!(body_limit(FileKind::Pack, 64 << 20), 64 << 20);
        assert_eq!(body_limit(FileKind::Index, 8 << 20), 8 << 20);
    }
}
