//! Who may hold a connection: a cap on connections in all and per source
//! address, so that one host opening idle connections cannot take every
//! place (the chunk server's and the index server's accept loops).
//!
//! A source is an IPv4 address, or an IPv6 /64 (one host usually owns a
//! whole /64, so counting single IPv6 addresses would cap nothing); an
//! IPv4-mapped IPv6 address counts as its IPv4 address. The same key is used
//! by the inbox's per-sender message limit.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};

/// The address a source is counted (and rate limited) by: IPv4 as is, IPv6
/// by its /64, IPv4-mapped IPv6 as IPv4.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("every one of the {0} connection places is taken")]
    Full(usize),
    #[error("this source address already holds {0} connections")]
    PerSource(usize),
}

/// Counts open connections in all and per source; cloneable handle.
///
/// One `Mutex<HashMap>`: an admission is one lookup and one increment, done
/// once per accepted connection, never held across an `.await`.
#[derive(Debug, Clone)]
pub struct Admission {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    total_cap: usize,
    per_source_cap: usize,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
}

impl Admission {
    /// At most `total` connections, at most `per_source` from one source
    /// (both at least 1).
    pub fn new(total: usize, per_source: usize) -> Self {
        Admission {
            inner: Arc::new(Inner {
                total_cap: total.max(1),
                per_source_cap: per_source.max(1),
                counts: Mutex::new(Counts::default()),
            }),
        }
    }

    /// Admits a connection from `ip`, or says why not. The place is given
    /// back when the returned guard is dropped.
    pub fn try_admit(&self, ip: IpAddr) -> Result<Admitted, Refused> {
        let key = source_key(ip);
        let mut counts = self.inner.counts.lock().unwrap_or_else(|p| p.into_inner());
        if counts.total >= self.inner.total_cap {
            return Err(Refused::Full(self.inner.total_cap));
        }
        let held = counts.by_source.get(&key).copied().unwrap_or(0);
        if held >= self.inner.per_source_cap {
            return Err(Refused::PerSource(self.inner.per_source_cap));
        }
        counts.by_source.insert(key, held + 1);
        counts.total += 1;
        Ok(Admitted {
            admission: self.clone(),
            key,
        })
    }

    /// Connections held now (all sources).
    pub fn held(&self) -> usize {
        self.inner
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .total
    }
}

/// One admitted connection's place; dropping it frees the place.
#[derive(Debug)]
pub struct Admitted {
    admission: Admission,
    key: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut counts = self
            .admission
            .inner
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.by_source.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                // Absent means zero: the map only holds sources with a connection.
                counts.by_source.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_in_all_and_per_source_and_places_come_back() {
        let a = Admission::new(3, 2);
        let one: IpAddr = "10.0.0.1".parse().unwrap();
        let two: IpAddr = "10.0.0.2".parse().unwrap();
        let g1 = a.try_admit(one).unwrap();
        let _g2 = a.try_admit(one).unwrap();
        assert_eq!(a.try_admit(one).unwrap_err(), Refused::PerSource(2));
        let _g3 = a.try_admit(two).unwrap();
        assert_eq!(a.try_admit(two).unwrap_err(), Refused::Full(3));
        drop(g1);
        assert_eq!(a.held(), 2);
        let _g4 = a.try_admit(one).unwrap();
    }

    #[test]
    fn an_ipv6_host_is_counted_by_its_slash_64() {
        let a = Admission::new(10, 1);
        let _g = a.try_admit("2001:db8:1:2::1".parse().unwrap()).unwrap();
        assert!(a.try_admit("2001:db8:1:2::ffff".parse().unwrap()).is_err());
        assert!(a.try_admit("2001:db8:1:3::1".parse().unwrap()).is_ok());
        let _v4 = a.try_admit("10.1.1.1".parse().unwrap()).unwrap();
        assert!(a.try_admit("::ffff:10.1.1.1".parse().unwrap()).is_err());
    }
}
