//! MariaDB GTIDs and replication positions, sans-IO: whether a replica has
//! applied a session's last write, for read-your-writes. A write's GTID
//! comes from the OK packet's session tracking (`last_gtid`); a replica's
//! position from `@@gtid_slave_pos` (or `@@gtid_current_pos`).
//!
//! Sequence numbers grow within a replication domain, whichever server
//! wrote them, so a position has applied a GTID when its last GTID of that
//! domain has a sequence number at least as high.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// A GTID: `domain-server-sequence`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gtid {
    /// The replication domain.
    pub domain: u32,
    /// The server that wrote it.
    pub server: u32,
    /// Its sequence number in the domain.
    pub seq: u64,
}

/// Text that is not a GTID or a position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a GTID: {0:?}")]
pub struct BadGtid(String);

impl FromStr for Gtid {
    type Err = BadGtid;

    fn from_str(s: &str) -> Result<Self, BadGtid> {
        let bad = || BadGtid(s.chars().take(64).collect());
        let mut parts = s.trim().splitn(3, '-');
        let mut next = || {
            parts
                .next()
                .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        };
        let domain = next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let server = next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let seq = next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        Ok(Self {
            domain,
            server,
            seq,
        })
    }
}

impl fmt::Display for Gtid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.domain, self.server, self.seq)
    }
}

/// A replication position: the last GTID of each domain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GtidPos(BTreeMap<u32, Gtid>);

impl FromStr for GtidPos {
    type Err = BadGtid;

    /// `0-1-42,1-2-7` (blank: nothing applied yet).
    fn from_str(s: &str) -> Result<Self, BadGtid> {
        let mut pos = BTreeMap::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let gtid: Gtid = part.parse()?;
            if pos.insert(gtid.domain, gtid).is_some() {
                return Err(BadGtid(s.chars().take(64).collect()));
            }
        }
        Ok(Self(pos))
    }
}

impl fmt::Display for GtidPos {
    /// As the server prints it: `0-1-42,1-2-7`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, gtid) in self.0.values().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{gtid}")?;
        }
        Ok(())
    }
}

impl GtidPos {
    /// Whether this position includes `gtid`.
    pub fn has_applied(&self, gtid: &Gtid) -> bool {
        self.0
            .get(&gtid.domain)
            .is_some_and(|last| last.seq >= gtid.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gtid(s: &str) -> Gtid {
        s.parse().unwrap()
    }

    #[test]
    fn parses_gtids_and_positions() {
        assert_eq!(
            gtid("0-1-42"),
            Gtid {
                domain: 0,
                server: 1,
                seq: 42
            }
        );
        assert_eq!(gtid(" 3-2-18446744073709551615 ").seq, u64::MAX);
        assert_eq!(gtid("1-2-3").to_string(), "1-2-3");
        for bad in [
            "", "0-1", "0-1-", "a-1-2", "0-1-2-3", "-1-2-3", "0--1-2", "0-1-+2",
        ] {
            assert!(bad.parse::<Gtid>().is_err(), "{bad:?}");
        }
        assert_eq!("".parse::<GtidPos>(), Ok(GtidPos::default()));
        let pos: GtidPos = "0-1-42, 1-2-7".parse().unwrap();
        assert!(pos.has_applied(&gtid("0-1-42")));
        assert!(
            "0-1-1,0-2-2".parse::<GtidPos>().is_err(),
            "one GTID per domain"
        );
        assert!("0-1-1,x".parse::<GtidPos>().is_err());
    }

    #[test]
    fn a_position_has_applied_what_its_domain_reached() {
        let pos: GtidPos = "0-1-42,1-2-7".parse().unwrap();
        assert!(pos.has_applied(&gtid("0-1-41")));
        assert!(pos.has_applied(&gtid("0-1-42")));
        // Another server of the same domain: the sequence decides.
        assert!(pos.has_applied(&gtid("0-3-40")));
        assert!(!pos.has_applied(&gtid("0-1-43")));
        assert!(!pos.has_applied(&gtid("1-2-8")));
        // A domain it has never seen.
        assert!(!pos.has_applied(&gtid("2-1-1")));
        assert!(!GtidPos::default().has_applied(&gtid("0-1-1")));
    }
}
