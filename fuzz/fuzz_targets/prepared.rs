//! A split session's prepared statements: the writer's answer to
//! COM_STMT_PREPARE (its id and parameter count), then client commands
//! naming the statement, rewritten for the writer or a reader (its own id
//! there, the parameter types sent again where they are missing). Never
//! panics; a rewritten command names the backend's id, and grows only by
//! the types it gained.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use switchyard::fuzzing::{Prepared, Role, id_of, prepare_ok};

fuzz_target!(|data: &[u8]| {
    let Some((ok, rest)) = data.split_at_checked(12) else {
        return;
    };
    let Some((id, params)) = prepare_ok(ok) else {
        return;
    };
    let mut prepared = Prepared::default();
    prepared.prepared(id, params, Bytes::from_static(b"SELECT ?"));
    let statement = prepared.get_mut(id).expect("just prepared");
    statement.prepared_on(Role::Reader, id.wrapping_add(1));
    // Commands separated by 0xff 0xfe; each one's first byte picks the side.
    for command in rest.split(|b| *b == 0xfe) {
        let Some((&pick, payload)) = command.split_first() else {
            continue;
        };
        let role = if pick & 1 == 0 {
            Role::Writer
        } else {
            Role::Reader
        };
        let sent = statement.execute_for(payload, role);
        if payload.len() >= 5 {
            let want = statement.id_on(role).expect("prepared on both");
            assert_eq!(id_of(&sent), Some(want));
        }
        let grew = sent.len() - payload.len();
        assert!(
            grew == 0 || grew == 2 * usize::from(params),
            "grew by {grew}"
        );
        assert_eq!(statement.for_backend(payload, role).len(), payload.len());
    }
});
