//! Command line of `headroom-scaler`, and the process set-up shared by its subcommands.

use clap::{Parser, Subcommand, ValueEnum};

use crate::check::CheckArgs;
use crate::server::ServeArgs;

/// Exit code for bad configuration (BSD `EX_USAGE`).
pub const EXIT_CONFIG: i32 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "headroom-scaler",
    version,
    about = "A KEDA external scaler for Celery, Redis, SQS and Kafka queues, with push activation"
)]
pub struct Cli {
    /// Log format.
    #[arg(
        long,
        global = true,
        env = "HEADROOM_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
    /// Log filter (tracing `EnvFilter` syntax, e.g. `info` or `headroom_scaler=debug`).
    #[arg(long, global = true, env = "HEADROOM_LOG", default_value = "info")]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve KEDA's externalscaler gRPC protocol.
    Serve(Box<ServeArgs>),
    /// Print what KEDA would receive for each Headroom trigger of a ScaledObject.
    Check(CheckArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global tracing subscriber. Logs go to standard error, so that `check` output
/// on standard output stays clean.
pub fn init_tracing(format: LogFormat, filter: &str) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .map_err(|e| format!("--log: {filter:?} is not a valid filter: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| e.to_string())
}
