//! What every gateway handler starts and ends with, written once.
//!
//! Start: when the request arrived, its id (the client's `X-Request-Id` when acceptable), the
//! head's size checked and the caller identified — an extractor, [`Inbound`], taken as a
//! handler argument. End: [`Inbound::answer`] turns an error into the one error shape with the
//! request's id, sets `X-Request-Id`, and writes the request's log line and metrics from the
//! same values (`observe`). A handler only says what it did in between.

use std::cell::Cell;
use std::future::{ready, Ready};
use std::time::Instant;

use actix_web::dev::Payload;
use actix_web::{web, FromRequest, HttpRequest, HttpResponse};

use super::errors::ApiError;
use super::observe;
use super::state::{Caller, Worker, UNKNOWN_CALLER};
use crate::metrics::Route;
use crate::request_id::{self, RequestId};
use crate::trace::{attrs, Parent, Span, Stored};

/// An inbound request as every handler sees it first; see the module documentation.
pub struct Inbound {
    /// When it arrived.
    pub started: Instant,
    /// Its id.
    pub request_id: RequestId,
    /// Who is calling, or why that cannot be known (head too large, no or an unknown key).
    pub caller: Result<Caller, ApiError>,
    /// This worker's state.
    pub worker: web::Data<Worker>,
    request: HttpRequest,
    /// Its server span, when traced (boxed, in a `Cell`: every handler's future holds this
    /// field, 8 bytes when not traced).
    span: Cell<Option<Box<Span>>>,
}

impl FromRequest for Inbound {
    type Error = actix_web::Error;
    type Future = Ready<Result<Inbound, actix_web::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let started = Instant::now();
        let worker = req.app_data::<web::Data<Worker>>().expect("the gateway app carries its Worker").clone();
        let caller = worker.check_head(req).and_then(|()| worker.identify(req));
        let request_id = RequestId::of(req.headers());
        let span = worker.shared.tracing.server("HTTP", req.headers()).map(|mut span| {
            if span.recording() {
                server_span_start(&mut span, req, &request_id);
            }
            Box::new(span)
        });
        ready(Ok(Inbound { started, request_id, caller, worker, request: req.clone(), span: Cell::new(span) }))
    }
}

/// What a handler's work came to, for the answer and the log line.
pub struct Done {
    /// The answer, or the error to answer.
    pub result: Result<HttpResponse, ApiError>,
    /// Upstream attempts made for it.
    pub attempts: u32,
    /// What the cache did, when it was asked (the log field).
    pub cache: Option<&'static str>,
    /// When it was answered, if the handler read the clock then (else it is read here).
    pub at: Option<Instant>,
}

impl Done {
    /// Done without an upstream call or the cache.
    pub fn plain(result: Result<HttpResponse, ApiError>) -> Done {
        Done { result, attempts: 0, cache: None, at: None }
    }
}

impl Inbound {
    /// The request.
    pub fn request(&self) -> &HttpRequest {
        &self.request
    }

    /// The parent of the spans of its stages (`Parent::NONE` when not traced).
    pub fn trace(&self) -> Parent {
        self.with_span(|span| span.map_or(Parent::NONE, Span::parent))
    }

    /// `read` applied to the server span (a `Cell`: the span is taken out and put back).
    fn with_span<T>(&self, read: impl FnOnce(Option<&Span>) -> T) -> T {
        let span = self.span.take();
        let value = read(span.as_deref());
        self.span.set(span);
        value
    }

    /// Its server span's context as text, for a job it submits.
    pub fn stored_trace(&self) -> Option<Box<Stored>> {
        self.with_span(|span| span.map(|span| Box::new(Stored::of(span))))
    }

    /// The caller's name for logs and metrics (`unknown` before it is known).
    pub fn client(&self) -> &str {
        self.caller.as_ref().map_or(UNKNOWN_CALLER, |caller| self.worker.caller_name(*caller))
    }

    /// Answers the request: `done`'s answer, or its error in the one error shape; then
    /// `decorate` adds what the route adds (it sees whether the answer is an error), and the
    /// request is logged and counted under `route` and `endpoint` (its path pattern, never the
    /// raw path).
    pub fn answer(
        &self,
        route: Route,
        endpoint: &'static str,
        done: Done,
        decorate: impl FnOnce(HttpResponse, bool) -> HttpResponse,
    ) -> HttpResponse {
        let (response, error) = match done.result {
            Ok(response) => (response, None),
            Err(error) => (error.response(&self.request_id), Some(error.code())),
        };
        let mut response = decorate(response, error.is_some());
        response.headers_mut().insert(request_id::HEADER, self.request_id.header().clone());
        observe::inbound(
            &self.worker,
            observe::Inbound {
                route,
                endpoint,
                method: self.request.method(),
                status: response.status(),
                client: self.client(),
                request_id: &self.request_id,
                started: self.started,
                answered: done.at.unwrap_or_else(Instant::now),
                attempts: done.attempts,
                error,
                cache: done.cache,
                span: self.span.take(),
            },
        );
        response
    }
}

/// The server span's attributes known on arrival, by the HTTP server conventions.
fn server_span_start(span: &mut Span, req: &HttpRequest, request_id: &RequestId) {
    span.set(attrs::HTTP_REQUEST_METHOD, req.method().as_str().to_owned());
    span.set(attrs::URL_PATH, req.path().to_owned());
    span.set(attrs::URL_SCHEME, "http");
    if let Some(peer) = req.peer_addr() {
        span.set(attrs::CLIENT_ADDRESS, peer.ip().to_string());
    }
    if let Some(agent) = req.headers().get(actix_web::http::header::USER_AGENT).and_then(|v| v.to_str().ok()) {
        span.set(attrs::USER_AGENT_ORIGINAL, agent.to_owned());
    }
    span.set(attrs::REQUEST_ID, request_id.as_str().to_owned());
}
