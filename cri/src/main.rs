//! `rootstock`: a Kubernetes CRI runtime. This binary is the node daemon (gRPC over a unix
//! socket) plus a few operator commands; the domain logic lives in the library crates.

mod config;
mod daemon;
mod error;
mod image;
mod runtime;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::{Config, Overrides};

#[derive(Debug, Parser)]
#[command(name = "rootstock", version, about = "Kubernetes CRI runtime daemon")]
struct Cli {
    /// Configuration file (TOML). Optional at its default path: every key has a default.
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Override `root_dir` (persistent store: images, metadata).
    #[arg(long, global = true, value_name = "DIR")]
    root_dir: Option<PathBuf>,
    /// Override `state_dir` (per-boot state: sandboxes, containers).
    #[arg(long, global = true, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Override `socket` (the CRI endpoint).
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Use the built-in bridge network (bridge + host-local on 10.88.0.0/16 + portmap) when no
    /// CNI config exists: for standalone use, never on a cluster node.
    #[arg(long, global = true)]
    default_network: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon (the default when no command is given).
    Serve,
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Image store maintenance (refuses while a daemon holds the root lock).
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
}

#[derive(Debug, Subcommand)]
enum StoreCommand {
    /// Check objects against their digests, trees for completeness, and references.
    Verify,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the embedded default configuration as TOML.
    Default,
    /// Print the effective configuration (file, then command-line overrides) as TOML.
    Show,
}

fn main() -> ExitCode {
    // Printed by hand: anyhow's `Termination` would add a backtrace when RUST_BACKTRACE is set.
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("rootstock: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let overrides = Overrides {
        root_dir: cli.root_dir,
        state_dir: cli.state_dir,
        socket: cli.socket,
        default_network: cli.default_network,
    };
    let effective = || Config::load(cli.config.as_deref()).map(|c| c.with_overrides(overrides));
    match cli.command.unwrap_or(Command::Serve) {
        Command::Config { command } => {
            let config = match command {
                ConfigCommand::Default => Config::default(),
                ConfigCommand::Show => effective()?,
            };
            print!("{}", config.to_toml()?);
            Ok(())
        }
        Command::Store {
            command: StoreCommand::Verify,
        } => {
            let config = effective()?;
            let report = rootstock_imagestore::verify::verify_offline(&config.root_dir)
                .with_context(|| format!("verifying the store {}", config.root_dir.display()))?;
            print!("{report}");
            anyhow::ensure!(report.is_clean(), "the store has problems");
            Ok(())
        }
        Command::Serve => {
            let config = effective()?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the tokio runtime")?;
            runtime.block_on(daemon::run(config))
        }
    }
}
