//! `HOST:PORT` arguments as users type them: a host name or an IP address,
//! with or without a port (the default port of the service is added), checked
//! when the command line is parsed so that a typo is a usage error rather
//! than a connection failure later.

/// Default port of an index server (Napster's).
pub const INDEX_PORT: u16 = 8888;
/// Default port of a peer's chunk server (and overlay node).
pub const PEER_PORT: u16 = 6699;

/// Why an address argument was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("address {input:?} not understood: {problem} (use HOST:PORT or HOST, e.g. index.example.org:8888, 192.0.2.10 or [2001:db8::1]:6699)")]
pub struct AddrError {
    input: String,
    problem: &'static str,
}

/// `addr` with `port` added when it has none: `host` → `host:port`,
/// `::1` and `[::1]` → `[::1]:port`; anything else is returned as it is.
pub fn with_default_port(addr: &str, port: u16) -> String {
    let addr = addr.trim();
    if addr.parse::<std::net::SocketAddr>().is_ok() {
        return addr.to_string();
    }
    if let Ok(v6) = addr.parse::<std::net::Ipv6Addr>() {
        return format!("[{v6}]:{port}");
    }
    if addr.starts_with('[') && addr.ends_with(']') {
        return format!("{addr}:{port}");
    }
    if addr.contains(':') {
        return addr.to_string();
    }
    format!("{addr}:{port}")
}

/// Checks a `HOST:PORT` or `HOST` argument and returns it as `HOST:PORT`
/// (with `default_port` when none was given). Host names are kept, to be
/// resolved when connecting.
pub fn parse_host_port(input: &str, default_port: u16) -> Result<String, AddrError> {
    let bad = |problem| AddrError {
        input: input.to_string(),
        problem,
    };
    let full = with_default_port(input, default_port);
    if full.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(full);
    }
    let (host, port) = full.rsplit_once(':').ok_or_else(|| bad("no host"))?;
    match port.parse::<u16>() {
        Ok(0) => return Err(bad("port 0 cannot be connected to")),
        Ok(_) => {}
        Err(_) => return Err(bad("the port is not a number from 1 to 65535")),
    }
    if host.is_empty() {
        return Err(bad("the host is empty"));
    }
    if host.starts_with('[') {
        return Err(bad("the IPv6 address in brackets is not valid"));
    }
    if host.len() > 253
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
    {
        return Err(bad("the host is not an IP address or a host name"));
    }
    Ok(full)
}

/// The addresses `input` can stand for, as an index publishes them
/// (`IP:PORT`): `input` itself, then what its host name resolves to (with
/// `default_port` when it has no port). Used to browse a peer by a host name.
pub async fn resolve_candidates(input: &str, default_port: u16) -> Vec<String> {
    let full = with_default_port(input, default_port);
    let mut out = vec![input.to_string()];
    if full != input {
        out.push(full.clone());
    }
    if let Ok(addrs) = tokio::net::lookup_host(full.as_str()).await {
        for a in addrs {
            let a = std::net::SocketAddr::new(a.ip().to_canonical(), a.port()).to_string();
            if !out.contains(&a) {
                out.push(a);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_port_gets_the_default() {
        assert_eq!(with_default_port("localhost", 8888), "localhost:8888");
        assert_eq!(with_default_port("localhost:1", 8888), "localhost:1");
        assert_eq!(with_default_port("10.0.0.1", 6699), "10.0.0.1:6699");
        assert_eq!(with_default_port("::1", 6699), "[::1]:6699");
        assert_eq!(with_default_port("[::1]", 6699), "[::1]:6699");
        assert_eq!(with_default_port("[::1]:7", 6699), "[::1]:7");
    }

    #[test]
    fn nonsense_is_refused_with_the_form_to_use() {
        assert_eq!(parse_host_port("index", 8888).unwrap(), "index:8888");
        assert_eq!(parse_host_port("a.b-c:99", 8888).unwrap(), "a.b-c:99");
        for bad in [
            "",
            ":80",
            "host:0",
            "host:http",
            "ho st",
            "host:99999",
            "[zz]:1",
        ] {
            let e = parse_host_port(bad, 8888).unwrap_err().to_string();
            assert!(e.contains("HOST:PORT"), "{bad}: {e}");
        }
    }

    #[tokio::test]
    async fn host_names_resolve_to_the_form_the_index_publishes() {
        let found = resolve_candidates("localhost", 6699).await;
        assert!(
            found
                .iter()
                .any(|a| a == "127.0.0.1:6699" || a == "[::1]:6699"),
            "{found:?}"
        );
    }
}
