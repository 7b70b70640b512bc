//! Who may write a topic. The rule is read from the topic's name, so it is fixed when the topic
//! is created and every replica derives the same rule from the same name.
//!
//! - `open`: any name of 1 to 128 characters from `A-Z a-z 0-9 . _ : -`; anyone writes.
//! - `owned`: `<owner peer id>/<name>`, the name as above; only the owner's key writes.

use std::fmt;

use canopy_dag::{AuthorId, Block};

use crate::error::TopicError;
use crate::schema::TOPIC_NAME_BYTES_MAX;

/// Separates an owned topic's owner from the rest of its name.
const OWNER_SEPARATOR: char = '/';

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
}

/// The mode a topic is created with; the name then carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mode {
    /// Anyone may write.
    Open,
    /// Only the creator's key may write.
    Owned,
}

impl Mode {
    /// The mode's name as the interfaces spell it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Mode::Open => "open",
            Mode::Owned => "owned",
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
            other => Err(format!("unknown topic mode {other:?}: use open or owned")),
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
        if plain.is_empty()
            || !plain.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
        {
            return Err(invalid(
                "a topic name is characters from A-Z a-z 0-9 . _ : -, after an owner's peer id and / for an owned topic",
            ));
        }
        match owner {
            None => Ok(Access::Open),
            Some(owner) => match owner.parse::<AuthorId>() {
                Ok(owner) => Ok(Access::Owned { owner }),
                Err(error) => Err(invalid(&format!("the part before / names the owner, but {error}"))),
            },
        }
    }

    /// The name of the topic `name` created with `mode` by `creator`: `name` itself for an
    /// open topic, `<creator>/<name>` for an owned one.
    pub fn topic_name(mode: Mode, creator: &AuthorId, name: &str) -> Result<String, TopicError> {
        let full = match mode {
            Mode::Open => name.to_string(),
            Mode::Owned => format!("{creator}{OWNER_SEPARATOR}{name}"),
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
        }
    }

    /// The topic's owner, when it has one.
    pub fn owner(&self) -> Option<AuthorId> {
        match self {
            Access::Open => None,
            Access::Owned { owner } => Some(*owner),
        }
    }

    /// Whether `author` may write the topic; the refusal names the rule.
    pub fn admits(&self, author: &AuthorId) -> Result<(), Refusal> {
        match self {
            Access::Open => Ok(()),
            Access::Owned { owner } if owner == author => Ok(()),
            Access::Owned { owner } => Err(Refusal { author: *author, owner: *owner }),
        }
    }

    /// Whether `block` may be applied to the topic: its author may write it. Decided by the
    /// block alone, so every replica decides the same.
    pub fn admits_block(&self, block: &Block) -> Result<(), Refusal> {
        self.admits(&block.author())
    }
}

/// Why an author may not write a topic.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("author {author} may not write this topic: it is owned by {owner}, and only its owner writes it")]
pub struct Refusal {
    /// Who tried to write.
    pub author: AuthorId,
    /// The topic's owner.
    pub owner: AuthorId,
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
        assert_eq!(access.admits(&other), Err(Refusal { author: other, owner }));
        assert!(Access::Open.admits(&other).is_ok());
    }
}
