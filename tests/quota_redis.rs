//! The quota windows' store against a real Redis: the Lua script takes the same decisions as
//! the Rust allocation formula, replicas reserving at once never take more than a limit, and
//! the other operations (release, set, adopt, read) do what their documentation says.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use courier::actors::quota::alloc::{self, Allocation, Counts, QuotaReason};
use courier::metrics::Metrics;
use courier::shared::cache::unix_ms_now;
use courier::shared::quota::{Reserve, Reserved, SharedQuota, WindowArgs};
use courier::shared::SharedRedis;
use futures_util::future::join_all;
use secrecy::SecretString;
use support::redis::RedisServer;

/// How long the test's window instances live in Redis.
const KEEP_MS: i64 = 60_000;

/// A new connection to the test Redis, as one replica has.
async fn replica(server: &RedisServer) -> SharedQuota {
    let log = slog::Logger::root(slog::Discard, slog::o!());
    let redis = SharedRedis::connect(
        &SecretString::from(server.url()),
        "courier",
        Duration::from_secs(2),
        Arc::new(Metrics::new()),
        &log,
    )
    .await
    .expect("connect to the test Redis");
    SharedQuota::new(Arc::new(redis))
}

/// A plain connection of the test's own, to write and inspect hashes directly.
async fn probe(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(server.url()).expect("a valid URL");
    client.get_multiplexed_async_connection().await.expect("probe connection")
}

async fn query<T: redis::FromRedisValue>(conn: &mut redis::aio::MultiplexedConnection, args: &[&str]) -> T {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(conn).await.unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn window(key: String, limit: u64) -> WindowArgs {
    WindowArgs { key, limit, hold_cap: 1000, expire_at_ms: unix_ms_now() as i64 + KEEP_MS }
}

fn refused(reason: QuotaReason, window: usize) -> Reserved {
    Reserved::Refused { reason, window }
}

/// Counts as the formula reads them and as Redis holds them: written into `key`, then
/// reserved for `client` by the script, and answered by the Rust formula.
struct Case {
    limit: u64,
    hold_cap: u64,
    clients: Vec<u64>,
    unattributed: u64,
    allocs: Vec<Allocation>,
    client: Option<usize>,
    want: u64,
}

impl Case {
    fn total(&self) -> u64 {
        self.clients.iter().sum::<u64>() + self.unattributed
    }

    fn rust(&self) -> Result<u64, QuotaReason> {
        let counts = Counts { limit: self.limit, total: self.total(), clients: &self.clients };
        alloc::available(counts, &self.allocs, self.client, self.hold_cap, self.want)
    }

    async fn lua(&self, quota: &SharedQuota, conn: &mut redis::aio::MultiplexedConnection, key: String) -> Reserved {
        let mut fields = vec!["HSET".to_owned(), key.clone(), "total".into(), self.total().to_string()];
        for (i, used) in self.clients.iter().enumerate() {
            fields.extend([format!("c:c{i}"), used.to_string()]);
        }
        let fields: Vec<&str> = fields.iter().map(String::as_str).collect();
        let _: u64 = query(conn, &fields).await;
        let names: Vec<String> = (0..self.allocs.len()).map(|i| format!("c{i}")).collect();
        let reserved: Vec<(&str, f64)> = self
            .allocs
            .iter()
            .zip(&names)
            .filter(|(a, _)| a.reserved > 0.0)
            .map(|(a, name)| (name.as_str(), a.reserved))
            .collect();
        let windows = [WindowArgs { hold_cap: self.hold_cap, ..window(key, self.limit) }];
        let r = Reserve {
            windows: &windows,
            client: self.client.map(|c| names[c].as_str()),
            max: self.client.map_or(1.0, |c| self.allocs[c].max),
            reserved: &reserved,
            want: self.want,
        };
        quota.reserve(&r).await.expect("reserve")
    }

    /// What the script must answer when the formula answers `expected`.
    fn answer(&self, expected: Result<u64, QuotaReason>) -> Reserved {
        match expected {
            Ok(k) => Reserved::Granted { k, totals: vec![self.total() + k] },
            Err(reason) => refused(reason, 0),
        }
    }
}

#[actix_rt::test]
async fn the_lua_and_rust_allocations_agree() {
    let server = RedisServer::start();
    let quota = replica(&server).await;
    let mut conn = probe(&server).await;
    let rows = alloc::table();
    assert!(rows.len() >= 10, "the table has its cases");
    for (i, row) in rows.into_iter().enumerate() {
        let case = Case {
            limit: row.limit,
            hold_cap: row.hold_cap,
            clients: row.clients.clone(),
            unattributed: row.unattributed,
            allocs: row.allocs.clone(),
            client: row.client,
            want: row.want,
        };
        let got = case.lua(&quota, &mut conn, quota.key("table", i as i64)).await;
        assert_eq!(got, case.answer(row.expected), "row {i}: {row:?}");
    }
}

#[actix_rt::test]
async fn fractions_reach_the_script_as_the_same_doubles() {
    let server = RedisServer::start();
    let quota = replica(&server).await;
    let mut conn = probe(&server).await;
    // The largest double below 1: a limit of 100 times it is just under 100, so the cap is 99.
    // A fraction rounded on its way to Lua (to "1") would give 100.
    let below_one = 1.0 - f64::EPSILON / 2.0;
    assert_eq!(alloc::part(below_one, 100), 99, "the case is one rounding would change");
    let cases = [
        // As the client's max: 99 of 100.
        Case {
            limit: 100,
            hold_cap: 1000,
            clients: vec![0],
            unattributed: 0,
            allocs: vec![Allocation { max: below_one, reserved: 0.0 }],
            client: Some(0),
            want: 1000,
        },
        // As another client's reservation: 99 held, 1 left for client 0.
        Case {
            limit: 100,
            hold_cap: 1000,
            clients: vec![0, 0],
            unattributed: 0,
            allocs: vec![Allocation::default(), Allocation { max: 1.0, reserved: below_one }],
            client: Some(0),
            want: 1000,
        },
        // 0.29 · 100 is 28.999999999999996 in doubles: both floor it to 28.
        Case {
            limit: 100,
            hold_cap: 1000,
            clients: vec![0],
            unattributed: 0,
            allocs: vec![Allocation { max: 0.29, reserved: 0.0 }],
            client: Some(0),
            want: 1000,
        },
    ];
    let expected = [99, 1, 28];
    for (i, (case, k)) in cases.iter().zip(expected).enumerate() {
        assert_eq!(case.rust(), Ok(k), "case {i}: the formula");
        let got = case.lua(&quota, &mut conn, quota.key("fractions", i as i64)).await;
        assert_eq!(got, case.answer(Ok(k)), "case {i}: the script");
    }
}

#[actix_rt::test]
async fn reservations_never_exceed_the_limit_under_concurrency() {
    const TASKS: usize = 8;
    const LIMIT: u64 = 30;
    let server = RedisServer::start();
    let mut replicas = Vec::new();
    for _ in 0..TASKS {
        replicas.push(replica(&server).await);
    }
    let key = replicas[0].key("30/20s", 1_000);
    let windows = [window(key.clone(), LIMIT)];
    let names: Vec<String> = (0..TASKS).map(|i| format!("t{i}")).collect();
    let outcomes = join_all(replicas.iter().zip(&names).map(|(quota, name)| {
        let windows = &windows;
        async move {
            let r = Reserve { windows, client: Some(name.as_str()), max: 1.0, reserved: &[], want: 1 };
            let mut granted = 0;
            // Bounded: more tries than the limit means the script granted too many.
            for _ in 0..=LIMIT {
                match quota.reserve(&r).await.expect("reserve") {
                    Reserved::Granted { k, totals } => {
                        assert_eq!(k, 1);
                        assert!(totals[0] <= LIMIT, "total {} over the limit", totals[0]);
                        granted += k;
                    }
                    last => return (granted, last),
                }
            }
            panic!("{name} was granted more than the limit");
        }
    }))
    .await;
    for (_, last) in &outcomes {
        assert_eq!(*last, refused(QuotaReason::WindowSpent, 0));
    }
    assert_eq!(outcomes.iter().map(|(g, _)| g).sum::<u64>(), LIMIT, "{outcomes:?}");
    let counts = &replicas[0].read(&[key]).await.expect("read")[0];
    assert_eq!(counts["total"], LIMIT);
    let per_client: u64 = names.iter().map(|n| counts.get(&format!("c:{n}")).copied().unwrap_or(0)).sum();
    assert_eq!(per_client, LIMIT, "every count is attributed: {counts:?}");
}

#[actix_rt::test]
async fn release_set_adopt_and_read() {
    let server = RedisServer::start();
    let quota = replica(&server).await;
    let mut conn = probe(&server).await;
    let key = quota.key("1000/h", 3_600_000);
    let keys = [key.clone()];
    let windows = [window(key.clone(), 100)];
    let map =
        |pairs: &[(&str, u64)]| -> HashMap<String, u64> { pairs.iter().map(|(f, v)| (f.to_string(), *v)).collect() };
    let read = |keys: &[String]| {
        let keys = keys.to_vec();
        let quota = &quota;
        async move { quota.read(&keys).await.expect("read") }
    };

    // A missing key reads as an empty map.
    assert_eq!(read(&keys).await, vec![HashMap::new()]);

    let a = Reserve { windows: &windows, client: Some("a"), max: 1.0, reserved: &[], want: 10 };
    assert_eq!(quota.reserve(&a).await.unwrap(), Reserved::Granted { k: 10, totals: vec![10] });
    let none = Reserve { client: None, want: 3, ..a };
    assert_eq!(quota.reserve(&none).await.unwrap(), Reserved::Granted { k: 3, totals: vec![13] });
    assert_eq!(read(&keys).await, vec![map(&[("total", 13), ("c:a", 10)])]);
    let pttl: i64 = query(&mut conn, &["PTTL", &key]).await;
    assert!(pttl > 0 && pttl <= KEEP_MS, "the instance expires: PTTL {pttl}");

    // Release gives back to the total and the client's count, never below 0.
    quota.release(&keys, Some("a"), 4).await.unwrap();
    assert_eq!(read(&keys).await, vec![map(&[("total", 9), ("c:a", 6)])]);
    quota.release(&keys, None, 2).await.unwrap();
    assert_eq!(read(&keys).await, vec![map(&[("total", 7), ("c:a", 6)])]);
    quota.release(&keys, Some("a"), 100).await.unwrap();
    assert_eq!(read(&keys).await, vec![map(&[("total", 0), ("c:a", 0)])]);
    // A window instance that is gone is not brought back by a release.
    let gone = quota.key("1000/h", 0);
    quota.release(std::slice::from_ref(&gone), Some("a"), 1).await.unwrap();
    assert_eq!(query::<u64>(&mut conn, &["EXISTS", &gone]).await, 0);

    // Adopt only raises the total.
    let expire_at = unix_ms_now() as i64 + KEEP_MS;
    assert_eq!(quota.adopt(&key, 50, expire_at).await.unwrap(), 50);
    assert_eq!(quota.adopt(&key, 20, expire_at).await.unwrap(), 50);
    assert_eq!(read(&keys).await, vec![map(&[("total", 50), ("c:a", 0)])]);

    // Set answers the total before, and may lower it.
    assert_eq!(quota.set_total(&key, 7, expire_at).await.unwrap(), 50);
    assert_eq!(read(&keys).await, vec![map(&[("total", 7), ("c:a", 0)])]);

    // Both create a missing instance with its expiry.
    let fresh = [quota.key("50000/day", 1), quota.key("50000/day", 2)];
    assert_eq!(quota.set_total(&fresh[0], 12, expire_at).await.unwrap(), 0);
    assert_eq!(quota.adopt(&fresh[1], 5, expire_at).await.unwrap(), 5);
    for key in &fresh {
        let pttl: i64 = query(&mut conn, &["PTTL", key]).await;
        assert!(pttl > 0 && pttl <= KEEP_MS, "{key} expires: PTTL {pttl}");
    }
    let all = [keys[0].clone(), fresh[0].clone(), fresh[1].clone(), gone];
    assert_eq!(
        read(&all).await,
        vec![map(&[("total", 7), ("c:a", 0)]), map(&[("total", 12)]), map(&[("total", 5)]), HashMap::new()]
    );
}

#[actix_rt::test]
async fn two_windows_take_the_stricter() {
    let server = RedisServer::start();
    let quota = replica(&server).await;
    let (short, long) = (quota.key("5/20s", 0), quota.key("100/day", 0));
    let windows = [window(short.clone(), 5), window(long.clone(), 100)];
    let r = Reserve { windows: &windows, client: Some("a"), max: 1.0, reserved: &[], want: 3 };
    assert_eq!(quota.reserve(&r).await.unwrap(), Reserved::Granted { k: 3, totals: vec![3, 3] });
    assert_eq!(quota.reserve(&r).await.unwrap(), Reserved::Granted { k: 2, totals: vec![5, 5] });
    assert_eq!(quota.reserve(&r).await.unwrap(), refused(QuotaReason::WindowSpent, 0));
    let totals: Vec<u64> = quota.read(&[short, long.clone()]).await.unwrap().iter().map(|m| m["total"]).collect();
    assert_eq!(totals, [5, 5], "a refusal takes nothing in any window");

    // The index names the window that refused, wherever it is in the list.
    let next = quota.key("5/20s", 20_000);
    let swapped = [window(long.clone(), 100), window(next.clone(), 5)];
    let r = Reserve { windows: &swapped, want: 5, ..r };
    assert_eq!(quota.reserve(&r).await.unwrap(), Reserved::Granted { k: 5, totals: vec![10, 5] });
    assert_eq!(quota.reserve(&r).await.unwrap(), refused(QuotaReason::WindowSpent, 1));
    let totals: Vec<u64> = quota.read(&[long, next]).await.unwrap().iter().map(|m| m["total"]).collect();
    assert_eq!(totals, [10, 5]);
}
