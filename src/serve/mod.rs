//! `cairn serve`: an HTTP server for repositories in local directories, with a
//! bearer token and a role per client and repository.
//!
//! Requests, below `/REPOSITORY`:
//!
//! | Request | Does |
//! |---|---|
//! | `GET /R/FILE`, with an optional `Range: bytes=A-B` | Returns the file, or bytes A to B (206) |
//! | `HEAD /R/FILE` | Returns the size in `Content-Length` |
//! | `PUT /R/FILE` | Writes the file atomically and durably, as the role allows (`store`) |
//! | `DELETE /R/FILE` | Deletes the file, as the role allows |
//! | `GET /R/DIR?list`, `GET /R/DIR?list=recursive` | Lists a directory, one name a line |
//! | `GET /R?role` | Returns the client's name and role as JSON |
//! | `POST /R?remove-temporary-files` | Deletes `.tmp-*` files of writes that never finished (admin) |
//!
//! `FILE` and `DIR` are the repository's own names (`paths`), so no request
//! reaches a file outside a repository's directory.

pub mod config;
pub mod paths;
mod server;
pub mod store;

pub use self::config::{Role, ServeConfig};
pub use self::server::{ServeError, TlsFiles, serve};

/// Largest request body accepted, 64 MiB. Packs close at 16 MiB, and the
/// blob that closes a pack adds at most a maximum chunk (8 MiB) and its
/// overhead, so no file that cairn writes comes near it.
pub const MAX_BODY_LEN: usize = 64 << 20;

/// Query of the request that returns the client's role.
pub const ROLE_QUERY: &str = "role";
/// Query of a directory listing.
pub const LIST_QUERY: &str = "list";
/// Query of a listing of everything below a directory.
pub const LIST_RECURSIVE_QUERY: &str = "list=recursive";
/// Query of the request that removes temporary files.
pub const REMOVE_TEMPORARY_QUERY: &str = "remove-temporary-files";

/// The body of a `?role` response.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RoleInfo {
    /// Name of the client whose token was sent.
    pub client: String,
    /// Name of the repository.
    pub repository: String,
    /// `read`, `append` or `admin`.
    pub role: String,
}
