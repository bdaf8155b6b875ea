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

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::report::{self, Chart, Csv, Series, COLORS};
use crate::{human_bytes, human_rate, LabError, Written};

#[derive(Debug, Clone)]
pub struct Config {
    pub objects: usize,
    pub object_size: u64,
    pub rtt: Duration,
    /// Link bandwidth, bytes per second (server to client).
    pub bandwidth: u64,
    pub out: PathBuf,
}

pub const CSV_COLUMNS: &[&str] = &[
    "mode",
    "objects",
    "object_bytes",
    "rtt_ms",
    "bandwidth_bps",
    "measured_s",
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
    let proxy = TcpListener::bind("127.0.0.1:0").await?;
    let proxy_addr = proxy.local_addr()?.to_string();
    tasks.spawn(delay_proxy(
        proxy,
        server_addr.to_string(),
        config.rtt,
        config.bandwidth,
        stop.clone(),
    ));

    let bar = report::progress(3, "connections");
    let rtt = config.rtt.as_secs_f64();
    let t = config.object_size as f64 / config.bandwidth as f64;
    let mut results = Vec::new();
    for fetch in Fetch::ALL {
        bar.set_message(fetch.name());
        let started = Instant::now();
        let outcome = fetch_all(&proxy_addr, fetch, config.objects, config.object_size).await;
        let seconds = started.elapsed().as_secs_f64();
        outcome?;
        results.push(Measured {
            fetch,
            seconds,
            model: fetch.model(config.objects, rtt, t),
        });
        bar.inc(1);
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

fn write_outputs(config: &Config, results: &[Measured]) -> Result<Written, LabError> {
    let mut csv = Csv::new(CSV_COLUMNS);
    for r in results {
        csv.row(vec![
            r.fetch.name().into(),
            config.objects.to_string(),
            config.object_size.to_string(),
            format!("{}", config.rtt.as_secs_f64() * 1000.0),
            config.bandwidth.to_string(),
            format!("{:.3}", r.seconds),
            format!("{:.3}", r.model),
            format!("{:.3}", r.seconds / r.model),
        ]);
    }
    let names: Vec<String> = results.iter().map(|r| r.fetch.name().to_string()).collect();
    let chart = Chart {
        title: format!(
            "{} objects of {}, RTT {:?}, {}",
            config.objects,
            human_bytes(config.object_size as f64),
            config.rtt,
            human_rate(config.bandwidth as f64)
        ),
        x_label: "how the objects are fetched".into(),
        y_label: "total response time (s)".into(),
        series: vec![
            Series {
                name: "lecture's model".into(),
                points: results
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (i as f64, r.model))
                    .collect(),
                line: false,
                color: COLORS[1],
            },
            Series {
                name: "measured".into(),
                points: results
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (i as f64, r.seconds))
                    .collect(),
                line: false,
                color: COLORS[0],
            },
        ],
        x_names: Some(names),
    };
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            vec![
                r.fetch.name().into(),
                format!("{:.3}", r.seconds),
                format!("{:.3}", r.model),
                format!("{:.2}", r.seconds / r.model),
            ]
        })
        .collect();
    let mut md = format!(
        "# Connections\n\n{} objects of {} over a link with RTT {:?} and {} (emulated in user space \
         by a delaying proxy on loopback). Model, T = size / bandwidth: non-persistent \
         M (2 RTT + T); persistent RTT + M (RTT + T); pipelined 2 RTT + M T.\n\n",
        config.objects,
        human_bytes(config.object_size as f64),
        config.rtt,
        human_rate(config.bandwidth as f64)
    );
    md.push_str(&report::md_table(
        &["fetch", "measured s", "model s", "ratio"],
        &rows,
    ));
    report::write_all(&config.out, "connections", &csv, &chart, &md)
}
