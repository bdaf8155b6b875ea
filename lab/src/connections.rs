//! Non-persistent, persistent and pipelined fetches of M objects over a
//! link with a round-trip time and a bandwidth emulated in user space (this
//! machine's kernel has no netem).
//!
//! An object server on loopback answers `u32 index` with `u64 length` and
//! the object's bytes, in order, on as many requests as a connection sends.
//! Between client and server sits a delaying proxy: bytes from the client
//! reach the server RTT/2 after they were sent, bytes from the server reach
//! the client RTT/2 later plus their transmission time at the link's
//! bandwidth, and nothing of a new connection reaches the server before one
//! RTT has passed since it was opened (the TCP handshake the client would
//! have waited for).
//!
//! The lecture's model, with T = size / bandwidth:
//! - non-persistent: 2 RTT + T per object (handshake, request/response);
//! - persistent: RTT for the handshake, then RTT + T per object;
//! - pipelined: RTT for the handshake, then about one RTT for all, + M T.
//!
//! Measured at every number of objects in `objects_sweep` with RTT `rtt`,
//! and at every RTT in `rtt_sweep` with `objects` objects, `runs` times.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::report::{self, Chart, Csv, Series, Spread, COLORS};
use crate::{human_bytes, human_rate, LabError, Written};

#[derive(Debug, Clone)]
pub struct Config {
    /// Objects fetched while the RTT varies.
    pub objects: usize,
    /// Numbers of objects fetched at `rtt`.
    pub objects_sweep: Vec<usize>,
    pub object_size: u64,
    /// RTT while the number of objects varies.
    pub rtt: Duration,
    /// RTTs at which `objects` objects are fetched.
    pub rtt_sweep: Vec<Duration>,
    /// Link bandwidth, bytes per second (server to client).
    pub bandwidth: u64,
    /// Repetitions (at least 1).
    pub runs: usize,
    pub out: PathBuf,
}

impl Config {
    /// Every (objects, RTT) point measured, each once.
    pub fn points(&self) -> Vec<(usize, Duration)> {
        let mut points: Vec<(usize, Duration)> = Vec::new();
        let sweep = self.objects_sweep.iter().map(|m| (*m, self.rtt));
        for p in sweep.chain(self.rtt_sweep.iter().map(|r| (self.objects, *r))) {
            if !points.contains(&p) {
                points.push(p);
            }
        }
        points
    }
}

/// One row per fetch, point and run (`run` = 1, 2, ...), and one per fetch
/// and point with `run` = `median` (`min_s`/`max_s` the spread).
pub const CSV_COLUMNS: &[&str] = &[
    "mode",
    "objects",
    "object_bytes",
    "rtt_ms",
    "bandwidth_bps",
    "run",
    "measured_s",
    "min_s",
    "max_s",
    "model_s",
    "ratio",
];

/// One way of fetching the objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Fetch {
    NonPersistent,
    Persistent,
    Pipelined,
}

impl Fetch {
    pub const ALL: [Fetch; 3] = [Fetch::NonPersistent, Fetch::Persistent, Fetch::Pipelined];
    pub fn name(self) -> &'static str {
        match self {
            Fetch::NonPersistent => "non-persistent",
            Fetch::Persistent => "persistent",
            Fetch::Pipelined => "pipelined",
        }
    }

    /// The lecture's response-time model, in seconds.
    pub fn model(self, m: usize, rtt: f64, t: f64) -> f64 {
        let m = m as f64;
        match self {
            Fetch::NonPersistent => m * (2.0 * rtt + t),
            Fetch::Persistent => rtt + m * (rtt + t),
            Fetch::Pipelined => 2.0 * rtt + m * t,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Measured {
    pub fetch: Fetch,
    pub objects: usize,
    pub rtt: Duration,
    /// Which repetition (1-based).
    pub run: usize,
    pub seconds: f64,
    pub model: f64,
}

pub async fn run(config: &Config) -> Result<(Written, Vec<Measured>), LabError> {
    std::fs::create_dir_all(&config.out)?;
    let stop = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let server = TcpListener::bind("127.0.0.1:0").await?;
    let server_addr = server.local_addr()?;
    tasks.spawn(object_server(server, config.object_size, stop.clone()));

    let points = config.points();
    let repeats = config.runs.max(1);
    let bar = report::progress((3 * points.len() * repeats) as u64, "connections");
    let t = config.object_size as f64 / config.bandwidth as f64;
    let mut results = Vec::new();
    for k in 1..=repeats {
        for &(objects, rtt) in &points {
            // A proxy per RTT; stopped (with its connections) after use.
            let proxy_stop = stop.child_token();
            let proxy = TcpListener::bind("127.0.0.1:0").await?;
            let proxy_addr = proxy.local_addr()?.to_string();
            let proxy_task = tokio::spawn(delay_proxy(
                proxy,
                server_addr.to_string(),
                rtt,
                config.bandwidth,
                proxy_stop.clone(),
            ));
            for fetch in Fetch::ALL {
                bar.set_message(format!("{} {objects} x {rtt:?} run {k}", fetch.name()));
                let started = Instant::now();
                let outcome = fetch_all(&proxy_addr, fetch, objects, config.object_size).await;
                let seconds = started.elapsed().as_secs_f64();
                outcome?;
                results.push(Measured {
                    fetch,
                    objects,
                    rtt,
                    run: k,
                    seconds,
                    model: fetch.model(objects, rtt.as_secs_f64(), t),
                });
                bar.inc(1);
            }
            proxy_stop.cancel();
            let _ = proxy_task.await;
        }
    }
    bar.finish_and_clear();
    stop.cancel();
    while tasks.join_next().await.is_some() {}
    let written = write_outputs(config, &results)?;
    Ok((written, results))
}

async fn object_server(listener: TcpListener, size: u64, stop: CancellationToken) {
    let mut conns = JoinSet::new();
    let object: Arc<Vec<u8>> = Arc::new(vec![0x5a; size as usize]);
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            a = listener.accept() => a,
        };
        let Ok((mut stream, _)) = accepted else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (object, stop) = (object.clone(), stop.clone());
        conns.spawn(async move {
            let serve = async {
                loop {
                    let mut req = [0u8; 4];
                    if stream.read_exact(&mut req).await.is_err() {
                        return;
                    }
                    let mut answer = (object.len() as u64).to_be_bytes().to_vec();
                    answer.extend_from_slice(&object);
                    if stream.write_all(&answer).await.is_err() {
                        return;
                    }
                }
            };
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = serve => {}
            }
        });
    }
    conns.shutdown().await;
}

/// Forwards connections to `server`, delaying each direction (see the module docs).
async fn delay_proxy(
    listener: TcpListener,
    server: String,
    rtt: Duration,
    bandwidth: u64,
    stop: CancellationToken,
) {
    let mut conns = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            a = listener.accept() => a,
        };
        let Ok((client, _)) = accepted else { continue };
        let opened = tokio::time::Instant::now();
        let Ok(upstream) = TcpStream::connect(&server).await else {
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = upstream.set_nodelay(true);
        let (cr, cw) = client.into_split();
        let (sr, sw) = upstream.into_split();
        let stop = stop.clone();
        conns.spawn(async move {
            let mut pumps = JoinSet::new();
            // Client to server: after the handshake's RTT, then half an RTT.
            pumps.spawn(pump(cr, sw, rtt / 2, Some(opened + rtt), None));
            // Server to client: half an RTT plus transmission at the bandwidth.
            pumps.spawn(pump(sr, cw, rtt / 2, None, Some(bandwidth)));
            tokio::select! {
                _ = stop.cancelled() => pumps.shutdown().await,
                _ = async { while pumps.join_next().await.is_some() {} } => {}
            }
        });
    }
    conns.shutdown().await;
}

/// Copies `from` to `to`, delivering each piece `delay` after it was read
/// (not before `not_before`), one after the other at `bandwidth` if given.
async fn pump<R, W>(
    mut from: R,
    mut to: W,
    delay: Duration,
    not_before: Option<tokio::time::Instant>,
    bandwidth: Option<u64>,
) where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (tx, mut rx) = mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let reader = async move {
        let mut link_free = tokio::time::Instant::now();
        loop {
            let mut buf = vec![0u8; 64 * 1024];
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            buf.truncate(n);
            let now = tokio::time::Instant::now();
            let mut at = now + delay;
            if let Some(nb) = not_before {
                at = at.max(nb + delay);
            }
            if let Some(bw) = bandwidth {
                // The link sends one piece after the other.
                let start = link_free.max(now);
                link_free = start + Duration::from_secs_f64(n as f64 / bw as f64);
                at = link_free + delay;
            }
            if tx.send((at, buf)).is_err() {
                return;
            }
        }
    };
    let writer = async move {
        while let Some((at, buf)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&buf).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

async fn fetch_all(addr: &str, fetch: Fetch, m: usize, size: u64) -> Result<(), LabError> {
    match fetch {
        Fetch::NonPersistent => {
            for i in 0..m {
                let mut s = TcpStream::connect(addr).await?;
                s.set_nodelay(true)?;
                request(&mut s, i).await?;
                response(&mut s, size).await?;
            }
        }
        Fetch::Persistent => {
            let mut s = TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            for i in 0..m {
                request(&mut s, i).await?;
                response(&mut s, size).await?;
            }
        }
        Fetch::Pipelined => {
            let mut s = TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            for i in 0..m {
                request(&mut s, i).await?;
            }
            for _ in 0..m {
                response(&mut s, size).await?;
            }
        }
    }
    Ok(())
}

async fn request(s: &mut TcpStream, i: usize) -> Result<(), LabError> {
    s.write_all(&(i as u32).to_be_bytes()).await?;
    Ok(())
}

async fn response(s: &mut TcpStream, size: u64) -> Result<(), LabError> {
    let mut len = [0u8; 8];
    s.read_exact(&mut len).await?;
    let len = u64::from_be_bytes(len);
    if len != size {
        return Err(LabError::Setup(format!(
            "object of {len} bytes, expected {size}"
        )));
    }
    let mut body = vec![0u8; len as usize];
    s.read_exact(&mut body).await?;
    Ok(())
}

/// The runs of one fetch at one point, summarized.
#[derive(Debug, Clone)]
pub struct Point {
    pub fetch: Fetch,
    pub objects: usize,
    pub rtt: Duration,
    pub seconds: Spread,
    pub model: f64,
}

/// Groups `results` by fetch and point, in order of appearance.
pub fn summarize(results: &[Measured]) -> Vec<Point> {
    let mut keys: Vec<(Fetch, usize, Duration)> = Vec::new();
    for r in results {
        if !keys.contains(&(r.fetch, r.objects, r.rtt)) {
            keys.push((r.fetch, r.objects, r.rtt));
        }
    }
    keys.into_iter()
        .filter_map(|(fetch, objects, rtt)| {
            let these: Vec<&Measured> = results
                .iter()
                .filter(|r| r.fetch == fetch && r.objects == objects && r.rtt == rtt)
                .collect();
            Some(Point {
                fetch,
                objects,
                rtt,
                seconds: Spread::of(&these.iter().map(|r| r.seconds).collect::<Vec<_>>())?,
                model: these[0].model,
            })
        })
        .collect()
}

fn write_outputs(config: &Config, results: &[Measured]) -> Result<Written, LabError> {
    let points = summarize(results);
    let mut csv = Csv::new(CSV_COLUMNS);
    let ms = |d: Duration| format!("{}", d.as_secs_f64() * 1000.0);
    for r in results {
        csv.row(vec![
            r.fetch.name().into(),
            r.objects.to_string(),
            config.object_size.to_string(),
            ms(r.rtt),
            config.bandwidth.to_string(),
            r.run.to_string(),
            format!("{:.3}", r.seconds),
            String::new(),
            String::new(),
            format!("{:.3}", r.model),
            format!("{:.3}", r.seconds / r.model),
        ]);
    }
    for p in &points {
        csv.row(vec![
            p.fetch.name().into(),
            p.objects.to_string(),
            config.object_size.to_string(),
            ms(p.rtt),
            config.bandwidth.to_string(),
            "median".into(),
            format!("{:.3}", p.seconds.median),
            format!("{:.3}", p.seconds.min),
            format!("{:.3}", p.seconds.max),
            format!("{:.3}", p.model),
            format!("{:.3}", p.seconds.median / p.model),
        ]);
    }
    let t = config.object_size as f64 / config.bandwidth as f64;
    let repeats = config.runs.max(1);
    // One panel per sweep: x is the number of objects or the RTT.
    let panel = |title: String,
                 x_label: &str,
                 mine: &dyn Fn(&Point) -> bool,
                 x_of: &dyn Fn(&Point) -> f64,
                 model_xs: Vec<(usize, Duration, f64)>| {
        let mut series = Vec::new();
        for (k, fetch) in Fetch::ALL.iter().enumerate() {
            let color = COLORS[[1, 0, 2][k]];
            series.push(Series::line(
                format!("{} (model)", fetch.name()),
                model_xs
                    .iter()
                    .map(|(m, r, x)| (*x, fetch.model(*m, r.as_secs_f64(), t)))
                    .collect(),
                color,
            ));
            let ps: Vec<&Point> = points
                .iter()
                .filter(|p| p.fetch == *fetch && mine(p))
                .collect();
            series.push(
                Series::points(
                    format!("{} (measured)", fetch.name()),
                    ps.iter().map(|p| (x_of(p), p.seconds.median)).collect(),
                    color,
                )
                .with_bars(
                    ps.iter()
                        .filter(|p| p.seconds.count > 1)
                        .map(|p| (x_of(p), p.seconds.min, p.seconds.max))
                        .collect(),
                ),
            );
        }
        let mut c = Chart::new(title, x_label, "total response time (s)", series);
        c.notes = vec![
            "non-persistent: M (2 RTT + T)".into(),
            "persistent: RTT + M (RTT + T)".into(),
            "pipelined: 2 RTT + M T".into(),
            format!(
                "T = {} / {}; median of {repeats}, bars min-max",
                human_bytes(config.object_size as f64),
                human_rate(config.bandwidth as f64)
            ),
        ];
        c
    };
    let (rtt, objects) = (config.rtt, config.objects);
    let max_m = config.objects_sweep.iter().copied().max().unwrap_or(1);
    let min_m = config.objects_sweep.iter().copied().min().unwrap_or(1);
    let by_objects = panel(
        format!("Time against objects, RTT {rtt:?}"),
        "objects M",
        &|p| p.rtt == rtt && config.objects_sweep.contains(&p.objects),
        &|p| p.objects as f64,
        (min_m..=max_m).map(|m| (m, rtt, m as f64)).collect(),
    );
    let mut rtts = config.rtt_sweep.clone();
    rtts.sort();
    let (lo, hi) = (
        rtts.first().copied().unwrap_or_default(),
        rtts.last().copied().unwrap_or_default(),
    );
    let by_rtt = panel(
        format!("Time against RTT, {objects} objects"),
        "RTT (ms)",
        &|p| p.objects == objects && config.rtt_sweep.contains(&p.rtt),
        &|p| p.rtt.as_secs_f64() * 1000.0,
        (0..=20)
            .map(|i| {
                let r = lo + (hi - lo) * i / 20;
                (objects, r, r.as_secs_f64() * 1000.0)
            })
            .collect(),
    );
    let rows: Vec<Vec<String>> = points
        .iter()
        .map(|p| {
            vec![
                p.fetch.name().into(),
                p.objects.to_string(),
                format!("{:?}", p.rtt),
                p.seconds.text(3),
                format!("{:.3}", p.model),
                format!("{:.2}", p.seconds.median / p.model),
            ]
        })
        .collect();
    let mut md = format!(
        "# Connections\n\nObjects of {} over a link with {} and an RTT (emulated in user space \
         by a delaying proxy on loopback: this kernel has no netem), median of {repeats} run(s) \
         with [min–max]. Model, T = size / bandwidth: non-persistent M (2 RTT + T); persistent \
         RTT + M (RTT + T); pipelined 2 RTT + M T.\n\n",
        human_bytes(config.object_size as f64),
        human_rate(config.bandwidth as f64)
    );
    md.push_str(&report::md_table(
        &["fetch", "objects", "RTT", "measured s", "model s", "ratio"],
        &rows,
    ));
    report::write_all(&config.out, "connections", &csv, &[by_objects, by_rtt], &md)
}
