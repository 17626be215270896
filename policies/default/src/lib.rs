//! Switchyard's default routing policy.
//!
//! It reproduces the classic replication setup from settings, with nothing
//! hard-coded: the setting `user.<name>` names the pool for that user, the
//! setting `default` names the pool for every other user, and a user with
//! neither is refused with a message that names the user.
//!
//! ```toml
//! [policy.settings]
//! "user.mysqlmaster" = "master"
//! "user.mysqlslave" = "replicas"
//! ```

wit_bindgen::generate!({
    path: "../../wit",
    world: "router",
});

use switchyard::policy::host;

struct DefaultPolicy;

impl Guest for DefaultPolicy {
    fn route(user: String, _db: Option<String>, _client_addr: String) -> Result<String, String> {
        if let Some(pool) = host::setting(&format!("user.{user}")) {
            return Ok(pool);
        }
        if let Some(pool) = host::setting("default") {
            return Ok(pool);
        }
        host::log(
            host::Level::Info,
            &format!("no pool configured for user '{user}' and no default pool"),
        );
        Err(format!(
            "Switchyard: no pool is configured for user '{user}' (set \"user.{user}\" or \"default\" in [policy.settings])"
        ))
    }
}

export!(DefaultPolicy);
