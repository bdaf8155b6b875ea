//! Deterministic pseudo-random bytes (xorshift64) for sample content: the
//! demo, the lab, the benchmarks and the tests make the same incompressible
//! file on several nodes from a seed instead of shipping it. Not random
//! enough for anything secret.

/// Fills `buf` with the bytes that `seed` stands for.
pub fn fill(buf: &mut [u8], seed: u64) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
}

/// `len` bytes for `seed`.
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    fill(&mut out, seed);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_bytes_and_prefixes_agree() {
        assert_eq!(bytes(1000, 3), bytes(1000, 3));
        assert_ne!(bytes(1000, 3), bytes(1000, 4));
        assert_eq!(bytes(13, 3)[..], bytes(1000, 3)[..13]);
    }
}
