//! Who wrote a block: ed25519 keys, the signature every block carries, and the peer-id text
//! form by which people name an author.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use libp2p_identity::{PeerId, PublicKey, ed25519};

/// Bytes of an author's public key.
pub const AUTHOR_BYTES: usize = 32;
/// Bytes of a block's signature.
pub const SIGNATURE_BYTES: usize = 64;

/// BLAKE3 key-derivation context of the digest a block's author signs: it binds the block's
/// content to the topic it was written for, so a signed block cannot be replayed into another
/// topic of the same author.
const SIGNING_CONTEXT: &str = "canopy 2026-12 block signature v1";

/// An author: an ed25519 public key. Printed and parsed as a libp2p peer id, so a node's author
/// and its network identity read the same.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AuthorId([u8; AUTHOR_BYTES]);

impl AuthorId {
    /// The author whose public key is `bytes`, if they are a valid ed25519 point.
    pub fn from_bytes(bytes: [u8; AUTHOR_BYTES]) -> Result<AuthorId, AuthorError> {
        verifying_key(&bytes).ok_or(AuthorError::InvalidKey)?;
        Ok(AuthorId(bytes))
    }

    /// An author from key bytes already decompressed as a valid point.
    pub(crate) fn from_verified(bytes: [u8; AUTHOR_BYTES]) -> AuthorId {
        AuthorId(bytes)
    }

    /// The public key's bytes.
    pub fn as_bytes(&self) -> &[u8; AUTHOR_BYTES] {
        &self.0
    }

    /// The libp2p peer id of this key.
    pub fn peer_id(&self) -> PeerId {
        let key = ed25519::PublicKey::try_from_bytes(&self.0).expect("checked when the author was made");
        PeerId::from_public_key(&PublicKey::from(key))
    }

    /// The author named by `peer`, when the peer id embeds an ed25519 key (every peer id of
    /// an ed25519 identity does; hashed ids of other key types do not).
    pub fn from_peer_id(peer: &PeerId) -> Result<AuthorId, AuthorError> {
        let multihash = peer.as_ref();
        // An ed25519 peer id is the identity multihash of the protobuf-encoded public key.
        if multihash.code() != 0 {
            return Err(AuthorError::NotEd25519);
        }
        let key = PublicKey::try_decode_protobuf(multihash.digest()).map_err(|_| AuthorError::NotEd25519)?;
        let key = key.try_into_ed25519().map_err(|_| AuthorError::NotEd25519)?;
        AuthorId::from_bytes(key.to_bytes())
    }
}

impl fmt::Display for AuthorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.peer_id())
    }
}

impl fmt::Debug for AuthorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuthorId({})", self.peer_id())
    }
}

impl FromStr for AuthorId {
    type Err = AuthorError;

    fn from_str(text: &str) -> Result<AuthorId, AuthorError> {
        let peer = PeerId::from_str(text).map_err(|_| AuthorError::NotAPeerId(text.to_string()))?;
        AuthorId::from_peer_id(&peer)
    }
}

/// Why a text or bytes name no author.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthorError {
    /// The text is not a peer id.
    #[error("{0:?} is not a peer id")]
    NotAPeerId(String),
    /// The peer id is not that of an ed25519 key.
    #[error("the peer id does not embed an ed25519 public key")]
    NotEd25519,
    /// The bytes are not an ed25519 public key.
    #[error("not an ed25519 public key")]
    InvalidKey,
}

/// A secret key that signs blocks.
#[derive(Clone)]
pub struct Signer {
    key: SigningKey,
    author: AuthorId,
}

impl Signer {
    /// A signer from a 32-byte ed25519 secret key.
    pub fn from_secret(secret: [u8; 32]) -> Signer {
        let key = SigningKey::from_bytes(&secret);
        let author = AuthorId(key.verifying_key().to_bytes());
        Signer { key, author }
    }

    /// A signer with a fresh random key.
    pub fn generate() -> Signer {
        Signer::from_secret(rand::random())
    }

    /// The 32-byte secret key, to keep it.
    pub fn secret(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// The author this signer signs as.
    pub fn author(&self) -> AuthorId {
        self.author
    }

    pub(crate) fn sign(&self, digest: &[u8; 32]) -> [u8; SIGNATURE_BYTES] {
        self.key.sign(digest).to_bytes()
    }
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signer({})", self.author)
    }
}

/// The digest an author signs for a block of `topic` whose content without its signature
/// encodes to `unsigned`.
#[cfg(test)]
pub(crate) fn signing_digest(topic: &str, unsigned: &[u8]) -> [u8; 32] {
    let mut hasher = signing_hasher(topic);
    hasher.update(unsigned);
    *hasher.finalize().as_bytes()
}

/// The hasher of a block's signing digest for `topic`, to which the encoding of the block
/// without its signature is then written.
pub(crate) fn signing_hasher(topic: &str) -> blake3::Hasher {
    let mut hasher = blake3::Hasher::new_derive_key(SIGNING_CONTEXT);
    hasher.update(&(topic.len() as u64).to_be_bytes());
    hasher.update(topic.as_bytes());
    hasher
}

/// Decompressed keys each thread keeps: a key's decompression costs about a fifth of a
/// verification, and a topic's blocks come from few authors.
const KEYS_CACHED_MAX: usize = 256;

thread_local! {
    static KEYS: RefCell<HashMap<[u8; AUTHOR_BYTES], VerifyingKey>> = RefCell::new(HashMap::new());
}

/// The verifying key of the author whose public key is `bytes`, if they are a valid point.
pub(crate) fn verifying_key(bytes: &[u8; AUTHOR_BYTES]) -> Option<VerifyingKey> {
    KEYS.with(|keys| {
        let mut keys = keys.borrow_mut();
        if let Some(key) = keys.get(bytes) {
            return Some(*key);
        }
        let key = VerifyingKey::from_bytes(bytes).ok()?;
        if keys.len() >= KEYS_CACHED_MAX {
            keys.clear();
        }
        keys.insert(*bytes, key);
        Some(key)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::{Claim, verify_all};

    #[test]
    fn author_prints_as_its_peer_id_and_parses_back() {
        let signer = Signer::generate();
        let text = signer.author().to_string();
        assert!(text.starts_with("12D3KooW"), "{text}");
        assert_eq!(text.parse::<AuthorId>().unwrap(), signer.author());
        let libp2p = libp2p_identity::Keypair::ed25519_from_bytes(signer.secret()).unwrap();
        assert_eq!(libp2p.public().to_peer_id().to_string(), text);
    }

    #[test]
    fn bad_texts_name_no_author() {
        assert!(matches!("microblog".parse::<AuthorId>(), Err(AuthorError::NotAPeerId(_))));
        // A peer id hashed from a key too long to embed is not an ed25519 author.
        let hashed = PeerId::from_multihash(multihash::Multihash::wrap(0x12, &[7; 32]).unwrap()).unwrap();
        assert_eq!(AuthorId::from_peer_id(&hashed), Err(AuthorError::NotEd25519));
    }

    #[test]
    fn signatures_bind_the_topic_and_the_content() {
        let signer = Signer::generate();
        let digest = signing_digest("a", b"content");
        let signature = signer.sign(&digest);
        let other = Signer::generate();
        let claim = |signer: &Signer, digest: [u8; 32]| Claim {
            key: verifying_key(signer.author().as_bytes()).unwrap(),
            digest,
            signature: signer.sign(&digest),
        };
        let forged = |claim: Claim, digest: [u8; 32]| Claim { digest, ..claim };
        assert_eq!(verify_all(&[claim(&signer, digest)]), vec![true]);
        assert_eq!(signer.sign(&digest), signature, "signatures are deterministic");
        let claims = vec![
            claim(&signer, digest),
            forged(claim(&signer, digest), signing_digest("b", b"content")),
            claim(&other, digest),
            forged(claim(&signer, digest), signing_digest("a", b"contenT")),
            Claim { key: verifying_key(other.author().as_bytes()).unwrap(), ..claim(&signer, digest) },
        ];
        assert_eq!(verify_all(&claims), vec![true, false, true, false, false]);
        let good: Vec<Claim> = (0..64u8).map(|i| claim(&signer, signing_digest("a", &[i]))).collect();
        assert!(verify_all(&good).into_iter().all(|holds| holds));
    }
}
