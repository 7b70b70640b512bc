//! The reserved keys of a topic (those starting with the byte 0x00): counter entries
//! ([`crate::counter`]), document entries ([`crate::doc`]) and index declarations
//! ([`crate::index`]), and the check every received
//! delta's reserved keys pass.

use canopy_dag::AuthorId;

use crate::delta::{Delta, DeltaError};

/// Checks the reserved keys a received delta touches: only counter entries, well formed, each
/// the block author's own, and document entries, well formed (see [`crate::doc`]).
pub fn check_delta(delta: &Delta, author: &AuthorId) -> Result<(), DeltaError> {
    let own = |key: &[u8]| -> Result<(), DeltaError> {
        match crate::counter::parse_entry(key) {
            Some((_, entry_author)) if entry_author == *author => Ok(()),
            Some(_) => Err(DeltaError::Invalid("a counter entry of another author".into())),
            None => Err(DeltaError::Invalid("a reserved key that is no counter or document entry".into())),
        }
    };
    for (key, value) in delta.adds.iter().filter(|(key, _)| crate::counter::is_reserved(key)) {
        if crate::doc::is_entry(key) {
            crate::doc::check_entry(key, Some(value))?;
            continue;
        }
        if crate::index::is_declaration(key) {
            crate::index::check_entry(key, Some(value))?;
            continue;
        }
        own(key)?;
        if crate::counter::decode_total(value).is_none() {
            return Err(DeltaError::Invalid("a counter total that is not 8 bytes".into()));
        }
    }
    for (key, _) in delta.removes.iter().filter(|(key, _)| crate::counter::is_reserved(key)) {
        if crate::doc::is_entry(key) {
            crate::doc::check_entry(key, None)?;
        } else if crate::index::is_declaration(key) {
            crate::index::check_entry(key, None)?;
        } else {
            own(key)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use canopy_dag::Signer;

    use super::*;
    use crate::counter::{ORIGIN_BYTES, encode_total, entry_key};

    #[test]
    fn received_deltas_touch_only_their_authors_entries() {
        let author = Signer::from_secret([7; 32]).author();
        let other = Signer::from_secret([8; 32]).author();
        let origin = [1; ORIGIN_BYTES];
        let mut delta = Delta::default();
        delta.adds.push((entry_key(b"likes", &author, &origin), encode_total(-3).to_vec()));
        assert!(check_delta(&delta, &author).is_ok());
        assert!(check_delta(&delta, &other).is_err());
        delta.adds[0].1 = vec![1, 2];
        assert!(check_delta(&delta, &author).is_err());
        let mut junk = Delta::default();
        junk.adds.push((vec![0x00, b'z'], vec![]));
        assert!(check_delta(&junk, &author).is_err());
        let mut remove = Delta::default();
        let id = canopy_dag::Block::build("t", vec![], 1, vec![], &Signer::from_secret([9; 32])).unwrap().cid();
        remove.removes.push((entry_key(b"likes", &other, &origin), id));
        assert!(check_delta(&remove, &author).is_err());
    }
}
