//! The capture of `tests/tests/secure.rs` with `--insecure` on both sides
//! (this test process runs in clear text): the marker is seen on the
//! wire, so the encrypted capture's "not seen" can fail.

use common::secure::Security;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_insecure_on_both_sides_the_marker_crosses_the_wire() {
    // Before any connection of this process (its only test).
    Security::install(Security::insecure()).expect("nothing connected before");
    let (captured, marker) = tests::capture::captured_transfer().await;
    assert!(
        captured.windows(marker.len()).any(|w| w == marker),
        "clear text should carry the marker ({} bytes captured)",
        captured.len()
    );
}
