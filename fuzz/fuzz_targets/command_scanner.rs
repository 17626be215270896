//! `CommandScanner::scan`, differential: a client stream scanned as one
//! read, as reads cut where the input says (at and around packet headers,
//! inside 16 MiB chunks), and a byte at a time (when short) finds the same
//! commands at the same offsets and lets the same bytes through; every
//! event names the command its packet holds (see `drive_scanner`).
//!
//! Input: a count `k`, `k` cut specifications of 2 bytes (see `cuts`), then
//! the stream as framed packets, where a header announcing 0xFFFFFF bytes
//! becomes a full 16 MiB chunk (see `expand`). LOAD DATA LOCAL INFILE
//! streams come from the seeds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_fuzz::{cuts, drive_scanner, expand};

/// Longest stream also scanned a byte at a time.
const BYTEWISE_MAX: usize = 1 << 16;

fuzz_target!(|data: &[u8]| {
    let Some((&k, rest)) = data.split_first() else {
        return;
    };
    let spec_len = (usize::from(k) % 32 * 2).min(rest.len());
    let (spec, input) = rest.split_at(spec_len);
    let stream = expand(input);
    let whole = drive_scanner(&stream.bytes, &[]);
    assert!(whole.through <= stream.bytes.len());
    let cut = cuts(spec, &stream.starts, stream.bytes.len());
    assert_eq!(drive_scanner(&stream.bytes, &cut), whole, "cut at {cut:?}");
    if stream.bytes.len() <= BYTEWISE_MAX {
        let every: Vec<usize> = (1..stream.bytes.len()).collect();
        assert_eq!(
            drive_scanner(&stream.bytes, &every),
            whole,
            "a byte at a time"
        );
    }
});
