//! `headroom-provisioner`: for now, `headroom-provisioner crd` prints the PrewarmPolicy CRD.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "headroom-provisioner", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the PrewarmPolicy CustomResourceDefinition (YAML) generated from the Rust types.
    Crd,
}

fn main() -> ExitCode {
    headroom_provisioner::install_crypto_provider();
    let cli = Cli::parse();
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
    }
}
