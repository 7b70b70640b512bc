//! Signature verification in batches.
//!
//! A claim holds when ed25519's cofactored equation `[8](s·B) = [8](R + k·A)` holds, with
//! `k = SHA-512(R ‖ A ‖ digest)`. A batch checks the random linear combination
//! `[8](Σ zᵢ·Rᵢ + Σ (zᵢ·kᵢ)·Aᵢ − (Σ zᵢ·sᵢ)·B) = 0` with a fresh 128-bit `zᵢ` per claim. Because
//! the cofactor clears every small-order part, the sum vanishes only when each claim's own
//! equation does (but with probability about 2⁻¹²⁷), so a claim's verdict never depends on the
//! batch it fell in, and every replica accepts the same signatures whatever batches it forms.
//! Without the cofactor, a signature crafted with a small-order component would hold or fail
//! depending on its `zᵢ`, that is on its batch.
//!
//! The claims of one author share their key's term: `Σ (zᵢ·kᵢ)·A` is one full-width point
//! multiplication however many of the batch's blocks that author wrote, where a term per claim
//! costs about twice what the claim's 128-bit `zᵢ·Rᵢ` term costs. A deep history written by one
//! node is the case that matters, and there each block is a claim.

use std::collections::{HashMap, HashSet, VecDeque};
use std::iter::once;
use std::sync::{LazyLock, Mutex};

use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use ed25519_dalek::VerifyingKey;
use rand::Rng;
use sha2::{Digest, Sha512};

use crate::author::{AUTHOR_BYTES, SIGNATURE_BYTES};

/// A signature to check: the author's key, the digest it signed, the signature.
pub(crate) struct Claim {
    pub key: VerifyingKey,
    pub digest: [u8; 32],
    pub signature: [u8; SIGNATURE_BYTES],
}

/// Which of `claims` hold. A claim found to hold before (a block checked by the gossip validator
/// and then again by the replicator, or fetched twice) is not checked again; the others are
/// checked in batches as [`verify_unremembered`] does, and those that hold are remembered.
pub(crate) fn verify_all(claims: &[Claim]) -> Vec<bool> {
    let fingerprints: Vec<[u8; 32]> = claims.iter().map(Claim::fingerprint).collect();
    let known: Vec<bool> = {
        let held = HELD.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        fingerprints.iter().map(|fingerprint| held.set.contains(fingerprint)).collect()
    };
    let unknown: Vec<&Claim> =
        claims.iter().zip(&known).filter(|(_, known)| !**known).map(|(claim, _)| claim).collect();
    let mut verdicts = verify_unremembered(&unknown).into_iter();
    let holds: Vec<bool> =
        known.iter().map(|&known| known || verdicts.next().expect("one verdict per claim")).collect();
    let mut held = HELD.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    for ((fingerprint, known), holds) in fingerprints.into_iter().zip(known).zip(&holds) {
        if *holds && !known {
            held.remember(fingerprint);
        }
    }
    holds
}

/// Claims found to hold, most recent [`HELD_MAX`], by fingerprint. A claim's verdict depends on
/// its key, digest and signature alone, so one that held holds wherever it comes from again.
static HELD: LazyLock<Mutex<Held>> = LazyLock::new(Mutex::default);

/// Claims remembered: a few announcements' worth of blocks, about 1 MiB.
const HELD_MAX: usize = 16_384;

/// The claims [`HELD`] remembers.
#[derive(Default)]
struct Held {
    set: HashSet<[u8; 32]>,
    order: VecDeque<[u8; 32]>,
}

impl Held {
    fn remember(&mut self, fingerprint: [u8; 32]) {
        if self.set.insert(fingerprint) {
            self.order.push_back(fingerprint);
        }
        while self.order.len() > HELD_MAX {
            if let Some(oldest) = self.order.pop_front() {
                self.set.remove(&oldest);
            }
        }
    }
}

impl Claim {
    /// What identifies the claim: a digest of its key, digest and signature.
    fn fingerprint(&self) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new();
        hasher.update(self.key.as_bytes()).update(&self.digest).update(&self.signature);
        *hasher.finalize().as_bytes()
    }
}

/// Which of `claims` hold, each checked. A batch that holds settles all its claims at once; a
/// failing batch is halved until the bad claims are found.
fn verify_unremembered(claims: &[&Claim]) -> Vec<bool> {
    if claims.is_empty() {
        return Vec::new();
    }
    if batch_holds(claims) {
        return vec![true; claims.len()];
    }
    if claims.len() == 1 {
        return vec![false];
    }
    let (left, right) = claims.split_at(claims.len() / 2);
    let mut holds = verify_unremembered(left);
    holds.extend(verify_unremembered(right));
    holds
}

/// Whether every claim of `claims` holds (a false verdict only says that one of them fails).
fn batch_holds(claims: &[&Claim]) -> bool {
    let mut rng = rand::rng();
    let mut b_coefficient = Scalar::ZERO;
    let mut scalars = Vec::with_capacity(claims.len() + 2);
    let mut points = Vec::with_capacity(claims.len() + 2);
    // Each author's index in `author_terms`, which holds its key and the sum of its claims' zᵢ·kᵢ.
    let mut authors: HashMap<[u8; AUTHOR_BYTES], usize> = HashMap::new();
    let mut author_terms: Vec<(EdwardsPoint, Scalar)> = Vec::new();
    for claim in claims {
        let (r_bytes, s_bytes) = claim.signature.split_at(32);
        let r_bytes: [u8; 32] = r_bytes.try_into().expect("a signature is 64 bytes");
        let s_bytes: [u8; 32] = s_bytes.try_into().expect("a signature is 64 bytes");
        // s must be reduced: a signature has one encoding.
        let Some(s) = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes)) else { return false };
        let Some(r) = CompressedEdwardsY(r_bytes).decompress() else { return false };
        let k = Scalar::from_hash(
            Sha512::new().chain_update(r_bytes).chain_update(claim.key.as_bytes()).chain_update(claim.digest),
        );
        // Never zero, so a failing claim cannot drop out of the sum.
        let z = Scalar::from(rng.random::<u128>() | 1);
        b_coefficient += z * s;
        scalars.push(z);
        points.push(r);
        let index = *authors.entry(*claim.key.as_bytes()).or_insert_with(|| {
            author_terms.push((claim.key.to_edwards(), Scalar::ZERO));
            author_terms.len() - 1
        });
        author_terms[index].1 += z * k;
    }
    let sum = EdwardsPoint::vartime_multiscalar_mul(
        scalars.into_iter().chain(author_terms.iter().map(|(_, scalar)| *scalar)).chain(once(-b_coefficient)),
        points.into_iter().chain(author_terms.iter().map(|(point, _)| *point)).chain(once(ED25519_BASEPOINT_POINT)),
    );
    sum.mul_by_cofactor().is_identity()
}

#[cfg(test)]
mod tests {
    use curve25519_dalek::constants::EIGHT_TORSION;
    use ed25519_dalek::{Signer as _, SigningKey};

    use super::*;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&rand::random())
    }

    fn claim(key: &SigningKey, digest: [u8; 32]) -> Claim {
        Claim { key: key.verifying_key(), digest, signature: key.sign(&digest).to_bytes() }
    }

    #[test]
    fn honest_signatures_hold_alone_and_in_batches_of_one_or_many_authors() {
        let keys: Vec<SigningKey> = (0..5).map(|_| key()).collect();
        let claims: Vec<Claim> = (0..300u32)
            .map(|i| {
                let mut digest = [0; 32];
                digest[..4].copy_from_slice(&i.to_le_bytes());
                claim(&keys[i as usize % keys.len()], digest)
            })
            .collect();
        assert!(verify_all(&claims).into_iter().all(|holds| holds));
        for one in &claims[..10] {
            assert_eq!(verify_all(std::slice::from_ref(one)), vec![true]);
        }
        // The same verdicts as ed25519's own single verification.
        for one in &claims[..10] {
            let signature = ed25519_dalek::Signature::from_bytes(&one.signature);
            assert!(one.key.verify_strict(&one.digest, &signature).is_ok());
        }
    }

    #[test]
    fn a_claim_that_held_is_remembered_and_its_forged_twins_still_fail() {
        let (a, b) = (key(), key());
        let honest = claim(&a, [7; 32]);
        let remembered = |claim: &Claim| HELD.lock().unwrap().set.contains(&claim.fingerprint());
        assert!(!remembered(&honest));
        assert_eq!(verify_all(std::slice::from_ref(&honest)), vec![true]);
        assert!(remembered(&honest));
        let mut other_message = claim(&a, [7; 32]);
        other_message.digest[0] ^= 1;
        let mut other_author = claim(&a, [7; 32]);
        other_author.key = b.verifying_key();
        let mut other_signature = claim(&a, [7; 32]);
        other_signature.signature[40] ^= 1;
        let twins = [other_message, claim(&a, [7; 32]), other_author, other_signature];
        assert_eq!(verify_all(&twins), vec![false, true, false, false]);
        assert!(twins.iter().filter(|claim| remembered(claim)).count() == 1, "a failing claim is never remembered");
    }

    #[test]
    fn the_memory_of_held_claims_keeps_the_most_recent() {
        let mut held = Held::default();
        let fingerprint = |i: u32| *blake3::hash(&i.to_le_bytes()).as_bytes();
        for i in 0..(HELD_MAX as u32 + 10) {
            held.remember(fingerprint(i));
            held.remember(fingerprint(i));
        }
        assert_eq!((held.set.len(), held.order.len()), (HELD_MAX, HELD_MAX));
        assert!(!held.set.contains(&fingerprint(9)) && held.set.contains(&fingerprint(10)));
    }

    #[test]
    fn each_bad_claim_is_found_among_good_ones() {
        let (a, b) = (key(), key());
        let mut claims: Vec<Claim> = (0..64u8).map(|i| claim(if i % 3 == 0 { &a } else { &b }, [i; 32])).collect();
        claims[5].digest[0] ^= 1; // another message
        claims[17].signature[40] ^= 1; // another s
        claims[30].signature[0] ^= 1; // another R (or none)
        claims[41].key = b.verifying_key(); // another author
        claims[41].signature = a.sign(&claims[41].digest).to_bytes();
        // s not reduced: s + ℓ encodes the same scalar but is not the signature's encoding.
        let s = Scalar::from_canonical_bytes(claims[50].signature[32..].try_into().unwrap()).unwrap();
        let unreduced = add_group_order(s.to_bytes());
        if let Some(unreduced) = unreduced {
            claims[50].signature[32..].copy_from_slice(&unreduced);
        }
        let holds = verify_all(&claims);
        for (i, verdict) in holds.into_iter().enumerate() {
            let bad = [5, 17, 30, 41].contains(&i) || (i == 50 && unreduced.is_some());
            assert_eq!(verdict, !bad, "claim {i}");
        }
    }

    #[test]
    fn a_small_order_part_in_r_is_ignored_whatever_the_batch() {
        // A signature whose R carries a point of order 8: R' = r·B + T, s = r + k'·a with
        // k' = SHA-512(R' ‖ A ‖ M). The cofactored equation holds; the equation without the
        // cofactor fails by T, or holds, depending on each claim's zᵢ, that is on its batch.
        let a = Scalar::from(0x1234_5678_9abc_def0_u64) * Scalar::from(0x0fed_cba9_8765_4321_u64);
        let key = VerifyingKey::from_bytes((ED25519_BASEPOINT_POINT * a).compress().as_bytes()).unwrap();
        let nonce = Scalar::from(987_654_321_u64);
        let digest = [7; 32];
        let r = (ED25519_BASEPOINT_POINT * nonce + EIGHT_TORSION[1]).compress();
        let k = Scalar::from_hash(
            Sha512::new().chain_update(r.as_bytes()).chain_update(key.as_bytes()).chain_update(digest),
        );
        let s = nonce + k * a;
        let mut signature = [0; SIGNATURE_BYTES];
        signature[..32].copy_from_slice(r.as_bytes());
        signature[32..].copy_from_slice(s.as_bytes());
        let odd = Claim { key, digest, signature };
        for _ in 0..16 {
            assert_eq!(verify_all(std::slice::from_ref(&odd)), vec![true]);
        }
        let signer = self::key();
        for _ in 0..16 {
            let mut batch: Vec<Claim> = (0..20u8).map(|i| claim(&signer, [i; 32])).collect();
            batch.insert(7, Claim { key, digest, signature });
            assert!(verify_all(&batch).into_iter().all(|holds| holds));
        }
    }

    /// `s + ℓ` as 32 little-endian bytes, when it still fits in 253 bits.
    fn add_group_order(s: [u8; 32]) -> Option<[u8; 32]> {
        const ELL: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let mut out = [0u8; 32];
        let mut carry = 0u16;
        for i in 0..32 {
            let sum = s[i] as u16 + ELL[i] as u16 + carry;
            out[i] = sum as u8;
            carry = sum >> 8;
        }
        (carry == 0 && out[31] < 0x20).then_some(out)
    }
}
