//! `OkPacket::decode` and `ErrPacket::decode` on the same bytes: each
//! accepts only its own header, and what decodes encodes and decodes back
//! to itself. `state_changes` (session state tracking) reads only OKs, and
//! never reports changes where the status does not say the state changed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::protocol::{CapabilityFlags, ErrPacket, OkPacket, StatusFlags, state_changes};

fuzz_target!(|data: &[u8]| {
    if let Ok(err) = ErrPacket::decode(data) {
        assert!(ErrPacket::is_err(data));
        assert_eq!(ErrPacket::decode(&err.encode()).as_ref(), Ok(&err));
        let _ = err.sql_state_str();
    }
    if let Ok(ok) = OkPacket::decode(data) {
        assert!(matches!(data[0], 0x00 | 0xfe));
        assert_eq!(OkPacket::decode(&ok.encode()).as_ref(), Ok(&ok));
    }
    for caps in [
        CapabilityFlags::empty(),
        CapabilityFlags::CLIENT_SESSION_TRACK,
    ] {
        if let Ok(changes) = state_changes(data, caps) {
            let ok = OkPacket::decode(data).expect("state changes of a non-OK");
            if !changes.is_empty() {
                assert!(caps.contains(CapabilityFlags::CLIENT_SESSION_TRACK));
                assert!(
                    ok.status
                        .contains(StatusFlags::SERVER_SESSION_STATE_CHANGED)
                );
            }
        }
    }
});
