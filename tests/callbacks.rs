//! Callback delivery over real HTTP: a receiver on loopback (allowed by the policy) records
//! what it gets and answers from a script. The tests check signatures with their own HMAC
//! code, as a receiver would, not with courier's `verify`.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use actix_web::dev::ServerHandle;
use actix_web::http::header::HeaderMap;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use bytes::Bytes;
use courier::jobs::callback::{CallbackPolicy, Delivery, DeliveryOutcome, RefusalKind, SpecialUse};
use courier::jobs::{CallbackState, DeliveryState};
use courier::upstream::{build_client, tls_config, Backoff, ClientSettings};
use hmac::{Hmac, KeyInit, Mac};
use secrecy::SecretString;
use sha2::Sha256;

const SECRET: &str = "whsec_integration_7c1e";
const BODY: &[u8] = br#"{"request_id":"req_cb_1","status":"completed","attempts":1}"#;

/// What the receiver answers to one request.
#[derive(Clone, Copy)]
enum Reply {
    Status(u16),
    /// 302 to another path on the same receiver.
    Redirect,
    /// Never answers.
    Hang,
}

/// One request as the receiver saw it.
struct Seen {
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

#[derive(Default)]
struct Shared {
    script: VecDeque<Reply>,
    seen: Vec<Seen>,
}

struct Receiver {
    addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    handle: ServerHandle,
}

async fn hook(req: HttpRequest, body: web::Bytes, shared: web::Data<Arc<Mutex<Shared>>>) -> HttpResponse {
    let reply = {
        let mut shared = shared.lock().unwrap();
        shared.seen.push(Seen { path: req.path().to_owned(), headers: req.headers().clone(), body });
        shared.script.pop_front().unwrap_or(Reply::Status(200))
    };
    match reply {
        Reply::Status(code) => HttpResponse::build(code.try_into().unwrap()).finish(),
        Reply::Redirect => HttpResponse::Found().insert_header(("location", "/elsewhere")).finish(),
        Reply::Hang => std::future::pending().await,
    }
}

impl Receiver {
    /// Starts a receiver on 127.0.0.1, port 0, answering `script` in order, then 200.
    fn start(script: &[Reply]) -> Receiver {
        let shared = Arc::new(Mutex::new(Shared { script: script.iter().copied().collect(), seen: Vec::new() }));
        let data = web::Data::new(shared.clone());
        let server = HttpServer::new(move || App::new().app_data(data.clone()).default_service(web::to(hook)))
            .workers(1)
            .disable_signals()
            .bind(("127.0.0.1", 0))
            .unwrap();
        let addr = server.addrs()[0];
        let server = server.run();
        let handle = server.handle();
        actix_rt::spawn(server);
        Receiver { addr, shared, handle }
    }

    fn url(&self) -> String {
        format!("http://{}/hook?job=req_cb_1", self.addr)
    }

    fn requests(&self) -> usize {
        self.shared.lock().unwrap().seen.len()
    }

    /// The `Host` header of the `n`th request.
    fn host_header(&self, n: usize) -> String {
        self.shared.lock().unwrap().seen[n].headers.get("host").unwrap().to_str().unwrap().to_owned()
    }

    async fn stop(self) {
        self.handle.stop(false).await;
    }
}

fn delivery(allow: &str, max_attempts: u32, timeout: Duration) -> Delivery {
    let policy = Arc::new(CallbackPolicy::parse(allow).unwrap());
    let backoff = Backoff::try_new(Duration::from_millis(2), Duration::from_millis(5), false).unwrap();
    Delivery::try_new(SecretString::from(SECRET), policy, max_attempts, backoff, timeout).unwrap()
}

fn client() -> awc::Client {
    build_client(tls_config(None).unwrap(), &ClientSettings::default())
}

/// Delivers and returns the outcome, the final state and a snapshot per `on_attempt` call.
async fn run(delivery: &Delivery, url: &str, state: &mut CallbackState) -> (DeliveryOutcome, Vec<CallbackState>) {
    let snapshots = Rc::new(RefCell::new(Vec::new()));
    let record = snapshots.clone();
    let outcome = delivery
        .deliver(
            &client(),
            url,
            Bytes::from_static(BODY),
            state,
            &courier::trace::Parent::NONE,
            move |s: &CallbackState| {
                record.borrow_mut().push(s.clone());
                std::future::ready(())
            },
        )
        .await;
    let snapshots = snapshots.borrow().clone();
    (outcome, snapshots)
}

/// `(state, attempts, last_status_code)` of each snapshot.
fn summary(states: &[CallbackState]) -> Vec<(DeliveryState, u32, Option<u16>)> {
    states.iter().map(|s| (s.state, s.attempts, s.last_status_code)).collect()
}

/// Checks an `X-Courier-Signature` as a receiver would: parse, recompute, compare, check age.
fn assert_signed(headers: &HeaderMap, body: &[u8]) {
    let header = headers.get("x-courier-signature").expect("signature header").to_str().unwrap();
    let (t, v1) = header.strip_prefix("t=").and_then(|rest| rest.split_once(",v1=")).expect(header);
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    let expected: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(v1, expected, "signature of {header}");
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    assert!(now.abs_diff(t.parse().unwrap()) <= 5, "timestamp {t} is not current");
}

#[actix_rt::test]
async fn delivered_on_the_first_attempt_with_a_valid_signature() {
    let receiver = Receiver::start(&[]);
    let mut state = CallbackState::new();
    let (outcome, calls) = run(&delivery("127.0.0.1", 3, Duration::from_secs(5)), &receiver.url(), &mut state).await;
    assert_eq!(outcome, DeliveryOutcome::Delivered);
    assert_eq!(summary(&calls), [(DeliveryState::Delivered, 1, Some(200))]);
    assert_eq!(calls[0], state);
    assert!(state.last_attempt_at.is_some());
    {
        let shared = receiver.shared.lock().unwrap();
        assert_eq!(shared.seen.len(), 1);
        let seen = &shared.seen[0];
        assert_eq!(seen.path, "/hook");
        assert_eq!(seen.body.as_ref(), BODY);
        assert_eq!(seen.headers.get("content-type").unwrap(), "application/json");
        assert_eq!(seen.headers.get("user-agent").unwrap(), concat!("courier/", env!("CARGO_PKG_VERSION")));
        assert_signed(&seen.headers, BODY);
    }
    assert_eq!(receiver.host_header(0), receiver.addr.to_string());
    receiver.stop().await;
}

#[actix_rt::test]
async fn two_500s_then_a_200_is_delivered_on_the_third_attempt() {
    let receiver = Receiver::start(&[Reply::Status(500), Reply::Status(500)]);
    let mut state = CallbackState::new();
    let (outcome, calls) = run(&delivery("127.0.0.1", 5, Duration::from_secs(5)), &receiver.url(), &mut state).await;
    assert_eq!(outcome, DeliveryOutcome::Delivered);
    assert_eq!(
        summary(&calls),
        [
            (DeliveryState::Failing, 1, Some(500)),
            (DeliveryState::Failing, 2, Some(500)),
            (DeliveryState::Delivered, 3, Some(200)),
        ]
    );
    assert_eq!(summary(&[state]), [(DeliveryState::Delivered, 3, Some(200))]);
    assert_eq!(receiver.requests(), 3);
    for seen in &receiver.shared.lock().unwrap().seen {
        assert_signed(&seen.headers, &seen.body);
    }
    receiver.stop().await;
}

#[actix_rt::test]
async fn a_receiver_that_always_fails_is_given_up_after_max_attempts() {
    let receiver = Receiver::start(&[Reply::Status(503); 10]);
    let mut state = CallbackState::new();
    let (outcome, calls) = run(&delivery("127.0.0.0/8", 3, Duration::from_secs(5)), &receiver.url(), &mut state).await;
    assert_eq!(outcome, DeliveryOutcome::GaveUp);
    assert_eq!(
        summary(&calls),
        [
            (DeliveryState::Failing, 1, Some(503)),
            (DeliveryState::Failing, 2, Some(503)),
            (DeliveryState::GaveUp, 3, Some(503)),
        ]
    );
    assert_eq!(state.state, DeliveryState::GaveUp);
    assert_eq!(receiver.requests(), 3);
    receiver.stop().await;
}

#[actix_rt::test]
async fn a_redirect_is_not_followed_and_counts_as_a_failure() {
    let receiver = Receiver::start(&[Reply::Redirect]);
    let mut state = CallbackState::new();
    let (outcome, calls) = run(&delivery("127.0.0.1", 1, Duration::from_secs(5)), &receiver.url(), &mut state).await;
    assert_eq!(outcome, DeliveryOutcome::GaveUp);
    assert_eq!(summary(&calls), [(DeliveryState::GaveUp, 1, Some(302))]);
    assert_eq!(receiver.requests(), 1, "the redirect target was requested");
    receiver.stop().await;
}

#[actix_rt::test]
async fn no_answer_leaves_no_status_code() {
    // A receiver that never answers: each attempt ends at the attempt timeout.
    let receiver = Receiver::start(&[Reply::Hang, Reply::Hang]);
    let mut state = CallbackState::new();
    let d = delivery("127.0.0.1", 2, Duration::from_millis(150));
    let (outcome, calls) = run(&d, &receiver.url(), &mut state).await;
    assert_eq!(outcome, DeliveryOutcome::GaveUp);
    assert_eq!(summary(&calls), [(DeliveryState::Failing, 1, None), (DeliveryState::GaveUp, 2, None)]);
    assert_eq!(receiver.requests(), 2);
    receiver.stop().await;

    // Nobody listening: connection refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut state = CallbackState::new();
    let (outcome, calls) =
        run(&delivery("127.0.0.1", 2, Duration::from_secs(5)), &format!("http://{closed}/hook"), &mut state).await;
    assert_eq!(outcome, DeliveryOutcome::GaveUp);
    assert_eq!(summary(&calls), [(DeliveryState::Failing, 1, None), (DeliveryState::GaveUp, 2, None)]);
}

#[actix_rt::test]
async fn a_url_refused_at_delivery_time_gives_up_without_a_request() {
    let receiver = Receiver::start(&[]);
    let mut state = CallbackState::new();
    let (outcome, calls) = run(&delivery("", 5, Duration::from_secs(5)), &receiver.url(), &mut state).await;
    let DeliveryOutcome::Refused(refused) = outcome else { panic!("not refused: {outcome:?}") };
    assert_eq!(refused.kind(), RefusalKind::Forbidden(SpecialUse::Loopback));
    assert_eq!(summary(&calls), [(DeliveryState::GaveUp, 0, None)]);
    assert_eq!(receiver.requests(), 0);
    receiver.stop().await;
}

#[actix_rt::test]
async fn a_host_name_is_connected_by_address_with_the_original_host_header() {
    let receiver = Receiver::start(&[]);
    let url = format!("http://localhost:{}/hook", receiver.addr.port());
    let mut state = CallbackState::new();
    // localhost may also resolve to ::1, where nobody listens: the second attempt uses the
    // next checked address.
    let (outcome, _) = run(&delivery("localhost", 2, Duration::from_secs(5)), &url, &mut state).await;
    assert_eq!(outcome, DeliveryOutcome::Delivered);
    assert_eq!(receiver.host_header(0), format!("localhost:{}", receiver.addr.port()));
    receiver.stop().await;
}

#[actix_rt::test]
async fn a_taken_over_state_resumes_its_attempt_count() {
    let receiver = Receiver::start(&[Reply::Status(500)]);
    let d = delivery("127.0.0.1", 3, Duration::from_secs(5));
    let mut state = CallbackState { state: DeliveryState::Failing, attempts: 2, ..CallbackState::new() };
    let (outcome, calls) = run(&d, &receiver.url(), &mut state).await;
    assert_eq!(outcome, DeliveryOutcome::GaveUp);
    assert_eq!(summary(&calls), [(DeliveryState::GaveUp, 3, Some(500))]);

    let mut done = CallbackState { state: DeliveryState::Delivered, attempts: 1, ..CallbackState::new() };
    let (outcome, calls) = run(&d, &receiver.url(), &mut done).await;
    assert_eq!((outcome, calls.len()), (DeliveryOutcome::Delivered, 0));
    assert_eq!(receiver.requests(), 1);
    receiver.stop().await;
}
