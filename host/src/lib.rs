//! Switchyard: a MySQL/MariaDB proxy whose routing decisions come from
//! WebAssembly components.
//!
//! A client logs in to Switchyard as it would to MySQL. Switchyard verifies
//! the credentials itself (`mysql_native_password` against stored
//! double-SHA1 hashes, keeping only `SHA1(password)`), asks the loaded policy
//! component which pool the session belongs to, logs in to a backend of that
//! pool with the backend's own nonce, and only then answers the client and
//! relays bytes both ways.
//!
//! Modules by responsibility:
//! - [`protocol`]: the wire format, sans IO;
//! - [`auth`]: password verification math;
//! - [`config`]: the TOML configuration;
//! - [`policy`]: the wasm engine that runs routing policies;
//! - [`pool`]: backends, pools and balancing;
//! - [`backend`]: opening backend sessions;
//! - [`conn`]: packet IO during logins;
//! - [`server`]: the listener, the sessions, reloads and the drain;
//! - [`admin`]: the admin HTTP endpoint;
//! - [`metrics`]: counters and histograms;
//! - [`logging`]: log output and its rate limiter;
//! - [`secret`]: secrets that are never printed, and secret files' permissions;
//! - [`notify`]: systemd notifications.

pub mod admin;
pub mod auth;
pub mod backend;
pub mod cidr;
pub mod config;
pub mod conn;
pub mod fleet;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod policy;
pub mod pool;
pub mod protocol;
pub mod secret;
pub mod server;
pub mod sql;

/// Internals that parse untrusted bytes, re-exported for the fuzz targets
/// in `fuzz/`; not an interface to build on.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::server::kill::{Place, Registration, Registry, Translated, named, translate};
    pub use crate::server::split::Role;
    pub use crate::server::split::prepared::{Prepared, Statement, id_of, prepare_ok};

    mod admin;
    pub use admin::{ADMIN_TOKEN, AdminExchange, admin_request};
}
