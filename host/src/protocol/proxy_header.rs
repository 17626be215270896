//! The PROXY protocol header (versions 1 and 2) an L4 balancer sends before
//! the client's first byte, naming the client's address.
//!
//! Sans IO: [`parse`] looks at the bytes read so far and says how many more
//! it needs at least, or where the header ends and what it says. It never
//! asks for a byte past the header, so the reader can read exactly what it
//! asks for and hand the socket on untouched.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Version 2's signature.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Version 1's prefix.
const V1_PREFIX: &[u8] = b"PROXY ";
/// The longest version 1 header, CRLF included (the specification's bound).
pub const V1_MAX: usize = 107;
/// The shortest header of either version (`PROXY UNKNOWN\r\n`), which is
/// also enough to tell the versions apart.
pub const MIN_LEN: usize = 15;
/// The most address and TLV bytes a version 2 header may carry here. The
/// format allows 65,535; balancers send the addresses and a few TLVs.
pub const V2_MAX_BODY: usize = 1024;

/// What a complete header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Its length in bytes: the client's own bytes start there.
    pub len: usize,
    /// The client's address and port, if the header names one; `None` for
    /// version 1 `UNKNOWN`, a version 2 `LOCAL` command (the balancer's own
    /// health check) or an address family other than TCP over IPv4/IPv6.
    /// The connection's own peer is then the client.
    pub source: Option<SocketAddr>,
    /// The address the client connected to, when `source` is known.
    pub destination: Option<SocketAddr>,
    /// The version (1 or 2).
    pub version: u8,
}

/// What the bytes so far amount to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// The header goes on: read at least this many more bytes.
    Incomplete(usize),
    /// A whole header.
    Complete(Header),
}

/// Why the bytes are not a PROXY header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Neither signature: the peer did not send a header.
    #[error("no PROXY protocol header")]
    Missing,
    /// A header that breaks the format.
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
    /// A version 2 header longer than [`V2_MAX_BODY`] allows.
    #[error("PROXY protocol v2 header of {0} bytes exceeds the limit")]
    TooLong(usize),
}

/// Reads the header at the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<Parsed, HeaderError> {
    if buf.len() < MIN_LEN {
        // Enough to refuse early what starts neither way.
        let n = buf.len();
        if !V2_SIGNATURE.starts_with(&buf[..n.min(12)])
            && !V1_PREFIX.starts_with(&buf[..n.min(V1_PREFIX.len())])
        {
            return Err(HeaderError::Missing);
        }
        return Ok(Parsed::Incomplete(MIN_LEN - n));
    }
    if buf.starts_with(&V2_SIGNATURE) {
        parse_v2(buf)
    } else if buf.starts_with(V1_PREFIX) {
        parse_v1(buf)
    } else {
        Err(HeaderError::Missing)
    }
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, HeaderError> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(cr) = window.iter().position(|&b| b == b'\r') else {
        if buf.len() >= V1_MAX {
            return Err(HeaderError::Malformed("v1 line longer than 107 bytes"));
        }
        return Ok(Parsed::Incomplete(1));
    };
    // CR and LF both within the bound: a CR as the bound's last byte
    // would have its LF past it.
    if cr + 2 > V1_MAX {
        return Err(HeaderError::Malformed("v1 line longer than 107 bytes"));
    }
    match window.get(cr + 1) {
        None => return Ok(Parsed::Incomplete(1)),
        Some(b'\n') => {}
        Some(_) => return Err(HeaderError::Malformed("v1 CR without LF")),
    }
    let len = cr + 2;
    let line = std::str::from_utf8(&window[V1_PREFIX.len()..cr])
        .map_err(|_| HeaderError::Malformed("v1 line not ASCII"))?;
    if !line.is_ascii() {
        return Err(HeaderError::Malformed("v1 line not ASCII"));
    }
    let mut fields = line.split(' ');
    let family = fields.next().unwrap_or_default();
    if family == "UNKNOWN" {
        // The rest of the line is to be ignored.
        return Ok(Parsed::Complete(Header {
            len,
            source: None,
            destination: None,
            version: 1,
        }));
    }
    let v6 = match family {
        "TCP4" => false,
        "TCP6" => true,
        _ => {
            return Err(HeaderError::Malformed(
                "v1 family not TCP4, TCP6 or UNKNOWN",
            ));
        }
    };
    let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(HeaderError::Malformed("v1 line not five fields"));
    };
    let ip = |s: &str| -> Result<IpAddr, HeaderError> {
        let ip = if v6 {
            s.parse::<Ipv6Addr>().map(IpAddr::V6)
        } else {
            s.parse::<Ipv4Addr>().map(IpAddr::V4)
        };
        ip.map_err(|_| HeaderError::Malformed("v1 address"))
    };
    let port = |s: &str| -> Result<u16, HeaderError> {
        // Decimal without sign or leading zeros, as the specification says.
        if s.is_empty() || s.len() > 5 || (s.len() > 1 && s.starts_with('0')) {
            return Err(HeaderError::Malformed("v1 port"));
        }
        if !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(HeaderError::Malformed("v1 port"));
        }
        s.parse().map_err(|_| HeaderError::Malformed("v1 port"))
    };
    Ok(Parsed::Complete(Header {
        len,
        source: Some(SocketAddr::new(ip(src)?, port(sport)?)),
        destination: Some(SocketAddr::new(ip(dst)?, port(dport)?)),
        version: 1,
    }))
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, HeaderError> {
    const HEAD: usize = 16;
    if buf.len() < HEAD {
        return Ok(Parsed::Incomplete(HEAD - buf.len()));
    }
    let version = buf[12] >> 4;
    let command = buf[12] & 0x0F;
    if version != 2 {
        return Err(HeaderError::Malformed("v2 version nibble not 2"));
    }
    if command > 1 {
        return Err(HeaderError::Malformed("v2 command neither LOCAL nor PROXY"));
    }
    let family = buf[13];
    let body = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if body > V2_MAX_BODY {
        return Err(HeaderError::TooLong(HEAD + body));
    }
    let len = HEAD + body;
    if buf.len() < len {
        return Ok(Parsed::Incomplete(len - buf.len()));
    }
    let body = &buf[HEAD..len];
    if command == 0 {
        // LOCAL: the balancer's own connection (a health check); whatever
        // address block follows is to be ignored.
        return Ok(Parsed::Complete(Header {
            len,
            source: None,
            destination: None,
            version: 2,
        }));
    }
    let addresses = match family {
        // TCP over IPv4: two addresses and two ports.
        0x11 => {
            let a = body
                .get(..12)
                .ok_or(HeaderError::Malformed("v2 IPv4 addresses truncated"))?;
            let ip = |i: usize| IpAddr::V4(Ipv4Addr::new(a[i], a[i + 1], a[i + 2], a[i + 3]));
            Some((
                SocketAddr::new(ip(0), u16::from_be_bytes([a[8], a[9]])),
                SocketAddr::new(ip(4), u16::from_be_bytes([a[10], a[11]])),
            ))
        }
        // TCP over IPv6.
        0x21 => {
            let a = body
                .get(..36)
                .ok_or(HeaderError::Malformed("v2 IPv6 addresses truncated"))?;
            let ip = |i: usize| {
                let mut o = [0u8; 16];
                o.copy_from_slice(&a[i..i + 16]);
                IpAddr::V6(Ipv6Addr::from(o))
            };
            Some((
                SocketAddr::new(ip(0), u16::from_be_bytes([a[32], a[33]])),
                SocketAddr::new(ip(16), u16::from_be_bytes([a[34], a[35]])),
            ))
        }
        // UNSPEC, UDP, UNIX: no TCP address to use.
        0x00 | 0x12 | 0x22 | 0x31 | 0x32 => None,
        _ => return Err(HeaderError::Malformed("v2 address family")),
    };
    let (source, destination) = match addresses {
        Some((s, d)) => (Some(s), Some(d)),
        None => (None, None),
    };
    Ok(Parsed::Complete(Header {
        len,
        source,
        destination,
        version: 2,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `bytes` as a reader would: exactly what each answer asks for.
    fn feed(bytes: &[u8]) -> Result<Header, HeaderError> {
        let mut n = 0;
        loop {
            match parse(&bytes[..n])? {
                Parsed::Complete(h) => return Ok(h),
                Parsed::Incomplete(more) => {
                    assert!(more > 0);
                    n += more;
                    assert!(n <= bytes.len(), "asked past the header");
                }
            }
        }
    }

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut b = V2_SIGNATURE.to_vec();
        b.push(0x20 | command);
        b.push(family);
        b.extend_from_slice(&(body.len() as u16).to_be_bytes());
        b.extend_from_slice(body);
        b
    }

    #[test]
    fn v1_tcp4_and_tcp6() {
        let mut bytes = b"PROXY TCP4 192.0.2.7 127.0.0.1 51234 6033\r\n".to_vec();
        let len = bytes.len();
        bytes.extend_from_slice(b"\x20\x00\x00\x01trailing client bytes");
        let h = feed(&bytes).unwrap();
        assert_eq!(h.len, len);
        assert_eq!(h.source, Some("192.0.2.7:51234".parse().unwrap()));
        assert_eq!(h.destination, Some("127.0.0.1:6033".parse().unwrap()));
        let h = feed(b"PROXY TCP6 2001:db8::1 ::1 65535 6033\r\n").unwrap();
        assert_eq!(h.source, Some("[2001:db8::1]:65535".parse().unwrap()));
        assert_eq!(h.version, 1);
    }

    #[test]
    fn v1_unknown_names_no_one() {
        let h = feed(b"PROXY UNKNOWN\r\n").unwrap();
        assert_eq!((h.len, h.source), (15, None));
        let h = feed(b"PROXY UNKNOWN ffff:: ffff:: 1 2\r\n").unwrap();
        assert_eq!(h.source, None);
    }

    #[test]
    fn v1_refusals() {
        for bad in [
            &b"PROXY TCP4 192.0.2.7 127.0.0.1 51234\r\n"[..],
            b"PROXY TCP4 192.0.2.7 127.0.0.1 51234 6033 7\r\n",
            b"PROXY TCP4 ::1 127.0.0.1 1 2\r\n",
            b"PROXY TCP6 192.0.2.7 ::1 1 2\r\n",
            b"PROXY TCP4 192.0.2.7 127.0.0.1 051234 6033\r\n",
            b"PROXY TCP4 192.0.2.7 127.0.0.1 65536 6033\r\n",
            b"PROXY TCP4 192.0.2.7 127.0.0.1 +1 6033\r\n",
            b"PROXY TCP4  192.0.2.7 127.0.0.1 1 6033\r\n",
            b"PROXY UDP4 192.0.2.7 127.0.0.1 1 6033\r\n",
            b"PROXY TCP4 192.0.2.7 127.0.0.1 1 6033\rX",
        ] {
            assert!(
                matches!(feed(bad), Err(HeaderError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = [b"PROXY UNKNOWN ".as_slice(), &[b'x'; 120]].concat();
        assert_eq!(
            feed(&long),
            Err(HeaderError::Malformed("v1 line longer than 107 bytes"))
        );
        // The longest line the bound allows (CR LF at 105 and 106) and one
        // byte more: its CR the bound's last byte, its LF past it (found
        // by the fuzzer: it asked for one more byte for ever).
        let line = |len: usize| {
            let pad = len - b"PROXY UNKNOWN \r\n".len();
            [b"PROXY UNKNOWN ".as_slice(), &vec![b'x'; pad], b"\r\n"].concat()
        };
        let longest = line(V1_MAX);
        assert_eq!(feed(&longest).map(|h| h.len), Ok(V1_MAX));
        let over = [line(V1_MAX + 1), b"tail".to_vec()].concat();
        assert_eq!(
            feed(&over),
            Err(HeaderError::Malformed("v1 line longer than 107 bytes"))
        );
    }

    #[test]
    fn a_mysql_client_or_noise_is_missing_at_once() {
        // A client that speaks first (it should not) or a scanner.
        assert_eq!(parse(b"\x20\x00"), Err(HeaderError::Missing));
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(HeaderError::Missing));
        assert_eq!(parse(b"PROXX"), Err(HeaderError::Missing));
        assert_eq!(parse(b""), Ok(Parsed::Incomplete(MIN_LEN)));
        assert_eq!(parse(b"PRO"), Ok(Parsed::Incomplete(MIN_LEN - 3)));
    }

    #[test]
    fn v2_proxy_local_and_tlvs() {
        let mut body = vec![192, 0, 2, 7, 127, 0, 0, 1];
        body.extend_from_slice(&51234u16.to_be_bytes());
        body.extend_from_slice(&6033u16.to_be_bytes());
        // A TLV (PP2_TYPE_ALPN) after the addresses is skipped.
        body.extend_from_slice(&[0x01, 0x00, 0x02, b'h', b'2']);
        let bytes = v2(1, 0x11, &body);
        let h = feed(&bytes).unwrap();
        assert_eq!(h.len, bytes.len());
        assert_eq!(h.source, Some("192.0.2.7:51234".parse().unwrap()));
        assert_eq!(h.version, 2);

        let mut body6 = vec![0u8; 36];
        body6[15] = 1;
        body6[31] = 1;
        body6[32..34].copy_from_slice(&7u16.to_be_bytes());
        let h = feed(&v2(1, 0x21, &body6)).unwrap();
        assert_eq!(h.source, Some("[::1]:7".parse().unwrap()));

        // LOCAL: the balancer's own connection, addresses ignored.
        assert_eq!(feed(&v2(0, 0x11, &body)).unwrap().source, None);
        assert_eq!(feed(&v2(0, 0x00, &[])).unwrap().source, None);
        assert_eq!(feed(&v2(1, 0x31, &[0; 216])).unwrap().source, None);
    }

    #[test]
    fn v2_refusals() {
        let mut bad_version = v2(1, 0x11, &[0; 12]);
        bad_version[12] = 0x11;
        assert!(matches!(feed(&bad_version), Err(HeaderError::Malformed(_))));
        assert!(matches!(
            feed(&v2(2, 0x11, &[0; 12])),
            Err(HeaderError::Malformed(_))
        ));
        assert!(matches!(
            feed(&v2(1, 0x11, &[0; 11])),
            Err(HeaderError::Malformed("v2 IPv4 addresses truncated"))
        ));
        assert!(matches!(
            feed(&v2(1, 0x21, &[0; 35])),
            Err(HeaderError::Malformed(_))
        ));
        assert!(matches!(
            feed(&v2(1, 0x41, &[0; 12])),
            Err(HeaderError::Malformed(_))
        ));
        let mut huge = v2(1, 0x11, &[]);
        huge[14..16].copy_from_slice(&65535u16.to_be_bytes());
        assert_eq!(parse(&huge), Err(HeaderError::TooLong(16 + 65535)));
    }
}
