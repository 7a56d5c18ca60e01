//! `headroom-provisioner`: `serve` runs the controller; `crd` prints the PrewarmPolicy CRD.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use headroom_common::{EXIT_CONFIG, LogFormat, init_tracing, parse_cli, shutdown_signal};
use headroom_provisioner::serve::ServeArgs;
use headroom_provisioner::{install_crypto_provider, metrics, serve};

#[derive(Debug, Parser)]
#[command(name = "headroom-provisioner", version, about)]
struct Cli {
    /// Log format.
    #[arg(
        long,
        global = true,
        env = "HEADROOM_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
    /// Log filter (tracing `EnvFilter` syntax, e.g. `info` or `headroom_provisioner=debug`).
    #[arg(long, global = true, env = "HEADROOM_LOG", default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Reconcile PrewarmPolicies: create capacity ahead of the scaler's forecast.
    Serve(Box<ServeArgs>),
    /// Print the PrewarmPolicy CustomResourceDefinition (YAML) generated from the Rust types.
    Crd,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli: Cli = match parse_cli() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    match cli.command {
        Command::Crd => match headroom_provisioner::crd::crd_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: cannot render the CRD: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Serve(args) => {
            if let Err(e) = init_tracing(cli.log_format, &cli.log) {
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
            run(*args).await
        }
    }
}

async fn run(args: ServeArgs) -> ExitCode {
    let config = match args.validate() {
        Ok(c) => c,
        Err(errors) => {
            for e in errors {
                eprintln!("error: {e}");
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    install_crypto_provider();
    let client = match kube::Config::infer().await {
        Ok(c) => match kube::Client::try_from(c) {
            Ok(client) => client,
            Err(e) => {
                eprintln!("error: cannot build a Kubernetes client: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        Err(e) => {
            eprintln!(
                "error: no Kubernetes configuration (neither in-cluster nor KUBECONFIG/~/.kube/config): {e}"
            );
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let handle = match metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(metrics::TIME_TO_CAPACITY.into()),
            metrics::TIME_TO_CAPACITY_BUCKETS,
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full(metrics::TIME_TO_IMAGE_WARM.into()),
                metrics::TIME_TO_CAPACITY_BUCKETS,
            )
        })
        .and_then(|b| b.set_buckets(metrics::CALL_BUCKETS))
        .and_then(|b| b.install_recorder())
    {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: cannot install the metrics recorder: {e}");
            return ExitCode::FAILURE;
        }
    };
    metrics::describe();
    metrics::leader(false);
    headroom_common::spawn_metrics_upkeep(handle.clone());
    let running = match serve::start(config, client, Some(handle)).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    shutdown_signal().await;
    tracing::info!("shutting down");
    running.shutdown();
    match running.wait().await {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "failed");
            ExitCode::FAILURE
        }
    }
}
