//! A source that keeps presenting wrong client keys is locked out, over real connections from
//! two loopback source addresses (127.0.0.2 guesses, 127.0.0.1 is a client with its key): after
//! `COURIER_AUTH_LOCKOUT_THRESHOLD` wrong keys the guesser gets 429 `auth_locked_out` with a
//! `Retry-After` that doubles at each further lockout up to the cap, even with a valid key,
//! while the other source is served throughout; an operator lifts a lockout through the admin
//! route, and the lockout and the lift are audit lines; missing keys are counted but lock
//! nothing out; `0` turns lockouts off.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::security::{client_from, process_from};
use support::{read_answer, Answer, Pair, PairBuilder};

const ADMIN_TOKEN: &str = "admin-token-lockout-0123456789";
const GUESS: &str = "Bearer not-a-key-of-anyone";
const ALPHA: &str = "Bearer alpha-key";

/// The log lines of one event.
fn with_msg(logs: &courier::logging::LogCapture, msg: &str) -> Vec<serde_json::Value> {
    logs.lines().into_iter().filter(|line| line["event"] == msg).collect()
}

fn retry_after(answer: &Answer) -> u64 {
    answer.header("retry-after").expect("Retry-After").parse().expect("whole seconds")
}

/// Asserts the answer is the lockout's, and returns its `Retry-After`.
fn locked_out(answer: &Answer) -> u64 {
    assert_eq!((answer.status.as_u16(), answer.error_code()), (429, "auth_locked_out"), "{answer:?}");
    assert_eq!(answer.body["error"]["retryable"], true, "{answer:?}");
    retry_after(answer)
}

/// Sends the valid key from `client` until it is served (bounded): the lockout has ended.
async fn until_served(pair: &Pair, client: &awc::Client, bound: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let answer = process_from(pair, client, Some(ALPHA)).await;
        if answer.status == 200 {
            return started.elapsed();
        }
        locked_out(&answer);
        assert!(started.elapsed() < bound, "still locked out after {bound:?}: {answer:?}");
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn start(tag: &str, threshold: &str, base: &str, max: &str) -> (Pair, std::path::PathBuf) {
    let clients = support::two_clients_file(&format!("lockout-{tag}"));
    let pair = PairBuilder::default()
        .env("COURIER_CLIENTS_FILE", clients.to_str().unwrap())
        .env("COURIER_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("COURIER_AUTH_LOCKOUT_THRESHOLD", threshold)
        .env("COURIER_AUTH_LOCKOUT_WINDOW", "60")
        .env("COURIER_AUTH_LOCKOUT_BASE", base)
        .env("COURIER_AUTH_LOCKOUT_MAX", max)
        .start()
        .await;
    (pair, clients)
}

#[actix_rt::test]
async fn wrong_keys_lock_the_source_out_doubling_to_the_cap_while_another_source_is_served() {
    let (pair, clients) = start("grow", "3", "1", "4").await;
    let guesser = client_from("127.0.0.2");
    let honest = client_from("127.0.0.1");
    for _ in 0..3 {
        let answer = process_from(&pair, &guesser, Some(GUESS)).await;
        assert_eq!((answer.status.as_u16(), answer.error_code()), (401, "unauthorized"), "{answer:?}");
    }
    // Locked out: refused before any key is compared, the valid key too.
    assert_eq!(locked_out(&process_from(&pair, &guesser, Some(GUESS)).await), 1);
    assert_eq!(locked_out(&process_from(&pair, &guesser, Some(ALPHA)).await), 1, "a valid key from a locked source");
    assert_eq!(locked_out(&process_from(&pair, &guesser, None).await), 1);
    // The other source: served with its key, and only told its key is wrong when it is.
    assert_eq!(process_from(&pair, &honest, Some(ALPHA)).await.status, 200);
    assert_eq!(process_from(&pair, &honest, Some(GUESS)).await.status, 401);

    // Each lockout that follows (one wrong key on probation) is twice the last, to the cap.
    let mut seen = vec![1];
    for _ in 0..3 {
        until_served(&pair, &guesser, Duration::from_secs(6)).await;
        assert_eq!(process_from(&pair, &guesser, Some(GUESS)).await.status, 401, "the key is checked again");
        seen.push(locked_out(&process_from(&pair, &guesser, Some(ALPHA)).await));
    }
    assert_eq!(seen, [1, 2, 4, 4]);
    assert_eq!(process_from(&pair, &honest, Some(ALPHA)).await.status, 200, "never locked out");

    // Seen: every wrong key counted, each lockout an audit line naming the source, never a key.
    let wrong = [("reason", "wrong_key"), ("source_class", "loopback")];
    assert_eq!(pair.metric("courier_auth_failures_total", &wrong).await, 7.0);
    assert_eq!(pair.metric("courier_auth_lockout_events_total", &[("event", "locked")]).await, 4.0);
    // Every 429 of an unknown caller was the lockout's (the polls for its end among them).
    let refused = [("client", "unknown"), ("code", "auth_locked_out")];
    let refusals = pair.metric("courier_http_refusals_total", &refused).await;
    assert!(refusals >= 6.0, "{refusals}");
    assert_eq!(pair.metric("courier_http_requests_total", &[("status", "429"), ("client", "unknown")]).await, refusals);
    let logs = pair.stop().await;
    let lockouts = with_msg(&logs, "auth_lockout");
    assert_eq!(lockouts.len(), 4, "{lockouts:?}");
    for line in &lockouts {
        assert_eq!((line["source"].as_str(), line["audit"].as_bool()), (Some("127.0.0.2"), Some(true)), "{line}");
        assert_eq!(line["scope"], "local");
    }
    let strikes: Vec<u64> = lockouts.iter().map(|l| l["strike"].as_u64().unwrap()).collect();
    assert_eq!(strikes, [1, 2, 3, 4]);
    let text = logs.text();
    assert!(!text.contains("not-a-key-of-anyone") && !text.contains("alpha-key"), "a key was logged");
    let _ = std::fs::remove_dir_all(clients.parent().unwrap());
}

#[actix_rt::test]
async fn an_operator_sees_the_lockout_and_lifts_it_with_the_admin_token() {
    let (pair, clients) = start("lift", "2", "600", "3600").await;
    let guesser = client_from("127.0.0.3");
    for _ in 0..2 {
        assert_eq!(process_from(&pair, &guesser, Some(GUESS)).await.status, 401);
    }
    assert_eq!(locked_out(&process_from(&pair, &guesser, Some(ALPHA)).await), 600);

    let admin = |method: awc::http::Method, path: &str, token: Option<&str>| {
        let mut request = pair.http.request(method, pair.admin_url(path));
        if let Some(token) = token {
            request = request.insert_header(("authorization", format!("Bearer {token}")));
        }
        async move { read_answer(request.send().await.expect("admin answers")).await }
    };
    let state = admin(awc::http::Method::GET, "/admin/state", Some(ADMIN_TOKEN)).await;
    let lockouts = &state.body["lockouts"];
    assert_eq!(lockouts["locked_sources"], 1, "{state:?}");
    assert_eq!(lockouts["locked"][0]["source"], "127.0.0.3", "{state:?}");
    assert_eq!(lockouts["locked"][0]["strike"], 1, "{state:?}");
    assert!(lockouts["locked"][0]["retry_after_seconds"].as_f64().unwrap() > 590.0, "{state:?}");

    let delete = awc::http::Method::DELETE;
    let refused = admin(delete.clone(), "/admin/lockouts/127.0.0.3", None).await;
    assert_eq!(refused.status, 401, "{refused:?}");
    let wrong = admin(delete.clone(), "/admin/lockouts/127.0.0.3", Some("not-the-admin-token")).await;
    assert_eq!(wrong.status, 401, "{wrong:?}");
    assert!(locked_out(&process_from(&pair, &guesser, Some(ALPHA)).await) > 590, "still locked out");
    let bad = admin(delete.clone(), "/admin/lockouts/not-an-address", Some(ADMIN_TOKEN)).await;
    assert_eq!((bad.status.as_u16(), &bad.body["error"]["code"]), (400, &json!("invalid_request")), "{bad:?}");
    let lifted = admin(delete.clone(), "/admin/lockouts/127.0.0.3", Some(ADMIN_TOKEN)).await;
    assert_eq!(lifted.status, 200, "{lifted:?}");
    assert_eq!(lifted.body, json!({"source": "127.0.0.3", "lifted": true}));
    assert_eq!(process_from(&pair, &guesser, Some(ALPHA)).await.status, 200, "lifted");
    // The strikes are forgotten: the source starts again from the threshold.
    assert_eq!(process_from(&pair, &guesser, Some(GUESS)).await.status, 401);
    assert_eq!(process_from(&pair, &guesser, Some(ALPHA)).await.status, 200);
    let again = admin(delete, "/admin/lockouts/127.0.0.9", Some(ADMIN_TOKEN)).await;
    assert_eq!((again.status.as_u16(), &again.body["error"]["code"]), (404, &json!("not_found")), "{again:?}");
    assert_eq!(pair.metric("courier_auth_lockout_events_total", &[("event", "lifted")]).await, 1.0);
    let state = admin(awc::http::Method::GET, "/admin/state", Some(ADMIN_TOKEN)).await;
    assert_eq!(state.body["lockouts"]["locked_sources"], 0, "{state:?}");
    assert_eq!(state.body["lockouts"]["failing"][0]["source"], "127.0.0.3", "{state:?}");
    assert_eq!(state.body["lockouts"]["failing_networks"][0]["network"], "127.0.0.0/24", "{state:?}");

    // Audited: the admin request (with the token's fingerprint) and the lift (with the source).
    let logs = pair.stop().await;
    let lifts = with_msg(&logs, "auth_lockout_lifted");
    assert_eq!(lifts.len(), 2, "{lifts:?}");
    assert_eq!((lifts[0]["source"].as_str(), lifts[0]["was_locked"].as_bool()), (Some("127.0.0.3"), Some(true)));
    assert_eq!(lifts[0]["audit"], true);
    assert_eq!(lifts[1]["was_locked"], false);
    let requests = with_msg(&logs, "admin_request");
    let to_route: Vec<_> = requests.iter().filter(|r| r["route"] == "/admin/lockouts/{source}").collect();
    let outcomes: Vec<&str> = to_route.iter().map(|r| r["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["missing_token", "wrong_token", "allowed", "allowed", "allowed"], "{to_route:?}");
    assert!(!logs.text().contains(ADMIN_TOKEN), "the admin token was logged");
    let _ = std::fs::remove_dir_all(clients.parent().unwrap());
}

#[actix_rt::test]
async fn missing_keys_are_counted_but_lock_nothing_out_and_zero_turns_lockouts_off() {
    let (pair, clients) = start("missing", "2", "600", "600").await;
    let anonymous = client_from("127.0.0.4");
    for _ in 0..5 {
        assert_eq!(process_from(&pair, &anonymous, None).await.status, 401);
    }
    assert_eq!(process_from(&pair, &anonymous, Some(ALPHA)).await.status, 200);
    let missing = [("reason", "missing_key"), ("source_class", "loopback")];
    assert_eq!(pair.metric("courier_auth_failures_total", &missing).await, 5.0);
    pair.stop().await;
    let _ = std::fs::remove_dir_all(clients.parent().unwrap());

    let (pair, clients) = start("off", "0", "600", "600").await;
    let guesser = client_from("127.0.0.5");
    for _ in 0..10 {
        assert_eq!(process_from(&pair, &guesser, Some(GUESS)).await.status, 401);
    }
    assert_eq!(process_from(&pair, &guesser, Some(ALPHA)).await.status, 200);
    let wrong = [("reason", "wrong_key"), ("source_class", "loopback")];
    assert_eq!(pair.metric("courier_auth_failures_total", &wrong).await, 10.0, "counted all the same");
    let state = pair.admin_get("/admin/state").await;
    assert_eq!(state.status, 401, "the admin token is needed");
    pair.stop().await;
    let _ = std::fs::remove_dir_all(clients.parent().unwrap());
}
