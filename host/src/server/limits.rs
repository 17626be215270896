//! Per-user session limits and the failed-login throttle.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::ThrottleConfig;

/// Sessions per user, for `max_connections_per_user` and `/status`.
#[derive(Debug, Default)]
pub struct UserSessions {
    counts: Mutex<HashMap<String, u32>>,
}

/// A session's place in its user's count, given back on drop.
#[derive(Debug)]
pub struct UserClaim {
    owner: Arc<UserSessions>,
    user: String,
}

impl UserSessions {
    /// Counts a session of `user`, unless it already has `limit` of them.
    pub fn claim(self: &Arc<Self>, user: &str, limit: Option<u32>) -> Result<UserClaim, u32> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(user.to_owned()).or_insert(0);
        if let Some(limit) = limit
            && *n >= limit
        {
            return Err(limit);
        }
        *n += 1;
        Ok(UserClaim {
            owner: Arc::clone(self),
            user: user.to_owned(),
        })
    }

    /// Sessions per user, by name.
    pub fn snapshot(&self) -> Vec<(String, u32)> {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<(String, u32)> = counts.iter().map(|(u, n)| (u.clone(), *n)).collect();
        v.sort();
        v
    }
}

impl Drop for UserClaim {
    fn drop(&mut self) {
        let mut counts = self.owner.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.user);
            }
        }
    }
}

/// Most client addresses tracked at once; beyond it, new addresses are not
/// tracked until old entries expire (the table cannot be used to exhaust
/// memory).
const MAX_TRACKED: usize = 65_536;

#[derive(Debug)]
struct Entry {
    window_start: Instant,
    failures: u32,
    blocked_until: Option<Instant>,
}

/// Failed logins per client address; too many within a window block the
/// address for a while.
#[derive(Debug, Default)]
pub struct Throttle {
    entries: Mutex<HashMap<IpAddr, Entry>>,
}

/// What the throttle says of an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Let it log in.
    Allow,
    /// Refuse it for this much longer.
    Blocked(Duration),
}

impl Throttle {
    /// Whether `ip` may try to log in now.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Verdict {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let Some(e) = entries.get(&ip) else {
            return Verdict::Allow;
        };
        match e.blocked_until {
            Some(until) if until > now => Verdict::Blocked(until - now),
            Some(_) => {
                entries.remove(&ip);
                tracing::info!(client_ip = %ip, "client address no longer blocked");
                Verdict::Allow
            }
            None => Verdict::Allow,
        }
    }

    /// Counts a failed login from `ip`; returns true when this failure
    /// blocks the address.
    pub fn failure(&self, ip: IpAddr, config: &ThrottleConfig, now: Instant) -> bool {
        if config.max_failures == 0 {
            return false;
        }
        let window = Duration::from_millis(config.window_ms);
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MAX_TRACKED && !entries.contains_key(&ip) {
            entries.retain(|_, e| match e.blocked_until {
                Some(until) => until > now,
                None => now.duration_since(e.window_start) < window,
            });
            if entries.len() >= MAX_TRACKED {
                return false;
            }
        }
        let e = entries.entry(ip).or_insert(Entry {
            window_start: now,
            failures: 0,
            blocked_until: None,
        });
        if e.blocked_until.is_some() {
            return false;
        }
        if now.duration_since(e.window_start) >= window {
            e.window_start = now;
            e.failures = 0;
        }
        e.failures += 1;
        if e.failures >= config.max_failures {
            e.blocked_until = Some(now + Duration::from_millis(config.block_ms));
            return true;
        }
        false
    }

    /// A successful login from `ip` clears its failures.
    pub fn success(&self, ip: IpAddr) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.get(&ip).is_some_and(|e| e.blocked_until.is_none()) {
            entries.remove(&ip);
        }
    }

    /// Addresses blocked now.
    pub fn blocked(&self, now: Instant) -> usize {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .values()
            .filter(|e| e.blocked_until.is_some_and(|u| u > now))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_limits_count_and_release() {
        let u = Arc::new(UserSessions::default());
        let a = u.claim("a", Some(2)).unwrap();
        let _b = u.claim("a", Some(2)).unwrap();
        assert_eq!(u.claim("a", Some(2)).unwrap_err(), 2);
        let _c = u.claim("c", None).unwrap();
        assert_eq!(u.snapshot(), vec![("a".into(), 2), ("c".into(), 1)]);
        drop(a);
        assert!(u.claim("a", Some(2)).is_ok());
    }

    #[test]
    fn throttle_blocks_and_expires() {
        let t = Throttle::default();
        let config = ThrottleConfig {
            max_failures: 3,
            window_ms: 10_000,
            block_ms: 5_000,
        };
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        let other: IpAddr = "127.0.0.10".parse().unwrap();
        let t0 = Instant::now();
        assert!(!t.failure(ip, &config, t0));
        assert!(!t.failure(ip, &config, t0));
        // A success resets the count.
        t.success(ip);
        assert!(!t.failure(ip, &config, t0));
        assert!(!t.failure(ip, &config, t0));
        assert!(t.failure(ip, &config, t0 + Duration::from_secs(1)));
        assert_eq!(t.blocked(t0 + Duration::from_secs(1)), 1);
        assert!(
            matches!(t.check(ip, t0 + Duration::from_secs(2)), Verdict::Blocked(d) if d == Duration::from_secs(4))
        );
        assert_eq!(t.check(other, t0), Verdict::Allow);
        // A success while blocked does not unblock.
        t.success(ip);
        assert!(matches!(
            t.check(ip, t0 + Duration::from_secs(3)),
            Verdict::Blocked(_)
        ));
        assert_eq!(t.check(ip, t0 + Duration::from_secs(7)), Verdict::Allow);
        // Failures spread beyond the window do not add up.
        for i in 0..6 {
            assert!(!t.failure(other, &config, t0 + Duration::from_secs(6 * i)));
        }
        let off = ThrottleConfig {
            max_failures: 0,
            ..config
        };
        for _ in 0..10 {
            assert!(!t.failure(ip, &off, t0));
        }
    }
}
