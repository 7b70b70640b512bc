//! Who may call the HTTP API.
//!
//! A caller holds an API token, or is a member of the cluster proving its own key:
//! - **API tokens** are read from a tokens file (`--tokens`), which holds each token's name,
//!   role, optional name prefixes and the BLAKE3 hash of its secret, never the secret itself.
//!   The file is read again on `SIGHUP`, so a token is revoked by deleting its entry. A token's
//!   role is `read`, `write` (includes read) or `admin` (includes both); a token limited to
//!   prefixes reaches only routes naming a topic or table that starts with one of them.
//! - **Member proofs** are signatures with a member's libp2p identity key over the request
//!   (method, path and query, the forwarding headers, a timestamp, a nonce and the body's hash).
//!   Only the table routes a member forwards take them; a proof from a peer that is not a current
//!   member, an expired one or a replayed one counts for nothing, and the forwarding headers of a
//!   request without a valid proof are dropped.
//! - A node with no tokens serves everyone (it refuses to start that way on a non-loopback
//!   address unless told `--insecure-open-api`).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as BASE64, URL_SAFE_NO_PAD};
use canopy_transport::{Keypair, PeerId, PublicKey};
use serde::{Deserialize, Serialize};

/// The text every token's secret starts with, so a leaked one is recognised by scanners.
pub const TOKEN_PREFIX: &str = "canopy_";
/// The header carrying a member's proof on a request it forwards.
pub const MEMBER_PROOF_HEADER: &str = "canopy-member-proof";
/// Why a member proof does not hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProofError {
    /// Signed by the member it names, but dated `off_ms` from this node's clock, more than the
    /// window allows: the two members' clocks disagree.
    Clock {
        /// The member whose proof it is.
        peer: PeerId,
        /// How far its date is from this node's clock.
        off_ms: u64,
    },
    /// Malformed, a signature that does not match, or a proof seen before.
    Invalid(String),
}

impl std::fmt::Display for ProofError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProofError::Clock { peer, off_ms } => write!(
                f,
                "member {peer}'s proof is dated {off_ms} ms from this node's clock (at most {PROOF_WINDOW_MS}): \
                 the members' clocks disagree; keep them in step (NTP)"
            ),
            ProofError::Invalid(reason) => f.write_str(reason),
        }
    }
}

/// How far a proof's timestamp may be from the receiver's clock, in milliseconds.
const PROOF_WINDOW_MS: u64 = 30_000;
/// Most proofs remembered against replay; a proof that would not fit is not accepted.
const PROOFS_REMEMBERED_MAX: usize = 65_536;
/// Most entries a tokens file may hold.
const TOKENS_MAX: usize = 10_000;
/// Most prefixes one token may carry.
const PREFIXES_MAX: usize = 64;

/// What a caller may do. Each role includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read keys, listings, heads, status and metrics.
    Read,
    /// Also write keys, subscribe topics and grant writers.
    Write,
    /// Also the operations routes (`/v1/admin/...`), compaction, unsubscribing and tables.
    Admin,
}

impl Role {
    /// The role's name as files and flags spell it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> Result<Role, String> {
        match text {
            "read" => Ok(Role::Read),
            "write" => Ok(Role::Write),
            "admin" => Ok(Role::Admin),
            other => Err(format!("unknown role {other:?}: use read, write or admin")),
        }
    }
}

/// A failure to read or change a tokens file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokensError {
    /// The file could not be read or written.
    #[error("tokens file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file's contents are not a valid list of tokens.
    #[error("tokens file {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// One token as the file stores it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// A name for people (who holds it); never used to authenticate.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// When not empty, the only topic and table names it reaches are those starting with one
    /// of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefixes: Vec<String>,
    /// `blake3:<hex>` of the secret.
    pub hash: String,
}

#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    token: Vec<TokenEntry>,
}

/// The tokens a node accepts, as loaded from its tokens file.
#[derive(Debug)]
pub struct Tokens {
    entries: Vec<(blake3::Hash, TokenEntry)>,
}

/// Who a request comes from, once authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// Anyone, on a node without tokens.
    Anyone,
    /// The holder of the named token.
    Token {
        /// The token's name.
        name: String,
        /// Its role.
        role: Role,
        /// Its prefixes (empty: every name).
        prefixes: Vec<String>,
    },
    /// A member forwarding a request it took from its own caller.
    Member(PeerId),
}

impl Tokens {
    /// Reads `path`. A missing file, a syntax error, an unknown role or a malformed hash is an
    /// error naming the file: a node never runs with half its tokens.
    pub fn load(path: &Path) -> Result<Tokens, TokensError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| TokensError::Io { path: path.to_path_buf(), source })?;
        let invalid = |message: String| TokensError::Invalid { path: path.to_path_buf(), message };
        let file: TokensFile = toml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        if file.token.len() > TOKENS_MAX {
            return Err(invalid(format!("{} tokens; at most {TOKENS_MAX}", file.token.len())));
        }
        let mut entries = Vec::with_capacity(file.token.len());
        for entry in file.token {
            let hash = parse_hash(&entry.hash)
                .ok_or_else(|| invalid(format!("token {:?}: hash must be blake3:<64 hex digits>", entry.name)))?;
            if entry.prefixes.len() > PREFIXES_MAX || entry.prefixes.iter().any(String::is_empty) {
                return Err(invalid(format!(
                    "token {:?}: give at most {PREFIXES_MAX} prefixes, none empty (leave prefixes out for every name)",
                    entry.name
                )));
            }
            entries.push((hash, entry));
        }
        Ok(Tokens { entries })
    }

    /// How many tokens there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none (a node then refuses every caller but the open routes).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The caller holding `secret`, if it is one of the tokens. Every entry is compared, each in
    /// constant time, so the time taken says nothing about which entry came close.
    pub fn caller(&self, secret: &str) -> Option<Caller> {
        let presented = blake3::hash(secret.as_bytes());
        let mut found = None;
        for (hash, entry) in &self.entries {
            // `blake3::Hash` compares in constant time.
            if *hash == presented && found.is_none() {
                found = Some(entry);
            }
        }
        found.map(|entry| Caller::Token {
            name: entry.name.clone(),
            role: entry.role,
            prefixes: entry.prefixes.clone(),
        })
    }
}

fn parse_hash(text: &str) -> Option<blake3::Hash> {
    blake3::Hash::from_hex(text.strip_prefix("blake3:")?).ok()
}

/// A new token: its secret (shown once) and the entry that stores its hash.
pub fn new_token(name: &str, role: Role, prefixes: Vec<String>) -> (String, TokenEntry) {
    let bytes: [u8; 32] = rand::random();
    let secret = format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
    let hash = format!("blake3:{}", blake3::hash(secret.as_bytes()).to_hex());
    (secret, TokenEntry { name: name.to_string(), role, prefixes, hash })
}

/// Adds `entry` to the tokens file at `path` (created readable by its owner only), refusing a
/// second token of the same name.
pub fn append_token(path: &Path, entry: TokenEntry) -> Result<(), TokensError> {
    let io = |source| TokensError::Io { path: path.to_path_buf(), source };
    let mut file: TokensFile = match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text)
            .map_err(|e| TokensError::Invalid { path: path.to_path_buf(), message: e.to_string() })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => TokensFile::default(),
        Err(e) => return Err(io(e)),
    };
    if file.token.iter().any(|existing| existing.name == entry.name) {
        return Err(TokensError::Invalid {
            path: path.to_path_buf(),
            message: format!("a token named {:?} exists already: remove it first or pick another name", entry.name),
        });
    }
    file.token.push(entry);
    let text = toml::to_string(&file)
        .map_err(|e| TokensError::Invalid { path: path.to_path_buf(), message: e.to_string() })?;
    crate::files::write_atomically(path, text.as_bytes(), true).map_err(io)
}

/// Whether `name` (a topic or table) is reached by a token limited to `prefixes`.
pub fn reaches(prefixes: &[String], name: &str) -> bool {
    prefixes.is_empty() || prefixes.iter().any(|prefix| name.starts_with(prefix.as_str()))
}

/// The node's authentication state: its tokens (reloaded on demand), and the proofs members
/// sent lately.
pub(crate) struct Guard {
    path: Option<PathBuf>,
    tokens: RwLock<Option<Arc<Tokens>>>,
    identity: Keypair,
    seen: Mutex<HashMap<[u8; 16], u64>>,
}

impl Guard {
    /// Loads the tokens file, if the node has one.
    pub(crate) fn load(path: Option<&Path>, identity: Keypair) -> Result<Guard, TokensError> {
        let tokens = path.map(Tokens::load).transpose()?.map(Arc::new);
        Ok(Guard {
            path: path.map(Path::to_path_buf),
            tokens: RwLock::new(tokens),
            identity,
            seen: Mutex::new(HashMap::new()),
        })
    }

    /// The tokens in force; `None` when the node has no tokens file.
    pub(crate) fn tokens(&self) -> Option<Arc<Tokens>> {
        self.tokens.read().expect("tokens lock").clone()
    }

    /// Reads the tokens file again. On an error the tokens in force stay.
    pub(crate) fn reload(&self) -> Result<usize, TokensError> {
        let Some(path) = &self.path else { return Ok(0) };
        let tokens = Tokens::load(path)?;
        let count = tokens.len();
        *self.tokens.write().expect("tokens lock") = Some(Arc::new(tokens));
        Ok(count)
    }

    /// The proof header for a request this node forwards.
    pub(crate) fn prove(&self, request: &ProvenRequest<'_>, now_ms: u64) -> String {
        prove(&self.identity, request, now_ms)
    }

    /// The member that made `header` for `request`, when the proof holds: its signature checks
    /// against the peer it names, its time is near, and it was not seen before. Whether that
    /// peer is a member is for the caller to check.
    pub(crate) fn verify(&self, header: &str, request: &ProvenRequest<'_>, now_ms: u64) -> Result<PeerId, ProofError> {
        let (peer, at, nonce) = self.check_signature(header, request).map_err(ProofError::Invalid)?;
        // Judged once the signature holds: then the proof is the member's, and only its date is
        // wrong, which says the two clocks disagree.
        let off_ms = at.abs_diff(now_ms);
        if off_ms > PROOF_WINDOW_MS {
            return Err(ProofError::Clock { peer, off_ms });
        }
        let mut seen = self.seen.lock().expect("proofs lock");
        // Expired proofs are swept only when the map is full, not on every request: a nonce
        // seen again within its window is refused either way, and an expired one fails the time
        // check above before it reaches the map.
        if seen.len() >= PROOFS_REMEMBERED_MAX {
            seen.retain(|_, expires| *expires > now_ms);
        }
        if seen.len() >= PROOFS_REMEMBERED_MAX {
            return Err(ProofError::Invalid("too many proofs in the window to remember one more".into()));
        }
        if seen.insert(nonce, at + PROOF_WINDOW_MS + 1).is_some() {
            return Err(ProofError::Invalid("the proof was used before".into()));
        }
        Ok(peer)
    }

    /// The peer, time and nonce of `header` when its signature over `request` holds.
    fn check_signature(&self, header: &str, request: &ProvenRequest<'_>) -> Result<(PeerId, u64, [u8; 16]), String> {
        let mut parts = header.split(' ');
        let (Some(peer), Some(at), Some(nonce), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("a member proof is `<peer id> <ms> <nonce> <signature>`".into());
        };
        let peer: PeerId = peer.parse().map_err(|_| "the proof's peer id does not parse".to_string())?;
        let at: u64 = at.parse().map_err(|_| "the proof's time is not a number".to_string())?;
        let nonce: [u8; 16] = URL_SAFE_NO_PAD
            .decode(nonce)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(|| "the proof's nonce is not 16 bytes of base64".to_string())?;
        let signature = BASE64.decode(signature).map_err(|_| "the proof's signature is not base64".to_string())?;
        let key = public_key(&peer).ok_or_else(|| "the proof's peer id does not carry its key".to_string())?;
        if !key.verify(&request.message(at, &nonce), &signature) {
            return Err("the proof's signature does not match the request".into());
        }
        Ok((peer, at, nonce))
    }
}

/// The [`MEMBER_PROOF_HEADER`] value proving that the holder of `identity` (a member's libp2p
/// key) sends `request` at `now_ms`.
pub fn prove(identity: &Keypair, request: &ProvenRequest<'_>, now_ms: u64) -> String {
    let nonce: [u8; 16] = rand::random();
    let message = request.message(now_ms, &nonce);
    let signature = identity.sign(&message).expect("an ed25519 key signs anything");
    format!(
        "{} {now_ms} {} {}",
        identity.public().to_peer_id(),
        URL_SAFE_NO_PAD.encode(nonce),
        BASE64.encode(signature)
    )
}

/// Milliseconds since the Unix epoch by this machine's clock (proofs carry such times).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The public key an ed25519 peer id carries inline.
fn public_key(peer: &PeerId) -> Option<PublicKey> {
    let multihash = peer.as_ref();
    (multihash.code() == 0).then(|| PublicKey::try_decode_protobuf(multihash.digest()).ok()).flatten()
}

/// The parts of a request a member proof covers.
pub struct ProvenRequest<'a> {
    /// `GET`, `PUT`, ...
    pub method: &'a str,
    /// The path and query as sent.
    pub path_and_query: &'a str,
    /// The forwarding headers' values, in a fixed order (`canopy-forwarded`, `canopy-proxied`),
    /// empty when absent.
    pub forwarding: [&'a str; 2],
    /// The body.
    pub body: &'a [u8],
}

impl ProvenRequest<'_> {
    fn message(&self, at_ms: u64, nonce: &[u8; 16]) -> Vec<u8> {
        let body = blake3::hash(self.body);
        format!(
            "canopy member proof v1\n{}\n{}\n{}\n{}\n{at_ms}\n{}\n{}",
            self.method,
            self.path_and_query,
            self.forwarding[0],
            self.forwarding[1],
            URL_SAFE_NO_PAD.encode(nonce),
            body.to_hex()
        )
        .into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request<'a>(body: &'a [u8], path: &'a str) -> ProvenRequest<'a> {
        ProvenRequest { method: "PUT", path_and_query: path, forwarding: ["1", ""], body }
    }

    #[test]
    fn a_token_is_found_by_its_secret_and_stored_only_as_a_hash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        let (secret, entry) = new_token("alice", Role::Write, vec!["alice.".into()]);
        append_token(&path, entry).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&secret) && text.contains("blake3:"), "{text}");
        let tokens = Tokens::load(&path).unwrap();
        assert_eq!(
            tokens.caller(&secret),
            Some(Caller::Token { name: "alice".into(), role: Role::Write, prefixes: vec!["alice.".into()] })
        );
        assert_eq!(tokens.caller("canopy_wrong"), None);
        let (_, again) = new_token("alice", Role::Read, vec![]);
        assert!(append_token(&path, again).unwrap_err().to_string().contains("exists already"));
    }

    #[test]
    fn a_bad_tokens_file_is_refused_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        let hash = format!("blake3:{}", blake3::hash(b"x").to_hex());
        for bad in [
            format!("[[token]]\nname = \"a\"\nrole = \"root\"\nhash = \"{hash}\"\n"),
            "[[token]]\nname = \"a\"\nrole = \"read\"\nhash = \"sha1:00\"\n".to_string(),
            format!("[[token]]\nname = \"a\"\nrole = \"read\"\nprefixes = [\"\"]\nhash = \"{hash}\"\n"),
            "token = 3".to_string(),
        ] {
            std::fs::write(&path, &bad).unwrap();
            assert!(Tokens::load(&path).is_err(), "{bad}");
        }
        assert!(Tokens::load(&dir.path().join("absent")).is_err());
    }

    #[test]
    fn prefixes_limit_names() {
        assert!(reaches(&[], "anything"));
        let prefixes = vec!["alice.".to_string(), "shared".to_string()];
        assert!(reaches(&prefixes, "alice.notes") && reaches(&prefixes, "shared"));
        assert!(!reaches(&prefixes, "bob.notes"));
    }

    #[test]
    fn a_member_proof_holds_once_for_its_own_request() {
        let guard = Guard::load(None, Keypair::generate_ed25519()).unwrap();
        let me = guard.identity.public().to_peer_id();
        let now = 1_000_000;
        let header = guard.prove(&request(b"value", "/v1/tables/t/kv/k"), now);
        assert_eq!(guard.verify(&header, &request(b"value", "/v1/tables/t/kv/k"), now + 5), Ok(me));
        // Replayed, it fails.
        assert!(
            guard
                .verify(&header, &request(b"value", "/v1/tables/t/kv/k"), now + 6)
                .unwrap_err()
                .to_string()
                .contains("before")
        );
        // Another body, path, or a time out of the window fails.
        let header = guard.prove(&request(b"value", "/v1/tables/t/kv/k"), now);
        assert!(guard.verify(&header, &request(b"other", "/v1/tables/t/kv/k"), now).is_err());
        assert!(guard.verify(&header, &request(b"value", "/v1/tables/t/kv/j"), now).is_err());
        let late = guard.verify(&header, &request(b"value", "/v1/tables/t/kv/k"), now + PROOF_WINDOW_MS + 1);
        assert!(matches!(late, Err(ProofError::Clock { off_ms, .. }) if off_ms == PROOF_WINDOW_MS + 1), "{late:?}");
        // Another key signing in this member's name fails.
        let other = Guard::load(None, Keypair::generate_ed25519()).unwrap();
        let forged = other.prove(&request(b"value", "/v1/tables/t/kv/k"), now);
        let forged = forged.replacen(&other.identity.public().to_peer_id().to_string(), &me.to_string(), 1);
        assert!(guard.verify(&forged, &request(b"value", "/v1/tables/t/kv/k"), now).is_err());
    }
}
