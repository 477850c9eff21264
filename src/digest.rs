//! Digests: how ids too long or too odd for a key or a name are shortened.

use sha2::{Digest, Sha256};

/// SHA-256 of `bytes` as lowercase hex: the one way ids too long or too odd
/// for a key are shortened.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
