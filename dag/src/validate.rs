use cid::Cid;
use rayon::prelude::*;

use crate::block::{Block, BlockError, BlockLimits};

/// Hash-checks and decodes a batch of received blocks in parallel on the rayon pool.
///
/// Results come back in input order, so the outcome is the same whatever the scheduling.
pub fn validate_batch(items: Vec<(Cid, Vec<u8>)>, limits: &BlockLimits) -> Vec<Result<Block, BlockError>> {
    items.into_par_iter().map(|(cid, bytes)| Block::decode(cid, &bytes, limits)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_and_flags_each_bad_block() {
        let blocks: Vec<Block> = (0..64u8).map(|i| Block::build(vec![], 1, vec![i]).unwrap()).collect();
        let mut items: Vec<(Cid, Vec<u8>)> = blocks.iter().map(|b| (b.cid(), b.bytes().to_vec())).collect();
        items[10].1.push(0);
        let results = validate_batch(items, &BlockLimits::default());
        for (i, result) in results.iter().enumerate() {
            if i == 10 {
                assert!(result.is_err());
            } else {
                assert_eq!(result.as_ref().unwrap(), &blocks[i]);
            }
        }
    }
}
