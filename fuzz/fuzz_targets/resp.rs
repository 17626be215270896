//! Redis replies (`fleet::resp`), as the fleet store's connection reads
//! them: never a panic; a reply decoded from a prefix decodes the same from
//! the whole input and takes no more than it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::fleet::resp;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((value, used))) = resp::decode(data) {
        assert!(used <= data.len());
        assert_eq!(resp::decode(&data[..used]), Ok(Some((value, used))));
    }
});
