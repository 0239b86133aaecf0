//! Pack files: many sealed blobs in one file, followed by a sealed header that
//! lists them, so that the index can be rebuilt from the packs alone.
//!
//! ```text
//! offset      size  field
//! 0           8     magic "CAIRNPK1"
//! 8           ...   sealed blobs, back to back
//! h           n     sealed header (kind PackHeader, id all zeros)
//! h+n         4     n as u32 little endian
//! ```
//!
//! The header's plaintext is the postcard encoding of `Vec<PackEntry>`. A pack's
//! name is the unkeyed BLAKE3 hash of all its bytes, so anyone can verify a copy
//! without the key.

use serde::{Deserialize, Serialize};

use crate::crypto::{Keys, ObjectKind};
use crate::id::PackId;

/// Magic bytes at the start of every pack.
pub const PACK_MAGIC: &[u8; 8] = b"CAIRNPK1";
/// Largest pack header accepted when reading, 64 MiB.
pub const MAX_HEADER_LEN: usize = 64 << 20;

/// The kind of a blob inside a pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BlobKind {
    /// File content.
    Chunk,
    /// Directory tree.
    Tree,
}

impl BlobKind {
    /// Returns the object kind used in the blob's associated data.
    pub fn object_kind(self) -> ObjectKind {
        match self {
            BlobKind::Chunk => ObjectKind::Chunk,
            BlobKind::Tree => ObjectKind::Tree,
        }
    }
}

/// Location of one blob inside its pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackEntry {
    /// Chunk or tree.
    pub kind: BlobKind,
    /// Chunk id or tree id.
    pub id: [u8; 32],
    /// Byte offset of the sealed blob from the start of the pack.
    pub offset: u32,
    /// Length of the sealed blob in bytes.
    pub len: u32,
    /// Length of the plaintext in bytes.
    pub raw_len: u32,
}

/// Builds one pack in memory.
#[derive(Debug)]
pub struct PackBuilder {
    bytes: Vec<u8>,
    entries: Vec<PackEntry>,
}

impl Default for PackBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl PackBuilder {
    /// Starts an empty pack.
    pub fn new() -> Self {
        Self::with_buffer(Vec::new())
    }

    /// Starts an empty pack in `buffer`, such as the bytes of a pack already
    /// written, whose memory is then reused instead of allocated again.
    pub fn with_buffer(mut buffer: Vec<u8>) -> Self {
        buffer.clear();
        buffer.reserve(super::PACK_TARGET_SIZE + (1 << 20));
        buffer.extend_from_slice(PACK_MAGIC);
        Self {
            bytes: buffer,
            entries: Vec::new(),
        }
    }

    /// Appends a sealed blob.
    pub fn add(&mut self, kind: BlobKind, id: [u8; 32], sealed: &[u8], raw_len: u32) {
        self.entries.push(PackEntry {
            kind,
            id,
            offset: self.bytes.len() as u32,
            len: sealed.len() as u32,
            raw_len,
        });
        self.bytes.extend_from_slice(sealed);
    }

    /// Returns the number of bytes so far.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Returns true when no blob was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Seals the header and returns the pack id, its bytes and its entries.
    pub fn finish(mut self, keys: &Keys) -> (PackId, Vec<u8>, Vec<PackEntry>) {
        let header = postcard::to_allocvec(&self.entries).expect("pack header encodes");
        let sealed = keys
            .seal(ObjectKind::PackHeader, &[0; 32], &header, 3)
            .expect("pack header seals");
        self.bytes.extend_from_slice(&sealed);
        self.bytes
            .extend_from_slice(&(sealed.len() as u32).to_le_bytes());
        let id = PackId(*blake3::hash(&self.bytes).as_bytes());
        (id, self.bytes, self.entries)
    }
}

/// Errors of pack decoding.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// The pack is structurally invalid.
    #[error("malformed pack: {0}")]
    Malformed(String),
    /// The header failed to decrypt.
    #[error("pack header does not decrypt: {0}")]
    Crypto(#[from] crate::crypto::CryptoError),
}

/// Returns the offset and length of the sealed header, from the pack's size and
/// its last four bytes.
pub fn header_location(pack_size: u64, trailer: [u8; 4]) -> Result<(u64, usize), PackError> {
    let len = u32::from_le_bytes(trailer) as u64;
    let min = PACK_MAGIC.len() as u64 + 4;
    if pack_size < min || len > pack_size - min || len as usize > MAX_HEADER_LEN {
        return Err(PackError::Malformed(format!(
            "header length {len} does not fit a pack of {pack_size} bytes"
        )));
    }
    Ok((pack_size - 4 - len, len as usize))
}

/// Decrypts and decodes a pack header, and checks that every entry lies inside
/// the blob area.
pub fn decode_header(
    keys: &Keys,
    sealed: &[u8],
    header_offset: u64,
) -> Result<Vec<PackEntry>, PackError> {
    let plain = keys.open(ObjectKind::PackHeader, &[0; 32], sealed, MAX_HEADER_LEN)?;
    decode_header_plain(&plain, header_offset)
}

/// Decodes a decrypted pack header and checks that every entry lies inside the
/// blob area, which ends at `header_offset`.
pub fn decode_header_plain(plain: &[u8], header_offset: u64) -> Result<Vec<PackEntry>, PackError> {
    let entries: Vec<PackEntry> =
        postcard::from_bytes(plain).map_err(|e| PackError::Malformed(e.to_string()))?;
    for entry in &entries {
        let end = u64::from(entry.offset) + u64::from(entry.len);
        if u64::from(entry.offset) < PACK_MAGIC.len() as u64 || end > header_offset {
            return Err(PackError::Malformed(format!(
                "blob at offset {} with length {} lies outside the blob area",
                entry.offset, entry.len
            )));
        }
    }
    Ok(entries)
}

/// Decodes a whole pack held in memory: checks the magic and returns its entries.
pub fn decode_pack(keys: &Keys, bytes: &[u8]) -> Result<Vec<PackEntry>, PackError> {
    if bytes.len() < PACK_MAGIC.len() + 4 || &bytes[..8] != PACK_MAGIC {
        return Err(PackError::Malformed("missing pack magic".into()));
    }
    let trailer: [u8; 4] = bytes[bytes.len() - 4..].try_into().expect("4-byte slice");
    let (offset, len) = header_location(bytes.len() as u64, trailer)?;
    let start = offset as usize;
    decode_header(keys, &bytes[start..start + len], offset)
}
