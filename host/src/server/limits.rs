//! Per-user session limits and the failed-login throttle.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::ThrottleConfig;

/// Sessions per user, for `max_connections_per_user` and `/status`.
#[derive(Debug, Default)]
pub struct UserSessions {
    counts: Mutex<HashMap<String, u32>>,
}

/// A session's place in its user's count, given back on drop (to the
/// fleet store too, when it was counted there).
#[derive(Debug)]
pub struct UserClaim {
    owner: Arc<UserSessions>,
    user: Arc<str>,
    fleet: Option<crate::fleet::Store>,
}

impl UserClaim {
    /// The user counted.
    pub fn user(&self) -> &Arc<str> {
        &self.user
    }

    /// The session was counted in the fleet store too.
    pub fn counted_in(&mut self, store: crate::fleet::Store) {
        self.fleet = Some(store);
    }
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
            user: Arc::from(user),
            fleet: None,
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
        if let Some(store) = &self.fleet {
            store.release(&self.user);
        }
        let mut counts = self.owner.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&*self.user) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&*self.user);
            }
        }
    }
}

/// Most client addresses (or IPv6 prefixes) tracked at once; past it the
/// entry least recently touched is evicted, so the table cannot be used to
/// exhaust memory and a new address is always counted.
const MAX_TRACKED: usize = 65_536;

/// The address a client is counted by: IPv4 as it is (an IPv4-mapped IPv6
/// address as its IPv4 address), IPv6 by its first `v6_prefix` bits, since
/// one host commonly holds a whole /64.
pub fn client_key(ip: IpAddr, v6_prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6);
                let prefix = u32::from(v6_prefix.min(128));
                let mask = match prefix {
                    0 => 0,
                    p => u128::MAX << (128 - p),
                };
                IpAddr::V6(std::net::Ipv6Addr::from(bits & mask))
            }
        },
    }
}

#[derive(Debug)]
struct Entry {
    window_start: Instant,
    failures: u32,
    blocked_until: Option<Instant>,
    /// Its place in `Table::order` (the latest one).
    stamp: u64,
}

#[derive(Debug, Default)]
struct Table {
    entries: HashMap<IpAddr, Entry>,
    /// Keys in the order they were last touched, with the stamp of that
    /// touch; a pair whose stamp is no longer its entry's is stale.
    order: VecDeque<(IpAddr, u64)>,
    next_stamp: u64,
}

impl Table {
    /// Records a touch of `key`'s entry (which exists).
    fn touch(&mut self, key: IpAddr) {
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        if let Some(e) = self.entries.get_mut(&key) {
            e.stamp = stamp;
        }
        self.order.push_back((key, stamp));
        // Stale pairs are dropped once they outnumber the live ones, which
        // keeps the queue's length within twice the table's (amortized
        // constant work per touch).
        if self.order.len() > 2 * self.entries.len() + 64 {
            let entries = &self.entries;
            self.order
                .retain(|(k, s)| entries.get(k).is_some_and(|e| e.stamp == *s));
        }
    }

    /// Evicts the least recently touched entries until there is room for
    /// one more.
    fn make_room(&mut self, max: usize) {
        while self.entries.len() >= max {
            let Some((key, stamp)) = self.order.pop_front() else {
                break;
            };
            if self.entries.get(&key).is_some_and(|e| e.stamp == stamp) {
                self.entries.remove(&key);
            }
        }
    }
}

/// Failed logins per client address (IPv6: per prefix); too many within a
/// window block the address for a while. Every operation is constant work
/// (amortized) under the lock.
#[derive(Debug)]
pub struct Throttle {
    table: Mutex<Table>,
    max_tracked: usize,
}

impl Default for Throttle {
    fn default() -> Self {
        Self::with_capacity(MAX_TRACKED)
    }
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
    /// A throttle that tracks at most `max_tracked` addresses.
    pub fn with_capacity(max_tracked: usize) -> Self {
        Self {
            table: Mutex::default(),
            max_tracked: max_tracked.max(1),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `key`'s entry, made (room made for it) if it has none, touched.
    fn entry<'t>(&self, t: &'t mut Table, key: IpAddr, now: Instant) -> Option<&'t mut Entry> {
        if !t.entries.contains_key(&key) {
            t.make_room(self.max_tracked);
            t.entries.insert(
                key,
                Entry {
                    window_start: now,
                    failures: 0,
                    blocked_until: None,
                    stamp: 0,
                },
            );
        }
        t.touch(key);
        t.entries.get_mut(&key)
    }

    /// Whether `key` (see [`client_key`]) may try to log in now.
    pub fn check(&self, key: IpAddr, now: Instant) -> Verdict {
        let mut t = self.table();
        let Some(e) = t.entries.get(&key) else {
            return Verdict::Allow;
        };
        match e.blocked_until {
            Some(until) if until > now => Verdict::Blocked(until - now),
            Some(_) => {
                t.entries.remove(&key);
                tracing::info!(client_ip = %key, "client address no longer blocked");
                Verdict::Allow
            }
            None => Verdict::Allow,
        }
    }

    /// Counts a failed login from `key`; returns true when this failure
    /// blocks the address.
    pub fn failure(&self, key: IpAddr, config: &ThrottleConfig, now: Instant) -> bool {
        if config.max_failures == 0 {
            return false;
        }
        let window = Duration::from_millis(config.window_ms);
        let mut t = self.table();
        let Some(e) = self.entry(&mut t, key, now) else {
            return false;
        };
        if let Some(until) = e.blocked_until {
            if until > now {
                return false;
            }
            // The block is over: this failure starts a new window.
            e.blocked_until = None;
            e.window_start = now;
            e.failures = 0;
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

    /// A login from `key` that succeeded (the backend accepted it) clears
    /// its failures; a block stays.
    /// True when it had failures to clear.
    pub fn success(&self, key: IpAddr) -> bool {
        let mut t = self.table();
        if t.entries
            .get(&key)
            .is_some_and(|e| e.blocked_until.is_none())
        {
            return t.entries.remove(&key).is_some();
        }
        false
    }

    /// Blocks `key` for `left` from `now` (a block another instance made,
    /// through the fleet store); a longer block in force stays. True when
    /// the address was not blocked before.
    pub fn block(&self, key: IpAddr, left: Duration, now: Instant) -> bool {
        let until = now + left;
        let mut t = self.table();
        let Some(e) = self.entry(&mut t, key, now) else {
            return false;
        };
        let was = e.blocked_until.is_some_and(|u| u > now);
        if e.blocked_until.is_none_or(|u| u < until) {
            e.blocked_until = Some(until);
        }
        !was
    }

    /// Every address blocked now, with how long it stays blocked (for the
    /// fleet store, when it returns: a scan of the table).
    pub fn blocks(&self, now: Instant) -> Vec<(IpAddr, Duration)> {
        self.table()
            .entries
            .iter()
            .filter_map(|(k, e)| Some((*k, e.blocked_until?.checked_duration_since(now)?)))
            .filter(|(_, left)| !left.is_zero())
            .collect()
    }

    /// Addresses blocked now (for status pages: a scan of the table).
    pub fn blocked(&self, now: Instant) -> usize {
        self.table()
            .entries
            .values()
            .filter(|e| e.blocked_until.is_some_and(|u| u > now))
            .count()
    }

    /// Addresses tracked now.
    pub fn tracked(&self) -> usize {
        self.table().entries.len()
    }
}

/// Connections per client address (see [`client_key`]) that have not
/// finished logging in, for `[throttle] max_pending_logins`.
#[derive(Debug, Default)]
pub struct PendingLogins {
    counts: Mutex<HashMap<IpAddr, u32>>,
}

/// A connection's place in its address's count of pending logins, given
/// back on drop (when its login ends either way).
#[derive(Debug)]
pub struct PendingClaim {
    owner: Arc<PendingLogins>,
    key: IpAddr,
}

impl PendingLogins {
    /// Counts a pending login of `key`, unless it has `limit` already
    /// (0: no limit).
    pub fn claim(self: &Arc<Self>, key: IpAddr, limit: u32) -> Option<PendingClaim> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(key).or_insert(0);
        if limit != 0 && *n >= limit {
            return None;
        }
        *n += 1;
        Some(PendingClaim {
            owner: Arc::clone(self),
            key,
        })
    }

    /// Pending logins of `key` now.
    pub fn count(&self, key: IpAddr) -> u32 {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.get(&key).copied().unwrap_or(0)
    }
}

impl Drop for PendingClaim {
    fn drop(&mut self) {
        let mut counts = self.owner.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_from_elsewhere_apply_and_list() {
        let t = Throttle::default();
        let now = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(t.block(a, Duration::from_secs(10), now));
        assert!(!t.block(a, Duration::from_secs(1), now), "already blocked");
        assert!(matches!(
            t.check(a, now + Duration::from_secs(5)),
            Verdict::Blocked(_)
        ));
        assert_eq!(t.blocks(now), vec![(a, Duration::from_secs(10))]);
        assert_eq!(t.check(a, now + Duration::from_secs(11)), Verdict::Allow);
        assert!(t.blocks(now + Duration::from_secs(11)).is_empty());
    }

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

    fn config(max_failures: u32) -> ThrottleConfig {
        ThrottleConfig {
            max_failures,
            window_ms: 10_000,
            block_ms: 5_000,
            ..ThrottleConfig::default()
        }
    }

    #[test]
    fn ipv6_addresses_of_one_prefix_count_together() {
        let t = Throttle::default();
        let config = config(3);
        let now = Instant::now();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a, 64), client_key(b, 64));
        assert_ne!(client_key(a, 64), client_key(c, 64));
        assert_ne!(client_key(a, 128), client_key(b, 128));
        assert_eq!(client_key(a, 0), client_key(c, 0));
        assert!(!t.failure(client_key(a, 64), &config, now));
        assert!(!t.failure(client_key(b, 64), &config, now));
        assert!(t.failure(client_key(b, 64), &config, now));
        assert!(matches!(
            t.check(client_key(a, 64), now),
            Verdict::Blocked(_)
        ));
        assert_eq!(t.check(client_key(c, 64), now), Verdict::Allow);
        // An IPv4-mapped address is its IPv4 address.
        let mapped: IpAddr = "::ffff:127.0.0.7".parse().unwrap();
        assert_eq!(
            client_key(mapped, 64),
            "127.0.0.7".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn a_full_table_evicts_the_oldest_and_counts_the_new() {
        let t = Throttle::with_capacity(100);
        let config = config(2);
        let now = Instant::now();
        let ip = |i: u32| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        for i in 0..1_000 {
            assert!(!t.failure(ip(i), &config, now));
            assert!(t.tracked() <= 100);
        }
        // A new address is still counted and blocked...
        let attacker: IpAddr = "127.0.0.66".parse().unwrap();
        assert!(!t.failure(attacker, &config, now));
        assert!(t.failure(attacker, &config, now));
        assert!(matches!(t.check(attacker, now), Verdict::Blocked(_)));
        // ...and the oldest ones were the ones forgotten.
        // (ip(999) was still tracked: its second failure blocks it.)
        assert!(t.failure(ip(999), &config, now));
        assert!(matches!(t.check(ip(999), now), Verdict::Blocked(_)));
        assert!(!t.failure(ip(0), &config, now));
        assert_eq!(t.check(ip(0), now), Verdict::Allow);
        // Successes and churn keep the order queue bounded.
        for i in 0..10_000 {
            t.failure(ip(5_000 + i % 50), &config, now);
            t.success(ip(5_000 + i % 50));
        }
        let tracked = t.tracked();
        assert!(t.table().order.len() <= 2 * tracked + 65);
    }

    #[test]
    fn pending_logins_are_limited_per_address_and_given_back() {
        let p = Arc::new(PendingLogins::default());
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let one = p.claim(a, 2).unwrap();
        let _two = p.claim(a, 2).unwrap();
        assert!(p.claim(a, 2).is_none());
        assert!(p.claim(b, 2).is_some());
        drop(one);
        assert_eq!(p.count(a), 1);
        assert!(p.claim(a, 2).is_some());
        // 0: no limit.
        let many: Vec<_> = (0..100).map(|_| p.claim(b, 0).unwrap()).collect();
        assert_eq!(p.count(b), 100);
        drop(many);
        assert_eq!(p.count(b), 0);
    }

    #[test]
    fn throttle_blocks_and_expires() {
        let t = Throttle::default();
        let config = config(3);
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
