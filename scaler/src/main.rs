//! `headroom-scaler`: parse configuration, set up logs and metrics, run until SIGTERM/SIGINT.

use std::process::ExitCode;

use headroom_common::{parse_cli, shutdown_signal};
use headroom_scaler::cli::{Cli, Command, EXIT_CONFIG, init_tracing};
use headroom_scaler::{check, metrics, server};

#[tokio::main]
async fn main() -> ExitCode {
    let cli: Cli = match parse_cli() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    if let Err(e) = init_tracing(cli.log_format, &cli.log) {
        eprintln!("error: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    match cli.command {
        Command::Serve(args) => serve(*args).await,
        Command::Check(args) => match check::run(&args).await {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
    }
}

async fn serve(args: server::ServeArgs) -> ExitCode {
    let config = match args.validate() {
        Ok(c) => c,
        Err(errors) => {
            for e in errors {
                eprintln!("error: {e}");
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let handle = match metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(metrics::LATENCY_BUCKETS)
        .and_then(|b| {
            b.idle_timeout(
                metrics_util::MetricKindMask::GAUGE,
                Some(std::time::Duration::from_secs(600)),
            )
            .install_recorder()
        }) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: cannot install the metrics recorder: {e}");
            return ExitCode::FAILURE;
        }
    };
    metrics::describe();
    headroom_common::spawn_metrics_upkeep(handle.clone());
    let running = match server::start(config, Some(handle)).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    shutdown_signal().await;
    running.shutdown();
    match running.wait().await {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            ExitCode::FAILURE
        }
    }
}
