//! `ResultSetDecoder::feed`, one payload at a time, until the reply is
//! complete or refused: rows always have one value per column, and the
//! decoder's bounds hold.
//!
//! Input: a byte whose low bit is CLIENT_DEPRECATE_EOF, then the server's
//! reply as framed packets.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::protocol::{QueryReply, ResultSetDecoder};
use switchyard_fuzz::packets;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, stream)) = data.split_first() else {
        return;
    };
    let mut decoder = ResultSetDecoder::new(flags & 1 == 1);
    for (_, payload) in packets(stream) {
        match decoder.feed(payload) {
            Ok(None) => continue,
            Ok(Some(QueryReply::Rows(result))) => {
                assert!(!result.columns.is_empty() && result.columns.len() <= 512);
                assert!(result.rows.len() <= 1024);
                for row in &result.rows {
                    assert_eq!(row.len(), result.columns.len());
                }
                for i in 0..result.rows.len() {
                    let _ = result.get(i, &result.columns[0]);
                }
                break;
            }
            Ok(Some(QueryReply::Ok)) => {
                assert_eq!(payload[0], 0x00);
                break;
            }
            Ok(Some(QueryReply::Err(_))) => {
                assert_eq!(payload[0], 0xff);
                break;
            }
            Err(_) => break,
        }
    }
});
