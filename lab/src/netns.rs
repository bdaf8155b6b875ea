//! Hosts in network namespaces on a switch, their links shaped by the
//! kernel: the lab's `--net netns` and a topology builder for tests.
//!
//! A [`Lan`] is one namespace holding a Linux bridge (the switch) and any
//! number of hosts, each a namespace of its own with one interface `eth0`
//! (a veth pair whose other end is a port of the bridge) and an address in
//! 10.100.0.0/16. A host's uplink is capped with a `tbf` qdisc on its
//! `eth0` (what it sends), its downlink with a `tbf` on its bridge port
//! (what the switch sends it). `netem` is not available on these machines,
//! so no delay or loss comes from the kernel: latency, where an experiment
//! needs it, stays a user-space delay.
//!
//! Everything is made with iproute2 (`ip`, `tc`; Debian package iproute2).
//! Names carry this process's id and a counter (`p2l-PID-LAN-NAME`), so
//! runs side by side never clash. A `Lan` removes its namespaces when
//! dropped, after killing every process still inside them; [`cleanup_all`]
//! does the same for every live `Lan` (the lab calls it on Ctrl-C and
//! SIGTERM), and [`Lan::create`] first removes namespaces left behind by a
//! lab process that no longer exists (killed with SIGKILL).
//!
//! Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN): [`available`] says why
//! not in one line.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Why a namespace operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespaces need root (this process runs as uid {0})")]
    NotRoot(u32),
    #[error("`{0}` is not installed (Debian package iproute2)")]
    Missing(&'static str),
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("cannot enter network namespace {ns}: {reason}")]
    Enter { ns: String, reason: std::io::Error },
    #[error("I/O error running {command}: {reason}")]
    Io {
        command: String,
        reason: std::io::Error,
    },
    #[error("the LAN is full ({0} hosts)")]
    Full(usize),
}

/// The prefix of every namespace this module makes.
const PREFIX: &str = "p2l-";

/// The most hosts on one LAN (addresses 10.100.0.2 to 10.100.255.251).
pub const MAX_HOSTS: usize = 250 * 256;

/// Namespaces of every live [`Lan`] in this process, for [`cleanup_all`].
static LIVE: Mutex<Vec<String>> = Mutex::new(Vec::new());
static LANS: AtomicUsize = AtomicUsize::new(0);

/// Whether namespaces can be made here: `Err` says why not, in one line.
pub fn available() -> Result<(), NetnsError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if uid != 0 {
        return Err(NetnsError::NotRoot(uid));
    }
    for tool in ["ip", "tc"] {
        let found = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            return Err(NetnsError::Missing(tool));
        }
    }
    Ok(())
}

/// Runs `program args`, failing with its stderr when it fails.
fn run(program: &str, args: &[&str]) -> Result<(), NetnsError> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|reason| match reason.kind() {
            std::io::ErrorKind::NotFound if program == "ip" => NetnsError::Missing("ip"),
            std::io::ErrorKind::NotFound if program == "tc" => NetnsError::Missing("tc"),
            _ => NetnsError::Io {
                command: command.clone(),
                reason,
            },
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetnsError::Command {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Kills every process in namespace `ns` and deletes it; errors ignored
/// (this is cleanup: the namespace may be gone already).
fn remove_namespace(ns: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                // SAFETY: kill has no memory preconditions; a stale pid
                // fails with ESRCH.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
    let _ = Command::new("ip")
        .args(["netns", "del", ns])
        .stderr(Stdio::null())
        .status();
}

/// Removes every namespace of every live [`Lan`] in this process (for a
/// signal handler: Ctrl-C, SIGTERM). The `Lan`s' own drops then find
/// nothing left to do.
pub fn cleanup_all() {
    let names: Vec<String> = match LIVE.lock() {
        Ok(mut live) => std::mem::take(&mut *live),
        Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
    };
    // Hosts before the switch: a host's processes die before its link.
    for ns in names.iter().rev() {
        remove_namespace(ns);
    }
}

/// Removes namespaces this module made in processes that no longer run.
fn remove_orphans() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(ns) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = ns.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            remove_namespace(ns);
        }
    }
}

/// Moves the calling thread into namespace `ns`.
fn enter(ns: &str) -> Result<(), NetnsError> {
    let err = |reason| NetnsError::Enter {
        ns: ns.to_string(),
        reason,
    };
    let file = std::fs::File::open(format!("/var/run/netns/{ns}")).map_err(err)?;
    use std::os::fd::AsRawFd;
    // SAFETY: a valid descriptor of a namespace file; setns changes only
    // this thread's network namespace (threads it starts inherit it).
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// One host on a [`Lan`].
#[derive(Debug, Clone)]
pub struct Host {
    /// Its network namespace (for `ip netns exec`).
    pub ns: String,
    /// Its address on the LAN.
    pub addr: Ipv4Addr,
    /// Its uplink cap, bytes per second (none: the link's speed).
    pub up: Option<u64>,
    /// Its downlink cap, bytes per second.
    pub down: Option<u64>,
}

impl Host {
    /// A command that runs `program` inside this host's namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns]).arg(program);
        c
    }

    /// Runs `f` on a thread inside this host's namespace and returns its
    /// result: sockets it opens belong to the host (the async work gets a
    /// runtime of its own on that thread). Blocks until `f` is done.
    pub fn run_in<F, Fut, T>(&self, f: F) -> Result<T, NetnsError>
    where
        F: FnOnce() -> Fut + Send,
        Fut: std::future::Future<Output = T>,
        T: Send,
    {
        let ns = self.ns.clone();
        std::thread::scope(|s| {
            s.spawn(|| {
                enter(&ns)?;
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|reason| NetnsError::Enter {
                        ns: ns.clone(),
                        reason,
                    })?;
                Ok(rt.block_on(f()))
            })
            .join()
            .unwrap_or_else(|_| {
                Err(NetnsError::Enter {
                    ns: ns.clone(),
                    reason: std::io::Error::other("the thread panicked"),
                })
            })
        })
    }

    /// Starts a runtime on a thread inside this host's namespace.
    pub fn runtime(&self) -> Result<HostRuntime, NetnsError> {
        let ns = self.ns.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("netns {ns}"))
            .spawn(move || {
                let started = enter(&ns).and_then(|()| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|reason| NetnsError::Enter {
                            ns: ns.clone(),
                            reason,
                        })
                });
                match started {
                    Ok(rt) => {
                        let _ = ready_tx.send(Ok(rt.handle().clone()));
                        rt.block_on(async {
                            let _ = stop_rx.await;
                        });
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(|reason| NetnsError::Enter {
                ns: self.ns.clone(),
                reason,
            })?;
        let handle = ready_rx.recv().map_err(|_| NetnsError::Enter {
            ns: self.ns.clone(),
            reason: std::io::Error::other("the runtime thread ended"),
        })??;
        Ok(HostRuntime {
            handle,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

/// A tokio runtime on a thread of its own inside a host's namespace:
/// every socket its tasks open belongs to the host, so a daemon started on
/// it ([`HostRuntime::handle`]) is a node on the LAN while the caller
/// drives it from its own runtime. Stopped (its tasks dropped) on drop.
#[derive(Debug)]
pub struct HostRuntime {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HostRuntime {
    /// Where to spawn the host's tasks (`handle().spawn(...)`).
    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }
}

impl Drop for HostRuntime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A switch (a bridge in a namespace of its own) and hosts attached to it.
/// Dropping it kills every process in its namespaces and deletes them.
#[derive(Debug)]
pub struct Lan {
    /// `p2l-PID-K`: the prefix of its namespaces.
    name: String,
    switch: String,
    hosts: Vec<Host>,
}

/// Bits per second for `tc`, from bytes per second.
fn bits(bytes_per_sec: u64) -> String {
    format!("{}bit", bytes_per_sec.saturating_mul(8))
}

/// Caps what leaves `dev` in namespace `ns` at `rate` bytes per second
/// with a token bucket filter: a burst of 20 ms of the rate (at least
/// 32 KiB, so a 64 KiB segmentation-offload packet is split rather than
/// dropped), and a queue of up to 200 ms before the kernel drops.
fn shape(ns: &str, dev: &str, rate: u64) -> Result<(), NetnsError> {
    let burst = (rate / 50).max(32 * 1024).to_string();
    run(
        "tc",
        &[
            "-n",
            ns,
            "qdisc",
            "replace",
            "dev",
            dev,
            "root",
            "tbf",
            "rate",
            &bits(rate),
            "burst",
            &burst,
            "latency",
            "200ms",
        ],
    )
}

impl Lan {
    /// Makes the switch. Needs root ([`available`]).
    pub fn create() -> Result<Lan, NetnsError> {
        available()?;
        remove_orphans();
        let k = LANS.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{}-{k}", std::process::id());
        let switch = format!("{name}-sw");
        let lan = Lan {
            name,
            switch: switch.clone(),
            hosts: Vec::new(),
        };
        lan.add_namespace(&switch)?;
        run(
            "ip",
            &["-n", &switch, "link", "add", "br0", "type", "bridge"],
        )?;
        run("ip", &["-n", &switch, "link", "set", "br0", "up"])?;
        Ok(lan)
    }

    /// Creates namespace `ns` (registered for cleanup first) with its
    /// loopback up.
    fn add_namespace(&self, ns: &str) -> Result<(), NetnsError> {
        if let Ok(mut live) = LIVE.lock() {
            live.push(ns.to_string());
        }
        run("ip", &["netns", "add", ns])?;
        run("ip", &["-n", ns, "link", "set", "lo", "up"])
    }

    /// Adds a host named `label` (letters, digits and dashes; unique on
    /// this LAN) with its uplink capped at `up` and its downlink at `down`
    /// bytes per second (none: uncapped).
    pub fn add_host(
        &mut self,
        label: &str,
        up: Option<u64>,
        down: Option<u64>,
    ) -> Result<Host, NetnsError> {
        let i = self.hosts.len();
        if i >= MAX_HOSTS {
            return Err(NetnsError::Full(MAX_HOSTS));
        }
        let ns = format!("{}-{label}", self.name);
        let port = format!("p{i}");
        let addr = Ipv4Addr::new(10, 100, (i / 250) as u8, (i % 250 + 2) as u8);
        self.add_namespace(&ns)?;
        run(
            "ip",
            &[
                "link",
                "add",
                "eth0",
                "netns",
                &ns,
                "type",
                "veth",
                "peer",
                "name",
                &port,
                "netns",
                &self.switch,
            ],
        )?;
        run(
            "ip",
            &[
                "-n",
                &self.switch,
                "link",
                "set",
                &port,
                "master",
                "br0",
                "up",
            ],
        )?;
        run(
            "ip",
            &[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/16"),
                "dev",
                "eth0",
            ],
        )?;
        run("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
        if let Some(rate) = up {
            shape(&ns, "eth0", rate)?;
        }
        if let Some(rate) = down {
            shape(&self.switch, &port, rate)?;
        }
        let host = Host { ns, addr, up, down };
        self.hosts.push(host.clone());
        Ok(host)
    }

    /// The hosts, in the order they were added.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The switch's namespace (where routers for other segments would
    /// attach).
    pub fn switch_namespace(&self) -> &str {
        &self.switch
    }

    /// Kills every process in the LAN's namespaces and deletes them.
    pub fn remove(mut self) {
        self.cleanup();
    }

    fn cleanup(&mut self) {
        let mine: Vec<String> = self
            .hosts
            .drain(..)
            .map(|h| h.ns)
            .chain(std::iter::once(self.switch.clone()))
            .collect();
        if let Ok(mut live) = LIVE.lock() {
            live.retain(|ns| !mine.contains(ns));
        }
        for ns in &mine {
            remove_namespace(ns);
        }
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Namespaces of this module's that exist now (for tests and checks).
pub fn existing() -> Vec<String> {
    Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().next())
                .filter(|n| n.starts_with(PREFIX))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two hosts reach each other over the switch; the uplink carries its
    /// qdisc; everything is gone after drop.
    #[test]
    fn hosts_on_a_switch_talk_and_are_removed() {
        if let Err(e) = available() {
            eprintln!("skipped: {e}");
            return;
        }
        let mut lan = Lan::create().unwrap();
        let a = lan.add_host("a", Some(1_000_000), None).unwrap();
        let b = lan.add_host("b", None, Some(2_000_000)).unwrap();
        let listener = b
            .run_in(|| async { std::net::TcpListener::bind("0.0.0.0:0") })
            .unwrap()
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let target = std::net::SocketAddr::from((b.addr, port));
        let connected = a
            .run_in(|| async move { tokio::net::TcpStream::connect(target).await.map(|_| ()) })
            .unwrap();
        assert!(connected.is_ok(), "{connected:?}");
        // Not reachable from outside the LAN (this namespace).
        assert!(std::net::TcpStream::connect_timeout(
            &target,
            std::time::Duration::from_millis(200)
        )
        .is_err());
        let qdisc = Command::new("tc")
            .args(["-n", &a.ns, "qdisc", "show", "dev", "eth0"])
            .output()
            .unwrap();
        let qdisc = String::from_utf8_lossy(&qdisc.stdout);
        assert!(qdisc.contains("tbf") && qdisc.contains("8Mbit"), "{qdisc}");
        let names: Vec<String> = lan.hosts().iter().map(|h| h.ns.clone()).collect();
        drop(listener);
        drop(lan);
        let left = existing();
        assert!(names.iter().all(|n| !left.contains(n)), "{left:?}");
    }
}
