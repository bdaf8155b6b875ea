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
//! Routers ([`Lan::add_router`]) put private networks behind the switch:
//! a router is a namespace with `eth0` on the switch (its public address)
//! and one interface per host behind it (192.168.R.0/24, a /24 per
//! router), IPv4 forwarding on, and nftables rules (`nft`, Debian package
//! nftables) for its kind of NAT ([`NatKind`]): masquerade on `eth0`
//! (port-preserving for a home router, random ports for a strict one) and
//! a filter that drops new inbound connections on `eth0`, as a real
//! router does (a Linux namespace would answer them with a RST, which
//! breaks TCP simultaneous open).
//!
//! Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN): [`available`] says why
//! not in one line.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
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
    #[error("`nft` is not installed (Debian package nftables): routers need it")]
    NoNft,
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
    succeeded(command, out)
}

/// `Ok` if `command` exited with success, else its status and stderr.
fn succeeded(command: String, out: std::process::Output) -> Result<(), NetnsError> {
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

/// Runs `program args` with `input` on its stdin, failing with its stderr.
fn run_with_input(program: &str, args: &[&str], input: &str) -> Result<(), NetnsError> {
    use std::io::Write;
    let command = format!("{program} {}", args.join(" "));
    let io = |reason| NetnsError::Io {
        command: command.clone(),
        reason,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).map_err(io)?;
    }
    let out = child.wait_with_output().map_err(io)?;
    succeeded(command, out)
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
    /// Its IPv4 address on the LAN (`0.0.0.0` on an IPv6-only host).
    pub addr: Ipv4Addr,
    /// Its IPv6 address on the LAN (fd00:100::/64), if it has one: every
    /// host on the switch does (where the kernel has IPv6), hosts behind a
    /// router do not (no NAT66 here).
    pub addr6: Option<Ipv6Addr>,
    /// Its uplink cap, bytes per second (none: the link's speed).
    pub up: Option<u64>,
    /// Its downlink cap, bytes per second.
    pub down: Option<u64>,
}

impl Host {
    /// Whether it has an IPv4 address (not an IPv6-only host).
    pub fn has_ipv4(&self) -> bool {
        !self.addr.is_unspecified()
    }

    /// Its address on the switch: IPv4 if it has one, else IPv6.
    pub fn ip(&self) -> IpAddr {
        match (self.has_ipv4(), self.addr6) {
            (false, Some(v6)) => IpAddr::V6(v6),
            _ => IpAddr::V4(self.addr),
        }
    }

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
    /// Namespaces on the switch so far (hosts and routers): numbers their
    /// ports and addresses.
    attached: usize,
    /// Routers and the hosts behind them, removed with the LAN.
    others: Vec<String>,
    /// Routers made so far (numbers their private networks).
    routers: usize,
}

/// The kind of NAT a router does (what `lab reachability` varies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatKind {
    /// A home router: endpoint-independent mapping that keeps the inside
    /// port when it is free (`masquerade`), new inbound connections
    /// dropped. TCP hole punching works through it.
    Home,
    /// A strict (symmetric, carrier-grade-like) NAT: a random outside port
    /// per connection (`masquerade random`), new inbound connections
    /// dropped. Hole punching cannot predict its ports.
    Strict,
}

impl NatKind {
    /// `home` or `strict`.
    pub fn label(self) -> &'static str {
        match self {
            NatKind::Home => "home",
            NatKind::Strict => "strict",
        }
    }
}

/// A NAT router on a [`Lan`]: its public side is a port of the switch.
#[derive(Debug, Clone)]
pub struct Router {
    /// Its namespace and public address (`eth0` on the switch).
    pub outside: Host,
    pub kind: NatKind,
    /// Its number: the private network behind it is 192.168.`net`.0/24.
    net: u8,
    /// Hosts behind it so far.
    inside: usize,
}

/// The most routers on one LAN, and hosts behind one router.
pub const MAX_ROUTERS: usize = 250;

impl Router {
    /// Its public address: what hosts behind it appear as on the switch.
    pub fn public_addr(&self) -> Ipv4Addr {
        self.outside.addr
    }
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
            attached: 0,
            others: Vec::new(),
            routers: 0,
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
        let ns = format!("{}-{label}", self.name);
        let host = self.attach(&ns, up, down, true)?;
        self.hosts.push(host.clone());
        Ok(host)
    }

    /// Adds an IPv6-only host named `label` on the switch: an address in
    /// fd00:100::/64 and no IPv4 address. Fails when the kernel has no
    /// IPv6.
    pub fn add_host_v6only(&mut self, label: &str) -> Result<Host, NetnsError> {
        let ns = format!("{}-{label}", self.name);
        let host = self.attach(&ns, None, None, false)?;
        if host.addr6.is_none() {
            return Err(NetnsError::Command {
                command: format!("ip -n {ns} -6 addr add"),
                status: "no IPv6".into(),
                stderr: "this kernel gives namespaces no IPv6 address".into(),
            });
        }
        self.hosts.push(host.clone());
        Ok(host)
    }

    /// Makes namespace `ns` a port of the switch with the next address.
    fn attach(
        &mut self,
        ns: &str,
        up: Option<u64>,
        down: Option<u64>,
        ipv4: bool,
    ) -> Result<Host, NetnsError> {
        let i = self.attached;
        if i >= MAX_HOSTS {
            return Err(NetnsError::Full(MAX_HOSTS));
        }
        self.attached += 1;
        let port = format!("p{i}");
        let addr = Ipv4Addr::new(10, 100, (i / 250) as u8, (i % 250 + 2) as u8);
        self.add_namespace(ns)?;
        run(
            "ip",
            &[
                "link",
                "add",
                "eth0",
                "netns",
                ns,
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
        if ipv4 {
            run(
                "ip",
                &[
                    "-n",
                    ns,
                    "addr",
                    "add",
                    &format!("{addr}/16"),
                    "dev",
                    "eth0",
                ],
            )?;
        }
        // IPv6 beside it: fd00:100::N/64, usable at once (no duplicate
        // address detection), and a default route on the link so that the
        // host has a source address toward "the Internet". A kernel
        // without IPv6 leaves the host IPv4-only.
        let n = i + 2;
        let addr6 = Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, (n >> 16) as u16, n as u16);
        let with_v6 = run(
            "ip",
            &[
                "-n",
                ns,
                "-6",
                "addr",
                "add",
                &format!("{addr6}/64"),
                "dev",
                "eth0",
                "nodad",
            ],
        )
        .is_ok();
        run("ip", &["-n", ns, "link", "set", "eth0", "up"])?;
        let addr6 = with_v6
            .then(|| {
                run(
                    "ip",
                    &["-n", ns, "-6", "route", "add", "default", "dev", "eth0"],
                )
            })
            .transpose()?
            .map(|()| addr6);
        let addr = if ipv4 { addr } else { Ipv4Addr::UNSPECIFIED };
        if let Some(rate) = up {
            shape(ns, "eth0", rate)?;
        }
        if let Some(rate) = down {
            shape(&self.switch, &port, rate)?;
        }
        Ok(Host {
            ns: ns.to_string(),
            addr,
            addr6,
            up,
            down,
        })
    }

    /// Adds a NAT router named `label` with its public side on the switch
    /// (see the module's notes for its rules). Hosts go behind it with
    /// [`Lan::add_behind`]. Needs `nft`.
    pub fn add_router(&mut self, label: &str, kind: NatKind) -> Result<Router, NetnsError> {
        if self.routers >= MAX_ROUTERS {
            return Err(NetnsError::Full(MAX_ROUTERS));
        }
        if Command::new("nft")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            return Err(NetnsError::NoNft);
        }
        let net = (self.routers + 1) as u8;
        self.routers += 1;
        let ns = format!("{}-{label}", self.name);
        self.others.push(ns.clone());
        let outside = self.attach(&ns, None, None, true)?;
        run(
            "ip",
            &[
                "netns",
                "exec",
                &ns,
                "sysctl",
                "-q",
                "-w",
                "net.ipv4.ip_forward=1",
            ],
        )?;
        let random = match kind {
            NatKind::Home => "",
            NatKind::Strict => " random",
        };
        // Masquerade what leaves by eth0; drop what arrives there unasked
        // (to the router itself and to the hosts behind it).
        let rules = format!(
            r#"table ip nat {{
  chain post {{
    type nat hook postrouting priority 100;
    oifname "eth0" masquerade{random}
  }}
}}
table inet filter {{
  chain input {{
    type filter hook input priority 0; policy accept;
    iifname "eth0" ct state new drop
  }}
  chain forward {{
    type filter hook forward priority 0; policy accept;
    iifname "eth0" ct state new drop
  }}
}}
"#
        );
        run_with_input("ip", &["netns", "exec", &ns, "nft", "-f", "-"], &rules)?;
        Ok(Router {
            outside,
            kind,
            net,
            inside: 0,
        })
    }

    /// Adds a host named `label` behind `router`: its `eth0` on the
    /// router's private network (192.168.N.2 and up), its default route
    /// through the router (192.168.N.1).
    pub fn add_behind(&mut self, router: &mut Router, label: &str) -> Result<Host, NetnsError> {
        if router.inside >= MAX_ROUTERS {
            return Err(NetnsError::Full(MAX_ROUTERS));
        }
        let i = router.inside;
        router.inside += 1;
        let ns = format!("{}-{label}", self.name);
        self.others.push(ns.clone());
        self.add_namespace(&ns)?;
        let inner = format!("in{i}");
        let rns = &router.outside.ns;
        run(
            "ip",
            &[
                "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &inner,
                "netns", rns,
            ],
        )?;
        let gateway = Ipv4Addr::new(192, 168, router.net, 1);
        let addr = Ipv4Addr::new(192, 168, router.net, (i + 2) as u8);
        // The gateway address once per router; the route to each host's
        // /32 by its own interface.
        if i == 0 {
            run(
                "ip",
                &[
                    "-n",
                    rns,
                    "addr",
                    "add",
                    &format!("{gateway}/32"),
                    "dev",
                    &inner,
                ],
            )?;
        }
        run("ip", &["-n", rns, "link", "set", &inner, "up"])?;
        run(
            "ip",
            &[
                "-n",
                rns,
                "route",
                "add",
                &format!("{addr}/32"),
                "dev",
                &inner,
                "src",
                &gateway.to_string(),
            ],
        )?;
        run(
            "ip",
            &[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/32"),
                "dev",
                "eth0",
            ],
        )?;
        run("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
        run(
            "ip",
            &[
                "-n",
                &ns,
                "route",
                "add",
                &format!("{gateway}/32"),
                "dev",
                "eth0",
            ],
        )?;
        run(
            "ip",
            &[
                "-n",
                &ns,
                "route",
                "add",
                "default",
                "via",
                &gateway.to_string(),
                "dev",
                "eth0",
            ],
        )?;
        Ok(Host {
            ns,
            addr,
            addr6: None,
            up: None,
            down: None,
        })
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
        // Hosts behind routers first, then routers, hosts, the switch.
        let mine: Vec<String> = self
            .others
            .drain(..)
            .rev()
            .chain(self.hosts.drain(..).map(|h| h.ns))
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

    /// From a host behind `router`, connects to `server` `n` times; the
    /// (local, as seen by the server) address pairs.
    fn connect_through(
        inside: &Host,
        server: &std::net::TcpListener,
        target: std::net::SocketAddr,
        n: usize,
    ) -> Vec<(std::net::SocketAddr, std::net::SocketAddr)> {
        (0..n)
            .map(|_| {
                let local = inside
                    .run_in(|| async move {
                        let s = std::net::TcpStream::connect_timeout(
                            &target,
                            std::time::Duration::from_secs(2),
                        )?;
                        let local = s.local_addr()?;
                        Ok::<_, std::io::Error>((s, local))
                    })
                    .unwrap()
                    .unwrap();
                let (_, seen) = server.accept().unwrap();
                (local.1, seen)
            })
            .collect()
    }

    /// A home router keeps the inside port, a strict one picks new ones;
    /// both show their public address and refuse unasked connections.
    #[test]
    fn routers_translate_and_drop_unasked_connections() {
        if let Err(e) = available() {
            eprintln!("skipped: {e}");
            return;
        }
        let mut lan = Lan::create().unwrap();
        let public = lan.add_host("pub", None, None).unwrap();
        let mut home = lan.add_router("home", NatKind::Home).unwrap();
        let mut strict = lan.add_router("strict", NatKind::Strict).unwrap();
        let behind_home = lan.add_behind(&mut home, "h1").unwrap();
        let behind_strict = lan.add_behind(&mut strict, "s1").unwrap();
        let server = public
            .run_in(|| async { std::net::TcpListener::bind("0.0.0.0:0") })
            .unwrap()
            .unwrap();
        let target = std::net::SocketAddr::from((public.addr, server.local_addr().unwrap().port()));
        for (local, seen) in connect_through(&behind_home, &server, target, 3) {
            assert_eq!(seen.ip(), std::net::IpAddr::V4(home.public_addr()));
            assert_eq!(local.ip(), std::net::IpAddr::V4(behind_home.addr));
            assert_eq!(seen.port(), local.port(), "a home router keeps the port");
        }
        let strict_pairs = connect_through(&behind_strict, &server, target, 4);
        assert!(strict_pairs
            .iter()
            .all(|(_, seen)| seen.ip() == std::net::IpAddr::V4(strict.public_addr())));
        assert!(
            strict_pairs
                .iter()
                .any(|(local, seen)| local.port() != seen.port()),
            "a strict router picks its own ports: {strict_pairs:?}"
        );
        // Unasked inbound: a listener behind the home router is reachable
        // neither at the router's address nor at its own.
        let inner = behind_home
            .run_in(|| async { std::net::TcpListener::bind("0.0.0.0:0") })
            .unwrap()
            .unwrap();
        let port = inner.local_addr().unwrap().port();
        for addr in [home.public_addr(), behind_home.addr] {
            let to = std::net::SocketAddr::from((addr, port));
            let tried = public
                .run_in(|| async move {
                    std::net::TcpStream::connect_timeout(&to, std::time::Duration::from_millis(300))
                })
                .unwrap();
            assert!(tried.is_err(), "{to} answered from outside");
        }
        let names = [behind_home.ns.clone(), home.outside.ns.clone()];
        drop((server, inner));
        drop(lan);
        let left = existing();
        assert!(names.iter().all(|n| !left.contains(n)), "{left:?}");
    }

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
