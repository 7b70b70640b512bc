//! Who may write a topic. The rule is read from the topic's name, so it is fixed when the topic
//! is created and every replica derives the same rule from the same name.
//!
//! - `open`: any name of 1 to 128 characters from `A-Z a-z 0-9 . _ : -`; anyone writes.
//! - `owned`: `<owner peer id>/<name>`, the name as above; only the owner's key writes.
//! - `writers`: `<owner peer id>/writers/<name>`; the owner writes, and so do the writers the
//!   owner granted and has not revoked. Grants and revocations are operations in the topic's own
//!   DAG, so whether a writer's block is accepted depends on the block's causal past
//!   (`writers.rs`); the name alone admits only the owner.
//! - `keyed`: `keyed/<name>`; anyone writes, each author only the keys that name it: its peer id,
//!   or its peer id followed by `/` and anything. Decided by the block alone (the cluster's
//!   member list is such a topic: a member entry is written only by that member).

use std::fmt;

use canopy_dag::{AuthorId, Block};

use crate::delta::{Delta, Limits};
pub use crate::error::Refusal;
use crate::error::TopicError;
use crate::schema::TOPIC_NAME_BYTES_MAX;

/// Separates an owned topic's owner from the rest of its name.
const OWNER_SEPARATOR: char = '/';
/// Follows the owner in the name of a topic with a writer list.
const WRITERS_MARK: &str = "writers/";
/// Stands where the owner would in the name of a keyed topic.
const KEYED_MARK: &str = "keyed";

/// A topic's write rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone may write.
    Open,
    /// Only `owner` may write.
    Owned {
        /// The only author whose blocks the topic accepts.
        owner: AuthorId,
    },
    /// `owner` and the writers on the list it keeps in the topic may write.
    Writers {
        /// The author who writes and keeps the writer list.
        owner: AuthorId,
    },
    /// Anyone may write, each author only the keys naming it.
    Keyed,
}

/// The mode a topic is created with; the name then carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mode {
    /// Anyone may write.
    Open,
    /// Only the creator's key may write.
    Owned,
    /// The creator's key and the writers it grants may write.
    Writers,
    /// Anyone may write, each author only its own keys (its peer id, or its peer id and `/`).
    Keyed,
}

impl Mode {
    /// The mode's name as the interfaces spell it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Mode::Open => "open",
            Mode::Owned => "owned",
            Mode::Writers => "writers",
            Mode::Keyed => "keyed",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Mode {
    type Err = String;

    fn from_str(text: &str) -> Result<Mode, String> {
        match text {
            "open" => Ok(Mode::Open),
            "owned" => Ok(Mode::Owned),
            "writers" => Ok(Mode::Writers),
            "keyed" => Ok(Mode::Keyed),
            other => Err(format!("unknown topic mode {other:?}: use open, owned, writers or keyed")),
        }
    }
}

impl Access {
    /// The rule a topic named `name` follows; an error when the name breaks the naming rules.
    pub fn of(name: &str) -> Result<Access, TopicError> {
        let invalid = |reason: &str| TopicError::InvalidName { name: name.to_string(), reason: reason.to_string() };
        if name.is_empty() || name.len() > TOPIC_NAME_BYTES_MAX {
            return Err(invalid("use 1 to 128 bytes"));
        }
        let (owner, plain) = match name.split_once(OWNER_SEPARATOR) {
            Some((owner, plain)) => (Some(owner), plain),
            None => (None, name),
        };
        let (writers, plain) = match plain.strip_prefix(WRITERS_MARK) {
            Some(plain) if owner.is_some() => (true, plain),
            _ => (false, plain),
        };
        if plain.is_empty()
            || !plain.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
        {
            return Err(invalid(
                "a topic name is characters from A-Z a-z 0-9 . _ : -, after `<owner peer id>/` for an owned topic \
                 and `<owner peer id>/writers/` for one with a writer list",
            ));
        }
        match owner {
            None => Ok(Access::Open),
            Some(KEYED_MARK) if writers => Err(invalid("a keyed topic has no writer list")),
            Some(KEYED_MARK) => Ok(Access::Keyed),
            Some(owner) => match owner.parse::<AuthorId>() {
                Ok(owner) if writers => Ok(Access::Writers { owner }),
                Ok(owner) => Ok(Access::Owned { owner }),
                Err(error) => Err(invalid(&format!("the part before / names the owner, but {error}"))),
            },
        }
    }

    /// The name of the topic `name` created with `mode` by `creator`: `name` itself for an
    /// open topic, `<creator>/<name>` for an owned one, `<creator>/writers/<name>` for one with a
    /// writer list.
    pub fn topic_name(mode: Mode, creator: &AuthorId, name: &str) -> Result<String, TopicError> {
        let full = match mode {
            Mode::Open => name.to_string(),
            Mode::Owned => format!("{creator}{OWNER_SEPARATOR}{name}"),
            Mode::Writers => format!("{creator}{OWNER_SEPARATOR}{WRITERS_MARK}{name}"),
            Mode::Keyed => format!("{KEYED_MARK}{OWNER_SEPARATOR}{name}"),
        };
        let access = Access::of(&full)?;
        if access.mode() != mode {
            // `name` carried an owner of its own.
            return Err(TopicError::InvalidName {
                name: name.to_string(),
                reason: format!("give the plain name of a {mode} topic, without an owner"),
            });
        }
        Ok(full)
    }

    /// The topic's mode.
    pub fn mode(&self) -> Mode {
        match self {
            Access::Open => Mode::Open,
            Access::Owned { .. } => Mode::Owned,
            Access::Writers { .. } => Mode::Writers,
            Access::Keyed => Mode::Keyed,
        }
    }

    /// The topic's owner, when it has one.
    pub fn owner(&self) -> Option<AuthorId> {
        match self {
            Access::Open | Access::Keyed => None,
            Access::Owned { owner } | Access::Writers { owner } => Some(*owner),
        }
    }

    /// Whether the rule alone refuses `author`: an owned topic refuses everyone but its owner.
    /// In a topic with a writer list anyone may have been granted, so only the list decides
    /// (see `writers.rs`).
    pub fn admits(&self, author: &AuthorId) -> Result<(), Refusal> {
        match self {
            Access::Owned { owner } if owner != author => Err(Refusal::NotOwner { author: *author, owner: *owner }),
            _ => Ok(()),
        }
    }

    /// Whether the rule alone refuses `block`, decided by the block alone, so every replica
    /// decides the same. A block this admits may still be refused by a topic's writer list.
    pub fn admits_block(&self, block: &Block) -> Result<(), Refusal> {
        self.admits(&block.author())?;
        if *self == Access::Keyed {
            // A delta that does not decode is refused when it is applied, as in any topic.
            if let Ok(delta) = Delta::decode(block.payload(), &Limits::PROTOCOL) {
                let author = block.author();
                let keys = delta.adds.iter().map(|(key, _)| key).chain(delta.removes.iter().map(|(key, _)| key));
                for key in keys {
                    self.admits_key(&author, key)?;
                }
            }
        }
        Ok(())
    }

    /// Whether the rule lets `author` write `key`: in a keyed topic, only a key naming the
    /// author (its peer id, alone or followed by `/`), a document's field by its document's key;
    /// in any other, every key.
    pub fn admits_key(&self, author: &AuthorId, key: &[u8]) -> Result<(), Refusal> {
        if *self != Access::Keyed {
            return Ok(());
        }
        if let Some((document, _)) = crate::doc::parse_entry(key) {
            return self.admits_key(author, &document);
        }
        let id = author.to_string();
        let named = key.strip_prefix(id.as_bytes()).is_some_and(|rest| rest.is_empty() || rest[0] == b'/');
        if named {
            Ok(())
        } else {
            Err(Refusal::NotKeyOwner { author: *author, key: String::from_utf8_lossy(key).into_owned() })
        }
    }
}

/// Checks a topic name: 1 to 128 characters from `A-Z a-z 0-9 . _ : -`, after an owner's peer
/// id and `/` for an owned topic (see [`crate::Access`]).
pub fn validate_topic_name(name: &str) -> Result<(), TopicError> {
    Access::of(name).map(|_| ())
}

#[cfg(test)]
mod tests {
    use canopy_dag::Signer;

    use super::*;

    #[test]
    fn the_name_carries_the_rule() {
        let owner = Signer::from_secret([1; 32]).author();
        assert_eq!(Access::of("config.prod").unwrap(), Access::Open);
        let owned = Access::topic_name(Mode::Owned, &owner, "microblog").unwrap();
        assert_eq!(owned, format!("{owner}/microblog"));
        assert_eq!(Access::of(&owned).unwrap(), Access::Owned { owner });
        assert_eq!(Access::topic_name(Mode::Open, &owner, "microblog").unwrap(), "microblog");
    }

    #[test]
    fn names_that_break_the_rules_are_refused() {
        let owner = Signer::from_secret([1; 32]).author();
        for bad in ["", "a b", "x/", "/x", "not-a-peer/x", "a/b/c", &format!("{owner}/a/b"), &"x".repeat(129)] {
            assert!(Access::of(bad).is_err(), "{bad:?}");
        }
        assert!(Access::topic_name(Mode::Owned, &owner, &format!("{owner}/x")).is_err());
        assert!(Access::topic_name(Mode::Open, &owner, &format!("{owner}/x")).is_err());
    }

    #[test]
    fn only_the_owner_writes_an_owned_topic() {
        let owner = Signer::from_secret([1; 32]).author();
        let other = Signer::from_secret([2; 32]).author();
        let access = Access::Owned { owner };
        assert!(access.admits(&owner).is_ok());
        assert_eq!(access.admits(&other), Err(Refusal::NotOwner { author: other, owner }));
        assert!(Access::Open.admits(&other).is_ok());
    }

    #[test]
    fn a_writers_topic_names_its_owner_after_the_mark() {
        let owner = Signer::from_secret([1; 32]).author();
        let name = Access::topic_name(Mode::Writers, &owner, "team").unwrap();
        assert_eq!(name, format!("{owner}/writers/team"));
        assert_eq!(Access::of(&name).unwrap(), Access::Writers { owner });
        // An open topic cannot be named like the mark, and a writers topic has one name part.
        assert!(Access::of("writers/team").is_err());
        assert!(Access::of(&format!("{owner}/writers/")).is_err());
        assert!(Access::of(&format!("{owner}/writers/a/b")).is_err());
        // The rule alone admits anyone to a writers topic: the list decides.
        let other = Signer::from_secret([2; 32]).author();
        assert!(Access::Writers { owner }.admits(&other).is_ok());
    }

    #[test]
    fn a_keyed_topic_lets_each_author_write_only_its_own_keys() {
        let alice = Signer::from_secret([1; 32]).author();
        let bob = Signer::from_secret([2; 32]).author();
        let name = Access::topic_name(Mode::Keyed, &alice, "_canopy:members").unwrap();
        assert_eq!(name, "keyed/_canopy:members");
        assert_eq!(Access::of(&name).unwrap(), Access::Keyed);
        assert!(Access::of("keyed/writers/x").is_err());
        let keyed = Access::Keyed;
        assert!(keyed.admits_key(&alice, alice.to_string().as_bytes()).is_ok());
        assert!(keyed.admits_key(&alice, format!("{alice}/service").as_bytes()).is_ok());
        assert!(keyed.admits_key(&alice, bob.to_string().as_bytes()).is_err());
        assert!(keyed.admits_key(&alice, format!("{alice}x").as_bytes()).is_err());
        assert!(keyed.admits_key(&alice, b"zzz").is_err());
        assert!(Access::Open.admits_key(&alice, b"zzz").is_ok());
    }
}
