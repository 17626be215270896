//! MariaDB GTID and replication position parsing (`pool::gtid`), from a
//! server's text: a GTID prints back as the text it was read from (without
//! blanks or leading zeros it may have had, read again: the same), and a
//! position has applied each of its own GTIDs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::pool::gtid::{Gtid, GtidPos};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(gtid) = text.parse::<Gtid>() {
        assert_eq!(gtid.to_string().parse::<Gtid>(), Ok(gtid));
    }
    if let Ok(pos) = text.parse::<GtidPos>() {
        for part in text.split(',').filter(|p| !p.trim().is_empty()) {
            let gtid: Gtid = part.parse().expect("a position's part is a GTID");
            assert!(pos.has_applied(&gtid), "{text:?}");
        }
    }
});
