//! `PacketCodec::decode` over a stream that arrives whole and a byte at a
//! time: the same packets and the same error, every packet within the
//! limit, and the packets re-encoded are the bytes they came from.
//!
//! Input: a 3-byte little-endian payload limit, then the stream.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use switchyard::protocol::{MAX_PAYLOAD_CHUNK, PacketCodec, ProtocolError, encode_packet};
use switchyard_fuzz::{drive_codec, header_len};

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let max = header_len(data);
    let stream = &data[3..];
    let codec = PacketCodec::new(max);
    let whole = drive_codec(codec, stream, &[]);
    let cuts: Vec<usize> = (1..stream.len()).collect();
    assert_eq!(drive_codec(codec, stream, &cuts), whole);

    let limit = max.min(MAX_PAYLOAD_CHUNK - 1);
    let mut again = BytesMut::new();
    for p in &whole.packets {
        assert!(p.payload.len() <= limit);
        encode_packet(p.seq, &p.payload, &mut again);
    }
    assert_eq!(&again[..], &stream[..whole.taken]);
    let rest = &stream[whole.taken..];
    match whole.error {
        Some(ProtocolError::PacketTooLarge { len, max }) => {
            assert_eq!((len, max), (header_len(rest), limit));
            assert!(len > limit);
        }
        Some(e) => panic!("unexpected error {e:?}"),
        // Stopped for want of bytes: a cut header or a cut packet.
        None => assert!(rest.len() < 4 || rest.len() < 4 + header_len(rest)),
    }
});
