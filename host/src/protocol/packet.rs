//! Packet framing: a 3-byte little-endian payload length, a sequence id,
//! then the payload.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::ProtocolError;

/// The largest payload one packet carries; longer payloads are split.
pub const MAX_PAYLOAD_CHUNK: usize = 0xff_ffff;

/// One packet of the login exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// The sequence id.
    pub seq: u8,
    /// The payload.
    pub payload: Bytes,
}

/// Cuts single packets out of a byte buffer, refusing any payload over a
/// limit. Used for the login exchanges, where every packet is small; relayed
/// traffic is not decoded.
#[derive(Debug, Clone, Copy)]
pub struct PacketCodec {
    max_payload: usize,
}

impl PacketCodec {
    /// A codec that refuses payloads over `max_payload` bytes (at most
    /// [`MAX_PAYLOAD_CHUNK`] - 1: login packets never span packets).
    pub fn new(max_payload: usize) -> Self {
        Self {
            max_payload: max_payload.min(MAX_PAYLOAD_CHUNK - 1),
        }
    }

    /// The next whole packet in `buf`, removing it; `Ok(None)` when more
    /// bytes are needed.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Packet>, ProtocolError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let len = usize::from(buf[0]) | usize::from(buf[1]) << 8 | usize::from(buf[2]) << 16;
        if len > self.max_payload {
            return Err(ProtocolError::PacketTooLarge {
                len,
                max: self.max_payload,
            });
        }
        if buf.len() < 4 + len {
            buf.reserve(4 + len - buf.len());
            return Ok(None);
        }
        let seq = buf[3];
        buf.advance(4);
        let payload = buf.split_to(len).freeze();
        Ok(Some(Packet { seq, payload }))
    }
}

/// Appends `payload` as packets starting at sequence id `seq`, splitting it
/// at [`MAX_PAYLOAD_CHUNK`] (with a final empty packet when the payload is an
/// exact multiple). Returns the sequence id that follows.
pub fn encode_packet(mut seq: u8, payload: &[u8], out: &mut BytesMut) -> u8 {
    let mut chunks = payload.chunks(MAX_PAYLOAD_CHUNK);
    let mut last_len = 0;
    out.reserve(payload.len() + 4 * (payload.len() / MAX_PAYLOAD_CHUNK + 1));
    loop {
        let chunk = match chunks.next() {
            Some(c) => c,
            None if last_len == MAX_PAYLOAD_CHUNK || payload.is_empty() => &[][..],
            None => break,
        };
        out.put_uint_le(chunk.len() as u64, 3);
        out.put_u8(seq);
        out.put_slice(chunk);
        seq = seq.wrapping_add(1);
        last_len = chunk.len();
        if chunk.is_empty() {
            break;
        }
    }
    seq
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_across_partial_reads() {
        let codec = PacketCodec::new(1024);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[3, 0, 0, 7, b'a']);
        assert_eq!(codec.decode(&mut buf), Ok(None));
        buf.extend_from_slice(b"bc");
        buf.extend_from_slice(&[0, 0, 0, 8]);
        let p = codec.decode(&mut buf).unwrap().unwrap();
        assert_eq!((p.seq, &p.payload[..]), (7, &b"abc"[..]));
        let p = codec.decode(&mut buf).unwrap().unwrap();
        assert_eq!((p.seq, p.payload.len()), (8, 0));
        assert!(buf.is_empty());
    }

    #[test]
    fn refuses_oversized_packets_before_buffering_them() {
        let codec = PacketCodec::new(1024);
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 1][..]);
        assert_eq!(
            codec.decode(&mut buf),
            Err(ProtocolError::PacketTooLarge {
                len: 0xff_ffff,
                max: 1024
            })
        );
    }

    #[test]
    fn encodes_and_splits_large_payloads() {
        let mut out = BytesMut::new();
        assert_eq!(encode_packet(0, b"", &mut out), 1);
        assert_eq!(&out[..], &[0, 0, 0, 0]);

        let mut out = BytesMut::new();
        let payload = vec![7u8; MAX_PAYLOAD_CHUNK];
        assert_eq!(encode_packet(255, &payload, &mut out), 1);
        assert_eq!(out.len(), 4 + MAX_PAYLOAD_CHUNK + 4);
        assert_eq!(&out[..4], &[0xff, 0xff, 0xff, 255]);
        assert_eq!(&out[out.len() - 4..], &[0, 0, 0, 0]);

        let mut out = BytesMut::new();
        let payload = vec![7u8; MAX_PAYLOAD_CHUNK + 10];
        assert_eq!(encode_packet(3, &payload, &mut out), 5);
        assert_eq!(out.len(), 8 + MAX_PAYLOAD_CHUNK + 10);
        assert_eq!(&out[4 + MAX_PAYLOAD_CHUNK..][..4], &[10, 0, 0, 4]);
    }
}
