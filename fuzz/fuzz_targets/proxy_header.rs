//! The PROXY protocol header (`protocol::proxy_header`), read as a
//! listener reads it: exactly the bytes each answer asks for. It never asks
//! past the header, a complete header's length is what was read, and it
//! never asks for more than the bound of either version.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::protocol::proxy_header::{self, Parsed, V1_MAX, V2_MAX_BODY};

fuzz_target!(|data: &[u8]| {
    let mut n = 0;
    loop {
        match proxy_header::parse(&data[..n]) {
            Err(_) => return,
            Ok(Parsed::Complete(h)) => {
                assert_eq!(h.len, n);
                assert!(n <= (16 + V2_MAX_BODY).max(V1_MAX));
                // More bytes after the header change nothing.
                assert_eq!(proxy_header::parse(data), Ok(Parsed::Complete(h)));
                return;
            }
            Ok(Parsed::Incomplete(more)) => {
                assert!(more > 0);
                n += more;
                assert!(n <= (16 + V2_MAX_BODY).max(V1_MAX));
                if n > data.len() {
                    return;
                }
            }
        }
    }
});
