//! A real `redis-server` for one test: on a free loopback port, without persistence, in a
//! directory of its own (a shared one would let it load a `dump.rdb` another server left there,
//! a replica's after a full sync, say), killed and its directory removed when dropped; also as a
//! replica of another (Sentinels: `sentinel.rs`). Needs the Debian package `redis-server` (built
//! with TLS); without it the test fails loudly. [`RedisServer::start_tls`] serves TLS only, on
//! its port, with the test's files.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server gets to accept connections.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS side of a test server: its certificate and key, the CA it trusts for client
/// certificates, and whether it requires one (`--tls-auth-clients`).
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
    pub auth_clients: bool,
}

/// A running `redis-server`, killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    extra_args: Vec<String>,
    tls: Option<TlsFiles>,
    dir: PathBuf,
}

impl RedisServer {
    /// Starts a server on a free port.
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// Starts a server with extra `redis-server` arguments (e.g. `["--requirepass", "pw"]`).
    pub fn start_with(extra_args: &[&str]) -> RedisServer {
        RedisServer::start_on(extra_args, None)
    }

    /// Starts a server that speaks TLS only (`--port 0 --tls-port …`), with extra arguments.
    pub fn start_tls(tls: &TlsFiles, extra_args: &[&str]) -> RedisServer {
        RedisServer::start_on(extra_args, Some(tls.clone()))
    }

    fn start_on(extra_args: &[&str], tls: Option<TlsFiles>) -> RedisServer {
        let extra_args: Vec<String> = extra_args.iter().map(|a| a.to_string()).collect();
        // A port found free may be taken before the server binds it: try a few.
        for _ in 0..5 {
            let port = free_port();
            let dir = std::env::temp_dir().join(format!("courier-redis-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("a directory for redis-server");
            let mut server = RedisServer { child: None, port, extra_args: extra_args.clone(), tls: tls.clone(), dir };
            if server.spawn() {
                return server;
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    /// The server's `redis://` URL, with `password` when given.
    pub fn url_with_password(&self, password: Option<&str>) -> String {
        match password {
            Some(pw) => format!("redis://:{pw}@127.0.0.1:{}/0", self.port),
            None => format!("redis://127.0.0.1:{}/0", self.port),
        }
    }

    /// The server's `redis://` URL.
    pub fn url(&self) -> String {
        self.url_with_password(None)
    }

    /// The server's `rediss://` URL on `host` (`127.0.0.1` or `localhost`), with `user:password`
    /// when given.
    pub fn tls_url(&self, host: &str, credentials: Option<&str>) -> String {
        match credentials {
            Some(userinfo) => format!("rediss://{userinfo}@{host}:{}/0", self.port),
            None => format!("rediss://{host}:{}/0", self.port),
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Starts a replica of `primary` and waits (bounded) until it holds the primary's data.
    pub fn start_replica_of(primary: &RedisServer) -> RedisServer {
        let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &primary.port.to_string()]);
        replica.wait_replicating(START_TIMEOUT);
        replica
    }

    /// Waits (bounded, blocking the thread: not while courier runs in this process) until
    /// this server is a synced replica.
    pub fn wait_replicating(&self, bound: Duration) {
        let deadline = Instant::now() + bound;
        while !self.is_replicating() {
            assert!(Instant::now() < deadline, "port {} did not become a synced replica within {bound:?}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether this server is a replica whose link to its primary is up and synchronised.
    pub fn is_replicating(&self) -> bool {
        let info = self.info("replication");
        info.contains("role:slave")
            && info.contains("master_link_status:up")
            && info.contains("master_sync_in_progress:0")
    }

    /// `INFO <section>` (empty when the server does not answer within a second).
    pub fn info(&self, section: &str) -> String {
        self.command(&["INFO", section]).unwrap_or_default()
    }

    /// Sends one command over a fresh connection and returns the reply as text; `None` when
    /// the server does not answer within a second or answers an error.
    pub fn command(&self, args: &[&str]) -> Option<String> {
        command(self.port, args)
    }

    /// Kills the server (SIGKILL: no shutdown, as in a crash) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (with an empty dataset).
    pub fn restart(&mut self) {
        self.kill();
        assert!(self.spawn(), "redis-server did not restart on port {}", self.port);
    }

    /// Freezes the server (SIGSTOP): connections stay open but nothing answers.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Thaws a paused server (SIGCONT).
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: libc::c_int) {
        let child = self.child.as_ref().expect("redis-server is running");
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits");
        // SAFETY: sends a signal to our own child process, which has not been reaped.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "could not signal redis-server");
    }

    /// Spawns the server on `self.port` and waits until it answers; false when it exited
    /// (the port was taken).
    fn spawn(&mut self) -> bool {
        let port = self.port.to_string();
        let listen: Vec<&std::ffi::OsStr> = match &self.tls {
            None => vec!["--port".as_ref(), port.as_ref()],
            Some(tls) => vec![
                "--port".as_ref(),
                "0".as_ref(),
                "--tls-port".as_ref(),
                port.as_ref(),
                "--tls-cert-file".as_ref(),
                tls.cert.as_os_str(),
                "--tls-key-file".as_ref(),
                tls.key.as_os_str(),
                "--tls-ca-cert-file".as_ref(),
                tls.client_ca.as_os_str(),
                "--tls-auth-clients".as_ref(),
                (if tls.auth_clients { "yes" } else { "no" }).as_ref(),
            ],
        };
        let spawned = Command::new("redis-server")
            .args(listen)
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .args(["--daemonize", "no", "--loglevel", "warning", "--logfile", ""])
            // A directory of its own: Redis loads the `dump.rdb` and `appendonlydir/` it finds in
            // its directory at start, and a shared one would fill this server with the keys of
            // other servers (a replica writes a dump at a full sync; AOF tests write theirs).
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "redis-server is not installed; these tests need a real Redis: \
                 install the Debian package `redis-server` (apt-get install redis-server)"
            ),
            Err(e) => panic!("could not run redis-server: {e}"),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            let ready = if self.tls.is_some() { listens(self.port) } else { answers(self.port) };
            if ready {
                self.child = Some(child);
                return true;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("redis-server on port {} did not answer within {START_TIMEOUT:?}", self.port);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends one command to the server on `port` over a fresh connection (bounded by a second
/// each way) and returns the reply as text (an array's items one per line); `None` when the
/// server does not answer or answers an error.
pub fn command(port: u16, args: &[&str]) -> Option<String> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).ok()?;
    let mut conn = client.get_connection_with_timeout(Duration::from_secs(1)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    conn.set_write_timeout(Some(Duration::from_secs(1))).ok()?;
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    let value: redis::Value = cmd.query(&mut conn).ok()?;
    Some(text(&value))
}

fn text(value: &redis::Value) -> String {
    match value {
        redis::Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        redis::Value::SimpleString(s) | redis::Value::VerbatimString { text: s, .. } => s.clone(),
        redis::Value::Int(n) => n.to_string(),
        redis::Value::Array(items) | redis::Value::Set(items) => items.iter().map(text).collect::<Vec<_>>().join("\n"),
        redis::Value::Nil => String::new(),
        other => format!("{other:?}"),
    }
}

/// Runs `courier serve` against `redis_url` with `extra` settings (no upstream is ever reached)
/// and returns the line saying why it did not start: it must exit 1 with exactly one such line,
/// printing none of `secrets` nor the upstream's.
pub fn refused_start(redis_url: &str, extra: &[(&str, impl AsRef<std::ffi::OsStr>)], secrets: &[&str]) -> String {
    let listeners =
        [("COURIER_LISTEN", "127.0.0.1:0"), ("COURIER_ADMIN_LISTEN", "127.0.0.1:0"), ("REDIS_URL", redis_url)];
    let output = super::process::serve_alone(
        listeners
            .iter()
            .map(|(name, value)| (*name, std::ffi::OsStr::new(value)))
            .chain(extra.iter().map(|(name, value)| (*name, value.as_ref()))),
    );
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("very-secret"), "{stderr}");
    for secret in secrets {
        assert!(!stderr.contains(secret), "{stderr}");
    }
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("courier: cannot start: ")).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    lines[0].to_owned()
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

/// Whether something accepts connections on `port` (a TLS server's readiness: a plain PING
/// would not be understood, and it binds its port once it is ready to serve).
pub fn listens(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// Whether a Redis server on `port` answers a PING (with PONG, or an auth error).
pub fn answers(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 1];
    matches!(stream.read(&mut reply), Ok(1) if reply[0] == b'+' || reply[0] == b'-')
}

/// A Redis Cluster for one test: three primaries with a replica each, on free loopback ports,
/// created with `redis-cli --cluster create`; every node killed on drop.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    /// With TLS: redis-cli's `--tls --cacert <CA>`.
    cli_tls: Vec<String>,
}

impl RedisCluster {
    /// Starts six nodes and makes them a cluster (3 primaries, 1 replica each); waits until
    /// every node says `cluster_state:ok`.
    pub fn start() -> RedisCluster {
        RedisCluster::start_with_node_timeout(2000)
    }

    /// The same, with `cluster-node-timeout` (ms): how long a primary may be unreachable before
    /// the others mark it failed and its replica takes over. A node restarted after a kill
    /// rejoins with its `nodes.conf` (kept in its directory), as a replica of its successor.
    pub fn start_with_node_timeout(node_timeout_ms: u32) -> RedisCluster {
        RedisCluster::form(node_timeout_ms, None)
    }

    /// The same serving TLS only, to clients and between nodes (the cluster bus, replication),
    /// each node with `tls`'s certificate, issued by the CA in file `ca`.
    pub fn start_tls(tls: &TlsFiles, ca: &std::path::Path) -> RedisCluster {
        RedisCluster::form(2000, Some((tls, ca)))
    }

    fn form(node_timeout_ms: u32, tls: Option<(&TlsFiles, &std::path::Path)>) -> RedisCluster {
        // Each node keeps its cluster state (nodes.conf) in its own directory.
        let timeout = node_timeout_ms.to_string();
        let mut args =
            vec!["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", &timeout];
        if tls.is_some() {
            args.extend(["--tls-cluster", "yes", "--tls-replication", "yes"]);
        }
        let nodes: Vec<RedisServer> = (0..6)
            .map(|_| match tls {
                Some((files, _)) => RedisServer::start_tls(files, &args),
                None => RedisServer::start_with(&args),
            })
            .collect();
        let cli_tls = match tls {
            Some((_, ca)) => vec!["--tls".to_owned(), "--cacert".to_owned(), ca.display().to_string()],
            None => Vec::new(),
        };
        let addresses: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port())).collect();
        let output = Command::new("redis-cli")
            .args(&cli_tls)
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli runs (Debian package redis-tools)");
        assert!(output.status.success(), "cluster create failed: {}", String::from_utf8_lossy(&output.stdout));
        let cluster = RedisCluster { nodes, cli_tls };
        // A replica's first sync waits for `repl-diskless-sync-delay` (5 s by default).
        let bound = START_TIMEOUT * 2;
        let deadline = Instant::now() + bound;
        // Every node says ok, the first knows every replica (replicas are announced by gossip),
        // and every replica holds its primary's data (before that, a `WAIT` gets no replica).
        let formed = |c: &RedisCluster| {
            let replicating = |i: usize| {
                let info = c.cli(i, &["INFO", "replication"]);
                info.contains("role:slave")
                    && info.contains("master_link_status:up")
                    && info.contains("master_sync_in_progress:0")
            };
            (0..6).all(|i| c.cli(i, &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
                && c.cli(0, &["CLUSTER", "NODES"]).matches("slave").count() == 3
                && (0..6).filter(|&i| replicating(i)).count() == 3
        };
        while !formed(&cluster) {
            assert!(Instant::now() < deadline, "the cluster did not become ok within {bound:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster
    }

    /// Runs `redis-cli` against node `node` (over TLS for a TLS cluster) and returns what it
    /// printed.
    pub fn cli(&self, node: usize, args: &[&str]) -> String {
        let port = self.nodes[node].port().to_string();
        let output = Command::new("redis-cli")
            .args(&self.cli_tls)
            .args(["-p", &port])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The URL of one node (any node serves as a seed).
    pub fn seed_url(&self) -> String {
        self.nodes[0].url()
    }

    /// The node holding `slot` as primary, and one of its replicas: indexes into `nodes`.
    pub fn primary_and_replica_of(&self, slot: u16) -> (usize, usize) {
        let by_port = |port: u16| self.nodes.iter().position(|n| n.port() == port).expect("a node of ours");
        let text = self.cli(0, &["CLUSTER", "NODES"]);
        let mut primary = None;
        let mut ids = std::collections::HashMap::new();
        for line in text.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let port: u16 = fields[1].split(['@', ':']).nth(1).unwrap().parse().unwrap();
            ids.insert(fields[0].to_owned(), port);
            if fields[2].contains("master") {
                for range in &fields[8..] {
                    let (from, to) = range.split_once('-').unwrap_or((range, range));
                    if let (Ok(from), Ok(to)) = (from.parse::<u16>(), to.parse::<u16>()) {
                        if (from..=to).contains(&slot) {
                            primary = Some(fields[0].to_owned());
                        }
                    }
                }
            }
        }
        let primary = primary.expect("a primary for the slot");
        let replica = text
            .lines()
            .map(|l| l.split(' ').collect::<Vec<_>>())
            .find(|f| f[2].contains("slave") && f[3] == primary)
            .map(|f| ids[f[0]])
            .unwrap_or_else(|| panic!("no replica of {primary} in {text}"));
        (by_port(ids[&primary]), by_port(replica))
    }
}

/// Runs `redis-cli -p port args…` and returns what it printed.
pub fn cli(port: u16, args: &[&str]) -> String {
    let output = Command::new("redis-cli").args(["-p", &port.to_string()]).args(args).output().expect("redis-cli runs");
    String::from_utf8_lossy(&output.stdout).into_owned()
}
