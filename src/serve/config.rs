//! The configuration file of `cairn serve`: the repositories it serves, and
//! the clients with their token and their role in each repository.
//!
//! ```toml
//! [repositories.main]
//! path = "/srv/cairn/main"
//!
//! [clients.alpha]
//! token_file = "/etc/cairn/serve/alpha.token"
//! repositories = { main = "append" }
//!
//! [clients.operator]
//! token_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! repositories = { main = "admin" }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Permission level of a client in one repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read and list files.
    Read,
    /// Read, create files that do not exist yet, and create, rewrite and
    /// delete its own lock files.
    Append,
    /// Everything, including deleting and replacing files.
    Admin,
}

impl Role {
    /// Returns the name used in the configuration file and in messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Append => "append",
            Self::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    repositories: BTreeMap<String, RepositoryEntry>,
    #[serde(default)]
    clients: BTreeMap<String, ClientEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RepositoryEntry {
    path: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientEntry {
    token_file: Option<PathBuf>,
    token_sha256: Option<String>,
    #[serde(default)]
    repositories: BTreeMap<String, Role>,
}

/// One client, with the SHA-256 hash of its token.
#[derive(Clone, PartialEq, Eq)]
pub struct Client {
    /// Name from `[clients.NAME]`, used in logs and messages.
    pub name: String,
    /// SHA-256 of the token. Only the hash is kept in memory.
    pub token_hash: [u8; 32],
    /// Role per repository name. Repositories not listed are closed to it.
    pub roles: BTreeMap<String, Role>,
}

// Written by hand so that a log never shows even the hash of a token.
impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("name", &self.name)
            .field("roles", &self.roles)
            .finish_non_exhaustive()
    }
}

/// The checked configuration.
#[derive(Debug)]
pub struct ServeConfig {
    /// Repository directories by name.
    pub repositories: BTreeMap<String, PathBuf>,
    /// All clients.
    pub clients: Vec<Client>,
}

/// Returns the SHA-256 hash of a token as the server stores it.
pub fn hash_token(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

/// Reads the token from the first line of a file, without its line ending.
/// Shared by the server and the client, so both read a token file alike.
pub fn read_token_file(path: &Path) -> Result<Vec<u8>, String> {
    let text = std::fs::read(path)
        .map_err(|e| format!("cannot read token file {}: {e}", path.display()))?;
    let line = text.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() {
        return Err(format!("token file {} is empty", path.display()));
    }
    Ok(line.to_vec())
}

/// True for repository and client names: ASCII letters, digits, `-`, `_` and
/// `.`, not starting with `.`. Repository names appear in URLs unencoded.
fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl ServeConfig {
    /// Reads and checks the file at `path`. A relative `token_file` or
    /// repository `path` is taken relative to the directory of the file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read server configuration {}: {e}", path.display()))?;
        Self::parse(path, &text)
    }

    /// Parses `text` as the contents of `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Self, String> {
        let file: FileConfig = toml::from_str(text).map_err(|e| {
            let place = e
                .span()
                .map(|span| {
                    let line = text[..span.start].matches('\n').count() + 1;
                    format!(":{line}")
                })
                .unwrap_or_default();
            format!("{}{place}: {}", path.display(), e.message().trim())
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };

        if file.repositories.is_empty() {
            return Err(format!(
                "{}: no repositories: add a [repositories.NAME] table with path = \"DIR\"",
                path.display()
            ));
        }
        let mut repositories = BTreeMap::new();
        for (name, entry) in &file.repositories {
            if !is_valid_name(name) {
                return Err(format!(
                    "{}: invalid repository name {name:?}: use letters, digits, -, _ and ., not starting with .",
                    path.display()
                ));
            }
            repositories.insert(name.clone(), resolve(&entry.path));
        }

        let mut clients = Vec::new();
        for (name, entry) in &file.clients {
            let place = format!("{}: [clients.{name}]", path.display());
            if !is_valid_name(name) {
                return Err(format!(
                    "{place}: invalid client name: use letters, digits, -, _ and ., not starting with ."
                ));
            }
            let token_hash = match (&entry.token_file, &entry.token_sha256) {
                (Some(file), None) => hash_token(&read_token_file(&resolve(file))?),
                (None, Some(hex_hash)) => {
                    let mut hash = [0u8; 32];
                    hex::decode_to_slice(hex_hash, &mut hash).map_err(|_| {
                        format!("{place}: token_sha256 must be 64 hex characters, the SHA-256 of the token")
                    })?;
                    hash
                }
                _ => {
                    return Err(format!(
                        "{place}: set exactly one of token_file and token_sha256"
                    ));
                }
            };
            for repository in entry.repositories.keys() {
                if !repositories.contains_key(repository) {
                    return Err(format!(
                        "{place}: unknown repository {repository:?}; defined: {}",
                        repositories.keys().cloned().collect::<Vec<_>>().join(", ")
                    ));
                }
            }
            if let Some(other) = clients
                .iter()
                .find(|c: &&Client| c.token_hash == token_hash)
            {
                return Err(format!(
                    "{place}: the same token as [clients.{}]; give each client its own token",
                    other.name
                ));
            }
            clients.push(Client {
                name: name.clone(),
                token_hash,
                roles: entry.repositories.clone(),
            });
        }
        Ok(Self {
            repositories,
            clients,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH_OF_TEST: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn token_hash_is_sha256() {
        assert_eq!(hex::encode(hash_token(b"test")), HASH_OF_TEST);
    }

    #[test]
    fn clients_with_roles_and_relative_token_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("alpha.token"), "secret-alpha\n").unwrap();
        let text = format!(
            r#"
            [repositories.main]
            path = "/srv/cairn/main"
            [repositories.other]
            path = "other"

            [clients.alpha]
            token_file = "alpha.token"
            repositories = {{ main = "append", other = "read" }}

            [clients.operator]
            token_sha256 = "{HASH_OF_TEST}"
            repositories = {{ main = "admin" }}
            "#
        );

        let config = ServeConfig::parse(&dir.path().join("serve.toml"), &text).unwrap();

        assert_eq!(config.repositories["other"], dir.path().join("other"));
        let alpha = &config.clients[0];
        assert_eq!(alpha.name, "alpha");
        assert_eq!(alpha.token_hash, hash_token(b"secret-alpha"));
        assert_eq!(alpha.roles["main"], Role::Append);
        assert_eq!(alpha.roles["other"], Role::Read);
        assert_eq!(config.clients[1].roles["main"], Role::Admin);
    }

    #[test]
    fn invalid_configurations_are_rejected() {
        let repository = "[repositories.main]\npath = \"/srv/main\"\n";
        for (text, expected) in [
            ("", "no repositories"),
            (
                "[repositories.main]\npath = \"/x\"\nmode = 1\n",
                "unknown field",
            ),
            (
                "[repositories.\"../x\"]\npath = \"/x\"\n",
                "invalid repository name",
            ),
            (
                "[clients.a]\nrepositories = { main = \"read\" }\n",
                "exactly one",
            ),
            ("[clients.a]\ntoken_sha256 = \"abc\"\n", "64 hex characters"),
            (
                &format!(
                    "[clients.a]\ntoken_sha256 = \"{HASH_OF_TEST}\"\nrepositories = {{ main = \"owner\" }}\n"
                ),
                "unknown variant",
            ),
            (
                &format!(
                    "[clients.a]\ntoken_sha256 = \"{HASH_OF_TEST}\"\nrepositories = {{ nope = \"read\" }}\n"
                ),
                "unknown repository",
            ),
            (
                &format!(
                    "[clients.a]\ntoken_sha256 = \"{HASH_OF_TEST}\"\n[clients.b]\ntoken_sha256 = \"{HASH_OF_TEST}\"\n"
                ),
                "same token",
            ),
        ] {
            let text = if text.starts_with("[repositories") || text.is_empty() {
                text.to_string()
            } else {
                format!("{repository}{text}")
            };
            let error = ServeConfig::parse(Path::new("/etc/cairn/serve.toml"), &text).unwrap_err();
            assert!(error.contains(expected), "{text:?} gave {error:?}");
        }
    }
}
