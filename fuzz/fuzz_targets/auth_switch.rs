//! `AuthSwitchRequest::decode`, then encode and decode again: the same
//! request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::protocol::AuthSwitchRequest;

fuzz_target!(|data: &[u8]| {
    let Ok(first) = AuthSwitchRequest::decode(data) else {
        return;
    };
    assert_eq!(data[0], 0xfe);
    let again = AuthSwitchRequest::decode(&first.encode()).expect("an encoded request decodes");
    assert_eq!(again, first);
});
