//! `OkPacket::decode` and `ErrPacket::decode` on the same bytes: each
//! accepts only its own header, and what decodes encodes and decodes back
//! to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::protocol::{ErrPacket, OkPacket};

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
});
