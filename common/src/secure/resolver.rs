//! snow's primitives for our handshakes: ring's AES-GCM, SHA-256 and random
//! source, and X25519 from aws-lc-rs, whose assembly (s2n-bignum, with the
//! processor's `mulx`/`adx` where it has them) does a Diffie-Hellman in
//! about 0.7 of curve25519-dalek's portable Montgomery ladder, snow's own
//! choice (docs/benchmarks.md, issue 16). The public half of this node's
//! static key is computed once per process instead of once per handshake
//! (snow derives it again from the private key every time a handshake is
//! built: a fixed-base scalar multiplication per connection, on the index
//! per login).

use aws_lc_rs::agreement::{self, PrivateKey, UnparsedPublicKey, X25519 as AWS_X25519};
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

/// X25519 (RFC 7748) with one key pair whose public half is already known.
/// A Diffie-Hellman with a low-order public key (an all-zero result) is an
/// error, as RFC 7748 section 6.1 allows and the Noise spec (section 4.1)
/// permits: the handshake fails instead of going on with a known secret.
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
            // Any 32 bytes are an X25519 private key (clamped when used),
            // so neither call can fail; zeros would only fail every DH.
            PrivateKey::from_private_key(&AWS_X25519, &self.private)
                .ok()
                .and_then(|k| k.compute_public_key().ok())
                .and_then(|p| p.as_ref().try_into().ok())
                .unwrap_or([0; 32])
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
        let ours =
            PrivateKey::from_private_key(&AWS_X25519, &self.private).map_err(|_| Error::Dh)?;
        let out = out.get_mut(..32).ok_or(Error::Dh)?;
        agreement::agree(
            &ours,
            UnparsedPublicKey::new(&AWS_X25519, &theirs),
            Error::Dh,
            |shared| {
                out.copy_from_slice(shared.get(..32).ok_or(Error::Dh)?);
                Ok(())
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use curve25519_dalek::montgomery::MontgomeryPoint;

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
        // The same secret as curve25519-dalek computes it.
        assert_eq!(
            ab,
            MontgomeryPoint(a.pubkey().try_into().unwrap())
                .mul_clamped(other)
                .to_bytes()
        );
    }

    #[test]
    fn rfc_7748_vectors_hold() {
        // RFC 7748 section 6.1: Alice's and Bob's keys and their shared secret.
        let alice = hex::decode("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
            .unwrap();
        let bob_public =
            hex::decode("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
                .unwrap();
        let r = Resolver::new([0; 32], [0; 32]);
        let mut dh = r.resolve_dh(&DHChoice::Curve25519).unwrap();
        dh.set(&alice);
        assert_eq!(
            hex::encode(dh.pubkey()),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
        let mut shared = [0u8; 32];
        dh.dh(&bob_public, &mut shared).unwrap();
        assert_eq!(
            hex::encode(shared),
            "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
        );
    }

    #[test]
    fn a_low_order_public_key_fails_the_dh() {
        let r = Resolver::new([0; 32], [0; 32]);
        let mut dh = r.resolve_dh(&DHChoice::Curve25519).unwrap();
        dh.set(&[5u8; 32]);
        let mut out = [0u8; 32];
        // The point of order 1 (u = 0) and of order 8 (u = 1).
        assert!(dh.dh(&[0u8; 32], &mut out).is_err());
        let mut one = [0u8; 32];
        one[0] = 1;
        assert!(dh.dh(&one, &mut out).is_err());
        assert!(dh.dh(&[1u8; 16], &mut out).is_err(), "short key");
    }
}
