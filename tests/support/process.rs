//! Running the real `courier` binary in tests: its log lines, signals, exit.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_courier");

/// The settings of a `courier serve` against `sim` with the simulator's default credentials, one
/// worker (listeners are added by [`Serving::start`], or by the caller).
pub fn sim_env(sim: &courier::simulator::Simulator) -> Vec<(&'static str, String)> {
    let defaults = courier::simulator::SimConfig::default();
    vec![
        ("EXTERNAL_API_BASE_URL", sim.base_url()),
        ("EXTERNAL_API_KEY", defaults.api_key),
        ("EXTERNAL_OAUTH_CLIENT_ID", defaults.client_id),
        ("EXTERNAL_OAUTH_CLIENT_SECRET", defaults.client_secret),
        ("COURIER_WORKERS", "1".into()),
    ]
}

/// Runs `courier serve` with the environment cleared but for an upstream nobody listens on (its
/// secrets begin with `very-secret`: no message may show them) and `vars`: a start that must
/// fail before it reaches anything.
pub fn serve_alone<K: AsRef<std::ffi::OsStr>, V: AsRef<std::ffi::OsStr>>(
    vars: impl IntoIterator<Item = (K, V)>,
) -> std::process::Output {
    Command::new(BIN)
        .arg("serve")
        .env_clear()
        .env("EXTERNAL_API_BASE_URL", "http://127.0.0.1:1/v2")
        .env("EXTERNAL_API_KEY", "very-secret-key")
        .env("EXTERNAL_OAUTH_CLIENT_ID", "client")
        .env("EXTERNAL_OAUTH_CLIENT_SECRET", "very-secret-secret")
        .envs(vars)
        .output()
        .unwrap()
}

/// Lines of a child's stream, read on a thread.
pub fn lines_of(stream: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits (bounded) for a line satisfying `pick`, returning what it extracts.
pub fn wait_line<T>(lines: &mpsc::Receiver<String>, mut pick: impl FnMut(&str) -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines.recv_timeout(left).expect("the expected line was printed in time");
        if let Some(found) = pick(&line) {
            return found;
        }
    }
}

/// Sends `signal` to the child.
pub fn signal(child: &Child, signal: i32) {
    let rc = unsafe { libc::kill(child.id() as i32, signal) };
    assert_eq!(rc, 0, "signal delivered");
}

/// Waits (bounded) for the child to exit.
pub fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "courier did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `courier serve` process, with the gateway address read from its `listening` log line.
pub struct Serving {
    pub child: Child,
    pub gateway: String,
    pub admin: String,
    pub logs: mpsc::Receiver<String>,
}

impl Serving {
    /// Starts `courier serve` with exactly these environment variables (plus port-0 listeners).
    pub fn start(env: &[(&str, String)]) -> Serving {
        let mut command = Command::new(BIN);
        command
            .arg("serve")
            .env_clear()
            .env("COURIER_LISTEN", "127.0.0.1:0")
            .env("COURIER_ADMIN_LISTEN", "127.0.0.1:0")
            .stderr(Stdio::piped())
            .stdout(Stdio::null());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().unwrap();
        let logs = lines_of(child.stderr.take().unwrap());
        let (gateway, admin) = wait_line(&logs, |line| {
            let v: serde_json::Value = serde_json::from_str(line).ok()?;
            (v["event"] == "listening")
                .then(|| (v["gateway"].as_str().unwrap().to_owned(), v["admin"].as_str().unwrap().to_owned()))
        });
        Serving { child, gateway, admin, logs }
    }

    /// `http://<gateway><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.gateway, path)
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
