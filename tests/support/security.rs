//! Callers from more than one loopback address (any of 127.0.0.0/8 works on Linux), for the
//! lockout of sources that present wrong client keys.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{body, read_answer, Answer, Pair, PairBuilder};

/// An HTTP client whose connections come from `ip`.
pub fn client_from(ip: &str) -> awc::Client {
    let ip: IpAddr = ip.parse().expect("an IP address");
    awc::Client::builder().local_address(ip).timeout(Duration::from_secs(10)).finish()
}

/// A process request from `client`, with `Authorization: <authorization>` when given.
pub async fn process_from(pair: &Pair, client: &awc::Client, authorization: Option<&str>) -> Answer {
    let mut request = client.post(pair.url("/api/external/process"));
    if let Some(authorization) = authorization {
        request = request.insert_header(("authorization", authorization));
    }
    read_answer(request.send_json(&body("from an address")).await.expect("courier answers")).await
}

/// Another courier beside `first`'s simulator with the clients `alpha` and `beta`
/// ([`super::two_clients_file`]), locking a source out at the second wrong key and judging
/// spending every second; with the clients file, to remove when done.
pub async fn guarded_beside(first: &Pair, tag: &str) -> (Pair, PathBuf) {
    let clients = super::two_clients_file(tag);
    let pair = PairBuilder::default()
        .env("COURIER_CLIENTS_FILE", clients.to_str().unwrap())
        .env("COURIER_AUTH_LOCKOUT_THRESHOLD", "2")
        .env("COURIER_SPEND_INTERVAL", "1")
        .env("COURIER_SPEND_BASELINE_HALF_LIFE", "60")
        .log_level("warning")
        .start_beside(first)
        .await;
    (pair, clients)
}

/// Two wrong keys from `ip`, then a request refused 429 `auth_locked_out` (a threshold of 2).
pub async fn lock_out(pair: &Pair, ip: &str) {
    let guesser = client_from(ip);
    for expected in [401, 401, 429] {
        let answer = process_from(pair, &guesser, Some("Bearer a-guess")).await;
        assert_eq!(answer.status.as_u16(), expected, "{answer:?}");
    }
}
