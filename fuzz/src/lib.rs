//! What several fuzz targets share: walking a byte stream as MySQL packets,
//! cutting a stream the way reads cut it, and driving a [`CommandScanner`]
//! or a [`PacketCodec`] over a stream the way the relay and the login do.

use bytes::BytesMut;
use switchyard::protocol::{
    CommandScanner, MAX_KILL_PAYLOAD, MAX_PAYLOAD_CHUNK, Packet, PacketCodec, ProtocolError,
    ScanEvent,
};

/// The payload length in the 4-byte header at the start of `b`.
pub fn header_len(b: &[u8]) -> usize {
    usize::from(b[0]) | usize::from(b[1]) << 8 | usize::from(b[2]) << 16
}

/// The packets of a framed stream as `(sequence id, payload)`; the last
/// packet's payload is cut short when the stream ends inside it, and a
/// trailing partial header is dropped.
pub fn packets(mut stream: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    while stream.len() >= 4 {
        let len = header_len(stream).min(stream.len() - 4);
        out.push((stream[3], &stream[4..4 + len]));
        stream = &stream[4 + len..];
    }
    out
}

/// A client-to-server stream built from fuzz input, and where its packets
/// start.
pub struct Stream {
    /// The bytes.
    pub bytes: Vec<u8>,
    /// The offset of each packet header.
    pub starts: Vec<usize>,
}

/// Most 0xFFFFFF-byte packets one input may expand to.
const MAX_FULL_CHUNKS: usize = 3;

/// Reads `input` as framed packets, except that a header announcing a full
/// 0xFFFFFF-byte chunk is followed by whatever bytes the input still has,
/// padded with zeros to the full length: 16 MiB packets (and what follows
/// them) from a few bytes of input. Zero pages that nothing writes stay
/// untouched, so the padding costs little.
pub fn expand(input: &[u8]) -> Stream {
    // First pass: where each piece of the input goes.
    let mut pieces = Vec::new();
    let mut starts = Vec::new();
    let (mut at, mut len, mut full) = (0, 0, 0);
    while input.len() - at >= 4 {
        let payload = header_len(&input[at..]);
        let avail = input.len() - at - 4;
        starts.push(len);
        if payload == MAX_PAYLOAD_CHUNK && full < MAX_FULL_CHUNKS {
            full += 1;
            // Up to 16 bytes of input start the payload; the next header
            // follows the padding.
            let take = avail.min(16);
            pieces.push((at, len, 4 + take));
            at += 4 + take;
            len += 4 + payload;
        } else {
            let take = payload.min(avail);
            pieces.push((at, len, 4 + take));
            at += 4 + take;
            len += 4 + take;
        }
    }
    pieces.push((at, len, input.len() - at));
    len += input.len() - at;
    let mut bytes = vec![0u8; len];
    for (from, to, n) in pieces {
        bytes[to..to + n].copy_from_slice(&input[from..from + n]);
    }
    Stream { bytes, starts }
}

/// What the relay saw of a client stream: each event and the offset of its
/// packet, and how many bytes went through (forwarded or taken).
#[derive(Debug, PartialEq, Eq)]
pub struct ScanLog {
    /// `(offset, event)`, in stream order.
    pub events: Vec<(usize, ScanEvent)>,
    /// Bytes forwarded or taken when the stream ended.
    pub through: usize,
}

/// Scans `stream` as the relay does when its reads end at each of `cuts`
/// (ascending, then the end of the stream): forwards what the scanner
/// returns and, after an event, takes that command's packet whole once it
/// is all there (as the relay takes a KILL), then goes on scanning.
/// Checks, at each event, that its packet is the command it names.
pub fn drive_scanner(stream: &[u8], cuts: &[usize]) -> ScanLog {
    let mut scanner = CommandScanner::new();
    let mut log = ScanLog {
        events: Vec::new(),
        through: 0,
    };
    let mut pos = 0;
    for &end in cuts.iter().chain(std::iter::once(&stream.len())) {
        loop {
            let (n, event) = scanner.scan(&stream[pos..end]);
            assert!(n <= end - pos, "scanned past the end of the buffer");
            pos += n;
            let Some(event) = event else { break };
            let packet = &stream[pos..end];
            assert!(
                packet.len() >= 5,
                "event without its header and command byte"
            );
            let len = header_len(packet);
            assert_eq!(
                packet[3], 0,
                "{event:?} in a packet whose sequence id is not 0"
            );
            match event {
                ScanEvent::Quit => assert_eq!(packet[4], 0x01),
                ScanEvent::ChangeUser => assert_eq!(packet[4], 0x11),
                // COM_PROCESS_KILL, or a short COM_QUERY, whole, naming KILL.
                ScanEvent::Kill if packet[4] == 0x0c => {}
                ScanEvent::Kill => {
                    assert_eq!(packet[4], 0x03);
                    assert!(len <= MAX_KILL_PAYLOAD);
                    let text = packet
                        .get(5..4 + len)
                        .expect("KILL reported before it is whole");
                    assert!(text.windows(4).any(|w| w.eq_ignore_ascii_case(b"KILL")));
                }
            }
            // A packet not yet whole is scanned again with more bytes: the
            // scanner reports the same event at the same place then.
            if log.events.last() != Some(&(pos, event)) {
                log.events.push((pos, event));
            }
            if pos + 4 + len > end {
                break;
            }
            pos += 4 + len;
        }
    }
    log.through = pos;
    log
}

/// What the login code gets from a stream: the packets, how many bytes
/// they took, and the error that stopped decoding, if any.
#[derive(Debug, PartialEq, Eq)]
pub struct CodecLog {
    /// The packets.
    pub packets: Vec<Packet>,
    /// Bytes taken by them.
    pub taken: usize,
    /// The error that stopped decoding.
    pub error: Option<ProtocolError>,
}

/// Decodes `stream` with `codec` as its bytes arrive in reads ending at
/// each of `cuts` (ascending, then the end of the stream). Checks that
/// "need more bytes" takes nothing.
pub fn drive_codec(codec: PacketCodec, stream: &[u8], cuts: &[usize]) -> CodecLog {
    let mut buf = BytesMut::new();
    let mut log = CodecLog {
        packets: Vec::new(),
        taken: 0,
        error: None,
    };
    let mut seen = 0;
    for &end in cuts.iter().chain(std::iter::once(&stream.len())) {
        buf.extend_from_slice(&stream[seen..end]);
        seen = end;
        loop {
            let before = buf.len();
            match codec.decode(&mut buf) {
                Ok(Some(p)) => {
                    log.taken += 4 + p.payload.len();
                    log.packets.push(p);
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before, "Ok(None) took bytes");
                    break;
                }
                Err(e) => {
                    log.error = Some(e);
                    return log;
                }
            }
        }
    }
    log
}

/// Cut points for a stream of `len` bytes from fuzz input: each pair of
/// bytes picks a packet (by index into `starts`, or the end) and an offset
/// from its start; `i8::MIN` picks the middle of that packet instead.
pub fn cuts(spec: &[u8], starts: &[usize], len: usize) -> Vec<usize> {
    let mut out: Vec<usize> = spec
        .chunks_exact(2)
        .map(|c| {
            let i = usize::from(c[0]) % (starts.len() + 1);
            let start = starts.get(i).copied().unwrap_or(len);
            let next = starts.get(i + 1).copied().unwrap_or(len);
            let delta = c[1] as i8;
            if delta == i8::MIN {
                start + (next - start) / 2
            } else {
                start.saturating_add_signed(isize::from(delta)).min(len)
            }
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}
