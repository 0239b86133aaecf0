//! A `cairn serve` for one test, on a free port of 127.0.0.1, serving one
//! repository directory named `main` to three clients: `reader` (read role),
//! `writer` (append role) and `operator` (admin role). Dropping the guard
//! kills the server.

#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use tempfile::TempDir;

use super::cairn_command;

/// Name of the repository on the server.
pub const REPOSITORY: &str = "main";

/// The three clients, by the role they have in [`REPOSITORY`].
#[derive(Clone, Copy, Debug)]
pub enum Client {
    Reader,
    Writer,
    Operator,
}

impl Client {
    fn name(self) -> &'static str {
        match self {
            Self::Reader => "reader",
            Self::Writer => "writer",
            Self::Operator => "operator",
        }
    }

    /// Returns the token of this client.
    pub fn token(self) -> String {
        format!("test-token-of-{}", self.name())
    }
}

/// A running server. Dropping it kills the server process.
pub struct CairnServer {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
    repository: PathBuf,
    /// Certificate and key files when the server speaks HTTPS.
    tls: Option<(PathBuf, PathBuf)>,
}

impl CairnServer {
    /// Starts a server for the directory `repository`, which must exist, on a
    /// port that the system picks.
    pub fn start(repository: &Path) -> Self {
        Self::start_with(repository, false)
    }

    /// Starts a server like [`CairnServer::start`] that speaks HTTPS with a
    /// self-signed certificate for 127.0.0.1, made with `openssl`. Clients
    /// trust it through `CAIRN_CA_FILE` set to [`CairnServer::certificate`].
    pub fn start_tls(repository: &Path) -> Self {
        Self::start_with(repository, true)
    }

    fn start_with(repository: &Path, tls: bool) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("cairn-serve-")
            .tempdir()
            .expect("create directory for the server configuration");
        let mut config = format!(
            "[repositories.{REPOSITORY}]\npath = {:?}\n",
            repository.display().to_string()
        );
        for (client, role) in [
            (Client::Reader, "read"),
            (Client::Writer, "append"),
            (Client::Operator, "admin"),
        ] {
            let token_file = dir.path().join(format!("{}.token", client.name()));
            fs::write(&token_file, format!("{}\n", client.token())).expect("write token file");
            config.push_str(&format!(
                "[clients.{}]\ntoken_file = {:?}\nrepositories = {{ {REPOSITORY} = \"{role}\" }}\n",
                client.name(),
                token_file.display().to_string()
            ));
        }
        fs::write(dir.path().join("serve.toml"), config).expect("write server configuration");
        let tls = tls.then(|| self_signed_certificate(dir.path()));
        let mut server = Self {
            child: None,
            port: 0,
            dir,
            repository: repository.to_path_buf(),
            tls,
        };
        server.launch();
        server
    }

    /// Starts the process on `self.port` (0 for any) and waits for the line
    /// that shows the port it listens on.
    fn launch(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open server log");
        let mut command = cairn_command();
        command
            .arg("--config")
            .arg(self.dir.path().join("serve.toml"))
            .args(["serve", "--listen", &format!("127.0.0.1:{}", self.port)]);
        if let Some((certificate, key)) = &self.tls {
            command
                .arg("--tls-cert")
                .arg(certificate)
                .arg("--tls-key")
                .arg(key);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start cairn serve");
        let mut line = String::new();
        // The server prints this line once it listens; if it exits first, the
        // pipe closes and the line stays empty.
        BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .expect("read the first line of cairn serve");
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "cairn serve did not report its port (first line {line:?}):\n{}",
                    self.log()
                )
            });
        self.port = port;
        self.child = Some(child);
    }

    /// Kills the server at once, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and returns the exit status. Fails the test if the
    /// server is still running a minute later.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("server running");
        // SAFETY: kill has no memory effects.
        let sent = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(sent, 0, "send SIGTERM to cairn serve");
        for _ in 0..600 {
            if let Some(status) = child.try_wait().expect("wait for cairn serve") {
                return status;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "cairn serve still ran a minute after SIGTERM:\n{}",
            self.log()
        );
    }

    /// Starts the server again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// Returns the port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Returns the repository location `cairn:http://127.0.0.1:PORT/main`,
    /// with `https` for a server started with [`CairnServer::start_tls`].
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("cairn:{scheme}://127.0.0.1:{}/{REPOSITORY}", self.port)
    }

    /// Returns the server's self-signed certificate, for `CAIRN_CA_FILE`.
    pub fn certificate(&self) -> &Path {
        &self.tls.as_ref().expect("server started with TLS").0
    }

    /// Returns the token file of a client.
    pub fn token_file(&self, client: Client) -> PathBuf {
        self.dir.path().join(format!("{}.token", client.name()))
    }

    /// Returns the repository directory.
    pub fn repository(&self) -> &Path {
        &self.repository
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("serve.log")
    }

    /// Returns what the server logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Sends one HTTP/1.1 request with the raw request target `target`, as
    /// given, and returns the status code and body. The target is not
    /// normalized, so `..` and encoded characters reach the server unchanged.
    pub fn raw_request(
        &self,
        method: &str,
        target: &str,
        token: Option<&str>,
        extra_headers: &[(&str, String)],
        body: &[u8],
    ) -> (u16, String) {
        let mut stream =
            TcpStream::connect(("127.0.0.1", self.port)).expect("connect to cairn serve");
        let mut head = format!(
            "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n",
            self.port
        );
        if let Some(token) = token {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        let declares_length = extra_headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("content-length"));
        if !declares_length {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        for (name, value) in extra_headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream
            .write_all(head.as_bytes())
            .expect("send request head");
        stream.write_all(body).expect("send request body");
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .expect("read the response");
        let text = String::from_utf8_lossy(&response).into_owned();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_string())
            .unwrap_or_default();
        (status, body)
    }
}

impl Drop for CairnServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Makes a self-signed certificate for the IP address 127.0.0.1 and its key
/// in `dir` with `openssl`, and returns both paths.
fn self_signed_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let certificate = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let output = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&certificate)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl, which .ci/run installs");
    assert!(
        output.status.success(),
        "openssl req failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    (certificate, key)
}
