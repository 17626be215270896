//! Connections through an L4 balancer that sends the PROXY protocol header:
//! who may send one, and reading it off the socket before the greeting.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tracing::{info, warn};

use crate::metrics::{Metrics, ProxyHeader};
use crate::protocol::proxy_header::{self, HeaderError, Parsed};

/// What a connection to a `proxy_protocol` listener came to.
pub(super) enum Arrival {
    /// Serve it as the client at this address.
    Client(SocketAddr),
    /// Closed (one log line said why).
    Refused,
}

/// Reads the header a connection from `peer` to `listener` must start
/// with (within `timeout`), if `peer` is one of `trusted`; says whom to
/// serve. Every refusal is one log line and a close.
pub(super) async fn arrive(
    socket: &mut TcpStream,
    peer: SocketAddr,
    listener: SocketAddr,
    trusted: bool,
    timeout: Duration,
    metrics: &Metrics,
) -> Arrival {
    if !trusted {
        metrics.proxy_header(ProxyHeader::Untrusted);
        warn!(peer = %peer, listener = %listener, "refused: this listener takes PROXY protocol connections from proxy_trusted addresses only");
        return Arrival::Refused;
    }
    match tokio::time::timeout(timeout, read_header(socket)).await {
        Ok(Ok(header)) => match header.source {
            Some(client) => {
                metrics.proxy_header(ProxyHeader::Proxied);
                Arrival::Client(client)
            }
            None => {
                // The balancer's own check: it is the client.
                metrics.proxy_header(ProxyHeader::Local);
                Arrival::Client(peer)
            }
        },
        Ok(Err(Failure::Header(e))) => {
            metrics.proxy_header(ProxyHeader::Malformed);
            warn!(peer = %peer, listener = %listener, error = %e, "refused: bad PROXY protocol header");
            Arrival::Refused
        }
        Ok(Err(Failure::Io(e))) => {
            metrics.proxy_header(ProxyHeader::Missing);
            info!(peer = %peer, listener = %listener, error = %e, "refused: connection ended before its PROXY protocol header did");
            Arrival::Refused
        }
        Err(_) => {
            metrics.proxy_header(ProxyHeader::Missing);
            warn!(peer = %peer, listener = %listener, timeout_ms = timeout.as_millis() as u64, "refused: no PROXY protocol header in time");
            Arrival::Refused
        }
    }
}

enum Failure {
    Header(HeaderError),
    Io(std::io::Error),
}

/// Reads exactly the header's bytes: the client's own stay in the socket.
async fn read_header(socket: &mut TcpStream) -> Result<proxy_header::Header, Failure> {
    let mut buf = Vec::with_capacity(proxy_header::MIN_LEN + 1);
    loop {
        match proxy_header::parse(&buf).map_err(Failure::Header)? {
            Parsed::Complete(h) => return Ok(h),
            Parsed::Incomplete(more) => {
                // The parser's own bounds, held here too: a read never
                // grows past the longest header of either version.
                let most = (16 + proxy_header::V2_MAX_BODY).max(proxy_header::V1_MAX);
                if buf.len() + more > most {
                    return Err(Failure::Header(HeaderError::TooLong(buf.len() + more)));
                }
                let start = buf.len();
                buf.resize(start + more, 0);
                socket
                    .read_exact(&mut buf[start..])
                    .await
                    .map_err(Failure::Io)?;
            }
        }
    }
}
