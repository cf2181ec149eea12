//! The `courier` command line: `serve`, `simulate` and `demo`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigErrors, Layered, MapEnv, ProcessEnv};
use crate::gateway::{wait_for_signal, Gateway, StartError};
use crate::logging::{LogTarget, Logging};
use crate::metrics::Metrics;
use crate::simulator::{SimArgs, SimConfig, Simulator};

/// courier: a resilient gateway in front of one rate-limited upstream API.
#[derive(Parser, Debug)]
#[command(name = "courier", version, about, long_about = None)]
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
}

/// Flags of `courier demo`.
#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// Gateway listener.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Admin listener (/metrics, /healthz, /readyz).
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub admin_listen: SocketAddr,
    /// Simulator listener.
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub sim_listen: SocketAddr,
    /// The simulated upstream's rate limit, requests per minute.
    #[arg(long, default_value_t = 1000)]
    pub rate_limit: u32,
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => serve(Config::load(config.as_deref())),
        Command::Simulate(args) => simulate(args),
        Command::Demo(args) => demo(args),
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
        let wiring = MapEnv::new([
            ("EXTERNAL_API_BASE_URL", sim.base_url()),
            ("EXTERNAL_API_KEY", sim_config.api_key.clone()),
            ("EXTERNAL_OAUTH_CLIENT_ID", sim_config.client_id.clone()),
            ("EXTERNAL_OAUTH_CLIENT_SECRET", sim_config.client_secret.clone()),
            ("EXTERNAL_API_RATE_LIMIT", args.rate_limit.to_string()),
            ("COURIER_LISTEN", args.listen.to_string()),
            ("COURIER_ADMIN_LISTEN", args.admin_listen.to_string()),
        ]);
        let config = Config::from_sources(&Layered(&wiring, &ProcessEnv), None).map_err(|e| e.to_string())?;
        let metrics = Arc::new(Metrics::new());
        let logging = Logging::start(config.log_level, LogTarget::Stderr, metrics.log_dropped.clone());
        let hangups = hangups().map_err(|e| e.to_string())?;
        let running = Gateway::start(config, metrics, logging.logger.clone())
            .await
            .and_then(Gateway::serve)
            .map_err(|e| e.to_string())?;
        running.reload_on_sighup(hangups);
        print_demo_banner(&sim, running.addr, running.admin_addr);
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

fn print_demo_banner(sim: &Simulator, gateway: SocketAddr, admin: SocketAddr) {
    println!("courier demo is running (Ctrl-C stops it)");
    println!("  gateway:   http://{gateway}/api/external/process");
    println!("  admin:     http://{admin}/metrics  http://{admin}/readyz");
    println!(
        "  simulator: {}  (faults: POST http://{}/_sim/faults, stats: GET http://{}/_sim/stats)",
        sim.base_url(),
        sim.addr(),
        sim.addr()
    );
    println!("try:");
    println!(
        "  curl -s -X POST http://{gateway}/api/external/process -H 'Content-Type: application/json' \
         -d '{{\"data\": {{\"input\": \"hello courier\", \"format\": \"text\"}}}}'"
    );
    println!(
        "  curl -s -X POST http://{}/_sim/faults -H 'Content-Type: application/json' -d '{{\"error_count\": 2}}'",
        sim.addr()
    );
}
