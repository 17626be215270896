//! `ReplyFramer` (where a backend's answer ends): the first byte picks
//! the command's answer shape and CLIENT_DEPRECATE_EOF, the rest is the
//! backend's byte stream, cut into packets. The framer never panics, and
//! once it says an answer is done, it takes no further packet.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use switchyard::protocol::{PacketCodec, REPLY_HEAD, ReplyFramer, ReplyTo, StatusFlags};

const SHAPES: [ReplyTo; 9] = [
    ReplyTo::Nothing,
    ReplyTo::Status,
    ReplyTo::Results,
    ReplyTo::Cursor,
    ReplyTo::Fetch,
    ReplyTo::Prepare,
    ReplyTo::FieldList,
    ReplyTo::String,
    ReplyTo::Unframed,
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, stream)) = data.split_first() else {
        return;
    };
    let to = SHAPES[usize::from(pick & 0x0f) % SHAPES.len()];
    let deprecate_eof = pick & 0x10 != 0;
    let mut framer = ReplyFramer::new(to, deprecate_eof, StatusFlags::SERVER_STATUS_AUTOCOMMIT);
    let codec = PacketCodec::new(1 << 16);
    let mut buf = BytesMut::from(stream);
    while let Ok(Some(packet)) = codec.decode(&mut buf) {
        let p = &packet.payload;
        let was_done = framer.is_done();
        let step = framer.packet(p.len(), &p[..p.len().min(REPLY_HEAD)]);
        if was_done {
            assert!(step.is_err(), "a packet taken after the end");
        }
        if step.is_err() {
            break;
        }
    }
});
