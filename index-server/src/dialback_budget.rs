//! How many reachability dial-backs (issue 15) one requester may cause.
//!
//! Each checked login makes the index connect out to the addresses the
//! peer asks to publish, `--advertise` included, which may name any host.
//! Without a cap, one client logging in over and over would turn the index
//! into a port scanner or a connection flooder aimed at a third party. So
//! each requester (an IPv4 address, or an IPv6 /64, which one subscriber
//! usually holds whole) gets a budget of dial-backs per minute to hosts
//! other than its own; past it, a login's addresses on other hosts are
//! left unproven at once, saying why. Dial-backs to the requester's own
//! address are not counted: they reach only its own host, and a lab of
//! hundreds of peers on one machine logs in from one address.
//!
//! Fixed one-minute windows per requester, in a map that forgets windows
//! older than a minute once it holds [`MAX_TRACKED`] requesters; past that
//! many requesters in one minute, new ones are refused (fail closed: the
//! map never grows without bound).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The length of one budget window.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Requesters tracked at once (about 48 bytes each: a few MiB at most).
pub const MAX_TRACKED: usize = 65_536;

/// Dial-backs left to each requester in the current minute.
#[derive(Default)]
pub struct DialbackBudget {
    windows: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

/// The key a requester is counted by: its IPv4 address, or the /64 its
/// IPv6 address is in (an IPv4-mapped IPv6 address counts as IPv4).
pub fn requester_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl DialbackBudget {
    /// Takes `n` dial-backs from `ip`'s budget of `per_minute`: `true` if
    /// they fit in the current window (and are now spent), `false` if not
    /// (nothing is spent). `per_minute == 0` allows none.
    pub fn take(&self, ip: IpAddr, n: u32, per_minute: u32, now: Instant) -> bool {
        let key = requester_key(ip);
        let mut windows = match self.windows.lock() {
            Ok(w) => w,
            Err(poisoned) => poisoned.into_inner(),
        };
        if !windows.contains_key(&key) && windows.len() >= MAX_TRACKED {
            windows.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
            if windows.len() >= MAX_TRACKED {
                return false;
            }
        }
        let (start, used) = windows.entry(key).or_insert((now, 0));
        if now.duration_since(*start) >= WINDOW {
            *start = now;
            *used = 0;
        }
        match used.checked_add(n) {
            Some(total) if total <= per_minute => {
                *used = total;
                true
            }
            _ => false,
        }
    }

    /// Requesters tracked now.
    pub fn tracked(&self) -> usize {
        match self.windows.lock() {
            Ok(w) => w.len(),
            Err(poisoned) => poisoned.into_inner().len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_requester_gets_its_budget_each_minute() {
        let b = DialbackBudget::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t = Instant::now();
        assert!(b.take(ip, 2, 5, t));
        assert!(b.take(ip, 3, 5, t));
        assert!(!b.take(ip, 1, 5, t), "over the budget");
        // Another requester has its own.
        assert!(b.take("192.0.2.2".parse().unwrap(), 5, 5, t));
        // A new window starts a minute later.
        assert!(b.take(ip, 5, 5, t + WINDOW));
        assert!(
            !b.take(ip, 1, 0, t + 2 * WINDOW),
            "a budget of 0 allows none"
        );
    }

    #[test]
    fn an_ipv6_slash_64_is_one_requester() {
        let b = DialbackBudget::default();
        let t = Instant::now();
        assert!(b.take("2001:db8:1:2::1".parse().unwrap(), 3, 4, t));
        assert!(!b.take("2001:db8:1:2:ffff::9".parse().unwrap(), 2, 4, t));
        assert!(b.take("2001:db8:1:3::1".parse().unwrap(), 4, 4, t));
        assert_eq!(
            requester_key("::ffff:192.0.2.7".parse().unwrap()),
            "192.0.2.7".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn the_map_stays_bounded_and_forgets_old_windows() {
        let b = DialbackBudget::default();
        let t = Instant::now();
        for i in 0..MAX_TRACKED as u32 {
            assert!(b.take(IpAddr::V4(i.into()), 1, 1, t));
        }
        let newcomer: IpAddr = "203.0.113.9".parse().unwrap();
        assert!(
            !b.take(newcomer, 1, 1, t),
            "full within the minute: refused"
        );
        assert_eq!(b.tracked(), MAX_TRACKED);
        assert!(b.take(newcomer, 1, 1, t + WINDOW), "old windows forgotten");
        assert_eq!(b.tracked(), 1);
    }
}
