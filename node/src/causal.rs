//! Causal tokens and acknowledgement levels: what a client carries from a write or a read to its
//! next read, and how many copies a write waits for.
//!
//! A token names, for each scope it covers (a topic, or a partition of a table), heads a copy
//! must hold (have applied, with everything below them) before it may serve a read given that
//! token. Since a replica applies a block only once every block below it is applied, holding a
//! head means holding every write it covers: a read with the token of a write sees that write,
//! and a read with the token of an earlier read sees at least what that read saw, whichever
//! node serves it and whatever its clock says.
//!
//! As text a token is its scopes joined by `.`, each `<scope>~<cid>[~<cid>...]`, where the scope
//! is `t` for a topic or a partition number: every character is one a URL query carries as is.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use canopy_crdt::{Cid, Topic};
use serde::{Deserialize, Serialize};

/// Most scopes one token covers: adding another drops the lowest-numbered partition's.
pub const TOKEN_SCOPES_MAX: usize = 64;
/// Most heads a token names for one scope: a copy with more heads names this many of them.
pub const TOKEN_HEADS_MAX: usize = 16;
/// Longest token accepted, in bytes.
pub const TOKEN_BYTES_MAX: usize = 16 << 10;
/// The HTTP header every read and write reply carries its causal token in.
pub const CAUSAL_HEADER: &str = "canopy-causal-token";
/// How soon a copy waiting to hold a token's heads looks again, at first; each look doubles it,
/// up to [`HOLDS_POLL_MAX`]. A write usually reaches the other copies within a millisecond.
const HOLDS_POLL_FIRST: Duration = Duration::from_micros(100);
/// The longest a copy waiting to hold a token's heads goes between two looks.
const HOLDS_POLL_MAX: Duration = Duration::from_millis(2);

/// What a token's heads are heads of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// A topic (read and written by name, so a token of one topic says nothing of another).
    Topic,
    /// A partition of a table.
    Partition(u32),
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Topic => f.write_str("t"),
            Scope::Partition(partition) => write!(f, "{partition}"),
        }
    }
}

/// Heads, per scope, that a copy serving a read must hold. See the module documentation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CausalToken {
    scopes: BTreeMap<Scope, BTreeSet<Cid>>,
}

impl CausalToken {
    /// A token naming `heads` (at most [`TOKEN_HEADS_MAX`] of them) in `scope`.
    pub fn of(scope: Scope, heads: impl IntoIterator<Item = Cid>) -> CausalToken {
        CausalToken::default().with(scope, heads)
    }

    /// The token of what `topic` holds now, in `scope`.
    pub fn held_by(scope: Scope, topic: &Topic) -> CausalToken {
        CausalToken::of(scope, topic.heads().into_iter().map(|head| head.cid))
    }

    /// This token with `scope`'s heads replaced by `heads`: a read passes on the token it was
    /// given with what it read at in its own scope. Past [`TOKEN_SCOPES_MAX`] scopes the
    /// lowest other partition is dropped.
    pub fn with(mut self, scope: Scope, heads: impl IntoIterator<Item = Cid>) -> CausalToken {
        let heads: BTreeSet<Cid> = heads.into_iter().take(TOKEN_HEADS_MAX).collect();
        if heads.is_empty() {
            self.scopes.remove(&scope);
            return self;
        }
        self.scopes.insert(scope, heads);
        while self.scopes.len() > TOKEN_SCOPES_MAX {
            let lowest = *self.scopes.keys().find(|other| **other != scope).expect("more than one scope");
            self.scopes.remove(&lowest);
        }
        self
    }

    /// The heads this token names in `scope` (none when it says nothing of it).
    pub fn heads(&self, scope: Scope) -> Vec<Cid> {
        self.scopes.get(&scope).map(|heads| heads.iter().copied().collect()).unwrap_or_default()
    }

    /// The scopes this token covers.
    pub fn scopes(&self) -> impl Iterator<Item = Scope> + '_ {
        self.scopes.keys().copied()
    }

    /// Whether the token names nothing.
    pub fn is_empty(&self) -> bool {
        self.scopes.is_empty()
    }
}

impl fmt::Display for CausalToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, (scope, heads)) in self.scopes.iter().enumerate() {
            if index > 0 {
                f.write_str(".")?;
            }
            write!(f, "{scope}")?;
            for head in heads {
                write!(f, "~{head}")?;
            }
        }
        Ok(())
    }
}

impl FromStr for CausalToken {
    type Err = String;

    fn from_str(text: &str) -> Result<CausalToken, String> {
        if text.len() > TOKEN_BYTES_MAX {
            return Err(format!("a causal token is at most {TOKEN_BYTES_MAX} bytes"));
        }
        let mut token = CausalToken::default();
        for group in text.split('.').filter(|group| !group.is_empty()) {
            let mut parts = group.split('~');
            let scope = match parts.next().unwrap_or_default() {
                "t" => Scope::Topic,
                number => Scope::Partition(
                    number
                        .parse()
                        .map_err(|_| format!("{number:?} is not a causal token's scope (t or a partition)"))?,
                ),
            };
            let mut heads = BTreeSet::new();
            for cid in parts {
                heads.insert(cid.parse::<Cid>().map_err(|e| format!("{cid:?} in a causal token is not a CID: {e}"))?);
            }
            if heads.is_empty() || heads.len() > TOKEN_HEADS_MAX {
                return Err(format!("a causal token names 1 to {TOKEN_HEADS_MAX} heads per scope"));
            }
            if token.scopes.insert(scope, heads).is_some() {
                return Err(format!("a causal token names scope {scope} twice"));
            }
        }
        if token.scopes.len() > TOKEN_SCOPES_MAX {
            return Err(format!("a causal token covers at most {TOKEN_SCOPES_MAX} scopes"));
        }
        Ok(token)
    }
}

/// Whether `topic` holds every one of `heads` (has applied it, and so everything below it).
pub fn holds(topic: &Topic, heads: &[Cid]) -> bool {
    heads.iter().all(|cid| topic.contains(cid).unwrap_or(false))
}

/// Waits, at most `wait`, until `topic` holds every one of `heads`; whether it does. It looks
/// on a blocking thread, sooner than the async timer's millisecond allows.
pub async fn wait_holds(topic: &Topic, heads: &[Cid], wait: Duration) -> bool {
    let (copy, wanted) = (topic.clone(), heads.to_vec());
    tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        let mut pause = HOLDS_POLL_FIRST;
        loop {
            if holds(&copy, &wanted) {
                return true;
            }
            if started.elapsed() >= wait {
                return false;
            }
            std::thread::sleep(pause.min(wait.saturating_sub(started.elapsed())));
            pause = (pause * 2).min(HOLDS_POLL_MAX);
        }
    })
    .await
    .unwrap_or(false)
}

/// How many copies a write waits for before it is acknowledged: a table's partition owners,
/// or a topic's peers whose announced heads include the write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Ack {
    /// This many copies (at least 1).
    Copies(u32),
    /// Every owner of the partition (on a topic: every peer it is replicated with now).
    All,
}

impl Default for Ack {
    fn default() -> Ack {
        Ack::Copies(1)
    }
}

impl fmt::Display for Ack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ack::Copies(copies) => write!(f, "{copies}"),
            Ack::All => f.write_str("all"),
        }
    }
}

impl FromStr for Ack {
    type Err = String;

    fn from_str(text: &str) -> Result<Ack, String> {
        match text.trim() {
            "all" => Ok(Ack::All),
            number => match number.parse::<u32>() {
                Ok(copies) if copies >= 1 => Ok(Ack::Copies(copies)),
                _ => Err(format!("ack {text:?} is not a number of copies (1 or more) or `all`")),
            },
        }
    }
}

impl Serialize for Ack {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ack {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Ack, D::Error> {
        /// An ack level is written as a number or as `"all"`, in TOML as in JSON.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Number(u32),
            Text(String),
        }
        match Written::deserialize(deserializer)? {
            Written::Number(copies) => Ack::from_str(&copies.to_string()),
            Written::Text(text) => Ack::from_str(&text),
        }
        .map_err(serde::de::Error::custom)
    }
}

impl Ack {
    /// The copies this level asks for when `owners` copies are placed.
    pub fn copies(self, owners: usize) -> usize {
        match self {
            Ack::Copies(copies) => copies as usize,
            Ack::All => owners.max(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CIDv1 of raw bytes whose BLAKE3 digest is `n` repeated.
    fn cid(n: u8) -> Cid {
        let mut bytes = vec![0x01, 0x55, 0x1e, 0x20];
        bytes.extend([n; 32]);
        Cid::try_from(bytes.as_slice()).unwrap()
    }

    #[test]
    fn a_token_reads_back_as_written_and_refuses_what_is_not_one() {
        let token = CausalToken::of(Scope::Partition(3), [cid(1), cid(2)]).with(Scope::Topic, [cid(3)]);
        let text = token.to_string();
        assert!(text.chars().all(|c| c.is_ascii_alphanumeric() || c == '~' || c == '.'), "{text}");
        assert_eq!(text.parse::<CausalToken>().unwrap(), token);
        assert_eq!(token.heads(Scope::Partition(3)).len(), 2);
        assert!(token.heads(Scope::Partition(4)).is_empty());
        assert_eq!("".parse::<CausalToken>().unwrap(), CausalToken::default());
        for bad in ["3", "x~bafy", "3~notacid", "3~", &format!("1~{}.1~{}", cid(1), cid(2))] {
            assert!(bad.parse::<CausalToken>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_token_stays_bounded_and_keeps_the_scope_just_read() {
        let mut token = CausalToken::default();
        for partition in 0..(TOKEN_SCOPES_MAX as u32 + 10) {
            token = token.with(Scope::Partition(partition), [cid(partition as u8)]);
        }
        assert_eq!(token.scopes().count(), TOKEN_SCOPES_MAX);
        assert!(!token.heads(Scope::Partition(TOKEN_SCOPES_MAX as u32 + 9)).is_empty());
        let many = CausalToken::of(Scope::Topic, (0..40).map(cid));
        assert_eq!(many.heads(Scope::Topic).len(), TOKEN_HEADS_MAX);
    }

    #[test]
    fn ack_levels_read_as_numbers_or_all() {
        assert_eq!("2".parse::<Ack>(), Ok(Ack::Copies(2)));
        assert_eq!("all".parse::<Ack>(), Ok(Ack::All));
        assert!("0".parse::<Ack>().is_err());
        assert!("most".parse::<Ack>().is_err());
        assert_eq!(serde_json::from_str::<Ack>("3").unwrap(), Ack::Copies(3));
        assert_eq!(serde_json::from_str::<Ack>("\"all\"").unwrap(), Ack::All);
        assert_eq!(Ack::All.copies(3), 3);
        assert_eq!(Ack::Copies(2).copies(3), 2);
    }
}
