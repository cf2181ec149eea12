//! The `courier` command line: `serve`, `simulate`, `demo` and `probe`.

mod probe;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use secrecy::ExposeSecret;

use crate::config::{Config, ConfigErrors, Env, Layered, MapEnv, ProcessEnv};
use crate::gateway::{wait_for_signal, Gateway, StartError};
use crate::logging::{LogTarget, Logging};
use crate::metrics::Metrics;
use crate::simulator::{SimArgs, SimConfig, Simulator};
pub use probe::ProbeArgs;

/// What `courier --version` prints after the name: the version and the git commit built from
/// (build.rs records it; `unknown` for a build without git and without `COURIER_GIT_COMMIT`).
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("COURIER_GIT_COMMIT"), ")");

/// courier: a resilient gateway in front of one rate-limited upstream API.
#[derive(Parser, Debug)]
#[command(name = "courier", version = VERSION, about, long_about = None)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gateway, configured from EXTERNAL_API_* / COURIER_* environment variables and an
    /// optional TOML file (keys are the variable names; the environment wins).
    Serve {
        /// TOML file of settings, e.g. `EXTERNAL_API_TIMEOUT = 5`.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Run the upstream simulator alone (token endpoint, /v2/process, rate limit, faults).
    Simulate(SimArgs),
    /// Run the simulator and the gateway together, wired to each other, and print how to call
    /// them. Other COURIER_* variables in the environment still apply.
    Demo(DemoArgs),
    /// Ask the admin listener whether courier is ready (/readyz) or alive (--live: /healthz);
    /// exit 0 on 200, 1 otherwise, with one line. For container health checks and exec probes.
    Probe(ProbeArgs),
}

/// Flags of `courier demo`.
#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// Gateway listener [default: COURIER_LISTEN, else 127.0.0.1:8080].
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<SocketAddr>,
    /// Admin listener: /metrics, /healthz, /readyz [default: COURIER_ADMIN_LISTEN, else
    /// 127.0.0.1:9090].
    #[arg(long, value_name = "HOST:PORT")]
    pub admin_listen: Option<SocketAddr>,
    /// Simulator listener.
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub sim_listen: SocketAddr,
    /// The simulated upstream's rate limit, requests per minute.
    #[arg(long, default_value_t = 1000)]
    pub rate_limit: u32,
}

/// The callback secret `courier demo` signs callbacks with when the environment names none
/// (printed at start: it protects nothing but the demo's own sink).
pub const DEMO_CALLBACK_SECRET: &str = "demo-callback-secret";

/// The request id of the async example `courier demo` prints (and README.md shows).
const DEMO_JOB_ID: &str = "my-first-job";

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => serve(Config::load(config.as_deref())),
        Command::Simulate(args) => simulate(args),
        Command::Demo(args) => demo(args),
        Command::Probe(args) => probe::run(&args, &ProcessEnv),
    }
}

fn report_config(errors: &ConfigErrors) -> ExitCode {
    for error in &errors.0 {
        eprintln!("courier: {error}");
    }
    ExitCode::from(2)
}

fn report_start(error: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("courier: cannot start: {error}");
    ExitCode::from(1)
}

fn serve(config: Result<Config, ConfigErrors>) -> ExitCode {
    let config = match config {
        Ok(config) => config,
        Err(errors) => return report_config(&errors),
    };
    let metrics = Arc::new(Metrics::new());
    let logging = Logging::start(config.log_level, LogTarget::Stderr, metrics.log_dropped.clone());
    let log = logging.logger.clone();
    let outcome = actix_rt::System::new().block_on(async move {
        // Caught from before the first log line, so an early SIGHUP never ends the process.
        let hangups = hangups().map_err(|e| StartError::Setting(format!("signal handling: {e}")))?;
        let running = Gateway::start(config, metrics, log).await?.serve()?;
        running.reload_on_sighup(hangups);
        running.notify_ready();
        running.stop_on_signal().await.map_err(|e| StartError::Setting(format!("signal handling: {e}")))
    });
    drop(logging);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => report_start(&error),
    }
}

/// SIGHUP, caught from now on (it would otherwise end the process): reloads credentials.
fn hangups() -> std::io::Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
}

fn simulate(args: SimArgs) -> ExitCode {
    let outcome = actix_rt::System::new().block_on(async move {
        let sim = Simulator::start(args.into_config()).await?;
        println!("simulator listening: {}", sim.base_url());
        println!("  token:   POST {}/oauth/token", sim.base_url());
        println!("  process: POST {}/process", sim.base_url());
        let origin = sim.origin();
        println!("  faults:  POST {origin}/_sim/faults    stats: GET {origin}/_sim/stats");
        wait_for_signal().await?;
        sim.stop().await;
        Ok::<_, std::io::Error>(())
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => report_start(&error),
    }
}

fn demo(args: DemoArgs) -> ExitCode {
    let sim_config =
        SimConfig { listen: args.sim_listen, rate_limit_per_minute: args.rate_limit, ..SimConfig::default() };
    let outcome = actix_rt::System::new().block_on(async move {
        let sim = Simulator::start(sim_config.clone()).await.map_err(|e| e.to_string())?;
        let mut wiring = MapEnv::new([
            ("EXTERNAL_API_BASE_URL", sim.base_url()),
            ("EXTERNAL_API_KEY", sim_config.api_key.clone()),
            ("EXTERNAL_OAUTH_CLIENT_ID", sim_config.client_id.clone()),
            ("EXTERNAL_OAUTH_CLIENT_SECRET", sim_config.client_secret.clone()),
            ("EXTERNAL_API_RATE_LIMIT", args.rate_limit.to_string()),
        ]);
        // A flag wins over the environment; without either, the listeners keep their loopback
        // defaults (in a container image the environment opens the gateway: docs/deployment.md).
        if let Some(listen) = args.listen {
            wiring.set("COURIER_LISTEN", listen.to_string());
        }
        if let Some(admin_listen) = args.admin_listen {
            wiring.set("COURIER_ADMIN_LISTEN", admin_listen.to_string());
        }
        let own_secret = wire_callbacks(&mut wiring, &sim);
        let config = Config::from_sources(&Layered(&wiring, &ProcessEnv), None).map_err(|e| e.to_string())?;
        sim.set_callback_secret(config.jobs.callback_secret.as_ref().map(|s| s.expose_secret().as_bytes()));
        let metrics = Arc::new(Metrics::new());
        let logging = Logging::start(config.log_level, LogTarget::Stderr, metrics.log_dropped.clone());
        let hangups = hangups().map_err(|e| e.to_string())?;
        let running = Gateway::start(config, metrics, logging.logger.clone())
            .await
            .and_then(Gateway::serve)
            .map_err(|e| e.to_string())?;
        running.reload_on_sighup(hangups);
        print_demo_banner(&sim, running.addr, running.admin_addr, own_secret);
        let waited = wait_for_signal().await;
        running.stop().await;
        sim.stop().await;
        drop(logging);
        waited.map_err(|e| e.to_string())
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => report_start(&error),
    }
}

/// Lets the demo's callbacks reach the simulator's sink: a callback secret (the demo's own
/// unless the environment names one; returns whether it is the demo's) and the simulator's
/// address on the callback allow-list, added to any the environment gives. `serve` has no such
/// wiring, so it keeps refusing loopback callbacks unless `COURIER_CALLBACK_ALLOW` lists them.
fn wire_callbacks(wiring: &mut MapEnv, sim: &Simulator) -> bool {
    let own_secret =
        ProcessEnv.var("COURIER_CALLBACK_SECRET").is_none() && ProcessEnv.var("COURIER_CALLBACK_SECRET_FILE").is_none();
    if own_secret {
        wiring.set("COURIER_CALLBACK_SECRET", DEMO_CALLBACK_SECRET);
    }
    let sim_ip = match sim.addr().ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_owned(),
        ip if ip.is_unspecified() => "::1".to_owned(),
        ip => ip.to_string(),
    };
    let allow = match ProcessEnv.var("COURIER_CALLBACK_ALLOW") {
        Some(more) if !more.trim().is_empty() => format!("{sim_ip}, {more}"),
        _ => sim_ip,
    };
    wiring.set("COURIER_CALLBACK_ALLOW", allow);
    own_secret
}

fn print_demo_banner(sim: &Simulator, gateway: SocketAddr, admin: SocketAddr, own_secret: bool) {
    let sim_addr = sim.addr();
    println!("courier demo is running (Ctrl-C stops it)");
    println!("  gateway:   http://{gateway}/api/external/process");
    println!("  admin:     http://{admin}/metrics  http://{admin}/readyz");
    println!(
        "  simulator: {}  (faults: POST http://{sim_addr}/_sim/faults, stats: GET http://{sim_addr}/_sim/stats)",
        sim.base_url(),
    );
    let secret = if own_secret {
        format!("COURIER_CALLBACK_SECRET={DEMO_CALLBACK_SECRET} (the demo's)")
    } else {
        "the COURIER_CALLBACK_SECRET of the environment".to_owned()
    };
    println!("  callbacks: signed with {secret}; the simulator's sink http://{sim_addr}/_sim/callbacks");
    println!("             records and verifies them (the demo allows loopback callbacks to the simulator)");
    println!("try:");
    println!(
        "  curl -s -X POST http://{gateway}/api/external/process -H 'Content-Type: application/json' \
         -d '{{\"data\": {{\"input\": \"hello courier\", \"format\": \"text\"}}}}'"
    );
    println!(
        "  curl -s -X POST http://{}/_sim/faults -H 'Content-Type: application/json' -d '{{\"error_count\": 2}}'",
        sim.addr()
    );
    println!("an async request, its status and its callback:");
    println!(
        "  curl -s -i -X POST http://{gateway}/api/external/process -H 'Content-Type: application/json' \
         -H 'X-Request-Id: {DEMO_JOB_ID}' -d '{{\"data\": {{\"input\": \"later\"}}, \"options\": {{\"async\": true, \
         \"callback_url\": \"http://{sim_addr}/_sim/callbacks\"}}}}'"
    );
    println!("  curl -s http://{gateway}/api/external/status/{DEMO_JOB_ID}");
    println!("  curl -s http://{sim_addr}/_sim/callbacks");
}
