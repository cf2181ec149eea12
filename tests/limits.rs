//! The gateway listener's limits over real loopback connections: head size, connections,
//! requests in flight per client, slow clients, upstream answer size, hostile request ids.

mod support;

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::json;
use support::{body, count, Pair, PairBuilder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response read off a raw connection: status, head text, body text.
#[derive(Debug)]
struct Raw {
    status: u16,
    head: String,
    body: String,
}

impl Raw {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("not JSON: {self:?}"))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Reads one response (head and a Content-Length body) within `within`; `None` if none came.
async fn read_response(stream: &mut TcpStream, within: Duration) -> Option<Raw> {
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status line");
            let mut raw = Raw { status, head, body: String::new() };
            let len: usize = raw.header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
            while buf.len() < end + 4 + len {
                match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
                    Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                    _ => break,
                }
            }
            raw.body = String::from_utf8_lossy(&buf[end + 4..]).into_owned();
            return Some(raw);
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
}

/// Whether the server closed the connection within `within` (EOF or reset).
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut chunk = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

async fn connect(pair: &Pair) -> TcpStream {
    TcpStream::connect(pair.courier.addr).await.expect("connect to courier")
}

fn process_head(extra: &str, content_length: usize) -> String {
    format!(
        "POST /api/external/process HTTP/1.1\r\nHost: courier\r\nContent-Type: application/json\r\n\
         Content-Length: {content_length}\r\n{extra}\r\n"
    )
}

#[actix_rt::test]
async fn a_head_over_the_limit_is_answered_431() {
    let pair = PairBuilder::default().env("COURIER_MAX_HEADER_BYTES", "2048").start().await;

    let within = pair.process_with(body("fits"), &[("x-filler", &"a".repeat(1500))]).await;
    assert_eq!(within.status, 200, "{within:?}");

    let answer = pair.process_with(body("too big"), &[("x-filler", &"a".repeat(2100))]).await;
    assert_eq!((answer.status.as_u16(), answer.error_code()), (431, "headers_too_large"));
    assert_eq!(answer.body["error"]["message"], "the request head is larger than 2048 bytes");
    assert!(answer.header("x-request-id").is_some());
    // Many small headers add up just the same; so does a long URL on the status route.
    let many: Vec<(String, String)> = (0..60).map(|i| (format!("x-h{i}"), "v".repeat(30))).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let answer = pair.process_with(body("many"), &many).await;
    assert_eq!(answer.status, 431, "{answer:?}");
    let mut response =
        pair.http.get(pair.url(&format!("/api/external/status/{}", "r".repeat(3000)))).send().await.unwrap();
    assert_eq!(response.status(), 431);
    let status_body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(status_body["error"]["code"], "headers_too_large");

    // Past actix-web's own parser limit (128 KiB) actix-web refuses the head itself, and the
    // connection is closed: courier never buffers more than that. The answer is still 431 in
    // the error shape (http::connection replaces actix-web's bare one).
    let mut stream = connect(&pair).await;
    let huge = format!("GET /api/external/status/x HTTP/1.1\r\nHost: c\r\nX-Filler: {}\r\n\r\n", "b".repeat(140_000));
    let _ = stream.write_all(huge.as_bytes()).await; // the server may close before reading it all
    let raw = read_response(&mut stream, Duration::from_secs(5)).await.expect("an answer");
    assert_eq!(raw.status, 431, "{raw:?}");
    assert_eq!(raw.json()["error"]["code"], "headers_too_large");
    assert!(closed_within(&mut stream, Duration::from_secs(5)).await);

    assert_eq!(pair.metric("courier_limit_rejections_total", &[("limit", "header_size")]).await, 4.0);
    assert_eq!(count(&pair.sim_stats().await, &["process", "total"]), 1, "only the request that fit went upstream");
    pair.stop().await;
}

#[actix_rt::test]
async fn heads_actix_web_refuses_itself_get_the_error_shape_too() {
    let pair = PairBuilder::default().start().await;
    let cases: [(String, u16, &str); 4] = [
        // A request target past the `http` crate's 64 KiB (a head still within 128 KiB).
        (
            format!("GET /api/external/status/{} HTTP/1.1\r\nHost: c\r\n\r\n", "r".repeat(70_000)),
            431,
            "headers_too_large",
        ),
        // More header lines than actix-web parses (96).
        (
            format!(
                "GET /healthz HTTP/1.1\r\nHost: c\r\n{}\r\n",
                (0..120).map(|i| format!("X-H{i}: v\r\n")).collect::<String>()
            ),
            431,
            "headers_too_large",
        ),
        // Not HTTP at all, and a broken request line.
        ("\x16\x03\x01\x02\x00 hello\r\n\r\n".to_owned(), 400, "invalid_request"),
        ("GET /a b c HTTP/1.1\r\nHost: c\r\n\r\n".to_owned(), 400, "invalid_request"),
    ];
    for (request, status, code) in cases {
        let mut stream = connect(&pair).await;
        let _ = stream.write_all(request.as_bytes()).await;
        let raw = read_response(&mut stream, Duration::from_secs(5)).await.expect("an answer");
        assert_eq!((raw.status, raw.json()["error"]["code"].as_str()), (status, Some(code)), "{raw:?}");
        assert_eq!(raw.json()["success"], false);
        assert!(raw.header("x-request-id").is_some_and(|id| raw.json()["request_id"] == id), "{raw:?}");
        assert!(closed_within(&mut stream, Duration::from_secs(5)).await);
    }
    assert_eq!(pair.metric("courier_limit_rejections_total", &[("limit", "header_size")]).await, 2.0);
    assert_eq!(pair.metric("courier_limit_rejections_total", &[("limit", "malformed_head")]).await, 2.0);
    // And the next connection is served as ever.
    assert_eq!(pair.process(body("after")).await.status, 200);
    pair.stop().await;
}

#[actix_rt::test]
async fn a_connection_over_the_limit_waits_until_one_closes() {
    let pair =
        PairBuilder::default().env("COURIER_WORKERS", "1").env("COURIER_MAX_CONNECTIONS_PER_WORKER", "1").start().await;
    let request = b"GET /api/external/status/none HTTP/1.1\r\nHost: courier\r\n\r\n";

    let mut first = connect(&pair).await;
    first.write_all(request).await.unwrap();
    let answer = read_response(&mut first, Duration::from_secs(5)).await.expect("the first connection is served");
    assert_eq!(answer.status, 404);

    // The kernel completes the second handshake (backlog), but courier does not take the
    // connection while the first is open (kept alive for 5 s), so the request gets no answer.
    let mut second = connect(&pair).await;
    second.write_all(request).await.unwrap();
    assert!(
        read_response(&mut second, Duration::from_millis(700)).await.is_none(),
        "the second connection was served while the first was open"
    );

    let closed_at = Instant::now();
    drop(first);
    let answer = read_response(&mut second, Duration::from_secs(3)).await.expect("served once the first closed");
    assert_eq!(answer.status, 404);
    assert!(closed_at.elapsed() < Duration::from_secs(2), "served well before the keep-alive timeout");
    pair.stop().await;
}

fn clients_file(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("courier-limits-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("clients.toml");
    let text = format!(
        "[[client]]\nname = \"greedy\"\nkey_sha256 = \"{}\"\n\n[[client]]\nname = \"modest\"\nkey_sha256 = \"{}\"\n",
        courier::config::key_sha256_hex("greedy-key"),
        courier::config::key_sha256_hex("modest-key"),
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Waits (bounded) until the simulator holds `n` process requests at once.
async fn wait_upstream_in_flight(pair: &Pair, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while count(&pair.sim_stats().await, &["in_flight"]) < n {
        assert!(Instant::now() < deadline, "{n} requests never reached the upstream together");
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
}

#[actix_rt::test]
async fn a_client_over_its_in_flight_limit_gets_429_and_others_are_unaffected() {
    let path = clients_file("in-flight");
    let pair = std::rc::Rc::new(
        PairBuilder::default()
            .sim(|s| s.faults.latency_ms = 1500.0)
            .env("COURIER_CLIENTS_FILE", path.to_str().unwrap())
            .env("COURIER_CLIENT_MAX_IN_FLIGHT", "3")
            .start()
            .await,
    );
    const GREEDY: [(&str, &str); 1] = [("authorization", "Bearer greedy-key")];
    const MODEST: [(&str, &str); 1] = [("authorization", "Bearer modest-key")];

    let held: Vec<_> = (0..3)
        .map(|i| {
            let pair = pair.clone();
            actix_rt::spawn(async move { pair.process_with(body(&format!("held {i}")), &GREEDY).await })
        })
        .collect();
    wait_upstream_in_flight(&pair, 3).await;

    let asked = Instant::now();
    let refused = pair.process_with(body("one more"), &GREEDY).await;
    assert_eq!((refused.status.as_u16(), refused.error_code()), (429, "client_concurrency_exceeded"));
    assert!(asked.elapsed() < Duration::from_millis(500), "refused at once, not after the held ones");
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(refused.body["error"]["retryable"], true);
    // The job submission path is under the same limit.
    let job = json!({"data": {"input": "later"}, "options": {"async": true}});
    let refused_job = pair.process_with(&job, &GREEDY).await;
    assert_eq!((refused_job.status.as_u16(), refused_job.error_code()), (429, "client_concurrency_exceeded"));

    // Another client is not held back by the first one's requests.
    let modest = pair.process_with(body("modest"), &MODEST).await;
    assert_eq!(modest.status, 200, "{modest:?}");

    for answer in join_all(held).await {
        assert_eq!(answer.unwrap().status, 200);
    }
    // Once they are answered the client has its whole allowance back.
    let again = join_all((0..3).map(|i| pair.process_with(body(&format!("again {i}")), &GREEDY))).await;
    assert!(again.iter().all(|a| a.status == 200), "{again:?}");
    let accepted = pair.process_with(&job, &GREEDY).await;
    assert_eq!(accepted.status, 202, "{accepted:?}");

    assert_eq!(pair.metric("courier_limit_rejections_total", &[("limit", "client_in_flight")]).await, 2.0);
    let stats = pair.sim_stats().await;
    assert_eq!(count(&stats, &["peak_concurrency"]), 4, "three held plus the other client's");
    std::rc::Rc::try_unwrap(pair).ok().unwrap().stop().await;
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

#[actix_rt::test]
async fn without_a_clients_file_all_callers_share_one_allowance() {
    let pair = std::rc::Rc::new(
        PairBuilder::default()
            .sim(|s| s.faults.latency_ms = 1000.0)
            .env("COURIER_CLIENT_MAX_IN_FLIGHT", "1")
            .start()
            .await,
    );
    let held = {
        let pair = pair.clone();
        actix_rt::spawn(async move { pair.process(body("held")).await })
    };
    wait_upstream_in_flight(&pair, 1).await;
    let refused = pair.process(body("anyone else")).await;
    assert_eq!((refused.status.as_u16(), refused.error_code()), (429, "client_concurrency_exceeded"));
    assert_eq!(held.await.unwrap().status, 200);
    assert_eq!(pair.process(body("after")).await.status, 200);
    std::rc::Rc::try_unwrap(pair).ok().unwrap().stop().await;
}

#[actix_rt::test]
async fn a_slow_head_gets_408_and_the_connection_is_closed() {
    let pair = PairBuilder::default().env("COURIER_CLIENT_HEADER_TIMEOUT", "0.5").start().await;
    let mut stream = connect(&pair).await;
    let opened = Instant::now();
    stream.write_all(b"POST /api/external/process HTTP/1.1\r\nHost: courier\r\n").await.unwrap();
    let raw = read_response(&mut stream, Duration::from_secs(5)).await.expect("an answer to the slow head");
    let waited = opened.elapsed();
    assert_eq!(raw.status, 408, "{raw:?}");
    assert_eq!(raw.json()["error"]["code"], "request_head_timeout");
    assert!(waited >= Duration::from_millis(400) && waited < Duration::from_secs(2), "answered after {waited:?}");
    assert!(closed_within(&mut stream, Duration::from_secs(3)).await, "the connection is closed");
    assert_eq!(count(&pair.sim_stats().await, &["process", "total"]), 0);
    assert_eq!(pair.metric("courier_limit_rejections_total", &[("limit", "header_timeout")]).await, 1.0);
    pair.stop().await;
}

#[actix_rt::test]
async fn a_slow_body_gets_408_request_body_timeout() {
    let pair = PairBuilder::default().env("COURIER_CLIENT_BODY_TIMEOUT", "0.5").start().await;
    let mut stream = connect(&pair).await;
    let sent = Instant::now();
    stream.write_all(process_head("", 100).as_bytes()).await.unwrap();
    stream.write_all(br#"{"data": {"inp"#).await.unwrap();
    let raw = read_response(&mut stream, Duration::from_secs(5)).await.expect("an answer to the slow body");
    let waited = sent.elapsed();
    assert_eq!(raw.status, 408, "{raw:?}");
    assert_eq!(raw.json()["error"]["code"], "request_body_timeout");
    assert!(waited >= Duration::from_millis(400) && waited < Duration::from_secs(2), "answered after {waited:?}");
    assert!(closed_within(&mut stream, Duration::from_secs(3)).await, "the connection is not reused");

    // A body that arrives in time, in pieces, is served.
    let mut stream = connect(&pair).await;
    let whole = br#"{"data": {"input": "in pieces"}}"#;
    stream.write_all(process_head("", whole.len()).as_bytes()).await.unwrap();
    stream.write_all(&whole[..10]).await.unwrap();
    actix_rt::time::sleep(Duration::from_millis(100)).await; // a pause well within the timeout
    stream.write_all(&whole[10..]).await.unwrap();
    let raw = read_response(&mut stream, Duration::from_secs(5)).await.expect("an answer");
    assert_eq!(raw.status, 200, "{raw:?}");

    assert_eq!(pair.metric("courier_limit_rejections_total", &[("limit", "body_timeout")]).await, 1.0);
    pair.stop().await;
}

/// A chunked request whose HTTP chunks are `pieces`: each chunk reaches the handler as a piece of
/// its own, however the bytes travel.
fn chunked(pieces: &[&str]) -> String {
    let mut text = String::from(
        "POST /api/external/process HTTP/1.1\r\nHost: courier\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n\r\n",
    );
    for piece in pieces {
        text += &format!("{:x}\r\n{piece}\r\n", piece.len());
    }
    text + "0\r\n\r\n"
}

#[actix_rt::test]
async fn a_chunked_body_stalled_mid_chunk_gets_408_and_the_connection_is_closed() {
    let pair = PairBuilder::default().env("COURIER_CLIENT_BODY_TIMEOUT", "0.5").start().await;
    for stall in [
        // Stalled inside a chunk's data, and between chunks (after a whole chunk).
        "POST /api/external/process HTTP/1.1\r\nHost: courier\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n\r\n40\r\n{\"data\": {\"inp",
        "POST /api/external/process HTTP/1.1\r\nHost: courier\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n\r\n5\r\n{\"dat\r\n",
    ] {
        let mut stream = connect(&pair).await;
        stream.write_all(stall.as_bytes()).await.unwrap();
        let raw = read_response(&mut stream, Duration::from_secs(5)).await.expect("an answer to the stalled body");
        assert_eq!(raw.status, 408, "{raw:?}");
        assert_eq!(raw.json()["error"]["code"], "request_body_timeout");
        assert_eq!(raw.header("connection"), Some("close"), "{raw:?}");
        assert!(closed_within(&mut stream, Duration::from_secs(3)).await, "the stalled connection is closed");
    }
    assert_eq!(pair.metric("courier_limit_rejections_total", &[("limit", "body_timeout")]).await, 2.0);
    pair.stop().await;
}

#[actix_rt::test]
async fn a_body_in_several_chunks_is_read_whole_and_held_to_the_size_limit() {
    let pair = PairBuilder::default().env("COURIER_MAX_BODY_BYTES", "64").start().await;

    let mut stream = connect(&pair).await;
    stream.write_all(chunked(&[r#"{"data": {"inp"#, r#"ut": "in thr"#, r#"ee pieces"}}"#]).as_bytes()).await.unwrap();
    let raw = read_response(&mut stream, Duration::from_secs(5)).await.expect("an answer");
    assert_eq!(raw.status, 200, "{raw:?}");
    assert_eq!(raw.json()["result"]["processed_data"], "IN THREE PIECES");

    // Each piece within the limit, together over it: refused, and nothing goes upstream.
    let first = format!(r#"{{"data": {{"input": "{}"#, "x".repeat(20));
    let second = format!(r#"{}"}}}}"#, "x".repeat(30));
    assert!(first.len() <= 64 && second.len() <= 64 && first.len() + second.len() > 64);
    let mut stream = connect(&pair).await;
    stream.write_all(chunked(&[&first, &second]).as_bytes()).await.unwrap();
    let raw = read_response(&mut stream, Duration::from_secs(5)).await.expect("an answer");
    assert_eq!(raw.status, 413, "{raw:?}");
    assert_eq!(raw.json()["error"]["code"], "payload_too_large");
    assert_eq!(count(&pair.sim_stats().await, &["process", "total"]), 1);
    pair.stop().await;
}

#[actix_rt::test]
async fn an_upstream_answer_over_the_size_limit_is_a_502_and_not_retried() {
    let pair = PairBuilder::default().env("COURIER_UPSTREAM_MAX_BODY_BYTES", "4096").start().await;
    assert_eq!(pair.process(body(&"s".repeat(1000))).await.status, 200);

    // The simulator answers with the input upper-cased, so this answer is over 6000 bytes.
    let answer = pair.process(body(&"b".repeat(6000))).await;
    assert_eq!((answer.status.as_u16(), answer.error_code()), (502, "upstream_response_too_large"));
    assert_eq!(answer.body["error"]["retryable"], false);
    assert!(answer.body["error"]["message"].as_str().unwrap().contains("COURIER_UPSTREAM_MAX_BODY_BYTES"));
    assert!(!answer.body.to_string().contains("BBBB"), "nothing of the upstream's answer reaches the client");
    assert_eq!(count(&pair.sim_stats().await, &["process", "ok"]), 2, "the same answer is not asked for again");
    assert_eq!(pair.metric("courier_upstream_attempts_total", &[("outcome", "too_large")]).await, 1.0);
    pair.stop().await;
}

#[actix_rt::test]
async fn a_hostile_request_id_is_replaced_and_never_echoed_or_logged() {
    let pair = PairBuilder::default().start().await;
    let long = format!("id-{}", "Z".repeat(1021)); // 1 KB of otherwise allowed characters
    let hostile = [
        long.clone(),
        "hostile-tab\there".to_owned(),
        "hostile-quote\"and\\slash".to_owned(),
        "hostile-json\",\"level\":\"CRIT".to_owned(),
    ];
    for id in &hostile {
        let answer = pair.process_with(body("odd id"), &[("x-request-id", id.as_str())]).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        let given = answer.header("x-request-id").unwrap().to_owned();
        assert!(given.starts_with("req_") && given.len() == 20, "{id:?} was answered as {given:?}");
        assert_eq!(answer.body["request_id"], given.as_str());
    }
    // Bytes a header may carry but text should not (obs-text, DEL) and a raw escape
    // sequence, straight onto the wire.
    for raw_id in [&b"hostile-caf\xc3\xa9\xff"[..], b"hostile-del\x7f", b"hostile-esc\x1b[31mred"] {
        let mut stream = connect(&pair).await;
        let body = br#"{"data": {"input": "raw id"}}"#;
        let mut request = format!(
            "POST /api/external/process HTTP/1.1\r\nHost: c\r\nContent-Type: application/json\r\nContent-Length: {}\r\nX-Request-Id: ",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(raw_id);
        request.extend_from_slice(b"\r\n\r\n");
        request.extend_from_slice(body);
        stream.write_all(&request).await.unwrap();
        let raw = read_response(&mut stream, Duration::from_secs(5)).await.expect("an answer");
        // Either the parser refuses the line (400) or courier answers with an id of its own.
        assert!(raw.status == 400 || raw.status == 200, "{raw:?}");
        if let Some(given) = raw.header("x-request-id") {
            assert!(given.starts_with("req_") && given.len() == 20, "{raw_id:?} was answered as {given:?}");
        }
        assert!(!raw.head.contains("hostile"), "{raw:?}");
    }

    let logs = pair.stop().await;
    let text = logs.text();
    assert!(!text.contains(&"Z".repeat(64)), "the long id reached the log");
    for fragment in ["hostile", "CRIT", "\\u001b", "\\u007f"] {
        assert!(!text.contains(fragment), "{fragment:?} reached the log");
    }
    for line in logs.lines().iter().filter(|l| l["event"] == "gateway_request") {
        let id = line["request_id"].as_str().unwrap();
        assert!(id.starts_with("req_") && id.len() == 20, "{line}");
    }
}

/// Found by the `request` fuzz target: a huge `X-Request-Timeout` used to panic the handler
/// (a float too large for a `Duration`) and take the worker's connections down with it.
#[actix_rt::test]
async fn a_huge_request_timeout_is_capped_not_a_crash() {
    let pair = PairBuilder::default().start().await;
    for huge in ["1e30", "49999999999999999999999999", "18446744073709551616"] {
        let answer = pair.process_with(body("patient"), &[("x-request-timeout", huge)]).await;
        assert_eq!(answer.status, 200, "{huge}: {answer:?}");
    }
    pair.stop().await;
}
