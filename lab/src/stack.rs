//! `lab distribution --engine swarm`: the experiment on a Docker Swarm
//! stack instead of this machine's loopback.
//!
//! For each point the lab writes a stack file (an index, a seed and N peer
//! replicas of the project's image, every `peer serve` with the point's
//! upload cap), deploys it with `docker stack deploy`, copies the file into
//! the seed's share through `docker exec`, waits until the index lists it
//! and counts N + 1 peers online, then starts `peer get --json` in every
//! peer replica at once (`docker exec`, handed to the replica's own
//! daemon, which swarms: it serves the chunks it has verified while it
//! downloads). The clock runs from starting the N fetches until the last
//! one has returned its report; each report's id must be the file's.
//! Client-server runs `index-server --store` in the index task and the
//! replicas fetch with `peer get --mode client-server`. The stack is removed
//! afterwards (also on failure and on Ctrl-C, [`remove_all`]).
//!
//! What it needs: a Docker engine that is a Swarm manager (`docker swarm
//! init`) and the image (`P2PSHARE_IMAGE`, default `p2pshare:latest`) on
//! the node(s); `scripts/swarm-smoke` has both. Replicas are reached with
//! `docker exec`, which works for tasks on this node: on a multi-node swarm
//! point `DOCKER_HOST` at each node or pin the stack to one
//! (docs/experiments/README.md says how). The overhead of one `docker exec`
//! is measured before every run and written in the run's status, as it is
//! inside the measured time. Upload counters are not collected (0).

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::id::FileId;
use tokio::process::Command;

use crate::distribution::{Config, Measured, Mode};
use crate::LabError;

/// The image deployed when `P2PSHARE_IMAGE` is not set.
pub const DEFAULT_IMAGE: &str = "p2pshare:latest";
/// Port of the index inside the stack's overlay network.
const INDEX_PORT: u16 = 8888;
/// Longest wait for the stack to come up (tasks running, peers online).
const UP_DEADLINE: Duration = Duration::from_secs(180);
/// Longest a run's fetches may take.
const RUN_DEADLINE: Duration = Duration::from_secs(600);
/// Longest wait for a removed stack's containers and network to go.
const DOWN_DEADLINE: Duration = Duration::from_secs(120);

/// Stacks deployed and not yet removed, for [`remove_all`].
static LIVE: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// The `docker` program: `LAB_DOCKER` or `docker` on PATH.
fn docker() -> String {
    std::env::var("LAB_DOCKER")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "docker".into())
}

/// The Docker engines of the swarm's other nodes whose replicas the lab
/// reaches (`LAB_DOCKER_HOSTS`: comma-separated `docker -H` addresses such
/// as `unix:///run/node2.sock` or `tcp://10.0.0.2:2375`); the engine of
/// `DOCKER_HOST` (or the default socket) is the manager and always
/// searched first.
pub fn worker_hosts() -> Vec<String> {
    std::env::var("LAB_DOCKER_HOSTS")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(str::to_string)
        .collect()
}

/// One running container of the stack, and the engine it runs on (`None`:
/// the manager's).
#[derive(Debug, Clone)]
struct Task {
    host: Option<String>,
    id: String,
}

impl Task {
    /// `docker [-H HOST] exec [-i] ID ARGS...`: its stdout.
    async fn exec(&self, args: &[&str], stdin: Option<&[u8]>) -> Result<String, LabError> {
        let mut full: Vec<&str> = Vec::with_capacity(args.len() + 5);
        if let Some(h) = &self.host {
            full.extend(["-H", h.as_str()]);
        }
        full.push("exec");
        if stdin.is_some() {
            full.push("-i");
        }
        full.push(&self.id);
        full.extend_from_slice(args);
        run(&full, stdin).await
    }
}

/// The image the stack deploys: `P2PSHARE_IMAGE` or [`DEFAULT_IMAGE`].
pub fn image() -> String {
    std::env::var("P2PSHARE_IMAGE")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEFAULT_IMAGE.into())
}

/// Runs `docker ARGS` to completion; its stdout, or an error that names the
/// command and quotes its stderr.
async fn run(args: &[&str], stdin: Option<&[u8]>) -> Result<String, LabError> {
    run_with(&docker(), args, stdin).await
}

/// [`run`] with another program than [`docker`] (tests).
async fn run_with(program: &str, args: &[&str], stdin: Option<&[u8]>) -> Result<String, LabError> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: a Ctrl-C meant for the lab must not cut a
        // `docker stack deploy` half way (the lab removes the stack itself).
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| {
        LabError::Setup(format!(
            "cannot run `{program}` ({e}): install Docker (Debian: docker.io) or set LAB_DOCKER"
        ))
    })?;
    if let (Some(bytes), Some(mut input)) = (stdin, child.stdin.take()) {
        use tokio::io::AsyncWriteExt;
        input.write_all(bytes).await?;
        input.shutdown().await?;
    }
    let out = child.wait_with_output().await?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let err = err.trim();
        return Err(LabError::Setup(format!(
            "`{program} {}` failed ({}): {}",
            shown(args),
            out.status,
            if err.is_empty() { "no message" } else { err }
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A command line as shown in errors (long arguments cut).
fn shown(args: &[&str]) -> String {
    args.iter()
        .map(|a| {
            if a.len() > 80 {
                format!("{}...", &a[..a.floor_char_boundary(77)])
            } else {
                (*a).to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Checks what `--engine swarm` needs before any run: an engine that
/// answers, is a Swarm manager, and has the image.
///
/// # Errors
/// [`LabError::Setup`] saying which of the three is missing and the
/// command that provides it.
pub async fn available() -> Result<(), LabError> {
    available_with(&docker()).await
}

async fn available_with(program: &str) -> Result<(), LabError> {
    let state = run_with(
        program,
        &[
            "info",
            "--format",
            "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}} {{.Swarm.NodeID}}",
        ],
        None,
    )
    .await
    .map_err(|e| {
        LabError::Setup(format!(
            "--engine swarm needs a Docker engine: {e} (start one: see docs/docker.md)"
        ))
    })?;
    let fields: Vec<&str> = state.split_whitespace().collect();
    if fields.get(..2) != Some(&["active", "true"][..]) {
        return Err(LabError::Setup(format!(
            "--engine swarm needs this Docker engine to be a Swarm manager (its state: {}): \
             run `docker swarm init` (scripts/swarm-smoke does, and leaves again)",
            state.trim()
        )));
    }
    // Every other node's engine answers, is in the swarm, and is listed once.
    let mut nodes = vec![fields.get(2).copied().unwrap_or_default().to_string()];
    for host in worker_hosts() {
        let node = run_with(
            program,
            &[
                "-H",
                &host,
                "info",
                "--format",
                "{{.Swarm.LocalNodeState}} {{.Swarm.NodeID}}",
            ],
            None,
        )
        .await
        .map_err(|e| {
            LabError::Setup(format!(
                "LAB_DOCKER_HOSTS names {host}, whose Docker engine does not answer: {e}"
            ))
        })?;
        let f: Vec<&str> = node.split_whitespace().collect();
        if f.first() != Some(&"active") || f.len() < 2 {
            return Err(LabError::Setup(format!(
                "LAB_DOCKER_HOSTS names {host}, whose engine is not in a swarm (state: {}): \
                 join it (`docker swarm join`) or leave it out",
                node.trim()
            )));
        }
        if nodes.iter().any(|n| n == f[1]) {
            return Err(LabError::Setup(format!(
                "LAB_DOCKER_HOSTS names {host}, the engine of a node already reached (node {}; \
                 the manager's own engine need not be listed): list each other node once",
                f[1]
            )));
        }
        nodes.push(f[1].to_string());
    }
    let image = image();
    run_with(
        program,
        &["image", "inspect", "--format", "{{.Id}}", &image],
        None,
    )
    .await
    .map_err(|_| {
        LabError::Setup(format!(
            "--engine swarm deploys the image {image}, which this engine does not have: \
                 build it (`docker build -t {image} .`) or set P2PSHARE_IMAGE"
        ))
    })?;
    Ok(())
}

/// The stack file of one point: an index (with the store when `mode` is
/// client-server), a seed capped at the server rate (hybrid) and `n` peer
/// replicas capped at the peer rate. Every service is addressed through
/// DNS round robin (`endpoint_mode: dnsrr`: Swarm's virtual IPs need IPVS)
/// and never restarted (a crash fails the run instead of hiding in it).
pub fn stack_file(config: &Config, mode: Mode, n: usize, image: &str) -> String {
    let rate = |bps: u64| format!("{bps}B/s");
    let quote = |args: &[String]| {
        args.iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut index = vec![
        "index-server".to_string(),
        "--listen".into(),
        format!("0.0.0.0:{INDEX_PORT}"),
    ];
    if mode == Mode::ClientServer {
        index.extend([
            "--store".into(),
            "/data/share".into(),
            "--store-settle".into(),
            "1s".into(),
            "--max-upload-rate".into(),
            rate(config.server_up),
        ]);
    }
    let peer = |nick: Option<&str>, up: u64| {
        let mut a = vec![
            "peer".to_string(),
            "serve".into(),
            "--rescan-interval".into(),
            "1s".into(),
            "--max-upload-rate".into(),
            rate(up),
        ];
        if let Some(nick) = nick {
            a.extend(["--nick".into(), nick.into()]);
        }
        if let Some(d) = config.peer_down {
            a.extend(["--max-download-rate".into(), rate(d)]);
        }
        a
    };
    let service = |command: &[String], replicas: usize| {
        format!(
            "    image: {image}\n    command: [{}]\n    environment:\n      PEER_INDEX: \"index:{INDEX_PORT}\"\n      PEER_SEED_SAMPLES: \"0\"\n      NO_COLOR: \"1\"\n    deploy:\n      replicas: {replicas}\n      endpoint_mode: dnsrr\n      restart_policy:\n        condition: none\n",
            quote(command)
        )
    };
    let mut s = String::from(
        "# Written by `lab distribution --engine swarm` for one point; removed after it.\nversion: \"3.8\"\nservices:\n",
    );
    s.push_str("  index:\n");
    s.push_str(&service(&index, 1));
    if mode != Mode::ClientServer {
        s.push_str("  seed:\n");
        s.push_str(&service(&peer(Some("seed"), config.server_up), 1));
    }
    s.push_str("  peer:\n");
    s.push_str(&service(&peer(None, config.peer_up), n));
    s
}

/// A deployed stack, removed when dropped (and waited for until its
/// containers and network are gone, at most [`DOWN_DEADLINE`]).
struct Stack {
    name: String,
}

impl Stack {
    async fn deploy(name: String, file: &Path) -> Result<Stack, LabError> {
        LIVE.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(name.clone());
        // Owned before the deploy: a deploy that half-worked is removed too.
        let stack = Stack { name };
        let file = file.to_string_lossy();
        run(&["stack", "deploy", "-c", &file, &stack.name], None).await?;
        Ok(stack)
    }

    /// The running containers of `service` on the manager's engine and
    /// on every [`worker_hosts`] engine.
    async fn containers(&self, service: &str) -> Result<Vec<Task>, LabError> {
        let label = format!(
            "label=com.docker.swarm.service.name={}_{service}",
            self.name
        );
        let mut tasks = Vec::new();
        let hosts = std::iter::once(None).chain(worker_hosts().into_iter().map(Some));
        for host in hosts {
            let mut args: Vec<&str> = Vec::new();
            if let Some(h) = &host {
                args.extend(["-H", h.as_str()]);
            }
            args.extend(["ps", "-q", "-f", &label, "-f", "status=running"]);
            let out = run(&args, None).await?;
            tasks.extend(out.split_whitespace().map(|id| Task {
                host: host.clone(),
                id: id.to_string(),
            }));
        }
        Ok(tasks)
    }

    /// Waits until `service` has `count` running containers on the
    /// engines the lab reaches.
    async fn wait_running(&self, service: &str, count: usize) -> Result<Vec<Task>, LabError> {
        let deadline = Instant::now() + UP_DEADLINE;
        loop {
            let c = self.containers(service).await?;
            if c.len() >= count {
                return Ok(c);
            }
            if Instant::now() > deadline {
                let tasks = run(
                    &[
                        "service",
                        "ps",
                        "--no-trunc",
                        "--format",
                        "{{.Name}} {{.CurrentState}} {{.Error}}",
                        &format!("{}_{service}", self.name),
                    ],
                    None,
                )
                .await
                .unwrap_or_default();
                return Err(LabError::Setup(format!(
                    "{} of {count} {service} containers running on the engines the lab reaches \
                     after {UP_DEADLINE:?} (a task on another node needs that node's engine in \
                     LAB_DOCKER_HOSTS); tasks: {}",
                    c.len(),
                    tasks.trim().replace('\n', "; ")
                )));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        remove(&self.name);
        LIVE.lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|n| n != &self.name);
    }
}

/// Removes stack `name` and waits until its services, containers and
/// network are gone (blocking; at most [`DOWN_DEADLINE`]); false if some
/// outlived the wait. `docker stack rm` is repeated while anything is
/// left: a deploy still under way may create services after the first.
fn remove(name: &str) -> bool {
    let program = docker();
    let quiet = |args: &[&str]| {
        std::process::Command::new(&program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .output()
            .ok()
    };
    let label = format!("label=com.docker.stack.namespace={name}");
    let network = format!("{name}_default");
    let deadline = Instant::now() + DOWN_DEADLINE;
    let workers = worker_hosts();
    let left_on = |prefix: &[&str]| {
        let mut args = prefix.to_vec();
        args.extend(["ps", "-aq", "-f", &label]);
        quiet(&args).is_some_and(|o| !o.stdout.is_empty())
    };
    let mut removed_at: Option<Instant> = None;
    while Instant::now() < deadline {
        let services =
            quiet(&["service", "ls", "-q", "-f", &label]).is_some_and(|o| !o.stdout.is_empty());
        if services && removed_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(2)) {
            quiet(&["stack", "rm", name]);
            removed_at = Some(Instant::now());
        }
        let containers = left_on(&[]) || workers.iter().any(|h| left_on(&["-H", h.as_str()]));
        let net = quiet(&["network", "inspect", &network])
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !services && !containers && !net {
            return true;
        }
        if removed_at.is_none() {
            // No service (yet, or any more): remove whatever else is left.
            quiet(&["stack", "rm", name]);
            removed_at = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    tracing::warn!(
        stack = name,
        "the stack's services, containers or network outlived the wait: remove it with `docker stack rm {name}`"
    );
    false
}

/// Removes every stack this process deployed and has not removed yet (for
/// a signal handler: Ctrl-C, SIGTERM).
/// Returns the stacks that could not be removed.
pub fn remove_all() -> Vec<String> {
    let names: Vec<String> = std::mem::take(&mut *LIVE.lock().unwrap_or_else(|p| p.into_inner()));
    names.into_iter().filter(|n| !remove(n)).collect()
}

/// Seconds one `docker exec CONTAINER true` takes (the launch overhead
/// inside every measured fetch).
async fn exec_overhead(task: &Task) -> Result<f64, LabError> {
    let t = Instant::now();
    task.exec(&["true"], None).await?;
    Ok(t.elapsed().as_secs_f64())
}

/// Reads `peer stats --json` in `container` until the index counts at
/// least `peers` online and, with `id`, `peer search --json NAME` lists it.
async fn wait_index(
    task: &Task,
    peers: u64,
    listed: Option<(&str, FileId)>,
) -> Result<(), LabError> {
    let deadline = Instant::now() + UP_DEADLINE;
    let mut last = String::new();
    loop {
        let online = match task.exec(&["peer", "stats", "--json"], None).await {
            Ok(out) => serde_json::from_str::<serde_json::Value>(&out)
                .ok()
                .and_then(|v| v["peers"].as_u64())
                .unwrap_or(0),
            Err(e) => {
                last = e.to_string();
                0
            }
        };
        let found = match listed {
            None => true,
            Some((name, id)) if online >= peers => {
                match task.exec(&["peer", "search", "--json", name], None).await {
                    Ok(out) => serde_json::from_str::<serde_json::Value>(&out)
                        .ok()
                        .and_then(|v| v["results"].as_array().cloned())
                        .unwrap_or_default()
                        .iter()
                        .any(|r| r["id"].as_str() == Some(&id.to_hex())),
                    Err(e) => {
                        last = e.to_string();
                        false
                    }
                }
            }
            Some(_) => false,
        };
        if online >= peers && found {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(LabError::Setup(format!(
                "the stack's index did not count {peers} peers online{} within {UP_DEADLINE:?} \
                 (online: {online}; last error: {})",
                if listed.is_some() {
                    " and list the file"
                } else {
                    ""
                },
                if last.is_empty() { "none" } else { &last }
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One point on a stack: `mode` (client-server or hybrid) with `n`
/// downloading replicas, the file `data` (id `id`, shared as
/// `lab-file.bin`). `label` names the stack (unique per run). Returns
/// what was measured and the run's status line (how many nodes' engines
/// the replicas ran on, one `docker exec`'s start-up).
///
/// # Errors
/// [`LabError::Setup`] when the stack does not come up, a fetch fails or
/// reports another id, or [`RUN_DEADLINE`] passes.
pub(crate) async fn distribution(
    config: &Config,
    mode: Mode,
    n: usize,
    data: &[u8],
    id: FileId,
    run_dir: &Path,
    label: &str,
) -> Result<(Measured, String), LabError> {
    if !matches!(mode, Mode::ClientServer | Mode::Hybrid) {
        return Err(LabError::Setup(format!(
            "--engine swarm runs client-server and hybrid; {} runs with --engine local",
            mode.name()
        )));
    }
    std::fs::create_dir_all(run_dir)?;
    let file = run_dir.join("stack.yml");
    std::fs::write(&file, stack_file(config, mode, n, &image()))?;
    let name = format!("lab-{}-{label}", std::process::id());
    let stack = Stack::deploy(name, &file).await?;

    // Who holds the file: the index's store, or the seed's share.
    let holder_service = if mode == Mode::ClientServer {
        "index"
    } else {
        "seed"
    };
    let holder = stack.wait_running(holder_service, 1).await?.remove(0);
    let peers = stack.wait_running("peer", n).await?;
    // Written beside the share and renamed into it, so that no scan ever
    // sees a partial file.
    holder
        .exec(
            &[
                "sh",
                "-c",
                "mkdir -p /data/share/.p2pshare && cat > /data/share/.p2pshare/lab-file.part \
                 && mv /data/share/.p2pshare/lab-file.part /data/share/lab-file.bin",
            ],
            Some(data),
        )
        .await?;
    let online = if mode == Mode::ClientServer { n } else { n + 1 } as u64;
    wait_index(&peers[0], online, Some(("lab-file.bin", id))).await?;
    let overhead = exec_overhead(&peers[0]).await?;
    let mut engines: Vec<Option<&str>> = peers.iter().map(|t| t.host.as_deref()).collect();
    engines.sort();
    engines.dedup();

    let hex = id.to_hex();
    let start = Instant::now();
    let mut fetches = tokio::task::JoinSet::new();
    for c in peers.iter().take(n) {
        let (c, hex) = (c.clone(), hex.clone());
        fetches.spawn(async move {
            let mut args = vec!["peer", "get", "--json"];
            if mode == Mode::ClientServer {
                args.extend(["--mode", "client-server", "-o", "/tmp/lab-got"]);
            } else {
                // Inside the share: handed to the replica's daemon, which swarms.
                args.extend(["-o", "/data/share/lab-got"]);
            }
            args.push(&hex);
            let out = c.exec(&args, None).await;
            (start.elapsed().as_secs_f64(), out)
        });
    }
    let mut completions = Vec::new();
    let deadline = tokio::time::sleep(RUN_DEADLINE);
    tokio::pin!(deadline);
    while completions.len() < n {
        let joined = tokio::select! {
            j = fetches.join_next() => j,
            _ = &mut deadline => {
                return Err(LabError::Setup(format!(
                    "{} of {n} fetches finished within {RUN_DEADLINE:?}",
                    completions.len()
                )));
            }
        };
        let Some(joined) = joined else { break };
        let (t, out) = joined.map_err(LabError::setup)?;
        let report: serde_json::Value = serde_json::from_str(&out?).map_err(|e| {
            LabError::Setup(format!(
                "a replica's `peer get --json` printed no report: {e}"
            ))
        })?;
        if report["id"].as_str() != Some(hex.as_str()) {
            return Err(LabError::Setup(format!(
                "a replica's fetch reported id {}, not {hex}",
                report["id"]
            )));
        }
        completions.push(t);
    }
    completions.sort_by(f64::total_cmp);
    let seconds = completions.last().copied().unwrap_or_default();
    drop(stack);
    Ok((
        Measured {
            seconds,
            completions,
            ..Measured::default()
        },
        format!(
            "ok (replicas on {} node(s); one docker exec takes {overhead:.2} s, inside the time)",
            engines.len()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config {
            ns: vec![2],
            file_size: 1 << 20,
            server_up: 4_000_000,
            peer_up: 1_000_000,
            peer_down: None,
            modes: vec![Mode::Hybrid],
            out: "unused".into(),
            processes: false,
            handoff: false,
            runs: 1,
            nets: Vec::new(),
            engine: crate::distribution::Engine::Swarm,
        }
    }

    #[test]
    fn the_hybrid_stack_has_a_seed_and_n_capped_replicas() {
        let s = stack_file(&config(), Mode::Hybrid, 5, "img:1");
        assert!(s.contains("  seed:\n"), "{s}");
        assert!(s.contains("replicas: 5"), "{s}");
        assert!(s.contains("\"--max-upload-rate\", \"4000000B/s\""), "{s}");
        assert!(s.contains("\"--max-upload-rate\", \"1000000B/s\""), "{s}");
        assert!(!s.contains("--store"), "{s}");
        assert_eq!(s.matches("image: img:1").count(), 3, "{s}");
        assert_eq!(s.matches("endpoint_mode: dnsrr").count(), 3, "{s}");
    }

    #[test]
    fn the_client_server_stack_serves_from_the_index_store() {
        let s = stack_file(&config(), Mode::ClientServer, 3, "img:1");
        assert!(!s.contains("  seed:\n"), "{s}");
        assert!(s.contains("\"--store\", \"/data/share\""), "{s}");
        assert!(s.contains("\"--max-upload-rate\", \"4000000B/s\""), "{s}");
        assert!(s.contains("replicas: 3"), "{s}");
    }

    #[tokio::test]
    async fn a_missing_docker_is_a_clear_error() {
        let e = available_with("/nonexistent/docker")
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("--engine swarm"), "{e}");
        assert!(e.contains("/nonexistent/docker"), "{e}");
    }
}
