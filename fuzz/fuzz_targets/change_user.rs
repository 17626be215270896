//! `ChangeUser::decode` under arbitrary capability flags, then encode and
//! decode again under the same flags: the same command, except that what
//! the client left out and the encoder always writes reads back with its
//! default (character set 45, an empty plugin name); and that one is a
//! fixed point.
//!
//! Input: the session's capability flags (4 bytes, little-endian), then the
//! COM_CHANGE_USER payload.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::protocol::{CapabilityFlags, ChangeUser};

fuzz_target!(|data: &[u8]| {
    let Some((caps, payload)) = data.split_first_chunk::<4>() else {
        return;
    };
    let caps = CapabilityFlags::from_bits_retain(u32::from_le_bytes(*caps));
    let Ok(first) = ChangeUser::decode(payload, caps) else {
        return;
    };
    let second = ChangeUser::decode(&first.encode(caps), caps).expect("an encoded command decodes");
    let mut expected = first.clone();
    expected.charset.get_or_insert(45);
    if caps.contains(CapabilityFlags::CLIENT_PLUGIN_AUTH) {
        expected.auth_plugin.get_or_insert_default();
    }
    assert_eq!(second, expected);
    let third = ChangeUser::decode(&second.encode(caps), caps).expect("an encoded command decodes");
    assert_eq!(third, second);
});
