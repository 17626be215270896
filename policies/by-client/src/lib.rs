//! A routing policy by client address.
//!
//! Settings:
//! - `deny`: comma-separated IPv4 CIDRs whose clients are refused;
//! - `client.<a.b.c.d/n>`: the pool for clients in that network (the most
//!   specific network wins);
//! - `user.<name>`: the pool for that user, when no network matched;
//! - `default`: the pool for everyone else.
//!
//! ```toml
//! [policy.settings]
//! deny = "10.66.0.0/16"
//! "client.127.0.0.0/8" = "master"
//! "user.mysqlslave" = "replicas"
//! ```
//!
//! The host gives settings by key only, so the networks to try are derived
//! from the client's address: its /32, /31, ... /0 in turn.

#[cfg(target_arch = "wasm32")]
mod guest {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "router",
    });

    use switchyard::policy::host;

    struct ByClient;

    impl Guest for ByClient {
        fn route(user: String, _db: Option<String>, client_addr: String) -> Result<String, String> {
            super::route(&user, &client_addr, |k| host::setting(k))
        }
    }

    export!(ByClient);
}

/// The decision, with settings read through `setting`.
pub fn route(
    user: &str,
    client_addr: &str,
    setting: impl Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let ip = parse_ip(client_addr);
    if let (Some(ip), Some(deny)) = (ip, setting("deny"))
        && deny
            .split(',')
            .filter_map(|c| parse_cidr(c.trim()))
            .any(|(net, len)| in_net(ip, net, len))
    {
        return Err(format!(
            "Switchyard: clients from {client_addr} are not allowed"
        ));
    }
    if let Some(ip) = ip {
        for len in (0..=32u32).rev() {
            let net = if len == 0 {
                0
            } else {
                ip & (u32::MAX << (32 - len))
            };
            let [a, b, c, d] = net.to_be_bytes();
            if let Some(pool) = setting(&format!("client.{a}.{b}.{c}.{d}/{len}")) {
                return Ok(pool);
            }
        }
    }
    setting(&format!("user.{user}"))
        .or_else(|| setting("default"))
        .ok_or_else(|| format!("Switchyard: no pool for user '{user}' from {client_addr}"))
}

/// The IPv4 address of `ip:port`, also of `[::ffff:a.b.c.d]:port` (an
/// IPv4 client of a dual-stack listener); other IPv6 clients match no
/// network.
fn parse_ip(addr: &str) -> Option<u32> {
    let host = match addr.strip_prefix('[') {
        Some(v6) => {
            let inner = v6.split_once(']').map_or(v6, |(h, _)| h);
            let lower = inner.to_ascii_lowercase();
            let v4 = lower.strip_prefix("::ffff:")?;
            return parse_ip(v4);
        }
        None => addr.rsplit_once(':').map_or(addr, |(h, _)| h),
    };
    let parts: Vec<u8> = host.split('.').filter_map(|p| p.parse().ok()).collect();
    match parts.as_slice() {
        [a, b, c, d] if host.split('.').count() == 4 => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

fn parse_cidr(s: &str) -> Option<(u32, u32)> {
    let (ip, len) = s.split_once('/')?;
    let len: u32 = len.parse().ok().filter(|l| *l <= 32)?;
    Some((parse_ip(ip)?, len))
}

fn in_net(ip: u32, net: u32, len: u32) -> bool {
    len == 0 || (ip ^ net) >> (32 - len) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn most_specific_network_then_user_then_default() {
        let s = settings(&[
            ("client.127.0.0.0/8", "loop"),
            ("client.127.0.0.2/32", "two"),
            ("user.u", "users"),
            ("default", "rest"),
            ("deny", "10.0.0.0/8, 192.168.1.7/32"),
        ]);
        assert_eq!(route("u", "127.0.0.1:5000", &s), Ok("loop".into()));
        assert_eq!(route("u", "127.0.0.2:5000", &s), Ok("two".into()));
        assert_eq!(route("u", "172.16.0.1:1", &s), Ok("users".into()));
        assert_eq!(route("x", "172.16.0.1:1", &s), Ok("rest".into()));
        assert_eq!(route("x", "[::1]:1", &s), Ok("rest".into()));
        // An IPv4 client seen through a dual-stack listener is still that
        // IPv4 client: routed and denied as such.
        assert_eq!(route("u", "[::ffff:127.0.0.2]:5000", &s), Ok("two".into()));
        assert!(route("u", "[::FFFF:10.1.2.3]:5000", &s).is_err());
        assert!(route("u", "[::ffff:192.168.1.7]:1", &s).is_err());
        assert!(route("u", "10.1.2.3:4", &s).is_err());
        assert!(route("u", "192.168.1.7:4", &s).is_err());
        assert_eq!(route("u", "192.168.1.8:4", &s), Ok("users".into()));
        assert!(route("x", "1.2.3.4:5", settings(&[])).is_err());
    }
}
