//! A real Prometheus server (Debian's `prometheus` package) for tests: scrapes the given
//! targets every second, evaluates the given rule files, answers queries over its HTTP API.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A running Prometheus; killed on drop.
pub struct Prometheus {
    child: Child,
    dir: PathBuf,
    pub addr: String,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (host:port of /metrics) as job `courier`.
    pub async fn start(targets: &[String], rule_files: &[&Path]) -> Prometheus {
        let binary = which("prometheus").unwrap_or_else(|| {
            panic!("prometheus is not installed: install the Debian package `prometheus` (scripts/test-all does)")
        });
        let dir = std::env::temp_dir().join(format!("courier-prom-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        let rules: Vec<String> =
            rule_files.iter().map(|p| format!("  - {}", p.canonicalize().unwrap().display())).collect();
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n{}\nscrape_configs:\n  - job_name: courier\n    static_configs:\n      - targets: [{}]\n",
            rules.join("\n"),
            targets.join(", ")
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new(binary)
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus starts");
        let prometheus = Prometheus { child, dir, addr };
        let http = awc::Client::default();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(response) = http.get(format!("http://{}/-/ready", prometheus.addr)).send().await {
                if response.status().is_success() {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "prometheus did not become ready");
            actix_rt::time::sleep(Duration::from_millis(100)).await;
        }
        prometheus
    }

    /// Evaluates an instant query; returns the result vector.
    pub async fn query(&self, expr: &str) -> Vec<Value> {
        let http = awc::Client::builder().timeout(Duration::from_secs(10)).finish();
        let mut response = http
            .get(format!("http://{}/api/v1/query", self.addr))
            .query(&[("query", expr)])
            .unwrap()
            .send()
            .await
            .expect("prometheus answers");
        let body: Value = response.json().limit(8 << 20).await.expect("JSON from prometheus");
        assert_eq!(body["status"], "success", "query {expr} failed: {body}");
        body["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// Polls `expr` (bounded) until it returns data; returns it.
    pub async fn wait_for(&self, expr: &str, within: Duration) -> Vec<Value> {
        let deadline = Instant::now() + within;
        loop {
            let result = self.query(expr).await;
            if !result.is_empty() {
                return result;
            }
            if Instant::now() > deadline {
                return result;
            }
            actix_rt::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The path of a program on PATH.
pub fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|dir| Path::new(dir).join(program)).find(|p| p.is_file())
}
