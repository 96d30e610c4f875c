//! `oauth-sync`: the operator's command line. Human-readable output by
//! default, `--json` for scripts. Commands that need AWS talk to DynamoDB and
//! Secrets Manager through the same standard environment as the functions
//! (`AWS_REGION`, credentials, `AWS_ENDPOINT_URL_*`).

mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use shared::config::{CONFIG_ENV, Config, PresetName};
use std::time::{Duration, Instant};

use shared::connection::store::ConnectionStore;
use shared::connection::{ConnectionId, ConnectionKind, now_ms};
use shared::login::{ConnectClaims, LinkKeys, check_return_url, parse_lifetime};
use shared::refresh::{RefreshSettings, TokenService};
use shared::runtime::CONNECTIONS_TABLE_ENV;
use shared::secrets::SecretStore;

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
    /// The configuration file (default: $OAUTH_SYNC_CONFIG, then ./oauth-sync.toml).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
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
    /// List the connections: status, token expiry, last refresh.
    List,
    /// Show one connection (never its tokens).
    Show { id: String },
    /// Refresh a connection's tokens now, through the refresh protocol.
    Refresh { id: String },
    /// Disconnect: revoke the tokens at the provider (RFC 7009), erase them, mark revoked.
    Revoke { id: String },
    /// Check the set-up of one provider (or all) and name the fix for what is wrong.
    Doctor { provider: Option<String> },
    /// Make a signed connect link that lets one person connect one account.
    ConnectLink {
        /// The provider (a key of [providers] in the configuration).
        #[arg(long)]
        provider: String,
        /// The connection id the login will create or renew.
        #[arg(long)]
        connection: String,
        /// One service account shared by everyone, instead of a per-user connection.
        #[arg(long)]
        shared: bool,
        /// Where to send the user afterwards (must be on service.return_url_allow_list).
        #[arg(long)]
        return_url: Option<String>,
        /// How long the link works: 90s, 30m, 1h, 7d (at most 30d).
        #[arg(long, default_value = "1h")]
        expires: String,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file and show the resolved providers and syncs.
    Check {
        /// The file (default: --config, $OAUTH_SYNC_CONFIG, then ./oauth-sync.toml).
        file: Option<PathBuf>,
    },
}

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
        Command::Presets => {
            let presets: Vec<_> = PresetName::ALL.iter().map(|p| (p.as_str(), p.settings())).collect();
            output::presets(&presets, cli.json)
        }
        Command::Config {
            command: ConfigCommand::Check { file },
        } => match Config::load(&config_path(file.or(cli.config))) {
            Ok(config) => output::config(&config, cli.json),
            Err(e) => Err(anyhow::Error::new(e)),
        },
        Command::List => list(config_path(cli.config), None, cli.json).await,
        Command::Show { id } => list(config_path(cli.config), Some(id), cli.json).await,
        Command::Refresh { id } => refresh(config_path(cli.config), &id, cli.json).await,
        Command::Revoke { id } => revoke(config_path(cli.config), &id, cli.json).await,
        Command::Doctor { provider } => doctor(config_path(cli.config), provider, cli.json).await,
        Command::ConnectLink {
            provider,
            connection,
            shared,
            return_url,
            expires,
        } => {
            let request = LinkRequest {
                provider,
                connection,
                shared,
                return_url,
                expires,
            };
            connect_link(config_path(cli.config), request, cli.json).await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", shared::telemetry::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

#[derive(Debug)]
struct LinkRequest {
    provider: String,
    connection: String,
    shared: bool,
    return_url: Option<String>,
    expires: String,
}

/// Checks everything it can before touching AWS, then signs with the link key.
async fn connect_link(config_file: PathBuf, request: LinkRequest, as_json: bool) -> anyhow::Result<()> {
    let config = Config::load(&config_file)?;
    let provider = config.provider(&request.provider)?;
    let connection = ConnectionId::parse(&request.connection)?;
    let lifetime = parse_lifetime(&request.expires).context("--expires")?;
    let return_url = match &request.return_url {
        Some(text) => {
            let url = shared::config::parse_http_url(text)
                .map_err(anyhow::Error::msg)
                .context("--return-url")?;
            check_return_url(&url, &config.service.return_url_allow_list)?;
            Some(url)
        }
        None => None,
    };
    let expires_at = now_ms() / 1000 + i64::try_from(lifetime.as_secs())?;
    let claims = ConnectClaims {
        provider: provider.name.clone(),
        connection,
        kind: if request.shared {
            ConnectionKind::Shared
        } else {
            ConnectionKind::PerUser
        },
        return_url,
        issued_at: now_ms(),
        expires_at,
    };
    let aws = shared::aws::AwsClients::from_env().await;
    let secret = &config.service.link_key_secret;
    let text = SecretStore::new(aws.secrets).text(secret).await?;
    let keys = LinkKeys::from_json(&text).with_context(|| format!("link key secret `{secret}`"))?;
    let url = keys.connect_url(config.service.callback_url.as_ref(), &claims)?;
    output::connect_link(&url, &claims, as_json)
}

/// The connections table, from `OAUTH_SYNC_CONNECTIONS_TABLE` (the stack's
/// `ConnectionsTableName` output).
async fn store() -> anyhow::Result<(shared::aws::AwsClients, ConnectionStore)> {
    let table = std::env::var(CONNECTIONS_TABLE_ENV)
        .ok()
        .filter(|t| !t.is_empty())
        .with_context(|| {
            format!("set {CONNECTIONS_TABLE_ENV} to the connections table (the stack's ConnectionsTableName output)")
        })?;
    let aws = shared::aws::AwsClients::from_env().await;
    let store = ConnectionStore::new(aws.dynamodb.clone(), table);
    Ok((aws, store))
}

async fn token_service(config_file: &std::path::Path) -> anyhow::Result<TokenService> {
    let config = std::sync::Arc::new(Config::load(config_file)?);
    let (aws, store) = store().await?;
    Ok(TokenService::load(config, store, SecretStore::new(aws.secrets), RefreshSettings::default()).await?)
}

async fn list(config_file: PathBuf, id: Option<String>, as_json: bool) -> anyhow::Result<()> {
    let _ = Config::load(&config_file)?;
    let (_, store) = store().await?;
    let connections = match id {
        Some(id) => {
            let id = ConnectionId::parse(&id)?;
            vec![
                store
                    .get(&id)
                    .await?
                    .with_context(|| format!("connection {id} does not exist"))?,
            ]
        }
        None => store.list().await?,
    };
    output::connections(&connections, as_json)
}

async fn refresh(config_file: PathBuf, id: &str, as_json: bool) -> anyhow::Result<()> {
    let service = token_service(&config_file).await?;
    let id = ConnectionId::parse(id)?;
    let fresh = service
        .refresh_now(&id, Instant::now() + Duration::from_secs(60))
        .await?;
    output::refreshed(&id, &fresh, as_json)
}

async fn revoke(config_file: PathBuf, id: &str, as_json: bool) -> anyhow::Result<()> {
    let service = token_service(&config_file).await?;
    let id = ConnectionId::parse(id)?;
    let revoked = service.revoke(&id).await?;
    output::revoked(&id, revoked, as_json)
}

async fn doctor(config_file: PathBuf, only: Option<String>, as_json: bool) -> anyhow::Result<()> {
    use shared::doctor::{Verdict, check_credentials, check_service_secrets, check_settings};
    let config = Config::load(&config_file)?;
    let providers: Vec<_> = match &only {
        Some(name) => vec![config.provider(name)?],
        None => config.providers.values().collect(),
    };
    let aws = shared::aws::AwsClients::from_env().await;
    let secrets = SecretStore::new(aws.secrets);
    let http = shared::oauth::http_client(Duration::from_secs(10))?;
    let mut findings = check_service_secrets(&config.service, &secrets).await;
    for provider in providers {
        findings.extend(check_settings(provider, &config.service));
        findings.extend(check_credentials(provider, &secrets, &http).await);
    }
    output::findings(&findings, as_json)?;
    let failed = findings.iter().filter(|f| f.verdict == Verdict::Fail).count();
    anyhow::ensure!(failed == 0, "{failed} check(s) failed");
    Ok(())
}
