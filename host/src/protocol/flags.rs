//! Capability and status flags, named as MySQL and MariaDB name them.

use bitflags::bitflags;

bitflags! {
    /// The 32 capability bits of the greeting and the handshake response.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct CapabilityFlags: u32 {
        /// MySQL: new, longer passwords. MariaDB calls it CLIENT_MYSQL and a
        /// MariaDB server clears it to announce extended capabilities.
        const CLIENT_LONG_PASSWORD = 1;
        /// Affected rows counts found rows, not changed ones.
        const CLIENT_FOUND_ROWS = 1 << 1;
        /// All column flags.
        const CLIENT_LONG_FLAG = 1 << 2;
        /// A database can be named in the handshake response.
        const CLIENT_CONNECT_WITH_DB = 1 << 3;
        /// `db.table.column` is not allowed.
        const CLIENT_NO_SCHEMA = 1 << 4;
        /// Compressed protocol.
        const CLIENT_COMPRESS = 1 << 5;
        /// ODBC client (unused).
        const CLIENT_ODBC = 1 << 6;
        /// LOAD DATA LOCAL.
        const CLIENT_LOCAL_FILES = 1 << 7;
        /// Spaces before '(' are ignored.
        const CLIENT_IGNORE_SPACE = 1 << 8;
        /// The 4.1 protocol.
        const CLIENT_PROTOCOL_41 = 1 << 9;
        /// wait_timeout is interactive_timeout.
        const CLIENT_INTERACTIVE = 1 << 10;
        /// TLS after the SSLRequest.
        const CLIENT_SSL = 1 << 11;
        /// Do not issue SIGPIPE (client only).
        const CLIENT_IGNORE_SIGPIPE = 1 << 12;
        /// Status flags in EOF/OK.
        const CLIENT_TRANSACTIONS = 1 << 13;
        /// Unused (old 4.1 protocol flag).
        const CLIENT_RESERVED = 1 << 14;
        /// 4.1 authentication (1-byte length of the auth response).
        const CLIENT_SECURE_CONNECTION = 1 << 15;
        /// Several statements per COM_QUERY.
        const CLIENT_MULTI_STATEMENTS = 1 << 16;
        /// Several result sets per command.
        const CLIENT_MULTI_RESULTS = 1 << 17;
        /// Several result sets from COM_STMT_EXECUTE.
        const CLIENT_PS_MULTI_RESULTS = 1 << 18;
        /// Authentication plugins.
        const CLIENT_PLUGIN_AUTH = 1 << 19;
        /// Connection attributes in the handshake response.
        const CLIENT_CONNECT_ATTRS = 1 << 20;
        /// Length-encoded auth response.
        const CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA = 1 << 21;
        /// The client can handle expired passwords (sandbox mode).
        const CLIENT_CAN_HANDLE_EXPIRED_PASSWORDS = 1 << 22;
        /// Session state tracking in OK.
        const CLIENT_SESSION_TRACK = 1 << 23;
        /// OK instead of EOF after result sets.
        const CLIENT_DEPRECATE_EOF = 1 << 24;
        /// The client can handle optional metadata (MySQL 8).
        const CLIENT_OPTIONAL_RESULTSET_METADATA = 1 << 25;
        /// zstd compression (MySQL 8).
        const CLIENT_ZSTD_COMPRESSION_ALGORITHM = 1 << 26;
        /// Query attributes (MySQL 8).
        const CLIENT_QUERY_ATTRIBUTES = 1 << 27;
        /// Multi-factor authentication (MySQL 8).
        const MULTI_FACTOR_AUTHENTICATION = 1 << 28;
        /// Capability extension (MySQL).
        const CLIENT_CAPABILITY_EXTENSION = 1 << 29;
        /// Verify the server certificate (client only).
        const CLIENT_SSL_VERIFY_SERVER_CERT = 1 << 30;
        /// Keep options after a failed connect (client only).
        const CLIENT_REMEMBER_OPTIONS = 1 << 31;
    }
}

impl CapabilityFlags {
    /// What Switchyard can relay faithfully once both sides have negotiated
    /// the same flags. Not TLS and not compression (yet), nor MySQL 8
    /// extensions that need the proxy to understand them.
    pub fn implemented() -> Self {
        Self::CLIENT_LONG_PASSWORD
            | Self::CLIENT_FOUND_ROWS
            | Self::CLIENT_LONG_FLAG
            | Self::CLIENT_CONNECT_WITH_DB
            | Self::CLIENT_NO_SCHEMA
            | Self::CLIENT_ODBC
            | Self::CLIENT_LOCAL_FILES
            | Self::CLIENT_IGNORE_SPACE
            | Self::CLIENT_PROTOCOL_41
            | Self::CLIENT_INTERACTIVE
            | Self::CLIENT_IGNORE_SIGPIPE
            | Self::CLIENT_TRANSACTIONS
            | Self::CLIENT_RESERVED
            | Self::CLIENT_SECURE_CONNECTION
            | Self::CLIENT_MULTI_STATEMENTS
            | Self::CLIENT_MULTI_RESULTS
            | Self::CLIENT_PS_MULTI_RESULTS
            | Self::CLIENT_PLUGIN_AUTH
            | Self::CLIENT_CONNECT_ATTRS
            | Self::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
            | Self::CLIENT_CAN_HANDLE_EXPIRED_PASSWORDS
            | Self::CLIENT_SESSION_TRACK
            | Self::CLIENT_DEPRECATE_EOF
    }

    /// Flags that only say something about the client program and are not
    /// negotiated with the server.
    pub fn client_only() -> Self {
        Self::CLIENT_IGNORE_SIGPIPE
            | Self::CLIENT_SSL_VERIFY_SERVER_CERT
            | Self::CLIENT_REMEMBER_OPTIONS
    }
}

bitflags! {
    /// MariaDB's extended capabilities (the 4 bytes at the end of the
    /// greeting's and the response's filler, present when the server clears
    /// CLIENT_LONG_PASSWORD, which MariaDB calls CLIENT_MYSQL).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct MariaDbCapabilities: u32 {
        /// Progress reports during long commands.
        const MARIADB_CLIENT_PROGRESS = 1;
        /// COM_MULTI (removed from servers).
        const MARIADB_CLIENT_COM_MULTI = 1 << 1;
        /// COM_STMT_BULK_EXECUTE.
        const MARIADB_CLIENT_STMT_BULK_OPERATIONS = 1 << 2;
        /// Extended type information in column definitions.
        const MARIADB_CLIENT_EXTENDED_TYPE_INFO = 1 << 3;
        /// Prepared statement metadata is cached and skipped.
        const MARIADB_CLIENT_CACHE_METADATA = 1 << 4;
        /// Bulk results with unit results.
        const MARIADB_CLIENT_BULK_UNIT_RESULTS = 1 << 5;
    }
}

impl MariaDbCapabilities {
    /// What Switchyard relays faithfully when both sides agree on it.
    pub fn implemented() -> Self {
        Self::MARIADB_CLIENT_PROGRESS
            | Self::MARIADB_CLIENT_STMT_BULK_OPERATIONS
            | Self::MARIADB_CLIENT_EXTENDED_TYPE_INFO
            | Self::MARIADB_CLIENT_CACHE_METADATA
            | Self::MARIADB_CLIENT_BULK_UNIT_RESULTS
    }
}

bitflags! {
    /// Server status flags of OK/EOF packets and the greeting.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct StatusFlags: u16 {
        /// A transaction is open.
        const SERVER_STATUS_IN_TRANS = 1;
        /// Autocommit is on.
        const SERVER_STATUS_AUTOCOMMIT = 1 << 1;
        /// More results follow.
        const SERVER_MORE_RESULTS_EXISTS = 1 << 3;
        /// A cursor is open for the statement executed (binary protocol).
        const SERVER_STATUS_CURSOR_EXISTS = 1 << 6;
        /// The cursor's last row was sent.
        const SERVER_STATUS_LAST_ROW_SENT = 1 << 7;
        /// Session state changed (with CLIENT_SESSION_TRACK).
        const SERVER_SESSION_STATE_CHANGED = 1 << 14;
        /// Keep any other bit the server sets.
        const _ = !0;
    }
}
