//! Replays every input the fuzzers ever crashed on (fuzz/regressions/),
//! plus a few hand-made nasty ones, through the fuzz targets' checks.

use common::fuzzing;

fn run(target: &str, data: &[u8]) {
    match target {
        "frames" => fuzzing::check_frame(data),
        "hello" => fuzzing::check_hello(data),
        "hash_list" => fuzzing::check_hash_list(data),
        "stream" => fuzzing::check_stream(data),
        "text" => fuzzing::check_text(data),
        "handshake_payload" => fuzzing::check_handshake_payload(data),
        other => panic!("regression file for unknown target {other:?}"),
    }
}

#[test]
fn every_saved_fuzz_input_still_passes() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions");
    let mut replayed = 0;
    for entry in std::fs::read_dir(&dir)
        .expect("fuzz/regressions exists")
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some((target, _)) = name.split_once('-') else {
            continue;
        };
        run(target, &std::fs::read(entry.path()).unwrap());
        replayed += 1;
    }
    eprintln!("replayed {replayed} saved fuzz inputs");
}

#[test]
fn hand_made_nasty_inputs() {
    // Huge claimed lengths, truncated frames, unknown variants, every type.
    for kind in 0u8..4 {
        for frame in [
            &[0xFF, 0xFF, 0xFF, 0xFF][..],
            &[0, 0, 0, 6, 1, 252, 0xFF, 0xFF, 0xFF, 0xFF][..],
            &[0, 0, 0, 1, 255][..],
            &[0, 0, 0, 9, 0][..],
            &[][..],
        ] {
            let mut input = vec![kind];
            input.extend_from_slice(frame);
            fuzzing::check_frame(&input);
        }
    }
    fuzzing::check_stream(&[3, 0, 0, 0, 1, 3, 0, 0, 0, 1, 7, 0, 0]);
    fuzzing::check_hash_list(&[0u8; 40]);
    fuzzing::check_hash_list(&[0xFFu8; 200]);
    fuzzing::check_text("9999999999999999999999TiB".as_bytes());
    fuzzing::check_text("1e308h".as_bytes());
    fuzzing::check_hello(b"P2PS\xff\xff\x09\x00");
    fuzzing::check_handshake_payload(&[0u8; 128]);
    fuzzing::check_handshake_payload(&[0xFFu8; 32 + 96]);
    fuzzing::check_handshake_payload(&[7u8; 40]);
}
