//! Command line of `headroom-scaler`, and the process set-up shared by its subcommands.

use clap::{Parser, Subcommand};

use crate::check::CheckArgs;
use crate::server::ServeArgs;

pub use headroom_common::{EXIT_CONFIG, LogFormat, init_tracing};

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
