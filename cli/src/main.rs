//! `oauth-sync`: the operator's command line. Human-readable output by
//! default, `--json` for scripts. Commands that need AWS talk to DynamoDB and
//! Secrets Manager through the same standard environment as the functions
//! (`AWS_REGION`, credentials, `AWS_ENDPOINT_URL_*`).
//!
//! The commands and their flags are in `args`; each family of commands in its
//! own module (`config`, `connections`, `sync`, `keys`, `doctor`, `api`,
//! `redirect`), its output beside it; `output` holds the table and stdout
//! writing they share. This file dispatches, finds the tables and prints
//! errors with their exit code.

mod api;
mod args;
mod aws;
mod config;
mod connections;
mod doctor;
mod keys;
mod output;
mod redirect;
mod sync;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use shared::aws::AwsClients;
use shared::config::{CONFIG_ENV, Config, ConfigErrors};
use shared::connection::store::ConnectionStore;
use shared::refresh::{RefreshSettings, TokenService};
use shared::runtime::{CONNECTIONS_TABLE_ENV, RECORDS_TABLE_ENV, SYNC_RUNS_TABLE_ENV, SYNC_STATE_TABLE_ENV};
use shared::secrets::SecretStore;
use shared::sync::jobs::JobStore;
use shared::sync::records::RecordStore;

use crate::args::{Cli, Command, ConfigCommand, KeysCommand, SyncCommand};

/// `--config`, else `$OAUTH_SYNC_CONFIG`, else `./oauth-sync.toml`.
fn config_path(explicit: Option<PathBuf>) -> PathBuf {
    explicit
        .or_else(|| std::env::var_os(CONFIG_ENV).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("oauth-sync.toml"))
}

/// Exit codes: 0 done, 1 an error (printed by [`print_error`]), 2 a usage
/// error (clap's), 130 a `sync run` stopped by a signal.
#[tokio::main]
async fn main() -> ExitCode {
    shared::telemetry::init(shared::telemetry::Target::Cli);
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<sync::Interrupted>() => {
            eprintln!("{e}");
            ExitCode::from(130)
        }
        Err(e) => {
            print_error(&e);
            ExitCode::FAILURE
        }
    }
}

/// One arm per command: the module of its family does the work.
async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Presets => config::presets(cli.json),
        Command::Config {
            command: ConfigCommand::Check { file },
        } => config::check(&config_path(file.or(cli.config)), cli.json).await,
        Command::Config {
            command: ConfigCommand::Push { file },
        } => config::push(&file, cli.json).await,
        Command::Keys { command } => keys_command(config_path(cli.config), command, cli.json).await,
        Command::DeployCheck { stack } => doctor::deploy_check(config_path(cli.config), stack, cli.json).await,
        Command::List => connections::list(config_path(cli.config), cli.json).await,
        Command::Show { id } => connections::show(config_path(cli.config), &id, cli.json).await,
        Command::Refresh { id } => connections::refresh(config_path(cli.config), &id, cli.json).await,
        Command::Revoke { id } => connections::revoke(config_path(cli.config), &id, cli.json).await,
        Command::Doctor { provider } => doctor::doctor(config_path(cli.config), provider, cli.json).await,
        Command::RedirectUris { provider } => {
            redirect::print(&config_path(cli.config), provider.as_deref(), cli.json).await
        }
        Command::ConnectLink(request) => connections::connect_link(config_path(cli.config), request, cli.json).await,
        Command::Sync { command } => sync_command(config_path(cli.config), command, cli.json).await,
        Command::Records { id, sync, limit } => {
            sync::records(config_path(cli.config), &id, &sync, limit, cli.json).await
        }
        Command::Token { id, min_valid } => api::token(&config_path(cli.config), &id, &min_valid, cli.json).await,
        Command::Proxy {
            id,
            method,
            path,
            headers,
            data,
        } => {
            let args = api::ProxyArgs {
                id,
                method,
                target: path,
                headers,
                data,
            };
            api::proxy(&config_path(cli.config), args, cli.json).await
        }
    }
}

async fn sync_command(config_file: PathBuf, command: SyncCommand, as_json: bool) -> anyhow::Result<()> {
    match command {
        SyncCommand::Run {
            id,
            sync,
            timeout,
            lease,
        } => sync::sync_run(config_file, &id, &sync, &timeout, &lease, as_json).await,
        SyncCommand::Status { id } => sync::sync_status(config_file, id, as_json).await,
        SyncCommand::Schedule { sync } => sync::sync_schedule(config_file, &sync, as_json).await,
    }
}

async fn keys_command(config_file: PathBuf, command: KeysCommand, as_json: bool) -> anyhow::Result<()> {
    let config = Config::load_and_discover(&config_file).await?;
    let ring = |link: bool| if link { keys::Ring::Link } else { keys::Ring::Token };
    match command {
        KeysCommand::Init => keys::init(&config, as_json).await,
        KeysCommand::Rotate { link } => keys::rotate(&config, ring(link), as_json).await,
        KeysCommand::Reseal => keys::reseal(&config, as_json).await,
        KeysCommand::Retire { id, link } => keys::retire(&config, ring(link), &id, as_json).await,
    }
}

/// `error: …` on stderr: one line per mistake in a configuration file
/// (`file:line:column: field: message`), then what the command says about
/// them (`nothing was written`); any other error with its causes on one line.
fn print_error(error: &anyhow::Error) {
    match error.chain().find_map(|e| e.downcast_ref::<ConfigErrors>()) {
        Some(errors) => {
            for e in errors {
                eprintln!("error: {e}");
            }
            let context = error.to_string();
            if context != errors.to_string() {
                eprintln!("error: {context}");
            }
        }
        None => eprintln!("error: {}", shared::telemetry::error_chain(error.as_ref())),
    }
}

/// A table name from the environment, or an error that says where to find it.
fn table_env(var: &str, what: &str) -> anyhow::Result<String> {
    std::env::var(var)
        .ok()
        .filter(|t| !t.is_empty())
        .with_context(|| format!("set {var} to {what}"))
}

/// The connections table, from `OAUTH_SYNC_CONNECTIONS_TABLE` (the stack's
/// `ConnectionsTableName` output).
pub(crate) async fn store() -> anyhow::Result<(AwsClients, ConnectionStore)> {
    let table = table_env(
        CONNECTIONS_TABLE_ENV,
        "the connections table (the stack's ConnectionsTableName output)",
    )?;
    let aws = crate::aws::clients().await;
    let store = ConnectionStore::new(aws.dynamodb.clone(), table);
    Ok((aws, store))
}

/// The sync-state and sync-runs tables, from `OAUTH_SYNC_SYNC_STATE_TABLE`
/// and `OAUTH_SYNC_SYNC_RUNS_TABLE`.
fn job_store(aws: &AwsClients) -> anyhow::Result<JobStore> {
    Ok(JobStore::new(
        aws.dynamodb.clone(),
        table_env(
            SYNC_STATE_TABLE_ENV,
            "the sync-state table (the stack's SyncStateTable resource)",
        )?,
        table_env(
            SYNC_RUNS_TABLE_ENV,
            "the sync-runs table (the stack's SyncRunsTable resource)",
        )?,
    ))
}

/// The records table, from `OAUTH_SYNC_RECORDS_TABLE` (the stack's `RecordsTableName` output).
fn record_store(aws: &AwsClients) -> anyhow::Result<RecordStore> {
    Ok(RecordStore::new(
        aws.dynamodb.clone(),
        table_env(
            RECORDS_TABLE_ENV,
            "the records table (the stack's RecordsTableName output)",
        )?,
    ))
}

async fn token_service(config_file: &std::path::Path) -> anyhow::Result<TokenService> {
    let config = Arc::new(Config::load_and_discover(config_file).await?);
    let (aws, store) = store().await?;
    let events = shared::events::EventSink::from_env(&crate::aws::sdk_config().await);
    Ok(
        TokenService::load(config, store, SecretStore::new(aws.secrets), RefreshSettings::default())
            .await?
            .with_events(events),
    )
}

/// `90s`, `15m`, `2h`.
fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: Option<u64> = number.parse().ok();
    let seconds = match (number, unit) {
        (Some(n), "s") => n,
        (Some(n), "m") => n.saturating_mul(60),
        (Some(n), "h") => n.saturating_mul(3600),
        _ => anyhow::bail!("`{text}` is not a duration: a number and s, m or h (90s, 15m, 2h)"),
    };
    Ok(Duration::from_secs(seconds))
}
