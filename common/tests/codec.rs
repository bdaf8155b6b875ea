//! Codec properties: every message round-trips, no input panics the decoder,
//! and a frame split at any byte offset decodes the same.

use common::frame::{encode_frame, try_decode_frame, FrameError};
use common::id::FileId;
use common::index_proto::*;
use common::limits::MAX_FRAME_LEN;
use common::peer_proto::*;
use proptest::prelude::*;

fn file_id() -> impl Strategy<Value = FileId> {
    any::<[u8; 32]>().prop_map(FileId)
}

fn shared_file() -> impl Strategy<Value = SharedFile> {
    (file_id(), ".{0,40}", any::<u64>()).prop_map(|(id, name, size)| SharedFile { id, name, size })
}

fn index_request() -> impl Strategy<Value = IndexRequest> {
    prop_oneof![
        (
            any::<u16>(),
            proptest::option::of(".{0,20}"),
            proptest::option::of(".{0,20}")
        )
            .prop_map(|(listen_port, advertise, nick)| IndexRequest::Login(Login {
                listen_port,
                advertise,
                nick
            })),
        proptest::collection::vec(shared_file(), 0..8)
            .prop_map(|files| IndexRequest::AddFiles { files }),
        proptest::collection::vec(file_id(), 0..8)
            .prop_map(|ids| IndexRequest::RemoveFiles { ids }),
        Just(IndexRequest::Heartbeat),
        (proptest::collection::vec(".{0,10}", 0..5), any::<u32>())
            .prop_map(|(words, limit)| IndexRequest::Search { words, limit }),
        file_id().prop_map(|id| IndexRequest::Lookup { id }),
        (".{0,30}", any::<u32>()).prop_map(|(peer, start)| IndexRequest::Browse { peer, start }),
        Just(IndexRequest::Stats),
        any::<u32>().prop_map(|start| IndexRequest::ListPeers { start }),
        ".{0,40}".prop_map(|nick| IndexRequest::WhoIs { nick }),
    ]
}

fn index_response() -> impl Strategy<Value = IndexResponse> {
    prop_oneof![
        (".{0,20}", any::<u64>())
            .prop_map(|(addr, lease_ttl_ms)| IndexResponse::Welcome { addr, lease_ttl_ms }),
        any::<u32>().prop_map(|count| IndexResponse::Ack { count }),
        proptest::collection::vec(
            (file_id(), ".{0,20}", any::<u64>(), any::<u32>()).prop_map(
                |(id, name, size, sources)| SearchHit {
                    id,
                    name,
                    size,
                    sources
                }
            ),
            0..5
        )
        .prop_map(|hits| IndexResponse::SearchResults { hits }),
        (
            file_id(),
            ".{0,20}",
            any::<u64>(),
            proptest::collection::vec((".{0,20}", proptest::option::of(".{0,5}")), 0..4)
        )
            .prop_map(|(id, name, size, s)| IndexResponse::Sources {
                id,
                name,
                size,
                sources: s
                    .into_iter()
                    .map(|(addr, nick)| Source {
                        addr,
                        nick,
                        peer_id: None
                    })
                    .collect()
            }),
        (
            proptest::collection::vec(shared_file(), 0..4),
            proptest::option::of(any::<u32>())
        )
            .prop_map(|(files, next)| IndexResponse::PeerFiles { files, next }),
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(peers, files, bytes)| {
            IndexResponse::Stats(IndexStats {
                peers,
                files,
                bytes,
            })
        }),
        ".{0,40}".prop_map(|message| IndexResponse::Error {
            code: ErrorCode::BadRequest,
            message
        }),
    ]
}

fn peer_message() -> impl Strategy<Value = (PeerRequest, PeerResponse)> {
    (
        file_id(),
        any::<u32>(),
        any::<u64>(),
        proptest::collection::vec(any::<u8>(), 0..16),
        any::<bool>(),
    )
        .prop_map(|(id, n, size, bitfield, complete)| {
            let req = match n % 5 {
                0 => PeerRequest::HashList { id },
                1 => PeerRequest::Chunk { id, index: n },
                2 => PeerRequest::Have { id },
                3 => PeerRequest::BadChunk { id, index: n },
                _ => PeerRequest::Message {
                    from: format!("n{n}"),
                    text: format!("héllo\n{size}"),
                },
            };
            let resp = match n % 5 {
                0 => PeerResponse::HashList { id, size, len: n },
                1 => PeerResponse::Chunk {
                    id,
                    index: n,
                    len: n,
                },
                2 => PeerResponse::Have {
                    id,
                    size,
                    complete,
                    bitfield,
                },
                3 => PeerResponse::Error {
                    code: PeerErrorCode::Busy,
                    message: "busy".into(),
                },
                _ => PeerResponse::Delivered,
            };
            (req, resp)
        })
}

fn round_trips<T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(
    msg: &T,
) {
    let bytes = encode_frame(msg).unwrap();
    let (back, used): (T, usize) = try_decode_frame(&bytes, MAX_FRAME_LEN).unwrap().unwrap();
    assert_eq!(&back, msg);
    assert_eq!(used, bytes.len());
    // Every proper prefix asks for more bytes, never errors or panics.
    for cut in 0..bytes.len() {
        assert!(try_decode_frame::<T>(&bytes[..cut], MAX_FRAME_LEN)
            .unwrap()
            .is_none());
    }
    // Trailing bytes inside the frame are refused.
    let mut padded = bytes.clone();
    padded.push(0);
    let len = (bytes.len() - 4 + 1) as u32;
    padded[..4].copy_from_slice(&len.to_be_bytes());
    assert!(matches!(
        try_decode_frame::<T>(&padded, MAX_FRAME_LEN),
        Err(FrameError::TrailingBytes { .. }) | Err(FrameError::Decode(_))
    ));
}

proptest! {
    #[test]
    fn index_requests_round_trip(msg in index_request()) { round_trips(&msg); }

    #[test]
    fn index_responses_round_trip(msg in index_response()) { round_trips(&msg); }

    #[test]
    fn peer_messages_round_trip((req, resp) in peer_message()) { round_trips(&req); round_trips(&resp); }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = try_decode_frame::<IndexRequest>(&bytes, MAX_FRAME_LEN);
        let _ = try_decode_frame::<IndexResponse>(&bytes, MAX_FRAME_LEN);
        let _ = try_decode_frame::<PeerRequest>(&bytes, MAX_FRAME_LEN);
        let _ = try_decode_frame::<PeerResponse>(&bytes, MAX_FRAME_LEN);
    }

    #[test]
    fn random_payloads_never_panic(payload in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut framed = (payload.len() as u32).to_be_bytes().to_vec();
        framed.extend(&payload);
        let _ = try_decode_frame::<IndexRequest>(&framed, MAX_FRAME_LEN);
        let _ = try_decode_frame::<IndexResponse>(&framed, MAX_FRAME_LEN);
        let _ = try_decode_frame::<PeerRequest>(&framed, MAX_FRAME_LEN);
        let _ = try_decode_frame::<PeerResponse>(&framed, MAX_FRAME_LEN);
    }
}

#[test]
fn a_claimed_huge_vector_is_refused_without_allocating() {
    // AddFiles claiming 2^32-1 entries in a 10-byte frame.
    let payload = [1u8, 252, 0xFF, 0xFF, 0xFF, 0xFF];
    let mut framed = (payload.len() as u32).to_be_bytes().to_vec();
    framed.extend(payload);
    assert!(try_decode_frame::<IndexRequest>(&framed, MAX_FRAME_LEN).is_err());
}

#[test]
fn an_oversized_length_prefix_is_refused() {
    let framed = [0x7F, 0xFF, 0xFF, 0xFF, 0];
    assert!(matches!(
        try_decode_frame::<IndexRequest>(&framed, MAX_FRAME_LEN),
        Err(FrameError::TooLarge { .. })
    ));
}

#[test]
fn unknown_variant_is_an_error() {
    let framed = [0, 0, 0, 1, 200];
    assert!(try_decode_frame::<IndexRequest>(&framed, MAX_FRAME_LEN).is_err());
    assert!(try_decode_frame::<PeerRequest>(&framed, MAX_FRAME_LEN).is_err());
}

/// A frame delivered in two writes, split at every byte offset, reads back
/// the same through the async reader.
#[test]
fn every_split_of_a_frame_reads_back_the_same() {
    use common::wire::{read_message, Deadlines};
    use tokio::io::AsyncWriteExt;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let messages = vec![
        IndexRequest::Search {
            words: vec!["blue".into(), "monday".into()],
            limit: 7,
        },
        IndexRequest::AddFiles {
            files: vec![SharedFile {
                id: FileId([3; 32]),
                name: "música.ogg".into(),
                size: 1 << 40,
            }],
        },
        IndexRequest::Heartbeat,
    ];
    for msg in messages {
        let bytes = encode_frame(&msg).unwrap();
        for cut in 0..=bytes.len() {
            let got = runtime.block_on(async {
                let (mut w, mut r) = tokio::io::duplex(4096);
                let (a, b) = (bytes[..cut].to_vec(), bytes[cut..].to_vec());
                let writer = tokio::spawn(async move {
                    w.write_all(&a).await.unwrap();
                    tokio::task::yield_now().await;
                    w.write_all(&b).await.unwrap();
                    w
                });
                let mut buf = Vec::new();
                let got: IndexRequest = read_message(&mut r, &mut buf, Deadlines::default())
                    .await
                    .unwrap()
                    .unwrap();
                drop(writer.await.unwrap());
                got
            });
            assert_eq!(got, msg, "split at {cut}");
        }
    }
}
