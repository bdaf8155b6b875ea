//! The checks behind the fuzz targets (feature `fuzzing`), shared with the
//! regression test that replays every input the fuzzers ever found.
//! Each function must never panic except on a real bug.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::frame::{encode_frame, try_decode_frame};
use crate::hello::{self, Protocol, HELLO_LEN};
use crate::id::{ContentInfo, FileId};
use crate::index_proto::{IndexRequest, IndexResponse};
use crate::limits::{MAX_FILE_SIZE, MAX_FRAME_LEN};
use crate::peer_proto::{PeerRequest, PeerResponse};

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(frame: &[u8]) {
    if let Ok(Some((msg, used))) = try_decode_frame::<T>(frame, MAX_FRAME_LEN) {
        assert!(used <= frame.len());
        let again = encode_frame(&msg).expect("a decoded message re-encodes");
        let (back, _) = try_decode_frame::<T>(&again, MAX_FRAME_LEN)
            .expect("a re-encoded message decodes")
            .expect("a re-encoded message is complete");
        assert_eq!(back, msg);
    }
}

/// First byte picks the message type, the rest is a frame (prefix included).
pub fn check_frame(data: &[u8]) {
    let Some((kind, frame)) = data.split_first() else {
        return;
    };
    match kind % 4 {
        0 => round_trip::<IndexRequest>(frame),
        1 => round_trip::<IndexResponse>(frame),
        2 => round_trip::<PeerRequest>(frame),
        _ => round_trip::<PeerResponse>(frame),
    }
}

pub fn check_hello(data: &[u8]) {
    let Some(bytes) = data.get(..HELLO_LEN) else {
        return;
    };
    let bytes: [u8; HELLO_LEN] = bytes.try_into().expect("length checked");
    let _ = hello::check_client_hello(&bytes, Protocol::Index);
    let _ = hello::check_client_hello(&bytes, Protocol::Peer);
    let _ = hello::check_server_hello(&bytes);
}

/// The first 32 bytes as the Noise static key a handshake payload must
/// vouch for, the rest as the payload (`crate::secure::check_payload` and
/// `check_identity_payload`): never a panic, and a forged payload never
/// passes.
pub fn check_handshake_payload(data: &[u8]) {
    let Some((static_key, payload)) = data.split_at_checked(32) else {
        return;
    };
    if crate::secure::check_payload(payload, static_key).is_ok() {
        // Only a real signature passes; random bytes never are one.
        panic!("a fuzzed handshake payload passed the binding check");
    }
    // The identity-static payload passes exactly when it is the ed25519
    // form of the static key (which the handshake's DH then proves).
    if let Ok(id) = crate::secure::check_identity_payload(payload, static_key) {
        assert_eq!(
            id.noise_static_key().as_ref().map(|k| &k[..]),
            Some(static_key),
            "an identity payload passed for another static key"
        );
    }
}

/// 32 bytes of id, 8 of size, then the raw hash list.
pub fn check_hash_list(data: &[u8]) {
    if data.len() < 40 {
        return;
    }
    let mut id = [0u8; 32];
    id.copy_from_slice(&data[..32]);
    let size =
        u64::from_le_bytes(data[32..40].try_into().expect("length checked")) % (MAX_FILE_SIZE + 1);
    if let Ok(info) = ContentInfo::from_hash_list(FileId(id), size, &data[40..]) {
        assert_eq!(crate::id::file_id(info.size, &info.hashes), info.id);
    }
}

/// The async reader, fed in pieces, yields the same messages as decoding
/// the whole buffer at once.
pub fn check_stream(data: &[u8]) {
    use tokio::io::AsyncWriteExt;
    let Some((piece, bytes)) = data.split_first() else {
        return;
    };
    let piece = (*piece as usize % 17) + 1;
    let expected: Vec<IndexRequest> = {
        let mut out = Vec::new();
        let mut at = 0;
        while let Ok(Some((msg, used))) =
            try_decode_frame::<IndexRequest>(&bytes[at..], MAX_FRAME_LEN)
        {
            out.push(msg);
            at += used;
        }
        out
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let got = runtime.block_on(async {
        let (mut writer, mut reader) = tokio::io::duplex(64);
        let input = bytes.to_vec();
        let feeder = tokio::spawn(async move {
            for chunk in input.chunks(piece) {
                if writer.write_all(chunk).await.is_err() {
                    return;
                }
            }
        });
        let mut buf = Vec::new();
        let mut out = Vec::new();
        while let Ok(Some(msg)) =
            crate::wire::read_message::<_, IndexRequest>(&mut reader, &mut buf, Default::default())
                .await
        {
            out.push(msg);
        }
        drop(reader);
        let _ = feeder.await;
        out
    });
    assert_eq!(got, expected);
}

/// Text fields: names, words, ids, sizes, durations.
pub fn check_text(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for word in crate::names::tokenize(&text) {
        // Lower-casing may add combining marks ('İ' → "i̇"), so only these hold.
        assert!(!word.is_empty());
        assert!(!word.chars().any(char::is_whitespace));
    }
    let _ = crate::names::validate_name(&text);
    // Search folding and matching never panic, and a name matches itself.
    let words: Vec<&str> = text.split(' ').collect();
    if let Ok(query) = crate::search::Query::parse(&words) {
        let _ = query.match_name(&text);
    }
    if let Ok(query) = crate::search::Query::parse(&[text.as_ref()]) {
        if query.exclude.is_empty() {
            assert!(query.match_name(&text).is_some(), "{text:?}");
        }
    }
    let _ = text.parse::<FileId>();
    let _ = crate::units::parse_size(&text);
    let _ = crate::units::parse_duration(&text);
}
