//! On bytes; the real server's answers are in tests/tests/proxy.rs
//! (`answers_end_where_the_framer_says`).

use super::*;

const AUTOCOMMIT: u16 = 0x0002;
const MORE: u16 = 0x0008;
const IN_TRANS: u16 = 0x0001;

fn ok(status: u16) -> Vec<u8> {
    let mut p = vec![0x00, 0, 0];
    p.extend_from_slice(&status.to_le_bytes());
    p.extend_from_slice(&[0, 0]);
    p
}

fn ok_eof(status: u16) -> Vec<u8> {
    let mut p = ok(status);
    p[0] = 0xfe;
    p
}

fn eof(status: u16) -> Vec<u8> {
    let mut p = vec![0xfe, 0, 0];
    p.extend_from_slice(&status.to_le_bytes());
    p
}

/// Feeds `packets` (whole payloads); the steps.
fn feed(framer: &mut ReplyFramer, packets: &[Vec<u8>]) -> Vec<Step> {
    packets
        .iter()
        .map(|p| framer.packet(p.len(), &p[..p.len().min(HEAD)]).unwrap())
        .collect()
}

fn start(to: ReplyTo, deprecate_eof: bool) -> ReplyFramer {
    ReplyFramer::new(to, deprecate_eof, StatusFlags::from_bits_retain(AUTOCOMMIT))
}

fn done(status: u16) -> Step {
    Step::Done(StatusFlags::from_bits_retain(status))
}

#[test]
fn knows_each_commands_answer() {
    assert_eq!(ReplyTo::of(b"\x03SELECT 1"), ReplyTo::Results);
    assert_eq!(
        ReplyTo::of(b"\x17\x01\0\0\0\x00\x01\0\0\0"),
        ReplyTo::Results
    );
    assert_eq!(
        ReplyTo::of(b"\x17\x01\0\0\0\x01\x01\0\0\0"),
        ReplyTo::Cursor
    );
    assert_eq!(ReplyTo::of(b"\x16SELECT 1"), ReplyTo::Prepare);
    assert_eq!(ReplyTo::of(b"\x19\x01\0\0\0"), ReplyTo::Nothing);
    assert_eq!(ReplyTo::of(b"\x0e"), ReplyTo::Status);
    assert_eq!(ReplyTo::of(b"\x09"), ReplyTo::String);
    assert_eq!(ReplyTo::of(b"\x11x"), ReplyTo::Unframed);
    assert_eq!(ReplyTo::of(b""), ReplyTo::Unframed);
    assert!(start(ReplyTo::Nothing, true).is_done());
}

#[test]
fn result_sets_with_and_without_eof() {
    let rows = |n: usize| vec![b"\x011".to_vec(); n];
    // Classic: count, 2 definitions, EOF, rows, EOF.
    let mut f = start(ReplyTo::Results, false);
    let mut packets = vec![vec![2], b"def".to_vec(), b"def".to_vec(), eof(AUTOCOMMIT)];
    packets.extend(rows(3));
    let steps = feed(&mut f, &packets);
    assert!(steps.iter().all(|s| *s == Step::More));
    assert_eq!(
        feed(&mut f, &[eof(AUTOCOMMIT | IN_TRANS)]),
        [done(AUTOCOMMIT | IN_TRANS)]
    );
    // DEPRECATE_EOF: no EOF after the definitions; an OK with 0xFE ends.
    let mut f = start(ReplyTo::Results, true);
    let mut packets = vec![vec![1], b"def".to_vec()];
    packets.extend(rows(2));
    assert!(feed(&mut f, &packets).iter().all(|s| *s == Step::More));
    assert_eq!(feed(&mut f, &[ok_eof(AUTOCOMMIT)]), [done(AUTOCOMMIT)]);
    // A row that starts with 0xFE (an 8-byte length) is 16 MiB long: not
    // the end.
    let mut f = start(ReplyTo::Results, true);
    feed(&mut f, &[vec![1], b"def".to_vec()]);
    assert_eq!(f.packet(MAX_PAYLOAD_CHUNK, &[0xfe; HEAD]), Ok(Step::More));
    assert_eq!(
        f.packet(10, &[0xfe; 10]),
        Ok(Step::More),
        "its continuation"
    );
    assert_eq!(feed(&mut f, &[ok_eof(AUTOCOMMIT)]), [done(AUTOCOMMIT)]);
}

#[test]
fn more_results_chain_until_the_last() {
    let mut f = start(ReplyTo::Results, true);
    let steps = feed(
        &mut f,
        &[
            vec![1],
            b"def".to_vec(),
            b"\x011".to_vec(),
            ok_eof(AUTOCOMMIT | MORE),
            ok(AUTOCOMMIT | MORE),
            vec![0xff, 0x10, 0x04, b'#'],
        ],
    );
    assert_eq!(*steps.last().unwrap(), done(AUTOCOMMIT | MORE));
    assert!(steps[..5].iter().all(|s| *s == Step::More));
    assert!(f.is_done());
    assert!(f.packet(7, &ok(0)).is_err(), "nothing after the end");
}

#[test]
fn local_infile_waits_for_the_client() {
    let mut f = start(ReplyTo::Results, true);
    assert_eq!(
        feed(&mut f, &[b"\xfbfile.csv".to_vec()]),
        [Step::WaitsForClient]
    );
    assert_eq!(feed(&mut f, &[ok(AUTOCOMMIT)]), [done(AUTOCOMMIT)]);
}

#[test]
fn prepare_counts_its_definitions() {
    let prepare_ok = |columns: u16, params: u16| {
        let mut p = vec![0x00, 1, 0, 0, 0];
        p.extend_from_slice(&columns.to_le_bytes());
        p.extend_from_slice(&params.to_le_bytes());
        p.extend_from_slice(&[0, 0, 0]);
        p
    };
    let def = || b"def".to_vec();
    // 2 parameters, 1 column, classic EOFs.
    let mut f = start(ReplyTo::Prepare, false);
    let steps = feed(
        &mut f,
        &[
            prepare_ok(1, 2),
            def(),
            def(),
            eof(AUTOCOMMIT),
            def(),
            eof(AUTOCOMMIT),
        ],
    );
    assert_eq!(*steps.last().unwrap(), done(AUTOCOMMIT));
    assert!(steps[..5].iter().all(|s| *s == Step::More));
    // Without EOFs; no parameters; nothing at all.
    let mut f = start(ReplyTo::Prepare, true);
    let steps = feed(&mut f, &[prepare_ok(2, 0), def(), def()]);
    assert_eq!(steps, [Step::More, Step::More, done(AUTOCOMMIT)]);
    let mut f = start(ReplyTo::Prepare, false);
    assert_eq!(feed(&mut f, &[prepare_ok(0, 0)]), [done(AUTOCOMMIT)]);
}

#[test]
fn refuses_answers_that_do_not_fit() {
    let mut f = start(ReplyTo::Results, false);
    assert!(f.packet(3, &[2]).is_err(), "head shorter than the packet");
    let mut f = start(ReplyTo::Status, false);
    assert!(feed_err(&mut f, &[1, 2, 3]));
    let mut f = start(ReplyTo::Results, false);
    feed(&mut f, &[vec![1], b"def".to_vec()]);
    assert!(feed_err(&mut f, b"\x011"), "a row where the EOF belongs");
}

fn feed_err(f: &mut ReplyFramer, p: &[u8]) -> bool {
    f.packet(p.len(), p).is_err()
}

#[test]
fn a_cursor_ends_at_the_status_that_opens_it() {
    const CURSOR: u16 = 0x0040;
    for deprecate_eof in [false, true] {
        let status = if deprecate_eof {
            ok_eof(AUTOCOMMIT | CURSOR)
        } else {
            eof(AUTOCOMMIT | CURSOR)
        };
        let mut f = start(ReplyTo::Cursor, deprecate_eof);
        let steps = feed(&mut f, &[vec![1], b"def".to_vec(), status]);
        assert_eq!(steps, [Step::More, Step::More, done(AUTOCOMMIT | CURSOR)]);
        // Its rows: COM_STMT_FETCH.
        let mut f = start(ReplyTo::Fetch, deprecate_eof);
        let end = if deprecate_eof {
            ok_eof(AUTOCOMMIT)
        } else {
            eof(AUTOCOMMIT)
        };
        let steps = feed(&mut f, &[b"\x00\x01".to_vec(), end]);
        assert_eq!(steps, [Step::More, done(AUTOCOMMIT)]);
    }
    // No cursor opened after all, with DEPRECATE_EOF: rows follow at once.
    let mut f = start(ReplyTo::Cursor, true);
    let steps = feed(
        &mut f,
        &[
            vec![1],
            b"def".to_vec(),
            b"\x00\x01".to_vec(),
            ok_eof(AUTOCOMMIT),
        ],
    );
    assert_eq!(steps.last(), Some(&done(AUTOCOMMIT)));
}

#[test]
fn says_which_packets_are_oks() {
    let mut f = start(ReplyTo::Results, true);
    let packets = [
        vec![1],
        b"def".to_vec(),
        // A row whose first column is the empty string starts with 0x00.
        b"\x00".to_vec(),
        ok_eof(AUTOCOMMIT | MORE),
        ok(AUTOCOMMIT),
    ];
    let oks: Vec<bool> = packets
        .iter()
        .map(|p| {
            f.packet(p.len(), p).unwrap();
            f.was_ok()
        })
        .collect();
    assert_eq!(oks, [false, false, false, true, true]);
    let mut f = start(ReplyTo::Results, false);
    for p in [
        vec![1],
        b"def".to_vec(),
        eof(AUTOCOMMIT),
        b"\x011".to_vec(),
        eof(AUTOCOMMIT),
    ] {
        f.packet(p.len(), &p).unwrap();
        assert!(!f.was_ok(), "a classic EOF is no OK");
    }
}

#[test]
fn cached_metadata_leaves_the_definitions_out() {
    // MARIADB_CLIENT_CACHE_METADATA: the count, then 0 (no definitions),
    // then the rows at once (DEPRECATE_EOF) or after the EOF.
    let mut f = start(ReplyTo::Results, true);
    let steps = feed(&mut f, &[vec![2, 0], vec![0, 0, 1], ok_eof(AUTOCOMMIT)]);
    assert_eq!(steps, [Step::More, Step::More, done(AUTOCOMMIT)]);
    let mut f = start(ReplyTo::Results, false);
    let steps = feed(
        &mut f,
        &[vec![2, 0], eof(AUTOCOMMIT), vec![0, 0, 1], eof(AUTOCOMMIT)],
    );
    assert_eq!(*steps.last().unwrap(), done(AUTOCOMMIT));
    // With metadata: the definitions follow.
    let mut f = start(ReplyTo::Results, true);
    let steps = feed(
        &mut f,
        &[
            vec![1, 1],
            b"def".to_vec(),
            vec![0, 0, 1],
            ok_eof(AUTOCOMMIT),
        ],
    );
    assert_eq!(*steps.last().unwrap(), done(AUTOCOMMIT));
}
