//! Backs up a real PostgreSQL database with `backup --stdin-from-command --
//! pg_dump`, restores the dump into a new database and compares the rows.
//!
//! The test starts a private server as user `postgres` in a temporary
//! directory, listening only on a unix socket in that directory. It needs the
//! Debian package `postgresql` (server binaries in /usr/lib/postgresql/N/bin)
//! and root, to switch users with `runuser`. On CI (`CI` set) missing tools fail
//! the test; elsewhere the test is skipped with a message.

mod support;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::{EXIT_OK, Fixture, describe, parse_json, stdout_of};

/// Returns the directory with `initdb`, `pg_ctl` and `pg_dump`: from PATH, else
/// the newest /usr/lib/postgresql/N/bin.
fn postgres_bin_dir() -> Option<PathBuf> {
    let has_tools = |dir: &Path| {
        ["initdb", "pg_ctl", "pg_dump", "psql"]
            .iter()
            .all(|tool| dir.join(tool).is_file())
    };
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("pg_ctl").is_file() && dir.join("initdb").is_file() {
                let resolved = fs::canonicalize(dir.join("pg_ctl")).ok()?;
                let real_dir = resolved.parent()?.to_path_buf();
                if has_tools(&real_dir) {
                    return Some(real_dir);
                }
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, dir)| has_tools(dir))
        .collect();
    versions.sort();
    versions.pop().map(|(_, dir)| dir)
}

/// A PostgreSQL server in a temporary directory, stopped when dropped.
struct Server {
    bin: PathBuf,
    dir: tempfile::TempDir,
}

impl Server {
    fn start(bin: PathBuf) -> Self {
        let dir = tempfile::tempdir().expect("create server directory");
        let (uid, gid) = postgres_ids();
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown server dir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let server = Server { bin, dir };
        server.as_postgres(
            "initdb",
            &[
                "-D".as_ref(),
                server.data_dir().as_os_str(),
                "--auth=trust".as_ref(),
                "--username=postgres".as_ref(),
                "--encoding=UTF8".as_ref(),
                "--no-sync".as_ref(),
            ],
        );
        let options = format!(
            "-k {} -c listen_addresses='' -c fsync=off",
            server.socket_dir().display()
        );
        server.as_postgres(
            "pg_ctl",
            &[
                "-D".as_ref(),
                server.data_dir().as_os_str(),
                "-l".as_ref(),
                server.dir.path().join("server.log").as_os_str(),
                "-o".as_ref(),
                options.as_ref(),
                "-w".as_ref(),
                "start".as_ref(),
            ],
        );
        server
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    fn tool(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    /// Runs a server tool as user `postgres`, which initdb and pg_ctl require.
    fn as_postgres(&self, tool: &str, args: &[&OsStr]) -> Output {
        let output = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.tool(tool))
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("run runuser");
        assert!(
            output.status.success(),
            "{tool} failed: {}\n--- server log ---\n{}",
            describe(&output),
            fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
        );
        output
    }

    /// Returns the arguments that connect a client to `database`.
    fn connection(&self, database: &str) -> Vec<String> {
        vec![
            "-h".into(),
            self.socket_dir().display().to_string(),
            "-U".into(),
            "postgres".into(),
            "-d".into(),
            database.into(),
        ]
    }

    /// Runs SQL in `database` and returns psql's unaligned output.
    fn sql(&self, database: &str, sql: &str) -> String {
        let output = Command::new(self.tool("psql"))
            .args(self.connection(database))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .expect("run psql");
        assert!(
            output.status.success(),
            "psql {sql:?}: {}",
            describe(&output)
        );
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.tool("pg_ctl"))
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate", "-w", "stop"])
            .current_dir(self.dir.path())
            .output();
    }
}

fn postgres_ids() -> (u32, u32) {
    let user = nix::unistd::User::from_name("postgres")
        .expect("look up user postgres")
        .expect("user postgres exists (created by the postgresql package)");
    (user.uid.as_raw(), user.gid.as_raw())
}

/// Row count and a checksum over all rows of `items`, in id order.
const ITEMS_DIGEST: &str = "SELECT count(*) || ' ' || md5(string_agg(id || ':' || name || ':' || amount, ',' ORDER BY id)) FROM items";

#[test]
fn pg_dump_backup_restores_into_new_database() {
    let Some(bin) = postgres_bin_dir() else {
        if std::env::var_os("CI").is_some() {
            panic!(
                "initdb, pg_ctl, pg_dump and psql were not found on PATH or in /usr/lib/postgresql/N/bin; .ci/run installs them with the package postgresql"
            );
        }
        eprintln!(
            "skipped: PostgreSQL server tools not found (apt-get install postgresql to run this test)"
        );
        return;
    };
    let server = Server::start(bin);
    server.sql("postgres", "CREATE DATABASE shop");
    server.sql(
        "shop",
        "CREATE TABLE items (id integer PRIMARY KEY, name text NOT NULL, amount numeric(12,2));
         INSERT INTO items SELECT g, 'item ' || md5(g::text), g * 1.25 FROM generate_series(1, 50000) g;",
    );
    let source_digest = server.sql("shop", ITEMS_DIGEST);
    assert!(source_digest.starts_with("50000 "), "{source_digest}");

    let fixture = Fixture::new();
    let mut args: Vec<String> = [
        "backup",
        "--json",
        "--stdin-from-command",
        "--stdin-filename",
        "shop.sql",
        "--",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(server.tool("pg_dump").display().to_string());
    args.extend(server.connection("shop"));
    let output = fixture.run(&args);
    assert_eq!(output.status.code(), Some(EXIT_OK), "{}", describe(&output));
    let summary = parse_json(&stdout_of(&output));
    assert_eq!(summary["paths"], serde_json::json!(["/shop.sql"]));

    let target = fixture.restore("latest", "restored");
    let dump = target.join("shop.sql");
    let dump_text = fs::read_to_string(&dump).unwrap();
    assert!(
        dump_text.contains("CREATE TABLE public.items"),
        "not a dump"
    );

    server.sql("postgres", "CREATE DATABASE shop_restored");
    let output = Command::new(server.tool("psql"))
        .args(server.connection("shop_restored"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-f"])
        .arg(&dump)
        .output()
        .expect("run psql");
    assert!(
        output.status.success(),
        "loading the dump failed: {}",
        describe(&output)
    );
    let restored_digest = server.sql("shop_restored", ITEMS_DIGEST);
    assert_eq!(restored_digest, source_digest);
}

#[test]
fn pg_dump_of_missing_database_fails() {
    let Some(bin) = postgres_bin_dir() else {
        if std::env::var_os("CI").is_some() {
            panic!(
                "PostgreSQL server tools are missing on CI; .ci/run installs package postgresql"
            );
        }
        eprintln!("skipped: PostgreSQL server tools not found");
        return;
    };
    let server = Server::start(bin);
    let fixture = Fixture::new();
    let mut args: Vec<String> = ["backup", "--stdin-from-command", "--"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(server.tool("pg_dump").display().to_string());
    args.extend(server.connection("no_such_database"));
    let output = fixture.run(&args);
    assert_eq!(
        output.status.code(),
        Some(support::EXIT_FAILURE),
        "{}",
        describe(&output)
    );
    let stderr = support::stderr_of(&output);
    assert!(stderr.contains("no_such_database"), "{stderr}");
    assert!(fixture.snapshots().is_empty());
}
