//! Routes users like the default policy, but when the chosen pool has no
//! healthy backend (as `pools()` reports it) and a fallback is configured,
//! uses the fallback: reads go to the primary while every replica is down or
//! lagging.
//!
//! Settings: `user.<name>` and `default` as in the default policy, and
//! `fallback.<pool>` = the pool to use when `<pool>` has no healthy backend.
//!
//! ```toml
//! [policy.settings]
//! "user.mysqlmaster" = "master"
//! "user.mysqlslave" = "replicas"
//! "fallback.replicas" = "master"
//! ```

#[cfg(target_arch = "wasm32")]
mod guest {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "router",
    });

    use switchyard::policy::host;

    struct ReplicaFallback;

    impl Guest for ReplicaFallback {
        fn route(
            user: String,
            _db: Option<String>,
            _client_addr: String,
        ) -> Result<String, String> {
            let healthy: Vec<(String, u32)> = host::pools()
                .into_iter()
                .map(|p| (p.name, p.healthy_backends))
                .collect();
            let chosen = super::route(&user, |k| host::setting(k), &healthy)?;
            if chosen.fell_back {
                host::log(
                    host::Level::Warn,
                    &format!(
                        "no healthy backend in the usual pool; user '{user}' goes to '{}'",
                        chosen.pool
                    ),
                );
            }
            Ok(chosen.pool)
        }
    }

    export!(ReplicaFallback);
}

/// A decision.
#[derive(Debug, PartialEq, Eq)]
pub struct Chosen {
    /// The pool.
    pub pool: String,
    /// Whether it is the fallback of the usual one.
    pub fell_back: bool,
}

/// The decision for `user`, given settings and each pool's healthy backends.
pub fn route(
    user: &str,
    setting: impl Fn(&str) -> Option<String>,
    healthy: &[(String, u32)],
) -> Result<Chosen, String> {
    let pool = setting(&format!("user.{user}"))
        .or_else(|| setting("default"))
        .ok_or_else(|| format!("Switchyard: no pool is configured for user '{user}'"))?;
    let has_healthy = healthy.iter().any(|(name, n)| *name == pool && *n > 0);
    match setting(&format!("fallback.{pool}")) {
        Some(fallback) if !has_healthy => Ok(Chosen {
            pool: fallback,
            fell_back: true,
        }),
        _ => Ok(Chosen {
            pool,
            fell_back: false,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn falls_back_only_without_healthy_backends() {
        let s = |k: &str| match k {
            "user.r" => Some("replicas".to_string()),
            "fallback.replicas" => Some("master".to_string()),
            _ => None,
        };
        let up = [("replicas".to_string(), 2), ("master".to_string(), 1)];
        let down = [("replicas".to_string(), 0), ("master".to_string(), 1)];
        assert_eq!(route("r", s, &up).unwrap().pool, "replicas");
        assert_eq!(
            route("r", s, &down).unwrap(),
            Chosen {
                pool: "master".into(),
                fell_back: true
            }
        );
        assert!(route("nobody", s, &up).is_err());
    }
}
