//! Reading a backup from the standard output of a command, such as `pg_dump`.
//!
//! [`CommandStream`] reads the child's output as it arrives. At the end of the
//! output it waits for the child, and a non-zero exit turns into a read error, so
//! a backup that reads the stream fails before it writes a snapshot.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{self, Read};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Bytes of the command's standard error kept for error messages.
const STDERR_TAIL_BYTES: usize = 4096;

/// A running command whose standard output is read as a stream.
#[derive(Debug)]
pub struct CommandStream {
    child: Child,
    stdout: Option<ChildStdout>,
    stderr_tail: Arc<Mutex<VecDeque<u8>>>,
    stderr_reader: Option<JoinHandle<()>>,
    command_line: String,
    finished: bool,
}

/// A command that exited unsuccessfully.
#[derive(Debug, thiserror::Error)]
#[error("command `{command_line}` {}{}", describe_status(.status), describe_tail(.stderr_tail))]
pub struct CommandFailed {
    /// The command and its arguments, joined by spaces.
    pub command_line: String,
    /// Exit status.
    pub status: ExitStatus,
    /// The last bytes of its standard error, lossily decoded.
    pub stderr_tail: String,
}

fn describe_status(status: &ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => format!("failed ({status})"),
    }
}

fn describe_tail(tail: &str) -> String {
    let tail = tail.trim_end();
    if tail.is_empty() {
        String::from(" and wrote nothing to standard error")
    } else {
        format!("; its standard error ended with:\n{tail}")
    }
}

impl CommandStream {
    /// Starts `argv[0]` with the remaining arguments, standard input from
    /// `/dev/null` and standard output and error piped to this process.
    pub fn spawn(argv: &[OsString]) -> io::Result<Self> {
        let (program, args) = argv.split_first().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "no command given to run")
        })?;
        let command_line = argv
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot run `{command_line}`: {e}")))?;
        let stdout = child.stdout.take();
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        let tail = Arc::clone(&stderr_tail);
        let stderr_reader = std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            loop {
                let n = match stderr.read(&mut buffer) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                let mut tail = tail.lock().expect("stderr tail lock");
                tail.extend(&buffer[..n]);
                let excess = tail.len().saturating_sub(STDERR_TAIL_BYTES);
                tail.drain(..excess);
            }
        });
        Ok(Self {
            child,
            stdout,
            stderr_tail,
            stderr_reader: Some(stderr_reader),
            command_line,
            finished: false,
        })
    }

    /// Returns the command line for messages.
    pub fn command_line(&self) -> &str {
        &self.command_line
    }

    /// Returns the last bytes the command wrote to standard error so far.
    pub fn stderr_tail(&self) -> String {
        let tail = self.stderr_tail.lock().expect("stderr tail lock");
        let (front, back) = tail.as_slices();
        let mut bytes = front.to_vec();
        bytes.extend_from_slice(back);
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Waits for the child after its output ended, and for the standard error
    /// reader, which ends when the child and any process that inherited its
    /// standard error have closed it.
    fn finish(&mut self) -> io::Result<()> {
        self.finished = true;
        self.stdout = None;
        let status = self.child.wait()?;
        if let Some(reader) = self.stderr_reader.take() {
            let _ = reader.join();
        }
        if status.success() {
            return Ok(());
        }
        Err(io::Error::other(CommandFailed {
            command_line: self.command_line.clone(),
            status,
            stderr_tail: self.stderr_tail(),
        }))
    }
}

impl Read for CommandStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.finished {
            return Ok(0);
        }
        let stdout = self.stdout.as_mut().expect("stdout open until finished");
        let n = stdout.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.finish()?;
        }
        Ok(n)
    }
}

impl Drop for CommandStream {
    /// Stops a command whose output was not read to the end, as after a
    /// repository error, so that it does not run on unobserved.
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        self.stdout = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.stderr_reader.take() {
            let _ = reader.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell(script: &str) -> Vec<OsString> {
        vec!["sh".into(), "-c".into(), script.into()]
    }

    #[test]
    fn successful_command_streams_output() {
        let mut stream = CommandStream::spawn(&shell("printf 'a\\nb\\n'")).unwrap();
        let mut out = Vec::new();
        stream.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"a\nb\n");
    }

    #[test]
    fn failing_command_reports_status_and_stderr() {
        let mut stream =
            CommandStream::spawn(&shell("printf data; echo 'disk on fire' >&2; exit 3")).unwrap();
        let mut out = Vec::new();
        let error = stream.read_to_end(&mut out).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("exited with status 3"), "{message}");
        assert!(message.contains("disk on fire"), "{message}");
    }

    #[test]
    fn killed_command_reports_signal() {
        let mut stream = CommandStream::spawn(&shell("kill -9 $$")).unwrap();
        let mut out = Vec::new();
        let message = stream.read_to_end(&mut out).unwrap_err().to_string();
        assert!(message.contains("killed by signal 9"), "{message}");
    }

    #[test]
    fn missing_program_fails_to_spawn() {
        let error = CommandStream::spawn(&["/nonexistent/cairn-test-program".into()]).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
    }
}
