//! A private S3-compatible server for one test: `moto_server` (from the PyPI
//! package `moto[server]`) on a free port of 127.0.0.1 that it picks itself,
//! stopped when its guard is dropped.
//!
//! A missing `moto_server` fails the test with instructions, never skips it.
//! `CAIRN_TEST_MOTO_SERVER` names another executable to run instead.

#![allow(dead_code)]

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Upper bound for the server to accept connections. It bounds a hung start,
/// and is not a performance limit.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Credentials for the test server. moto checks no signature, so any value works.
pub const ACCESS_KEY_ID: &str = "cairn-test-key";
pub const SECRET_ACCESS_KEY: &str = "cairn-test-secret";

/// A running S3 server. Dropping it kills the server process.
pub struct S3Server {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: TempDir,
}

impl S3Server {
    /// Starts a server on a free port of 127.0.0.1 and waits until it accepts
    /// connections.
    pub fn start() -> Self {
        let program = std::env::var_os("CAIRN_TEST_MOTO_SERVER")
            .unwrap_or_else(|| OsString::from("moto_server"));
        let dir = tempfile::Builder::new()
            .prefix("cairn-s3-")
            .tempdir()
            .expect("create directory for the S3 server log");
        let log = dir.path().join("moto.log");
        let log_file = File::create(&log).expect("create S3 server log");
        // Port 0 lets the server bind a free port itself, which it then logs,
        // so that parallel tests never race for a port.
        let child = Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("duplicate log handle"))
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start the S3 test server {program:?}: {e}; install it with \
                     `pip install 'moto[server]'` (.ci/run does), or set CAIRN_TEST_MOTO_SERVER \
                     to its path"
                )
            });
        let mut server = S3Server {
            child,
            port: 0,
            log,
            _dir: dir,
        };
        server.wait_until_ready();
        server
    }

    /// Waits until the server has logged its port and accepts connections on it.
    fn wait_until_ready(&mut self) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the S3 server") {
                panic!(
                    "the S3 test server exited with {status} before accepting connections:\n{}",
                    self.log()
                );
            }
            if self.port == 0 {
                self.port = listening_port(&self.log()).unwrap_or(0);
            }
            if self.port != 0 && TcpStream::connect(self.address()).is_ok() {
                return;
            }
            assert!(
                start.elapsed() < START_TIMEOUT,
                "the S3 test server did not accept connections within {START_TIMEOUT:?} \
                 (port {}, 0 while not logged yet):\n{}",
                self.port,
                self.log()
            );
            thread::sleep(POLL_INTERVAL);
        }
    }

    fn address(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Returns the port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Returns `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Returns the repository URL of `bucket` and `prefix` on this server.
    pub fn repository_url(&self, bucket: &str, prefix: &str) -> String {
        if prefix.is_empty() {
            format!("s3:{}/{bucket}", self.endpoint())
        } else {
            format!("s3:{}/{bucket}/{prefix}", self.endpoint())
        }
    }

    /// Returns the environment variables that give cairn the credentials.
    pub fn credentials(&self) -> Vec<(OsString, OsString)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY_ID.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), SECRET_ACCESS_KEY.into()),
        ]
    }

    /// Creates a bucket with `PUT /BUCKET`.
    pub fn create_bucket(&self, bucket: &str) {
        let (status, body) = self.request("PUT", &format!("/{bucket}"));
        assert_eq!(status, 200, "creating bucket {bucket} failed: {body}");
    }

    /// Lists the keys of `bucket` that start with `prefix`, in key order.
    pub fn list_keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut path = format!("/{bucket}?list-type=2&prefix={}", percent_encode(prefix));
            if let Some(token) = &token {
                path.push_str("&continuation-token=");
                path.push_str(&percent_encode(token));
            }
            let (status, body) = self.request("GET", &path);
            assert_eq!(status, 200, "listing bucket {bucket} failed: {body}");
            keys.extend(xml_values(&body, "Key"));
            token = xml_values(&body, "NextContinuationToken")
                .into_iter()
                .next();
            if token.is_none() {
                break;
            }
        }
        keys
    }

    /// Returns the bytes of one object.
    pub fn get_object(&self, bucket: &str, key: &str) -> Vec<u8> {
        let path = format!("/{bucket}/{}", percent_encode_path(key));
        let (status, body) = self.request_bytes("GET", &path);
        assert_eq!(
            status,
            200,
            "reading object {key} failed: {}",
            String::from_utf8_lossy(&body)
        );
        body
    }

    /// Sends one HTTP/1.1 request without a body and returns the status code and
    /// the body as text.
    fn request(&self, method: &str, path: &str) -> (u16, String) {
        let (status, body) = self.request_bytes(method, path);
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    fn request_bytes(&self, method: &str, path: &str) -> (u16, Vec<u8>) {
        let mut stream = TcpStream::connect(self.address()).expect("connect to the S3 test server");

        // moto verifies no signature, but it serves objects only to requests
        // that carry an Authorization header naming an access key.
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAuthorization: AWS4-HMAC-SHA256 \
             Credential={ACCESS_KEY_ID}/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, \
             Signature=0\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .expect("send a request to the S3 test server");

        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .expect("read the S3 test server's response");

        let split = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| {
                panic!(
                    "HTTP response without a header end from the S3 test server: {}",
                    String::from_utf8_lossy(&response)
                )
            });
        let head = String::from_utf8_lossy(&response[..split]).to_ascii_lowercase();
        let body = response[split + 4..].to_vec();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("invalid status line from the S3 test server: {head}"));
        if head.contains("transfer-encoding: chunked") {
            (status, decode_chunked(&body))
        } else {
            (status, body)
        }
    }

    /// Returns what the server has written to its standard output and error.
    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = File::open(&self.log) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("--- S3 test server log ---\n{}", self.log());
        }
        if let Err(e) = self.child.kill()
            && e.kind() != io::ErrorKind::InvalidInput
        {
            eprintln!(
                "failed to kill the S3 test server (pid {}): {e}",
                self.child.id()
            );
        }
        let _ = self.child.wait();
    }
}

/// Returns the port from the line `Running on http://127.0.0.1:PORT` that the
/// server (werkzeug) logs once it listens.
fn listening_port(log: &str) -> Option<u16> {
    let marker = "Running on http://127.0.0.1:";
    let start = log.find(marker)? + marker.len();
    let digits: String = log[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// A TCP port of 127.0.0.1 that is bound but not listening, for as long as the
/// value lives. Connections to it are refused, and no other process can take
/// it in the meantime, unlike a port that was merely free a moment ago.
pub struct ClosedPort {
    _socket: OwnedFd,
    pub port: u16,
}

impl ClosedPort {
    pub fn reserve() -> Self {
        // SAFETY: socket() takes no pointers, and the returned descriptor is
        // owned by `_socket` from here on.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };

        let mut address = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be(),
            },
            sin_zero: [0; 8],
        };
        let mut length = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: `address` is a valid sockaddr_in of `length` bytes, for both
        // calls, and outlives them.
        unsafe {
            let pointer = (&raw mut address).cast::<libc::sockaddr>();
            assert_eq!(
                libc::bind(socket.as_raw_fd(), pointer, length),
                0,
                "bind 127.0.0.1:0: {}",
                io::Error::last_os_error()
            );
            assert_eq!(
                libc::getsockname(socket.as_raw_fd(), pointer, &mut length),
                0,
                "getsockname: {}",
                io::Error::last_os_error()
            );
        }
        ClosedPort {
            _socket: socket,
            port: u16::from_be(address.sin_port),
        }
    }
}

/// Returns the text of every `<tag>…</tag>` element, in order. Enough for the
/// flat list responses of S3, not a general XML parser.
fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut values = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(&close) else {
            break;
        };
        values.push(after[..end].to_string());
        rest = &after[end + close.len()..];
    }
    values
}

/// Removes the framing of an HTTP/1.1 chunked body.
fn decode_chunked(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line ends with CRLF");
        let size_text = String::from_utf8_lossy(&rest[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .unwrap_or_else(|_| panic!("invalid chunk size {size_text:?}"));
        if size == 0 {
            return out;
        }
        let data = &rest[line_end + 2..];
        out.extend_from_slice(&data[..size]);
        rest = &data[size + 2..];
    }
}

/// Percent-encodes a key for a request path, keeping its `/` separators.
fn percent_encode_path(key: &str) -> String {
    key.split('/')
        .map(percent_encode)
        .collect::<Vec<_>>()
        .join("/")
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
