//! snow's primitives for our handshakes: ring's AES-GCM, SHA-256 and random
//! source, and X25519 from curve25519-dalek as snow's own resolver has it,
//! except that the public half of this node's static key is computed once
//! per process instead of once per handshake (snow derives it again from
//! the private key every time a handshake is built: a fixed-base scalar
//! multiplication per connection, on the index per login).

use curve25519_dalek::montgomery::MontgomeryPoint;
use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::{CryptoResolver, DefaultResolver, RingResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use snow::Error;

/// Resolves snow's primitives; knows one static key pair.
pub(super) struct Resolver {
    known: [u8; 32],
    known_public: [u8; 32],
}

impl Resolver {
    /// `known_public` must be the X25519 public key of `known`.
    pub(super) fn new(known: [u8; 32], known_public: [u8; 32]) -> Resolver {
        Resolver {
            known,
            known_public,
        }
    }
}

impl CryptoResolver for Resolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        RingResolver.resolve_rng()
    }

    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        match choice {
            DHChoice::Curve25519 => Some(Box::new(X25519 {
                known: self.known,
                known_public: self.known_public,
                private: [0; 32],
                public: [0; 32],
            })),
            _ => None,
        }
    }

    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        RingResolver
            .resolve_hash(choice)
            .or_else(|| DefaultResolver.resolve_hash(choice))
    }

    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        RingResolver
            .resolve_cipher(choice)
            .or_else(|| DefaultResolver.resolve_cipher(choice))
    }
}

/// X25519 (RFC 7748) as snow's default resolver does it, with one key
/// pair whose public half is already known.
struct X25519 {
    known: [u8; 32],
    known_public: [u8; 32],
    private: [u8; 32],
    public: [u8; 32],
}

impl X25519 {
    fn derive_public(&mut self) {
        self.public = if self.private == self.known {
            self.known_public
        } else {
            MontgomeryPoint::mul_base_clamped(self.private).to_bytes()
        };
    }
}

impl Dh for X25519 {
    fn name(&self) -> &'static str {
        "25519"
    }

    fn pub_len(&self) -> usize {
        32
    }

    fn priv_len(&self) -> usize {
        32
    }

    fn set(&mut self, privkey: &[u8]) {
        // snow passes exactly `priv_len` bytes.
        let n = privkey.len().min(32);
        self.private = [0; 32];
        self.private[..n].copy_from_slice(&privkey[..n]);
        self.derive_public();
    }

    fn generate(&mut self, rng: &mut dyn Random) -> Result<(), Error> {
        rng.try_fill_bytes(&mut self.private)?;
        self.derive_public();
        Ok(())
    }

    fn pubkey(&self) -> &[u8] {
        &self.public
    }

    fn privkey(&self) -> &[u8] {
        &self.private
    }

    fn dh(&self, pubkey: &[u8], out: &mut [u8]) -> Result<(), Error> {
        let theirs: [u8; 32] = pubkey
            .get(..32)
            .and_then(|k| k.try_into().ok())
            .ok_or(Error::Dh)?;
        let shared = MontgomeryPoint(theirs).mul_clamped(self.private).to_bytes();
        out.get_mut(..32).ok_or(Error::Dh)?.copy_from_slice(&shared);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_known_key_gets_its_known_public_half_and_others_are_computed() {
        let known = [7u8; 32];
        let public = MontgomeryPoint::mul_base_clamped(known).to_bytes();
        let r = Resolver::new(known, public);
        let mut dh = r.resolve_dh(&DHChoice::Curve25519).unwrap();
        dh.set(&known);
        assert_eq!(dh.pubkey(), public);
        let other = [9u8; 32];
        dh.set(&other);
        assert_eq!(
            dh.pubkey(),
            MontgomeryPoint::mul_base_clamped(other).to_bytes()
        );
        // Agreement both ways.
        let mut a = r.resolve_dh(&DHChoice::Curve25519).unwrap();
        a.set(&known);
        let (mut ab, mut ba) = ([0u8; 32], [0u8; 32]);
        a.dh(dh.pubkey(), &mut ab).unwrap();
        dh.dh(a.pubkey(), &mut ba).unwrap();
        assert_eq!(ab, ba);
    }
}
