//! Client commands, and a scanner that finds command boundaries in the
//! client-to-server byte stream without copying or buffering it.

/// The command bytes a proxy must recognise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Command {
    /// COM_QUIT: the client is leaving.
    Quit = 0x01,
    /// COM_INIT_DB: change the default database.
    InitDb = 0x02,
    /// COM_QUERY.
    Query = 0x03,
    /// COM_PING.
    Ping = 0x0e,
    /// COM_CHANGE_USER: re-authenticate as another user.
    ChangeUser = 0x11,
    /// COM_RESET_CONNECTION: reset session state.
    ResetConnection = 0x1f,
}

/// A command the relay must act on, found by [`CommandScanner::scan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanEvent {
    /// COM_QUIT.
    Quit,
    /// COM_CHANGE_USER.
    ChangeUser,
    /// A COM_QUERY of at most [`MAX_KILL_PAYLOAD`] bytes whose text holds
    /// `KILL` (in any case, anywhere: one of several statements may be a
    /// KILL), or a COM_PROCESS_KILL: a connection id in it may need
    /// translating. The relay takes the whole packet (and the scanner stays
    /// at the boundary after it).
    Kill,
}

/// The longest COM_QUERY payload reported as [`ScanEvent::Kill`].
pub const MAX_KILL_PAYLOAD: usize = 256;

/// COM_PROCESS_KILL.
const COM_PROCESS_KILL: u8 = 0x0c;

/// Whether a COM_QUERY payload (command byte first) of `len` bytes, of
/// which `seen` are at hand, may hold a KILL statement; `None` when more
/// bytes are needed to tell (a short statement comes whole).
fn kill_statement(len: usize, seen: &[u8]) -> Option<bool> {
    if len > MAX_KILL_PAYLOAD || len < 1 + b"KILL 0".len() {
        return Some(false);
    }
    let text = seen.get(1..len)?;
    Some(text.windows(4).any(|w| w.eq_ignore_ascii_case(b"KILL")))
}

/// Walks packet headers of the client-to-server stream.
///
/// A packet starts a command when its sequence id is 0, it does not continue
/// a 16 MiB packet, and the client is not streaming data for the previous
/// command (LOAD DATA LOCAL INFILE sends packets numbered from 2 on, wrapping
/// through 0, up to an empty packet).
#[derive(Debug, Default, Clone)]
pub struct CommandScanner {
    /// Payload bytes of the current packet not seen yet.
    remaining: usize,
    /// The current packet is a full 0xFFFFFF chunk: the next one continues it.
    continues: bool,
    /// The client streams data packets (LOAD DATA LOCAL INFILE).
    streaming: bool,
    /// The sequence id of the last packet header seen.
    last_seq: u8,
    /// The last command gets an answer (all but COM_STMT_CLOSE and
    /// COM_STMT_SEND_LONG_DATA); false before the first command.
    answered: bool,
}

impl CommandScanner {
    /// A scanner positioned at a command boundary.
    pub fn new() -> Self {
        Self::default()
    }

    /// Scans `buf`, which starts where the previous call's returned length
    /// ended. Returns how many bytes may be forwarded, and the event that
    /// stopped the scan: then the returned length is the offset of that
    /// command's packet, and the scanner stays before it. A packet header
    /// (and a command's first byte) cut by the end of `buf` is not counted:
    /// pass those bytes again with more behind them.
    pub fn scan(&mut self, buf: &[u8]) -> (usize, Option<ScanEvent>) {
        let mut pos = 0;
        loop {
            if self.remaining > 0 {
                let n = self.remaining.min(buf.len() - pos);
                pos += n;
                self.remaining -= n;
                if self.remaining > 0 {
                    return (pos, None);
                }
            }
            let Some(header) = buf.get(pos..pos + 4) else {
                return (pos, None);
            };
            let len =
                usize::from(header[0]) | usize::from(header[1]) << 8 | usize::from(header[2]) << 16;
            let seq = header[3];
            let starts_command = !self.continues && !self.streaming && seq == 0;
            if starts_command && len > 0 {
                let Some(&cmd) = buf.get(pos + 4) else {
                    return (pos, None);
                };
                self.answered = !matches!(cmd, COM_STMT_SEND_LONG_DATA | COM_STMT_CLOSE);
                let event = match cmd {
                    c if c == Command::Quit as u8 => Some(ScanEvent::Quit),
                    c if c == Command::ChangeUser as u8 => Some(ScanEvent::ChangeUser),
                    c if c == Command::Query as u8 => {
                        let seen = &buf[pos + 4..buf.len().min(pos + 4 + len)];
                        match kill_statement(len, seen) {
                            Some(true) => Some(ScanEvent::Kill),
                            Some(false) => None,
                            // Cut before the statement's first word.
                            None => return (pos, None),
                        }
                    }
                    COM_PROCESS_KILL => Some(ScanEvent::Kill),
                    _ => None,
                };
                if event.is_some() {
                    return (pos, event);
                }
            } else if !self.continues && seq != 0 && !self.streaming {
                // Data for the previous command (LOAD DATA LOCAL INFILE).
                self.streaming = true;
            }
            if self.streaming && !self.continues && len == 0 {
                self.streaming = false;
            }
            self.continues = len == super::MAX_PAYLOAD_CHUNK;
            self.remaining = len;
            self.last_seq = seq;
            pos += 4;
        }
    }

    /// What the server owes the client for everything scanned so far.
    pub fn awaiting(&self) -> Awaiting {
        if self.remaining > 0 || self.continues || self.streaming {
            Awaiting::MoreFromClient
        } else if self.answered {
            Awaiting::Answer(self.last_seq.wrapping_add(1))
        } else {
            Awaiting::Nothing
        }
    }
}

/// What the server owes, by [`CommandScanner::awaiting`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Awaiting {
    /// Nothing: no command yet, or the last one gets no answer
    /// (COM_STMT_CLOSE, COM_STMT_SEND_LONG_DATA).
    Nothing,
    /// The answer to a whole command (or to the data of LOAD DATA LOCAL
    /// INFILE), starting with this sequence id: what an ERR in its place
    /// carries.
    Answer(u8),
    /// The client is in the middle of a packet, of a 16 MiB packet's chunks
    /// or of streamed data: the server waits for it.
    MoreFromClient,
}

/// COM_STMT_SEND_LONG_DATA: no answer.
const COM_STMT_SEND_LONG_DATA: u8 = 0x18;
/// COM_STMT_CLOSE: no answer.
const COM_STMT_CLOSE: u8 = 0x19;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::encode_packet;
    use bytes::BytesMut;

    fn packets(list: &[(u8, &[u8])]) -> Vec<u8> {
        let mut out = BytesMut::new();
        for (seq, payload) in list {
            encode_packet(*seq, payload, &mut out);
        }
        out.to_vec()
    }

    #[test]
    fn knows_the_sequence_id_of_the_awaited_answer() {
        use Awaiting::*;
        // Longer than a statement the scanner reads whole (a KILL may hide
        // in a short one).
        let mut long = b"\x03SELECT 1 ".to_vec();
        long.resize(MAX_KILL_PAYLOAD + 1, b' ');
        let query = packets(&[(0, &long)]);
        let mut s = CommandScanner::new();
        assert_eq!(s.awaiting(), Nothing);
        // Cut inside the packet: the server waits for the rest.
        let (n, _) = s.scan(&query[..11]);
        assert_eq!((n, s.awaiting()), (11, MoreFromClient));
        s.scan(&query[11..]);
        assert_eq!(s.awaiting(), Answer(1));
        // No answer to COM_STMT_CLOSE; COM_STMT_EXECUTE gets one.
        s.scan(&packets(&[(0, b"\x19\x01\0\0\0")]));
        assert_eq!(s.awaiting(), Nothing);
        s.scan(&packets(&[(0, b"\x17\x01\0\0\0\0\x01\0\0\0")]));
        assert_eq!(s.awaiting(), Answer(1));
        // LOAD DATA LOCAL INFILE: the file's packets (2, 3), then the empty
        // one (4); the server's OK is number 5.
        s.scan(&packets(&[(
            0,
            b"\x03LOAD DATA LOCAL INFILE 'f' INTO TABLE t",
        )]));
        s.scan(&packets(&[(2, b"1,2\n"), (3, b"3,4\n")]));
        assert_eq!(s.awaiting(), MoreFromClient);
        s.scan(&packets(&[(4, b"")]));
        assert_eq!(s.awaiting(), Answer(5));
        // A 16 MiB packet: not before its last chunk.
        let big = vec![0x03; super::super::MAX_PAYLOAD_CHUNK];
        // Its first chunk, whole, then the empty packet that ends it.
        let bytes = packets(&[(0, &big)]);
        let first = 4 + big.len();
        assert_eq!(s.scan(&bytes[..first]), (first, None));
        assert_eq!(s.awaiting(), MoreFromClient);
        s.scan(&bytes[first..]);
        assert_eq!(s.awaiting(), Answer(2));
    }

    #[test]
    fn finds_quit_after_pipelined_queries() {
        let bytes = packets(&[(0, b"\x03SELECT 1"), (0, b"\x03SELECT 2"), (0, b"\x01")]);
        let mut s = CommandScanner::new();
        let (n, ev) = s.scan(&bytes);
        assert_eq!(ev, Some(ScanEvent::Quit));
        assert_eq!(n, bytes.len() - 5);
    }

    #[test]
    fn holds_back_a_cut_header_and_resumes() {
        let bytes = packets(&[(0, b"\x03SELECT 1"), (0, b"\x11user\0")]);
        for cut in 0..=bytes.len() {
            let mut s = CommandScanner::new();
            let (n, ev) = s.scan(&bytes[..cut]);
            if cut >= 18 {
                // The header and the command byte are both in the first part.
                assert_eq!((n, ev), (13, Some(ScanEvent::ChangeUser)), "cut at {cut}");
                continue;
            }
            assert_eq!(ev, None, "cut at {cut}");
            assert!(n <= 13, "cut at {cut}");
            let (m, ev) = s.scan(&bytes[n..]);
            assert_eq!(ev, Some(ScanEvent::ChangeUser), "cut at {cut}");
            assert_eq!(n + m, 13, "cut at {cut}");
        }
    }

    #[test]
    fn reports_short_queries_naming_kill_once_whole() {
        let kill = packets(&[
            (0, b"\x03SELECT 1"),
            (0, b"\x03select 2; kill QUERY 1073741825"),
        ]);
        for cut in 0..=kill.len() {
            let mut s = CommandScanner::new();
            let (n, ev) = s.scan(&kill[..cut]);
            if cut == kill.len() {
                // All of it is in: reported at the packet's start.
                assert_eq!((n, ev), (13, Some(ScanEvent::Kill)), "cut at {cut}");
            } else {
                assert_eq!(ev, None, "cut at {cut}");
                assert!(n <= 13, "cut at {cut}");
            }
        }
        // Candidates (the translation decides): KILL anywhere, any case;
        // COM_PROCESS_KILL.
        for payload in [
            &b"\x03KILLS 5"[..],
            b"\x03SELECT 'kill 5'",
            b"\x03/* x */ Kill 5",
            b"\x0c\x01\x00\x00\x40",
        ] {
            let bytes = packets(&[(0, payload)]);
            let mut s = CommandScanner::new();
            assert_eq!(s.scan(&bytes), (0, Some(ScanEvent::Kill)), "{payload:?}");
        }
        // Not candidates: no KILL, long queries, other commands.
        let mut long = b"\x03KILL ".to_vec();
        long.resize(MAX_KILL_PAYLOAD + 1, b' ');
        for payload in [&b"\x03SELECT 5"[..], b"\x03KIL", &long, b"\x16KILL 5"] {
            let bytes = packets(&[(0, payload)]);
            let mut s = CommandScanner::new();
            assert_eq!(s.scan(&bytes), (bytes.len(), None), "{payload:?}");
        }
        // After the relay takes a KILL packet, scanning goes on from there.
        let bytes = packets(&[(0, b"\x03KILL 7"), (0, b"\x01")]);
        let mut s = CommandScanner::new();
        assert_eq!(s.scan(&bytes), (0, Some(ScanEvent::Kill)));
        assert_eq!(s.scan(&bytes[11..]), (0, Some(ScanEvent::Quit)));
    }

    #[test]
    fn a_command_byte_inside_a_payload_is_not_a_command() {
        let mut big = vec![0x01u8; super::super::MAX_PAYLOAD_CHUNK + 5];
        big[0] = 0x03;
        let mut bytes = packets(&[(0, &big)]);
        bytes.extend(packets(&[(0, b"\x0e")]));
        let mut s = CommandScanner::new();
        // Feed it in odd slices, as reads arrive.
        let mut pos = 0;
        for step in [1, 3, 70000, 5, 1 << 24] {
            let end = (pos + step).min(bytes.len());
            let (n, ev) = s.scan(&bytes[pos..end]);
            assert_eq!(ev, None);
            pos += n;
        }
        assert_eq!(pos, bytes.len());
    }

    #[test]
    fn load_data_local_packets_wrapping_to_zero_are_data() {
        let mut list: Vec<(u8, &[u8])> = vec![(0, b"\x03LOAD DATA LOCAL INFILE 'x' INTO TABLE t")];
        for i in 0..300u32 {
            list.push(((i + 2) as u8, b"\x11\x01 file bytes"));
        }
        list.push(((302u32 % 256) as u8, b""));
        list.push((0, b"\x01"));
        let bytes = packets(&list);
        let mut s = CommandScanner::new();
        let (n, ev) = s.scan(&bytes);
        assert_eq!(ev, Some(ScanEvent::Quit));
        assert_eq!(n, bytes.len() - 5);
    }
}
