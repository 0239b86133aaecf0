//! Typed 32-byte identifiers, so that a chunk id cannot be passed where a pack id is expected.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

macro_rules! define_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// Returns the id as lowercase hex, 64 characters.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// Returns the first 8 hex characters, the form shown in listings.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..4])
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl FromStr for $name {
            type Err = hex::FromHexError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let mut bytes = [0u8; 32];
                hex::decode_to_slice(s, &mut bytes)?;
                Ok(Self(bytes))
            }
        }
    };
}

define_id!(
    /// Keyed BLAKE3 hash of a chunk's plaintext.
    ChunkId
);
define_id!(
    /// Keyed BLAKE3 hash of a directory tree's encoded plaintext.
    TreeId
);
define_id!(
    /// Unkeyed BLAKE3 hash of a pack file's bytes, which is also its file name.
    PackId
);
define_id!(
    /// Unkeyed BLAKE3 hash of a snapshot file's bytes, which is also its file name.
    SnapshotId
);
define_id!(
    /// Unkeyed BLAKE3 hash of an index file's bytes, which is also its file name.
    IndexId
);
