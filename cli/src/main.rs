//! `oauth-sync`: the operator's command line. Human-readable output by
//! default, `--json` for scripts. Commands that need AWS talk to DynamoDB and
//! Secrets Manager through the same standard environment as the functions
//! (`AWS_REGION`, credentials, `AWS_ENDPOINT_URL_*`).

mod api;
mod args;
mod config;
mod connections;
mod keys;
mod output;
mod redirect;
mod sync;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

fn config_path(explicit: Option<PathBuf>) -> PathBuf {
    explicit
        .or_else(|| std::env::var_os(CONFIG_ENV).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("oauth-sync.toml"))
}

#[tokio::main]
async fn main() -> ExitCode {
    shared::telemetry::init(shared::telemetry::Target::Cli);
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Presets => config::presets(cli.json),
        Command::Config {
            command: ConfigCommand::Check { file },
        } => config::check(&config_path(file.or(cli.config)), cli.json).await,
        Command::Config {
            command: ConfigCommand::Push { file },
        } => config::push(&file, cli.json).await,
        Command::Keys { command } => keys_command(config_path(cli.config), command, cli.json).await,
        Command::DeployCheck { stack } => deploy_check(config_path(cli.config), stack, cli.json).await,
        Command::List => connections::list(config_path(cli.config), cli.json).await,
        Command::Show { id } => connections::show(config_path(cli.config), &id, cli.json).await,
        Command::Refresh { id } => connections::refresh(config_path(cli.config), &id, cli.json).await,
        Command::Revoke { id } => connections::revoke(config_path(cli.config), &id, cli.json).await,
        Command::Doctor { provider } => doctor(config_path(cli.config), provider, cli.json).await,
        Command::RedirectUris { provider } => {
            redirect::print(&config_path(cli.config), provider.as_deref(), cli.json).await
        }
        Command::ConnectLink(request) => connections::connect_link(config_path(cli.config), request, cli.json).await,
        Command::Sync {
            command:
                SyncCommand::Run {
                    id,
                    sync,
                    timeout,
                    lease,
                },
        } => sync::sync_run(config_path(cli.config), &id, &sync, &timeout, &lease, cli.json).await,
        Command::Sync {
            command: SyncCommand::Status { id },
        } => sync::sync_status(config_path(cli.config), id, cli.json).await,
        Command::Sync {
            command: SyncCommand::Schedule { sync },
        } => sync::sync_schedule(config_path(cli.config), &sync, cli.json).await,
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
    };
    match result {
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
    let aws = AwsClients::from_env().await;
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
    let events = shared::events::EventSink::from_env(&shared::aws::load_sdk_config().await);
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

async fn doctor(config_file: PathBuf, only: Option<String>, as_json: bool) -> anyhow::Result<()> {
    use shared::doctor::{Verdict, check_credentials, check_service_secrets, check_settings};
    let config = Config::load_and_discover(&config_file).await?;
    let providers: Vec<_> = match &only {
        Some(name) => vec![config.provider(name)?],
        None => config.providers.values().collect(),
    };
    let aws = AwsClients::from_env().await;
    let secrets = SecretStore::new(aws.secrets);
    let http = shared::http::client(Duration::from_secs(10), shared::http::Pooling::Off)?;
    let mut findings = check_service_secrets(&config.service, &secrets).await;
    for provider in providers {
        findings.extend(check_settings(provider, &config.service));
        findings.extend(shared::doctor::check_discovery(provider).await);
        findings.extend(check_credentials(provider, &secrets, &http).await);
    }
    // With the connections table at hand, each connection that cannot be refreshed is named.
    if let Some(table) = std::env::var(shared::runtime::CONNECTIONS_TABLE_ENV)
        .ok()
        .filter(|t| !t.is_empty())
    {
        let store = ConnectionStore::new(aws.dynamodb.clone(), table);
        let connections = store.list().await?;
        let connections: Vec<_> = connections
            .into_iter()
            .filter(|c| only.as_ref().is_none_or(|p| *p == c.provider))
            .collect();
        findings.extend(shared::doctor::check_connections(&connections));
    }
    output::findings(&findings, as_json)?;
    let failed = findings.iter().filter(|f| f.verdict == Verdict::Fail).count();
    anyhow::ensure!(failed == 0, "{failed} check(s) failed");
    Ok(())
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

/// How long `aws cloudformation describe-stacks` may take.
const STACK_TIMEOUT: Duration = Duration::from_secs(30);

async fn deploy_check(config_file: PathBuf, stack: Option<String>, as_json: bool) -> anyhow::Result<()> {
    use shared::doctor::{Verdict, check_deployment_secrets, check_settings, check_stack_outputs};
    let config = Config::load_and_discover(&config_file).await?;
    let local_text = std::fs::read_to_string(&config_file)?;
    let mut findings = Vec::new();
    if let Some(stack) = &stack {
        let outputs = stack_outputs(stack).await?;
        findings.extend(check_stack_outputs(&outputs, &config.service, &|var| {
            std::env::var(var).ok().filter(|v| !v.is_empty())
        }));
    }
    for provider in config.providers.values() {
        findings.extend(
            check_settings(provider, &config.service)
                .into_iter()
                .filter(|f| f.check == "redirect URI"),
        );
    }
    let aws = AwsClients::from_env().await;
    let secrets = SecretStore::new(aws.secrets);
    findings.extend(check_deployment_secrets(&config, &local_text, &config::config_secret_name(), &secrets).await);
    output::findings(&findings, as_json)?;
    let failed = findings.iter().filter(|f| f.verdict == Verdict::Fail).count();
    anyhow::ensure!(failed == 0, "{failed} check(s) failed");
    Ok(())
}

/// The stack's outputs, from `aws cloudformation describe-stacks` (the AWS
/// CLI the operator deploys with; no CloudFormation SDK compiled in), killed
/// after [`STACK_TIMEOUT`].
async fn stack_outputs(stack: &str) -> anyhow::Result<BTreeMap<String, String>> {
    use std::io::Read;
    use std::process::{Command as Process, Stdio};
    let mut child = Process::new("aws")
        .args([
            "cloudformation",
            "describe-stacks",
            "--stack-name",
            stack,
            "--output",
            "json",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("--stack reads the stack's outputs with the AWS CLI (`aws`), which is not installed here")?;
    let (mut stdout, mut stderr) = (child.stdout.take(), child.stderr.take());
    let reader = std::thread::spawn(move || {
        let (mut out, mut err) = (String::new(), String::new());
        if let Some(s) = stdout.as_mut() {
            let _ = s.read_to_string(&mut out);
        }
        if let Some(s) = stderr.as_mut() {
            let _ = s.read_to_string(&mut err);
        }
        (out, err)
    });
    let deadline = Instant::now() + STACK_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!(
                "`aws cloudformation describe-stacks` did not answer in {}s",
                STACK_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (out, err) = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reading the AWS CLI's output failed"))?;
    anyhow::ensure!(
        status.success(),
        "`aws cloudformation describe-stacks --stack-name {stack}` failed: {}",
        err.trim().chars().take(500).collect::<String>()
    );
    let value: serde_json::Value = serde_json::from_str(&out).context("the AWS CLI's answer is not JSON")?;
    let outputs = value["Stacks"][0]["Outputs"].as_array().cloned().unwrap_or_default();
    Ok(outputs
        .iter()
        .filter_map(|o| {
            Some((
                o["OutputKey"].as_str()?.to_owned(),
                o["OutputValue"].as_str()?.to_owned(),
            ))
        })
        .collect())
}
