//! The relay in process, over loopback TCP socket pairs (so the splice path
//! runs too): a test plays the client on one pair and the backend on the
//! other.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::protocol::encode_packet;
use crate::server::kill::Registry;

/// A connected pair: the relay's end (as a [`Stream`]) and the test's.
async fn pair() -> (Stream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (ours, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (Stream::Tcp(accepted.unwrap().0), ours.unwrap())
}

fn packet(seq: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_packet(seq, payload, &mut out);
    out.to_vec()
}

/// Reads exactly `n` bytes (within 10 s).
async fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut out = vec![0; n];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut out))
        .await
        .expect("in time")
        .expect("read");
    out
}

/// Reads until the peer closes (within 10 s).
async fn read_to_end(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("in time")
        .expect("read");
    out
}

/// A relay between fresh pairs: the test's client end, the test's backend
/// end, and the relay's outcome (its stats, and whether it handed the
/// streams back).
struct Harness {
    client: TcpStream,
    backend: TcpStream,
    relay: tokio::task::JoinHandle<(RelayStats, bool)>,
}

async fn start(timeouts: Timeouts, keep_backend: bool) -> Harness {
    let (client_side, client) = pair().await;
    let (backend_side, backend) = pair().await;
    let backend_addr = backend.local_addr().unwrap();
    let relay = tokio::spawn(async move {
        let metrics = Metrics::default();
        let registry = Registry::default();
        let never = tokio_util::sync::CancellationToken::new();
        let options = Options {
            stop: Stop {
                drain: &never,
                now: &never,
            },
            timeouts,
            metrics: &metrics,
            kills: (&registry, backend_addr),
            keep_backend,
        };
        let (stats, after) = relay(
            client_side,
            BytesMut::new(),
            backend_side,
            BytesMut::new(),
            options,
        )
        .await;
        let handed_back = match after {
            After::Close => false,
            After::Quit { .. } => true,
            // The client's stream still writes: a marker the test reads.
            After::ChangeUser { mut client, .. } => client.write_all(MARK).await.is_ok(),
        };
        (stats, handed_back)
    });
    Harness {
        client,
        backend,
        relay,
    }
}

async fn finish(relay: tokio::task::JoinHandle<(RelayStats, bool)>) -> (RelayStats, bool) {
    tokio::time::timeout(Duration::from_secs(10), relay)
        .await
        .expect("the relay ends")
        .expect("no panic")
}

const OK: &[u8] = b"\x00\x00\x00\x02\x00\x00\x00";
/// What the harness writes to a client stream handed back for
/// COM_CHANGE_USER.
const MARK: &[u8] = b"still open";

#[tokio::test]
async fn pipelined_commands_and_split_packets_pass_whole_then_quit_closes_the_backend() {
    let mut h = start(Timeouts::default(), false).await;
    let mut sent = packet(0, b"\x03SELECT 1");
    sent.extend(packet(0, b"\x03SELECT 2"));
    // Written a byte at a time: packets span reads.
    for b in &sent {
        h.client.write_all(&[*b]).await.unwrap();
        h.client.flush().await.unwrap();
    }
    assert_eq!(read_n(&mut h.backend, sent.len()).await, sent);
    let answers = [packet(1, OK), packet(1, OK)].concat();
    h.backend.write_all(&answers).await.unwrap();
    assert_eq!(read_n(&mut h.client, answers.len()).await, answers);
    // COM_QUIT: the backend gets it and its side is shut; then it closes.
    h.client.write_all(&packet(0, b"\x01")).await.unwrap();
    assert_eq!(read_to_end(&mut h.backend).await, packet(0, b"\x01"));
    drop(h.backend);
    let (stats, handed_back) = finish(h.relay).await;
    assert_eq!((stats.end, handed_back), (End::ClientQuit, false));
    // COM_QUIT is the relay's own (sent as it closes), not counted.
    assert_eq!(stats.from_client, sent.len() as u64);
    assert_eq!(stats.to_client, answers.len() as u64);
}

#[tokio::test]
async fn payloads_over_16_mib_pass_both_ways_by_splice_too() {
    let h = start(Timeouts::default(), false).await;
    // A 17 MiB statement: a full 0xFFFFFF chunk and the rest.
    let mut statement = vec![b'x'; 17 << 20];
    statement[0] = 0x03;
    let mut sent = BytesMut::new();
    encode_packet(0, &statement, &mut sent);
    let (mut client_r, mut client_w) = h.client.into_split();
    let mut backend = h.backend;
    let writer = tokio::spawn(async move {
        client_w.write_all(&sent).await.unwrap();
        (client_w, sent.len())
    });
    let (client_w, n) = {
        let got = read_n(&mut backend, statement.len() + 8).await;
        assert!(got[4..4 + 0xFF_FFFF] == statement[..0xFF_FFFF]);
        writer.await.unwrap()
    };
    assert_eq!(n, statement.len() + 8);
    // A 20 MiB answer (moves by splice once reads fill).
    let answer: Vec<u8> = (0..20u32 << 20).map(|i| i as u8).collect();
    let feeder = tokio::spawn(async move {
        backend.write_all(&answer).await.unwrap();
        (backend, answer)
    });
    let mut got = vec![0; 20 << 20];
    client_r.read_exact(&mut got).await.unwrap();
    let (backend, answer) = feeder.await.unwrap();
    assert!(got == answer);
    drop((client_r, client_w));
    drop(backend);
    let (stats, _) = finish(h.relay).await;
    assert_eq!(stats.to_client, 20 << 20);
}

#[tokio::test]
async fn com_change_user_stops_the_relay_at_its_packet_with_both_streams() {
    for answer_len in [11, 4 << 20] {
        let mut h = start(Timeouts::default(), false).await;
        let query = packet(0, b"\x03SELECT 1");
        h.client.write_all(&query).await.unwrap();
        assert_eq!(read_n(&mut h.backend, query.len()).await, query);
        // A short answer, or a long one (which moves by splice).
        let answer: Vec<u8> = (0..answer_len).map(|i| i as u8).collect();
        h.backend.write_all(&answer).await.unwrap();
        assert!(read_n(&mut h.client, answer_len).await == answer);
        let change = packet(0, b"\x11bob\0");
        h.client.write_all(&change).await.unwrap();
        let (stats, handed_back) = finish(h.relay).await;
        assert_eq!((stats.end, handed_back), (End::ChangeUser, true));
        // The COM_CHANGE_USER is the session's, not forwarded; the
        // client's stream is open for it.
        assert_eq!(stats.from_client, query.len() as u64);
        assert_eq!(read_n(&mut h.client, MARK.len()).await, MARK);
    }
}

#[tokio::test]
async fn a_client_that_half_closes_still_gets_the_answers_under_way() {
    let mut h = start(Timeouts::default(), false).await;
    let query = packet(0, b"\x03SELECT 1");
    h.client.write_all(&query).await.unwrap();
    h.client.shutdown().await.unwrap();
    // The backend gets the query, then COM_QUIT, then the end of stream.
    let mut expected = query.clone();
    expected.extend(packet(0, b"\x01"));
    assert_eq!(read_to_end(&mut h.backend).await, expected);
    h.backend.write_all(&packet(1, OK)).await.unwrap();
    drop(h.backend);
    assert_eq!(read_to_end(&mut h.client).await, packet(1, OK));
    let (stats, _) = finish(h.relay).await;
    assert_eq!(stats.end, End::ClientClosed);
}

/// The ERR packet at the start of `bytes`: sequence id and code.
fn err_of(bytes: &[u8]) -> (u8, u16) {
    assert!(bytes.len() > 7 && bytes[4] == 0xFF, "{bytes:?}");
    (bytes[3], u16::from_le_bytes([bytes[5], bytes[6]]))
}

#[tokio::test]
async fn a_backend_lost_before_the_answer_leaves_an_err_in_its_place() {
    let mut h = start(Timeouts::default(), false).await;
    // LOAD DATA LOCAL INFILE: the answer to its last data packet is #4.
    h.client
        .write_all(&packet(0, b"\x03LOAD DATA LOCAL INFILE 'f' INTO TABLE t"))
        .await
        .unwrap();
    read_n(&mut h.backend, 4 + 40).await;
    h.backend.write_all(&packet(1, b"\xfbf")).await.unwrap();
    read_n(&mut h.client, 6).await;
    let data = [packet(2, b"1\n"), packet(3, b"")].concat();
    h.client.write_all(&data).await.unwrap();
    read_n(&mut h.backend, data.len()).await;
    drop(h.backend);
    let got = read_to_end(&mut h.client).await;
    assert_eq!(err_of(&got), (4, codes::BACKEND_LOST));
    let (stats, _) = finish(h.relay).await;
    assert_eq!(stats.end, End::BackendClosed);
}

#[tokio::test]
async fn a_backend_silent_past_query_timeout_ends_the_session_with_an_err() {
    let timeouts = Timeouts {
        idle: Some(Duration::from_secs(60)),
        query: Some(Duration::from_millis(200)),
    };
    let mut h = start(timeouts, false).await;
    let query = packet(0, b"\x03SELECT SLEEP(10)");
    h.client.write_all(&query).await.unwrap();
    read_n(&mut h.backend, query.len()).await;
    let got = read_to_end(&mut h.client).await;
    assert_eq!(err_of(&got), (1, codes::QUERY_TIMEOUT));
    let (stats, _) = finish(h.relay).await;
    assert_eq!(stats.end, End::QueryTimeout);
    // The backend session was closed, not sent COM_QUIT.
    assert_eq!(read_to_end(&mut h.backend).await, b"");
}

#[tokio::test]
async fn an_idle_session_ends_by_idle_timeout_with_com_quit_to_the_backend() {
    let timeouts = Timeouts {
        idle: Some(Duration::from_millis(200)),
        query: Some(Duration::from_secs(60)),
    };
    let mut h = start(timeouts, false).await;
    // COM_STMT_CLOSE gets no answer: the session is idle after it.
    let close = packet(0, b"\x19\x01\x00\x00\x00");
    h.client.write_all(&close).await.unwrap();
    let mut expected = close.clone();
    expected.extend(packet(0, b"\x01"));
    assert_eq!(read_to_end(&mut h.backend).await, expected);
    assert_eq!(read_to_end(&mut h.client).await, b"");
    let (stats, _) = finish(h.relay).await;
    assert_eq!(stats.end, End::IdleTimeout);
}
