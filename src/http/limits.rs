//! Limits the handlers enforce: requests in flight per client, the request head's size, and
//! the time a body may take to arrive. (Connections and the first head's deadline are
//! enforced by actix-web, set up in `gateway.rs`.)
//!
//! Why a per-client in-flight limit when the upstream budget is already fair per client: the
//! budget shares *upstream permits*, but every waiting request still holds a connection, a
//! task and its body in courier. One client flooding courier would fill the budget's queue
//! and crowd the others out of it; capping what each client has in flight keeps that cost
//! bounded per client. It is checked before the body is read, so a refusal is cheap.
//!
//! The counter of a client is one atomic shared by every worker: a request does one
//! `fetch_add` on arrival and one `fetch_sub` when its guard drops (answered, failed or
//! cancelled alike). No lock, no allocation.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::Poll;
use std::time::Instant;

use std::pin::Pin;
use std::task::Context;

use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};

use super::errors::ApiError;

/// One client's counter, alone on its cache line so that clients served by different cores
/// do not contend.
#[repr(align(64))]
struct Slot(AtomicU32);

/// Requests in flight per client, bounded.
pub struct InFlight {
    /// One slot per client of the clients file (one in open mode), then one shared by any
    /// index beyond them.
    slots: Box<[Slot]>,
    limit: u32,
}

impl InFlight {
    /// Counters for `clients` clients (at least one), each allowed `limit` requests at once.
    pub fn new(clients: usize, limit: u32) -> InFlight {
        let slots = (0..clients.max(1) + 1).map(|_| Slot(AtomicU32::new(0))).collect();
        InFlight { slots, limit }
    }

    /// The limit per client.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    fn slot(&self, client: usize) -> &AtomicU32 {
        // An index beyond the list (a client added after start) shares the last slot.
        &self.slots[client.min(self.slots.len() - 1)].0
    }

    /// Counts a request of `client` in, unless it already has `limit` in flight. The count
    /// goes down when the guard drops.
    pub fn try_acquire(&self, client: usize) -> Option<InFlightGuard<'_>> {
        let slot = self.slot(client);
        // Acquire pairs with the Release of a guard's drop, so whatever a finished request did
        // happens before a request admitted in its place (the same `lock xadd` on x86 as Relaxed).
        if slot.fetch_add(1, Ordering::Acquire) < self.limit {
            Some(InFlightGuard(slot))
        } else {
            slot.fetch_sub(1, Ordering::Relaxed);
            None
        }
    }

    /// Requests of `client` in flight now.
    pub fn current(&self, client: usize) -> u32 {
        self.slot(client).load(Ordering::Relaxed)
    }
}

/// A request counted in flight; counted out on drop.
#[must_use = "the request is counted out as soon as the guard drops"]
pub struct InFlightGuard<'a>(&'a AtomicU32);

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Release);
    }
}

/// The size of the request head as received: request line and header lines with their line
/// ends. Refuses heads over `max` bytes.
pub fn check_head(req: &HttpRequest, max: usize) -> Result<(), ApiError> {
    // "METHOD SP target SP HTTP/1.1 CRLF", then "name: value CRLF" per header, then CRLF.
    let uri = req.uri();
    let target = uri.path_and_query().map_or(1, |pq| pq.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len() + "https://".len());
    let mut size = req.method().as_str().len() + target + 13;
    if size > max {
        return Err(ApiError::HeadersTooLarge(max));
    }
    for (name, value) in req.headers() {
        size += name.as_str().len() + value.len() + 4;
    }
    if size + 2 > max {
        return Err(ApiError::HeadersTooLarge(max));
    }
    Ok(())
}

/// Runs `fut` until `deadline`; `None` when the deadline passed first.
///
/// The timer is set only when `fut` is still pending at its second poll. A request's body is
/// usually in the same read as its head, but actix-http hands it to the body stream only after
/// the handler's first poll, and answers within that same turn: arming a timer at the first
/// poll registered and removed a timer entry for nearly every request. The first `Pending`
/// wakes the task, so a body that never comes still gets its timer at once.
pub async fn before<F: Future>(deadline: Instant, fut: F) -> Option<F::Output> {
    let mut fut = pin!(fut);
    let mut polled = false;
    let early = std::future::poll_fn(|cx| match fut.as_mut().poll(cx) {
        Poll::Ready(out) => Poll::Ready(Some(out)),
        Poll::Pending if !polled => {
            polled = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
        Poll::Pending => Poll::Ready(None),
    })
    .await;
    match early {
        Some(out) => Some(out),
        None => tokio::time::timeout_at(deadline.into(), fut).await.ok(),
    }
}

/// An error answer that keeps the request's body stream open until the answer is sent, so
/// that a body left unread closes the connection.
///
/// Why: actix-http decides what to do with an unread body when the answer has been written.
/// If the handler dropped the body stream, a chunked body is *drained* (read to its end to keep
/// the connection), so a client that stalled mid-chunk, or keeps sending, holds the connection
/// open forever. With the stream still held, the unread body makes the
/// connection close (after `COURIER_CLIENT_DISCONNECT_TIMEOUT`), as it already does for a body
/// with a `Content-Length`. A body read to its end is unaffected: actix-http is done with it.
pub fn closing_unread(response: HttpResponse, payload: web::Payload) -> HttpResponse {
    response.map_body(|_, body| BoxBody::new(Holding { body, _payload: payload }))
}

/// A response body that holds the request's body stream while it is sent.
struct Holding {
    body: BoxBody,
    _payload: web::Payload,
}

impl MessageBody for Holding {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Self::Error>>> {
        Pin::new(&mut self.body).poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn holds_at_most_the_limit_per_client_and_frees_on_drop() {
        let in_flight = InFlight::new(2, 2);
        let a1 = in_flight.try_acquire(0).unwrap();
        let a2 = in_flight.try_acquire(0).unwrap();
        assert!(in_flight.try_acquire(0).is_none(), "a third request of client 0");
        assert_eq!(in_flight.current(0), 2, "a refusal leaves the count as it was");
        let b = in_flight.try_acquire(1).unwrap();
        drop(a1);
        let a3 = in_flight.try_acquire(0).unwrap();
        assert!(in_flight.try_acquire(0).is_none());
        drop((a2, a3, b));
        assert_eq!((in_flight.current(0), in_flight.current(1)), (0, 0));
    }

    #[test]
    fn unknown_indices_share_one_bounded_slot() {
        let in_flight = InFlight::new(1, 1);
        let _x = in_flight.try_acquire(7).unwrap();
        assert!(in_flight.try_acquire(9).is_none());
        assert!(in_flight.try_acquire(0).is_some());
    }

    #[test]
    fn concurrent_threads_never_exceed_the_limit() {
        let in_flight = InFlight::new(1, 3);
        let (admitted, peak, refused) = (AtomicU32::new(0), AtomicU32::new(0), AtomicU32::new(0));
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..20_000 {
                        match in_flight.try_acquire(0) {
                            Some(guard) => {
                                let now = admitted.fetch_add(1, Ordering::SeqCst) + 1;
                                peak.fetch_max(now, Ordering::SeqCst);
                                admitted.fetch_sub(1, Ordering::SeqCst);
                                drop(guard);
                            }
                            None => _ = refused.fetch_add(1, Ordering::Relaxed),
                        }
                    }
                });
            }
        });
        assert_eq!(in_flight.current(0), 0, "every guard counted out");
        assert!(peak.load(Ordering::SeqCst) <= 3, "never more than the limit held a guard at once");
    }

    #[actix_rt::test]
    async fn a_ready_future_needs_no_timer_and_a_late_one_times_out() {
        let now = Instant::now();
        assert_eq!(before(now, async { 1 }).await, Some(1), "ready at once, even past the deadline");
        let late = before(now + Duration::from_millis(20), std::future::pending::<()>()).await;
        assert_eq!(late, None);
    }
}
