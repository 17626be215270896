//! `HandshakeResponse::decode`, then encode and decode again: the same
//! response, except that an optional field the client left out (plugin
//! name, connection attributes) reads back as present and empty, since the
//! encoder writes every field its capability flags call for; and that one
//! is a fixed point.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::protocol::{CapabilityFlags, HandshakeResponse};

fuzz_target!(|data: &[u8]| {
    let Ok(first) = HandshakeResponse::decode(data) else {
        return;
    };
    let caps = first.capabilities;
    let second = HandshakeResponse::decode(&first.encode()).expect("an encoded response decodes");
    let mut expected = first.clone();
    if caps.contains(CapabilityFlags::CLIENT_PLUGIN_AUTH) {
        expected.auth_plugin.get_or_insert_default();
    }
    if caps.contains(CapabilityFlags::CLIENT_CONNECT_ATTRS) {
        expected.connect_attrs.get_or_insert_default();
    }
    assert_eq!(second, expected);
    let third = HandshakeResponse::decode(&second.encode()).expect("an encoded response decodes");
    assert_eq!(third, second);
});
