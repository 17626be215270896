//! KILL translation (`server::kill::translate`, which parses the
//! statement): a COM_QUERY payload from a session on one backend, with a
//! registry that holds sessions on it and on another. What comes out keeps
//! the command byte; it is either the client's own statement up to its id
//! with a registered backend thread id, or the "unknown thread" SIGNAL; and
//! translating it again changes nothing.
#![no_main]

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};

use libfuzzer_sys::fuzz_target;
use switchyard::fuzzing::{Place, Registration, Registry, translate};
use switchyard::server::FIRST_CONNECTION_ID;

const HERE: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 3306);

/// The backend threads of the sessions registered on `HERE`.
const THREADS_HERE: [u32; 3] = [41, 7, FIRST_CONNECTION_ID - 1];

static REGISTRY: LazyLock<(Arc<Registry>, Vec<Registration>)> = LazyLock::new(|| {
    let registry = Arc::new(Registry::default());
    let elsewhere = SocketAddr::from(([127, 0, 0, 2], 3306));
    let sessions = [
        (HERE, THREADS_HERE[0]),
        (HERE, THREADS_HERE[1]),
        (HERE, THREADS_HERE[2]),
        (elsewhere, 42),
    ];
    let mut held: Vec<Registration> = sessions
        .into_iter()
        .map(|(backend, thread)| {
            let r = registry.reserve();
            r.moved(Place { backend, thread });
            r
        })
        .collect();
    // And one still logging in.
    held.push(registry.reserve());
    (registry, held)
});

fuzz_target!(|data: &[u8]| {
    let registry = &REGISTRY.0;
    let Some(t) = translate(data, HERE, registry) else {
        return;
    };
    assert_eq!(t.payload[0], data[0]);
    let sql = std::str::from_utf8(&t.payload[1..]).expect("translated SQL is UTF-8");
    if t.found {
        let (head, thread) = sql.rsplit_once(' ').expect("statement and thread id");
        let thread: u32 = thread.parse().expect("a thread id");
        assert!(THREADS_HERE.contains(&thread), "{sql}");
        assert!(data[1..].starts_with(head.as_bytes()), "{sql}");
        let word = head.trim_start_matches(|c: char| c.is_ascii_whitespace());
        assert!(
            word.get(..4)
                .is_some_and(|w| w.eq_ignore_ascii_case("KILL")),
            "{sql}"
        );
    } else {
        assert!(
            sql.starts_with("SIGNAL SQLSTATE 'HY000' SET MYSQL_ERRNO = 1094, "),
            "{sql}"
        );
    }
    assert_eq!(translate(&t.payload, HERE, registry), None, "{sql}");
});
