//! `Greeting::decode`; a greeting of the shape a proxy relies on (4.1
//! protocol, secure connection, plugin auth, a 20-byte nonce) encodes and
//! decodes back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::protocol::{CapabilityFlags, Greeting};

fuzz_target!(|data: &[u8]| {
    let Ok(first) = Greeting::decode(data) else {
        return;
    };
    let bytes = first.encode();
    let full = CapabilityFlags::CLIENT_PROTOCOL_41
        | CapabilityFlags::CLIENT_SECURE_CONNECTION
        | CapabilityFlags::CLIENT_PLUGIN_AUTH;
    if first.capabilities.contains(full) && first.auth_data.len() == 20 {
        assert_eq!(Greeting::decode(&bytes).as_ref(), Ok(&first));
    }
});
