//! Limits on the gateway listener: what one client, one connection or one request may take.

use std::time::Duration;

use super::reader::Reader;

/// The head size actix-web's HTTP/1 parser buffers at most (fixed, 128 KiB); a larger head is
/// answered 431 by actix-web itself, before courier sees it.
pub const PARSER_MAX_HEAD_BYTES: u64 = 128 * 1024;

/// Limits of the gateway listener (the admin listener keeps actix-web's defaults).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Largest request head courier serves: request line plus every header line. Larger
    /// heads are answered 431 `headers_too_large`.
    pub max_header_bytes: usize,
    /// Connections one worker holds open at most; a full worker takes no new connection until
    /// one closes (the effective total is this times the workers).
    pub max_connections_per_worker: usize,
    /// Requests one client may have in flight on the process route at once; more are
    /// answered 429 `client_concurrency_exceeded`.
    pub client_max_in_flight: u32,
    /// Time a new connection has to deliver its first request head, else 408 and closed.
    pub client_header_timeout: Duration,
    /// Time a request's body has to arrive once its head has, else 408 `request_body_timeout`.
    pub client_body_timeout: Duration,
    /// Time a client has to acknowledge the close of a connection before it is dropped.
    pub client_disconnect_timeout: Duration,
    /// Levels of arrays and objects a request body may nest (`COURIER_MAX_JSON_DEPTH`);
    /// upstream answers and stored records may nest [`crate::json::WRAPPING_DEPTH`] more.
    pub max_json_depth: usize,
}

impl LimitsConfig {
    /// Reads the `COURIER_*` limit variables.
    pub(super) fn read(r: &mut Reader<'_>) -> LimitsConfig {
        LimitsConfig {
            max_header_bytes: r.count("COURIER_MAX_HEADER_BYTES", 16 * 1024, 1024..=PARSER_MAX_HEAD_BYTES) as usize,
            max_connections_per_worker: r.count("COURIER_MAX_CONNECTIONS_PER_WORKER", 25_000, 1..=1_000_000) as usize,
            client_max_in_flight: r.count("COURIER_CLIENT_MAX_IN_FLIGHT", 1024, 1..=1_000_000) as u32,
            client_header_timeout: r.seconds("COURIER_CLIENT_HEADER_TIMEOUT", 5.0),
            client_body_timeout: r.seconds("COURIER_CLIENT_BODY_TIMEOUT", 10.0),
            client_disconnect_timeout: r.seconds("COURIER_CLIENT_DISCONNECT_TIMEOUT", 1.0),
            max_json_depth: r.count(
                "COURIER_MAX_JSON_DEPTH",
                crate::json::DEFAULT_MAX_DEPTH as u64,
                2..=crate::json::MAX_DEPTH_SETTING as u64,
            ) as usize,
        }
    }
}
