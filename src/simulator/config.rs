//! Simulator configuration: the programmatic [`SimConfig`] and the CLI flags
//! ([`SimArgs`]) of `courier simulate`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::faults::Faults;
use super::quota::QuotaHeaders;
use super::tls::SimTls;

/// Everything needed to start a [`Simulator`](super::Simulator).
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Address to bind; use port 0 to let the OS pick one (see `Simulator::addr`).
    pub listen: SocketAddr,
    /// OAuth client id accepted by `POST /v2/oauth/token`.
    pub client_id: String,
    /// OAuth client secret accepted by `POST /v2/oauth/token`.
    pub client_secret: String,
    /// Value required in the `X-API-Key` header of `POST /v2/process`.
    pub api_key: String,
    /// Lifetime of issued access tokens (sub-second precision is honoured, to the millisecond).
    pub token_ttl: Duration,
    /// Sustained request rate of the account, per minute (values below 1 are treated as 1).
    pub rate_limit_per_minute: u32,
    /// Bucket capacity: how many requests may arrive at once (values below 1 are treated as 1).
    pub rate_burst: u32,
    /// Faults active from the start (`revocation_epoch` sets the initial token epoch).
    pub faults: Faults,
    /// Number of actix-web worker threads (at least 1).
    pub workers: usize,
    /// Also send the IETF draft `RateLimit` / `RateLimit-Policy` headers.
    pub ietf_headers: bool,
    /// Serve HTTPS with this certificate and key instead of plain HTTP.
    pub tls: Option<SimTls>,
    /// Key the callback sink (`/_sim/callbacks`) checks signatures with, as courier's
    /// `COURIER_CALLBACK_SECRET` (none: callbacks are recorded as unverified).
    pub callback_secret: Option<String>,
    /// Quota windows, each a `COUNT/WINDOW` (or a comma list of them) as in courier's
    /// `EXTERNAL_API_QUOTAS`, e.g. `"5/2s"`, `"50000/day, 2000000/month"`; none by default.
    /// A bad entry makes `Simulator::start` fail.
    pub quotas: Vec<String>,
    /// Which headers describe the quota windows (used only when windows are set).
    pub quota_headers: QuotaHeaders,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            client_id: "courier-demo".to_owned(),
            client_secret: "demo-secret".to_owned(),
            api_key: "demo-api-key".to_owned(),
            token_ttl: Duration::from_secs(3600),
            rate_limit_per_minute: 1000,
            rate_burst: 50,
            faults: Faults::default(),
            workers: 1,
            ietf_headers: false,
            tls: None,
            callback_secret: None,
            quotas: Vec::new(),
            quota_headers: QuotaHeaders::Ietf,
        }
    }
}

/// Command-line flags of `courier simulate`.
#[derive(clap::Args, Debug, Clone)]
pub struct SimArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,
    /// OAuth client id accepted by the token endpoint.
    #[arg(long, default_value = "courier-demo")]
    pub client_id: String,
    /// OAuth client secret accepted by the token endpoint.
    #[arg(long, default_value = "demo-secret")]
    pub client_secret: String,
    /// API key required in the X-API-Key header.
    #[arg(long, default_value = "demo-api-key")]
    pub api_key: String,
    /// Access-token lifetime in seconds (fractions allowed, e.g. 0.5).
    #[arg(long, default_value_t = 3600.0, value_parser = parse_ttl)]
    pub token_ttl: f64,
    /// Sustained rate limit, requests per minute.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit: u32,
    /// Rate-limit bucket capacity (burst size).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_burst: u32,
    /// Latency added to every accepted /v2/process request, in milliseconds.
    #[arg(long, default_value_t = 0.0, value_parser = parse_latency)]
    pub latency_ms: f64,
    /// Probability (0..=1) that an accepted request fails with --error-status.
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability)]
    pub error_rate: f64,
    /// HTTP status used for injected errors (400..=599).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u16).range(400..=599))]
    pub error_status: u16,
    /// Start in outage mode: /v2/process answers 503 to everything.
    #[arg(long)]
    pub outage: bool,
    /// Probability (0..=1) that an accepted request's connection is dropped without a response.
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability)]
    pub drop_rate: f64,
    /// Make the token endpoint answer 503 temporarily_unavailable.
    #[arg(long)]
    pub token_failure: bool,
    /// Answer every successful request with a result nested this many arrays deep (0: off).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=super::faults::MAX_NESTED_DEPTH))]
    pub nested_depth: u64,
    /// Also send IETF draft RateLimit / RateLimit-Policy headers.
    #[arg(long)]
    pub ietf_headers: bool,
    /// Number of worker threads (defaults to the number of CPUs).
    #[arg(long, default_value_t = default_workers(), value_parser = parse_workers)]
    pub workers: usize,
    /// Serve HTTPS: PEM file of the server certificate (and intermediates). Needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM file of the private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Secret the callback sink (POST /_sim/callbacks) checks X-Courier-Signature with: the
    /// COURIER_CALLBACK_SECRET of the courier sending the callbacks (read from that variable too).
    #[arg(long, value_name = "SECRET", env = "COURIER_CALLBACK_SECRET", hide_env_values = true)]
    pub callback_secret: Option<String>,
    /// A quota window, COUNT/WINDOW: WINDOW is hour, day, month (calendar, UTC) or a duration
    /// like 20s, 15m, 6h, 2d (aligned to the Unix epoch). Repeatable; over it: 429 quota_exceeded.
    #[arg(long = "quota", value_name = "COUNT/WINDOW", action = clap::ArgAction::Append, value_parser = parse_quota)]
    pub quotas: Vec<String>,
    /// Headers describing the quota windows: ietf (RateLimit-Policy / RateLimit) or x-ratelimit
    /// (X-RateLimit-* of the longest window, reset as Unix seconds).
    #[arg(long, value_enum, default_value_t = QuotaHeaders::Ietf)]
    pub quota_headers: QuotaHeaders,
}

impl SimArgs {
    /// Turns the parsed flags into a [`SimConfig`].
    pub fn into_config(self) -> SimConfig {
        let faults = Faults {
            error_rate: self.error_rate,
            error_status: self.error_status,
            latency_ms: self.latency_ms,
            outage: self.outage,
            drop_rate: self.drop_rate,
            token_failure: self.token_failure,
            nested_depth: self.nested_depth,
            ..Faults::default()
        };
        SimConfig {
            listen: self.listen,
            client_id: self.client_id,
            client_secret: self.client_secret,
            api_key: self.api_key,
            token_ttl: Duration::from_secs_f64(self.token_ttl),
            rate_limit_per_minute: self.rate_limit,
            rate_burst: self.rate_burst,
            faults,
            workers: self.workers,
            ietf_headers: self.ietf_headers,
            tls: self.tls_cert.zip(self.tls_key).map(|(cert, key)| SimTls { cert, key }),
            callback_secret: self.callback_secret,
            quotas: self.quotas,
            quota_headers: self.quota_headers,
        }
    }
}

/// Number of CPUs available to this process (1 if unknown).
fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

fn parse_quota(s: &str) -> Result<String, String> {
    super::window::parse_list(s).map(|_| s.to_owned())
}

fn parse_workers(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err("must be a whole number >= 1".to_owned()),
    }
}

fn parse_f64(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("not a number: {e}"))?;
    if v.is_finite() {
        Ok(v)
    } else {
        Err("must be a finite number".to_owned())
    }
}

fn parse_probability(s: &str) -> Result<f64, String> {
    let v = parse_f64(s)?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err("must be between 0 and 1".to_owned())
    }
}

fn parse_latency(s: &str) -> Result<f64, String> {
    let v = parse_f64(s)?;
    if v >= 0.0 {
        Ok(v)
    } else {
        Err("must not be negative".to_owned())
    }
}

fn parse_ttl(s: &str) -> Result<f64, String> {
    let v = parse_f64(s)?;
    // Upper bound keeps `Duration::from_secs_f64` and expiry arithmetic far from overflow.
    if v > 0.0 && v <= 1e12 {
        Ok(v)
    } else {
        Err("must be a positive number of seconds".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sim: SimArgs,
    }

    fn parse(args: &[&str]) -> Result<SimConfig, clap::Error> {
        let argv = std::iter::once("simulate").chain(args.iter().copied());
        Cli::try_parse_from(argv).map(|cli| cli.sim.into_config())
    }

    #[test]
    fn defaults_match_sim_config() {
        let cfg = parse(&[]).unwrap();
        let def = SimConfig::default();
        assert_eq!(cfg.listen, "127.0.0.1:8081".parse().unwrap());
        assert_eq!(cfg.client_id, def.client_id);
        assert_eq!(cfg.client_secret, def.client_secret);
        assert_eq!(cfg.api_key, def.api_key);
        assert_eq!(cfg.token_ttl, def.token_ttl);
        assert_eq!(cfg.rate_limit_per_minute, def.rate_limit_per_minute);
        assert_eq!(cfg.rate_burst, def.rate_burst);
        assert_eq!(cfg.faults, Faults::default());
        assert!(cfg.workers >= 1);
        assert!(!cfg.ietf_headers);
        assert_eq!(cfg.tls, None);
        assert!(cfg.quotas.is_empty());
        assert_eq!(cfg.quota_headers, QuotaHeaders::Ietf);
    }

    #[test]
    fn flags_are_applied() {
        let cfg = parse(&[
            "--token-ttl=0.5",
            "--rate-limit=60",
            "--rate-burst=5",
            "--latency-ms=2.5",
            "--error-rate=0.25",
            "--error-status=503",
            "--outage",
            "--drop-rate=1",
            "--token-failure",
            "--ietf-headers",
            "--workers=3",
        ])
        .unwrap();
        assert_eq!(cfg.token_ttl, Duration::from_millis(500));
        assert_eq!((cfg.rate_limit_per_minute, cfg.rate_burst), (60, 5));
        assert_eq!(cfg.faults.latency_ms, 2.5);
        assert_eq!(cfg.faults.error_rate, 0.25);
        assert_eq!(cfg.faults.error_status, 503);
        assert!(cfg.faults.outage && cfg.faults.token_failure);
        assert_eq!(cfg.faults.drop_rate, 1.0);
        assert!(cfg.ietf_headers);
        assert_eq!(cfg.workers, 3);
        let cfg =
            parse(&["--quota", "5/2s", "--quota=50000/day, 2000000/month", "--quota-headers", "x-ratelimit"]).unwrap();
        assert_eq!(cfg.quotas, ["5/2s", "50000/day, 2000000/month"]);
        assert_eq!(cfg.quota_headers, QuotaHeaders::XRateLimit);
        let tls = parse(&["--tls-cert", "c.pem", "--tls-key", "k.pem"]).unwrap().tls.unwrap();
        assert_eq!((tls.cert, tls.key), (PathBuf::from("c.pem"), PathBuf::from("k.pem")));
    }

    #[test]
    fn bad_values_are_rejected() {
        for bad in [
            "--error-rate=1.5",
            "--drop-rate=-0.1",
            "--error-status=200",
            "--token-ttl=0",
            "--token-ttl=nan",
            "--latency-ms=-1",
            "--rate-limit=0",
            "--workers=0",
            "--tls-cert=cert.pem",
            "--tls-key=key.pem",
            "--quota=10/fortnight",
            "--quota=0/day",
            "--quota-headers=github",
        ] {
            assert!(parse(&[bad]).is_err(), "{bad} should be rejected");
        }
    }
}
