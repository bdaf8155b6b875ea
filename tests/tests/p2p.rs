//! Pure peer-to-peer mode: an overlay of nodes with no index, queries
//! flooded with a TTL, duplicates dropped, hits routed back, and the same
//! verified transfer engine.

use std::sync::Arc;
use std::time::Duration;

use common::id::content_info;
use peer::overlay::{self, OverlayCounters};
use tests::*;

const WAIT: Duration = Duration::from_secs(3);

fn neighbours(p: &Peer) -> usize {
    p.daemon.overlay().unwrap().neighbours().len()
}

fn counters(p: &Peer) -> Arc<OverlayCounters> {
    p.daemon.overlay().unwrap().counters()
}

/// Starts `n` nodes, node i joining through node i-1 (and, for a ring, node 0
/// through the last), each in `root/node<i>`.
async fn start_chain(root: &std::path::Path, n: usize, degree: usize, ring: bool) -> Vec<Peer> {
    let mut nodes: Vec<Peer> = Vec::new();
    for i in 0..n {
        let share = root.join(format!("node{i}"));
        std::fs::create_dir_all(&share).unwrap();
        let mut neighbors: Vec<String> = nodes.last().map(|p| p.addr()).into_iter().collect();
        if ring && i == n - 1 {
            neighbors.push(nodes[0].addr());
        }
        nodes.push(start_p2p_node(&share, neighbors, degree).await);
    }
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_of_five_finds_the_far_end_with_ttl_4_but_not_1() {
    let dir = tempfile::tempdir().unwrap();
    // Written before the nodes start so the first scan shares them.
    let data = random_bytes(2 * common::CHUNK_SIZE + 5, 41);
    write_file(&dir.path().join("node4"), "far away song.ogg", &data);
    let nodes = start_chain(dir.path(), 5, 1, false).await;
    wait_until("the line is connected", Duration::from_secs(10), || async {
        neighbours(&nodes[0]) == 1
            && (1..4).all(|i| neighbours(&nodes[i]) == 2)
            && neighbours(&nodes[4]) == 1
    })
    .await;

    let via = nodes[0].addr();
    let report = overlay::search(&via, vec!["far".into(), "song".into()], 4, WAIT)
        .await
        .unwrap();
    assert_eq!(report.hits.len(), 1, "{report:?}");
    assert_eq!(report.hits[0].sources, vec![nodes[4].addr()]);
    assert_eq!(report.hits[0].id, content_info(&data).id.to_hex());
    assert_eq!(report.nodes_reached, 5);
    assert!(report.complete, "{report:?}");
    assert_eq!(report.query_messages, 4, "one copy per link of the line");
    assert_eq!(report.hit_messages, 4, "the hit came back over four links");
    assert_eq!(report.messages, 8);

    let short = overlay::search(&via, vec!["far".into(), "song".into()], 1, WAIT)
        .await
        .unwrap();
    assert!(short.hits.is_empty(), "{short:?}");
    assert_eq!(short.nodes_reached, 2);
    assert!(short.complete);
    let three = overlay::search(&via, vec!["song".into()], 3, WAIT)
        .await
        .unwrap();
    assert!(three.hits.is_empty());
    assert_eq!(three.nodes_reached, 4);
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_ring_no_node_processes_a_query_twice() {
    let dir = tempfile::tempdir().unwrap();
    write_file(&dir.path().join("node2"), "ring tone.mp3", b"ring ring");
    let nodes = start_chain(dir.path(), 5, 2, true).await;
    wait_until("the ring is closed", Duration::from_secs(10), || async {
        nodes.iter().all(|n| neighbours(n) >= 2)
    })
    .await;
    let report = overlay::search(&nodes[0].addr(), vec!["ring".into()], 7, WAIT)
        .await
        .unwrap();
    assert_eq!(report.hits.len(), 1);
    assert_eq!(report.nodes_reached, 5);
    assert!(report.complete, "{report:?}");
    assert!(report.duplicates >= 1, "a ring sends some copies twice");
    let mut dropped = 0;
    for (i, n) in nodes.iter().enumerate() {
        let c = counters(n);
        assert_eq!(
            OverlayCounters::get(&c.queries_processed),
            1,
            "node {i} processed the query more than once"
        );
        dropped += OverlayCounters::get(&c.duplicates_dropped);
    }
    assert_eq!(dropped, report.duplicates);
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_leaving_does_not_break_search_among_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    write_file(&dir.path().join("node3"), "survivor.txt", b"still here");
    let mut nodes = start_chain(dir.path(), 5, 2, true).await;
    wait_until("the ring is closed", Duration::from_secs(10), || async {
        nodes.iter().all(|n| neighbours(n) >= 2)
    })
    .await;
    // Let pings teach every node some addresses beyond its neighbours.
    let c = counters(&nodes[0]);
    wait_until("node 0 heard pongs", Duration::from_secs(10), || async {
        OverlayCounters::get(&c.messages_in) >= 8
    })
    .await;
    let leaving = nodes.remove(1);
    let gone = leaving.addr();
    leaving.stop().await;

    // Node 0 lost a neighbour and replaces it with one it learned.
    wait_until(
        "node 0 is back at degree 2",
        Duration::from_secs(10),
        || async {
            let n = nodes[0].daemon.overlay().unwrap().neighbours();
            n.len() >= 2 && !n.contains(&gone)
        },
    )
    .await;
    for via in [&nodes[0], &nodes[1]] {
        let report = overlay::search(&via.addr(), vec!["survivor".into()], 7, WAIT)
            .await
            .unwrap();
        assert_eq!(report.hits.len(), 1, "{report:?}");
        assert_eq!(report.nodes_reached, 4);
    }
    for n in nodes {
        n.stop().await;
    }
}

/// A node keeps a link towards an address it joined through even when
/// later nodes fill its degree: here the join node restarts on its address,
/// and the middle node of a degree-1 line (at its degree through the node
/// behind it) dials it again, or the restarted node stays alone for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_at_its_degree_rejoins_the_node_it_joined_through_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = start_chain(dir.path(), 3, 1, false).await;
    wait_until("the line is connected", Duration::from_secs(30), || async {
        neighbours(&nodes[0]) == 1 && neighbours(&nodes[1]) == 2 && neighbours(&nodes[2]) == 1
    })
    .await;
    let first = nodes.remove(0);
    let addr = first.addr();
    first.stop().await;
    wait_until(
        "the middle node saw the first one go",
        Duration::from_secs(30),
        || async { neighbours(&nodes[0]) == 1 },
    )
    .await;
    let mut again = p2p_config(&dir.path().join("node0"), Vec::new(), 1);
    again.listen = addr.parse().unwrap();
    let restarted = start_peer_with(again).await;
    wait_until(
        "the middle node linked to the restarted node",
        Duration::from_secs(30),
        || async { neighbours(&restarted) == 1 && neighbours(&nodes[0]) == 2 },
    )
    .await;
    assert!(nodes[0]
        .daemon
        .overlay()
        .unwrap()
        .neighbours()
        .contains(&addr));
    restarted.stop().await;
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_p2p_get_is_verified_and_byte_identical_from_several_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(6 * common::CHUNK_SIZE + 3, 51);
    write_file(&dir.path().join("node2"), "movie.mkv", &data);
    write_file(&dir.path().join("node3"), "copies/movie.mkv", &data);
    let nodes = start_chain(dir.path(), 4, 1, false).await;
    wait_until("the line is connected", Duration::from_secs(10), || async {
        neighbours(&nodes[0]) == 1 && neighbours(&nodes[3]) == 1
    })
    .await;
    let out = dir.path().join("out");
    let got = tests::p2p_get(&nodes[0].addr(), "movie.mkv", 7, WAIT, &out, test_engine())
        .await
        .unwrap();
    assert_eq!(std::fs::read(&got.download.path).unwrap(), data);
    assert_eq!(got.download.id, content_info(&data).id.to_hex());
    assert_eq!(got.download.per_source.len(), 2, "both holders are sources");
    assert!(got.search.as_ref().unwrap().nodes_reached >= 4);
    assert!(nodes[2].chunks_served() + nodes[3].chunks_served() >= 7);

    // By id as well, with no index anywhere.
    let by_id = tests::p2p_get(
        &nodes[1].addr(),
        &content_info(&data).id.to_hex(),
        7,
        WAIT,
        &dir.path().join("out2"),
        test_engine(),
    )
    .await
    .unwrap();
    assert_eq!(std::fs::read(&by_id.download.path).unwrap(), data);
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_share_switched_from_hybrid_to_p2p_keeps_its_ids_without_rehashing() {
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("share");
    let data = random_bytes(3 * common::CHUNK_SIZE, 61);
    write_file(&share, "same everywhere.bin", &data);
    let index = start_index().await;
    let mut hybrid = start_peer(&share, &index.addr_string()).await;
    hybrid.wait_registered(1).await;
    let cache = share.join(".p2pshare/hashes.bin");
    let before = std::fs::metadata(&cache).unwrap().modified().unwrap();
    hybrid.stop().await;
    index.stop().await;

    let node = start_p2p_node(&share, vec![], 1).await;
    let report = overlay::search(&node.addr(), vec!["everywhere".into()], 2, WAIT)
        .await
        .unwrap();
    assert_eq!(report.hits[0].id, content_info(&data).id.to_hex());
    let after = std::fs::metadata(&cache).unwrap().modified().unwrap();
    assert_eq!(
        before, after,
        "the hash cache was rewritten: files were rehashed"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_neighbour_links_are_all_taken_still_answers_searches() {
    let dir = tempfile::tempdir().unwrap();
    let hub_share = dir.path().join("hub");
    write_file(&hub_share, "held-by-hub.txt", b"at the hub");
    // Degree 4: at most 8 neighbour links (the floor of the cap).
    let hub = start_p2p_node(&hub_share, Vec::new(), 4).await;
    let mut leaves = Vec::new();
    for i in 0..9 {
        let share = dir.path().join(format!("leaf{i}"));
        std::fs::create_dir_all(&share).unwrap();
        leaves.push(start_p2p_node(&share, vec![hub.addr()], 1).await);
    }
    wait_until(
        "the hub's neighbour links are full",
        Duration::from_secs(10),
        || async { neighbours(&hub) == 8 },
    )
    .await;
    // The hub's own daemon (or a user) searching through it is a client,
    // not a neighbour: it is answered, not refused as busy.
    let report = overlay::search(&hub.addr(), vec!["held".into()], 2, WAIT)
        .await
        .unwrap();
    assert_eq!(report.hits.len(), 1, "{report:?}");
    assert_eq!(neighbours(&hub), 8, "the ninth leaf is not a neighbour");
    for n in leaves {
        n.stop().await;
    }
    hub.stop().await;
}
