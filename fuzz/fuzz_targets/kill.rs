//! KILL translation (`server::kill::translate`, which cuts a COM_QUERY into
//! statements and parses each KILL): a command payload from a session on
//! one backend, with a registry that holds sessions on it and on another.
//! Only COM_QUERY and COM_PROCESS_KILL are translated; a COM_PROCESS_KILL
//! becomes one naming a registered backend thread, or the "unknown thread"
//! SIGNAL; a COM_QUERY stays a COM_QUERY, with the SIGNAL in it when an id
//! named a session elsewhere; and translating again changes nothing. Also
//! `server::kill::named` (what a KILL of a session at rest names).
#![no_main]

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};

use libfuzzer_sys::fuzz_target;
use switchyard::fuzzing::{Place, Registration, Registry, named, translate};
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
    // What a KILL names (for a session at rest): a COM_PROCESS_KILL its
    // four bytes, a connection kill; a COM_QUERY one KILL statement.
    match named(data) {
        Some((id, query)) if data[0] == 0x0c => {
            assert!(!query);
            assert_eq!(&id.to_le_bytes()[..], &data[1..5]);
        }
        Some(_) => assert_eq!(data[0], 0x03),
        None => {}
    }
    let registry = &REGISTRY.0;
    let Some(t) = translate(data, HERE, registry) else {
        return;
    };
    const SIGNAL: &[u8] = b"SIGNAL SQLSTATE 'HY000' SET MYSQL_ERRNO = 1094, ";
    let has_signal = t.payload.windows(SIGNAL.len()).any(|w| w == SIGNAL);
    match data[0] {
        0x0c if t.found => {
            assert_eq!(t.payload.len(), 5);
            assert_eq!(t.payload[0], 0x0c);
            let thread = u32::from_le_bytes(t.payload[1..].try_into().unwrap());
            assert!(THREADS_HERE.contains(&thread), "{thread}");
        }
        0x0c => assert!(t.payload[0] == 0x03 && t.payload[1..].starts_with(SIGNAL)),
        0x03 => {
            assert_eq!(t.payload[0], 0x03);
            assert!(
                t.found || has_signal,
                "{:?}",
                String::from_utf8_lossy(&t.payload)
            );
        }
        other => panic!("command {other:#x} translated"),
    }
    assert_eq!(
        translate(&t.payload, HERE, registry),
        None,
        "{:?}",
        String::from_utf8_lossy(&t.payload)
    );
});
