//! `rootstock`: a Kubernetes CRI runtime. This binary is the node daemon (gRPC over a unix
//! socket) plus a few operator commands; the domain logic lives in the library crates.

mod blocking;
mod config;
mod daemon;
mod error;
mod image;
mod malloc;
mod metrics;
mod notify;
mod recovery;
mod runtime;
mod streaming;
mod trim;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::{Config, Overrides};

/// The manual part of `rootstock --help`: every command, the files and the signals.
const MANUAL: &str = "\
COMMANDS:
  rootstock [serve]                Run the daemon: CRI v1 on `socket` until SIGTERM/SIGINT.
  rootstock config default         Print every key with its default and a one-line comment.
  rootstock config show            Print the effective configuration (file + overrides).
  rootstock store verify           Check the image store; exit 1 when it has problems.
  rootstock store verify --repair  Re-derive damaged file objects (from a layer view, a kept
                                   layer blob, or the registry) and fix every tree using them.
  rootstock store gc               Collect what nothing references in the image store.
  `store` commands take the root lock: they refuse while a daemon runs on the same root_dir.

FILES:
  /etc/rootstock/config.toml       Configuration (optional; `config default` shows all keys).
  /var/lib/rootstock/              root_dir: images, metadata, container layers.
  /run/rootstock/rootstock.sock    The CRI socket (kubelet: --container-runtime-endpoint
                                   unix:///run/rootstock/rootstock.sock, cgroupDriver: cgroupfs).
  rootstock.service                systemd unit (Type=notify, KillMode=process, Delegate=yes).

SIGNALS:
  SIGTERM, SIGINT   Stop accepting calls, let in-flight calls finish (10 s), exit 0. Running
                    containers keep running: each has its own rootstock-monitor process.

ENVIRONMENT:
  RUST_LOG          Overrides `log_level`.
  NOTIFY_SOCKET     Set by systemd: READY=1 is sent once the socket serves calls.
  GLIBC_TUNABLES    When unset, the daemon re-executes itself once (same pid) with
                    glibc.malloc.tcache_count=0, which keeps its heap small after bursts
                    of pods, and keeps that setting from the processes it starts. A value
                    set by the operator is used as it is.
  MALLOC_ARENA_MAX  glibc's arenas for the daemon; one when unset.

EXIT STATUS:
  0 on success; 1 on an error (printed on stderr) or a store with problems.";

#[derive(Debug, Parser)]
#[command(
    name = "rootstock",
    version,
    about = "Kubernetes CRI runtime daemon",
    after_long_help = MANUAL
)]
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
    Verify {
        /// Re-derive damaged or missing file objects (from an intact layer view, a kept layer
        /// blob, or the image's registry) and fix every layer and tree that uses them; running
        /// containers' writable layers are never touched.
        #[arg(long)]
        repair: bool,
    },
    /// Collect blobs, layers, trees and objects nothing references (as a daemon start after
    /// an unclean stop does).
    Gc,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the embedded default configuration as TOML.
    Default,
    /// Print the effective configuration (file, then command-line overrides) as TOML.
    Show,
}

fn main() -> ExitCode {
    // First: before any thread exists, and before anything could spawn a child with what
    // they take out of the environment.
    malloc::tune();
    notify::take_socket();
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
            match command {
                ConfigCommand::Default => print!("{}", Config::default().to_commented_toml()?),
                ConfigCommand::Show => print!("{}", effective()?.to_toml()?),
            }
            Ok(())
        }
        Command::Store { command } => store(command, effective()?),
        Command::Serve => {
            let config = effective()?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_keep_alive(trim::BLOCKING_KEEP_ALIVE)
                .on_thread_stop(rootstock_fsutil::release_dead_stack)
                .build()
                .context("starting the tokio runtime")?;
            runtime.block_on(daemon::run(config))
        }
    }
}

/// `rootstock store …`: offline maintenance of the image store.
fn store(command: StoreCommand, config: Config) -> anyhow::Result<()> {
    use rootstock_imagestore::{offline, repair, verify};
    let root = &config.root_dir;
    let block_on = |what: &str| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .with_context(|| format!("starting the tokio runtime for {what}"))
    };
    match command {
        StoreCommand::Verify { repair: false } => {
            let report = verify::verify_offline(root)
                .with_context(|| format!("verifying the store {}", root.display()))?;
            print!("{report}");
            anyhow::ensure!(
                report.is_clean(),
                "the store has problems (`rootstock store verify --repair` re-derives damaged \
                 file objects)"
            );
        }
        StoreCommand::Verify { repair: true } => {
            let report = block_on("repair")?
                .block_on(repair::repair_offline(root, &config.images))
                .with_context(|| format!("repairing the store {}", root.display()))?;
            println!("{report}");
            anyhow::ensure!(
                report.unrepaired.is_empty() && report.after.is_clean(),
                "the store still has problems"
            );
        }
        StoreCommand::Gc => {
            let report = block_on("gc")?
                .block_on(offline::gc_offline(root, &config.images))
                .with_context(|| format!("collecting garbage in {}", root.display()))?;
            print!("{report}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// Every (sub)command path, e.g. `rootstock store verify`.
    fn command_paths(cmd: &clap::Command, prefix: &str, out: &mut Vec<String>) {
        for sub in cmd.get_subcommands() {
            let path = format!("{prefix} {}", sub.get_name());
            out.push(path.clone());
            command_paths(sub, &path, out);
        }
    }

    #[test]
    fn the_manual_names_every_subcommand() {
        let mut paths = Vec::new();
        command_paths(&Cli::command(), "rootstock", &mut paths);
        assert!(paths.len() >= 6, "{paths:?}");
        for path in paths {
            let shown = path.replace("rootstock serve", "rootstock [serve]");
            assert!(MANUAL.contains(&shown), "`{shown}` is missing from MANUAL");
        }
        Cli::command().debug_assert();
    }
}
