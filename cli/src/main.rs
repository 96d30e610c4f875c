//! `oauth-sync`: the operator's command line. Human-readable tables by
//! default, `--json` for scripts. Later commands (connect links, list, refresh,
//! revoke, doctor) talk to DynamoDB and Secrets Manager through the same
//! standard AWS environment as the functions.

mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use shared::config::{CONFIG_ENV, Config, PresetName};

#[derive(Debug, Parser)]
#[command(
    name = "oauth-sync",
    version,
    about = "Operate oauth-sync: OAuth connections and data sync on AWS Lambda"
)]
struct Cli {
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List the built-in provider presets and what they set.
    Presets,
    /// Work with the configuration file.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file and show the resolved providers and syncs.
    Check {
        /// The file (default: $OAUTH_SYNC_CONFIG, then ./oauth-sync.toml).
        file: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    shared::telemetry::init(shared::telemetry::Target::Cli);
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Presets => {
            let presets: Vec<_> = PresetName::ALL.iter().map(|p| (p.as_str(), p.settings())).collect();
            output::presets(&presets, cli.json)
        }
        Command::Config {
            command: ConfigCommand::Check { file },
        } => {
            let file = file
                .or_else(|| std::env::var_os(CONFIG_ENV).map(PathBuf::from))
                .unwrap_or_else(|| PathBuf::from("oauth-sync.toml"));
            match Config::load(&file) {
                Ok(config) => output::config(&config, cli.json),
                Err(e) => Err(anyhow::Error::new(e)),
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
