//! A callback receiver on loopback: answers from a script of status codes (then 200) and
//! records every request, for tests that check what courier delivered.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The `X-Courier-Signature` header.
    pub signature: Option<String>,
    /// The `traceparent` header (courier sends one only with tracing on).
    pub traceparent: Option<String>,
    /// The body as received.
    pub body: Vec<u8>,
}

impl Delivery {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("callback body is JSON")
    }

    /// Checks `X-Courier-Signature: t=<t>,v1=<hex>` the way a receiver would: HMAC-SHA256 of
    /// "<t>.<body>" with the shared secret, and a timestamp within five minutes.
    pub fn signed_with(&self, secret: &str) -> bool {
        let Some(header) = &self.signature else { return false };
        let mut t = None;
        let mut v1 = Vec::new();
        for part in header.split(',') {
            match part.trim().split_once('=') {
                Some(("t", value)) => t = value.parse::<u64>().ok(),
                Some(("v1", value)) => v1.push(value.to_owned()),
                _ => {}
            }
        }
        let Some(t) = t else { return false };
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        if now.abs_diff(t) > 300 {
            return false;
        }
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{t}.").as_bytes());
        mac.update(&self.body);
        let expected = hex::encode(mac.finalize().into_bytes());
        v1.contains(&expected)
    }
}

#[derive(Default)]
struct State {
    script: VecDeque<u16>,
    got: Vec<Delivery>,
}

/// The running receiver.
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    handle: ServerHandle,
}

async fn hook(req: HttpRequest, body: web::Bytes, state: web::Data<Arc<Mutex<State>>>) -> HttpResponse {
    let mut state = state.lock().unwrap();
    let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let (signature, traceparent) = (header("x-courier-signature"), header("traceparent"));
    state.got.push(Delivery { signature, traceparent, body: body.to_vec() });
    let status = state.script.pop_front().unwrap_or(200);
    HttpResponse::build(StatusCode::from_u16(status).unwrap()).finish()
}

impl Receiver {
    /// Starts a receiver that answers `script` in turn, then 200.
    pub async fn start(script: &[u16]) -> Receiver {
        let state = Arc::new(Mutex::new(State { script: script.iter().copied().collect(), got: Vec::new() }));
        let data = web::Data::new(state.clone());
        let server = HttpServer::new(move || App::new().app_data(data.clone()).default_service(web::to(hook)))
            .workers(1)
            .disable_signals()
            .bind("127.0.0.1:0")
            .unwrap();
        let addr = server.addrs()[0];
        let server = server.run();
        let handle = server.handle();
        actix_rt::spawn(server);
        Receiver { addr, state, handle }
    }

    /// The URL to give as `callback_url`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Everything received so far.
    pub fn got(&self) -> Vec<Delivery> {
        self.state.lock().unwrap().got.clone()
    }

    /// Waits (bounded) until `n` requests arrived.
    pub async fn wait_for(&self, n: usize) -> Vec<Delivery> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = self.got();
            if got.len() >= n {
                return got;
            }
            assert!(Instant::now() < deadline, "the receiver got {} of {n} callbacks", got.len());
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops it.
    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}
