//! What one authenticated login costs, piece by piece (issue 16): the
//! curve operations of a Noise XX handshake, the ed25519 checks, and whole
//! handshakes in memory (no sockets), each timed on one thread of this
//! process. The figure to judge the pieces against is the whole handshake.

use std::time::Instant;

use common::hello::Protocol;
use common::identity::Identity;
use common::secure::{self, Security};
use curve25519_dalek::montgomery::MontgomeryPoint;

/// Microseconds per call of `f`, over `n` calls.
fn time_us(n: u32, mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed().as_secs_f64() * 1e6 / n as f64
}

/// Prints one table of µs per operation.
pub async fn run(n: u32) -> anyhow::Result<()> {
    let secret: [u8; 32] = rand::random();
    let point = MontgomeryPoint::mul_base_clamped(rand::random());
    let ladder = time_us(n, || {
        std::hint::black_box(std::hint::black_box(point).mul_clamped(secret));
    });
    let theirs = point.to_bytes();
    let aws = time_us(n, || {
        use aws_lc_rs::agreement::{agree, PrivateKey, UnparsedPublicKey, X25519};
        let ours = PrivateKey::from_private_key(&X25519, std::hint::black_box(&secret))
            .expect("any 32 bytes");
        let shared = agree(&ours, UnparsedPublicKey::new(&X25519, &theirs), (), |k| {
            Ok(k[0])
        })
        .expect("not low order");
        std::hint::black_box(shared);
    });
    let aws_base = time_us(n, || {
        use aws_lc_rs::agreement::{PrivateKey, X25519};
        let ours = PrivateKey::from_private_key(&X25519, std::hint::black_box(&secret))
            .expect("any 32 bytes");
        std::hint::black_box(ours.compute_public_key().expect("a key"));
    });
    let base = time_us(n, || {
        std::hint::black_box(MontgomeryPoint::mul_base_clamped(std::hint::black_box(
            secret,
        )));
    });
    let edwards = time_us(n, || {
        let p = std::hint::black_box(point)
            .to_edwards(0)
            .expect("on the curve");
        std::hint::black_box(p.mul_clamped(secret).to_montgomery());
    });
    let id = Identity::generate();
    let sig = id.sign(b"p2pshare-bench");
    let peer = id.peer_id();
    let verify = time_us(n, || {
        assert!(std::hint::black_box(peer).verify(b"p2pshare-bench", &sig));
    });
    let decompress = time_us(n, || {
        std::hint::black_box(common::identity::PeerId::from_bytes(std::hint::black_box(
            peer.0,
        )))
        .expect("a key");
    });
    let (client_sec, server_sec) = (
        Security::new(Identity::generate(), None),
        Security::new(Identity::generate(), None),
    );
    let hs_n = (n / 4).max(1);
    let identity = pairs(hs_n, &client_sec, &server_sec).await?;
    let signed = pairs(hs_n, &client_sec.clone().signed_only(), &server_sec).await?;
    println!("| operation (one thread, {n} calls each) | µs per call |");
    println!("|---|---|");
    println!("| X25519 DH, variable base (Montgomery ladder, curve25519-dalek) | {ladder:.1} |");
    println!("| X25519 DH through the Edwards form (to_edwards, mul_clamped, to_montgomery) | {edwards:.1} |");
    println!(
        "| X25519 key from secret (fixed base, Edwards tables, curve25519-dalek) | {base:.1} |"
    );
    println!("| X25519 DH, variable base (aws-lc-rs, s2n-bignum assembly; what the handshake uses) | {aws:.1} |");
    println!("| X25519 key from secret (aws-lc-rs; what the handshake uses) | {aws_base:.1} |");
    println!("| ed25519 signature verification | {verify:.1} |");
    println!("| ed25519 public key decompression (`PeerId::from_bytes`) | {decompress:.1} |");
    println!("| whole hello + Noise XX handshake, both sides, in memory, identity static keys ({hs_n} runs) | {identity:.1} |");
    println!("| the same, signed handshake (a version-2 node from before FEATURE_IDENTITY_STATIC) | {signed:.1} |");
    Ok(())
}

/// µs per whole handshake, both sides on this thread, through a pipe.
async fn pairs(n: u32, client_sec: &Security, server_sec: &Security) -> anyhow::Result<f64> {
    let t = Instant::now();
    for _ in 0..n {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let srv = secure::server(&mut b, &[Protocol::Index], |_| false, |_| 0, server_sec);
        let cli = secure::client(&mut a, Protocol::Index, client_sec, None);
        let (s, c) = tokio::join!(srv, cli);
        s?;
        c?;
    }
    Ok(t.elapsed().as_secs_f64() * 1e6 / n as f64)
}
