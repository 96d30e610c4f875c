//! The command line's shape: every command, flag and help text, as clap
//! reads them. What each command does is in its family's module.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "oauth-sync",
    version,
    about = "Operate oauth-sync: OAuth connections and data sync on AWS Lambda"
)]
pub struct Cli {
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// The configuration file (default: $OAUTH_SYNC_CONFIG, then ./oauth-sync.toml).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the built-in provider presets and what they set.
    Presets,
    /// Work with the configuration file.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// List the connections: status, token expiry, last refresh, last sync.
    List,
    /// Show one connection (never its tokens): its learned parameters and its syncs' state.
    Show { id: String },
    /// Refresh a connection's tokens now, through the refresh protocol.
    Refresh { id: String },
    /// Disconnect: revoke the tokens at the provider (RFC 7009), erase them, mark revoked.
    Revoke { id: String },
    /// Check the set-up of one provider (or all) and name the fix for what is wrong.
    Doctor { provider: Option<String> },
    /// The redirect URI to register at each provider (or one): `provider<TAB>uri`
    /// per line; with --json an object from provider to URI.
    RedirectUris { provider: Option<String> },
    /// Make a signed connect link that lets one person connect one account.
    ConnectLink(LinkRequest),
    /// Sync jobs: run one now, or show their state.
    Sync {
        #[command(subcommand)]
        command: SyncCommand,
    },
    /// Make and rotate the deployment's keys: the token key ring and the connect-link key.
    ///
    /// Key material goes from the system's random generator to Secrets
    /// Manager; it is never printed. Secret names come from the
    /// configuration's [service] token_key_secret and link_key_secret.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Before and after a deploy: the stack's outputs, the redirect URI to
    /// register per provider, and which secrets are missing.
    DeployCheck {
        /// The CloudFormation stack: its outputs are read with the AWS CLI
        /// (`aws cloudformation describe-stacks`) and compared with the
        /// configuration and the CLI's environment.
        #[arg(long)]
        stack: Option<String>,
    },
    /// Print an access token of a connection, valid for at least --min-valid.
    ///
    /// The token comes through the refresh protocol (refreshed first when it
    /// would expire sooner), as the API's token route gives it. Only the token
    /// goes to stdout (`TOKEN=$(oauth-sync token ID)`), its version and expiry
    /// to stderr; with --json the token route's answer: access_token,
    /// token_type, expires_at, expires_in, token_version. A provider whose
    /// tokens live shorter than --min-valid gives one with at least half its
    /// lifetime left. The token is never logged.
    Token {
        /// The connection id.
        id: String,
        /// How long the token must stay valid: 90s, 15m, 1h (at most 1h).
        #[arg(long, default_value = "60s")]
        min_valid: String,
    },
    /// Call the provider's API as the connection, through the API's proxy.
    ///
    /// PATH is below the provider's api_base_url (its placeholders, such as
    /// Exact's {division}, filled from the connection): `oauth-sync proxy ID
    /// GET '/project/Projects?$select=ID,Code'`. The request draws on the
    /// provider's shared rate budget (with the syncs); a 401 gets one refresh
    /// and one retry. The status line goes to stderr, the body as it came to
    /// stdout; with --json one object with status, headers and body. Exits
    /// non-zero when the provider answers 4xx or 5xx.
    Proxy {
        /// The connection id.
        id: String,
        /// GET, HEAD, POST, PUT, PATCH, DELETE or OPTIONS.
        method: String,
        /// The path below the provider's API, with its query: '/project/Projects?$top=5'.
        path: String,
        /// A request header, `Name: value` (repeat for more). Authorization,
        /// cookies and hop-by-hop headers are not forwarded.
        #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
        headers: Vec<String>,
        /// The request body: @FILE, - (stdin) or the text itself. A JSON body
        /// without a Content-Type header is sent as application/json.
        #[arg(long, short = 'd', value_name = "@FILE|-|TEXT")]
        data: Option<String>,
    },
    /// Show the stored records of one connection's sync, in key order.
    Records {
        /// The connection id.
        id: String,
        /// The sync (a key of [syncs] in the configuration).
        sync: String,
        /// How many records to show.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
}

#[derive(Debug, Subcommand)]
pub enum SyncCommand {
    /// Run one sync of one connection now, with a progress line per page.
    ///
    /// The run goes through the same engine, lease and checkpoint as the
    /// scheduled runs (it creates the job when the connection has none). A
    /// progress line per committed page goes to stderr, the summary to stdout.
    /// Exits non-zero when the run failed or was parked.
    Run {
        /// The connection id.
        id: String,
        /// The sync (a key of [syncs] in the configuration).
        sync: String,
        /// How long the run may go on before it saves its place and yields: 90s, 15m, 2h.
        #[arg(long, default_value = "15m")]
        timeout: String,
        /// How long the run's lease lasts between renewals (every third of it);
        /// more than 40s, as no write starts in its last 20s. A run paused
        /// longer (a laptop asleep) loses the job to the next run and writes
        /// nothing more when it wakes.
        #[arg(long, default_value = "60s")]
        lease: String,
    },
    /// Schedule a sync for every active connection of its provider.
    ///
    /// A login schedules the syncs configured at that time; run this after
    /// adding a sync to the configuration. Jobs that exist keep their
    /// schedule and checkpoint. Scans the connections table.
    Schedule {
        /// The sync (a key of [syncs] in the configuration).
        sync: String,
    },
    /// The sync jobs (all, or one connection's): state, last run, next run, cursor, budget left.
    ///
    /// With a connection id, also each job's recent runs.
    Status {
        /// Only this connection's jobs.
        id: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create the token key ring and the link key secrets, each with one fresh
    /// random 256-bit key. A secret that exists is left as it is; fails when
    /// both exist.
    Init,
    /// Add a fresh key to the token key ring (or the link key) and make it
    /// current. The old keys stay, so what they sealed or signed still opens.
    Rotate {
        /// Rotate the connect-link signing key instead of the token key ring.
        #[arg(long)]
        link: bool,
    },
    /// Re-encrypt every connection sealed under an older key with the current
    /// key. Each write is conditional on what was read, so a concurrent
    /// refresh wins; token versions do not change. Scans the connections table.
    Reseal,
    /// Remove an old key from the ring. Refuses the current key, and, for the
    /// token key ring, refuses while any connection is still sealed under it.
    Retire {
        /// The key id (`k1`).
        id: String,
        /// Retire a connect-link signing key: links signed with it stop working.
        #[arg(long)]
        link: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a configuration file and show the resolved providers and syncs.
    Check {
        /// The file (default: --config, $OAUTH_SYNC_CONFIG, then ./oauth-sync.toml).
        file: Option<PathBuf>,
    },
    /// Check a configuration file exactly as `config check` does, then write
    /// it to the config secret ($OAUTH_SYNC_CONFIG_SECRET, default
    /// oauth-sync/config). A file with errors writes nothing.
    Push { file: PathBuf },
}

// The flags of `connect-link`. A plain comment: clap may take a doc comment
// here for the command's help, which is the variant's.
#[derive(Debug, Args)]
pub struct LinkRequest {
    /// The provider (a key of [providers] in the configuration).
    #[arg(long)]
    pub provider: String,
    /// The connection id the login will create or renew.
    #[arg(long)]
    pub connection: String,
    /// One service account shared by everyone, instead of a per-user connection.
    #[arg(long)]
    pub shared: bool,
    /// Where to send the user afterwards (must be on service.return_url_allow_list).
    #[arg(long)]
    pub return_url: Option<String>,
    /// How long the link works: 90s, 30m, 1h, 7d (at most 30d).
    #[arg(long, default_value = "1h")]
    pub expires: String,
    /// What the connection is for, shown on the confirmation page
    /// ("Connect your Xero account to LABEL"); the connection id by default.
    #[arg(long)]
    pub label: Option<String>,
    /// Who the link is for, shown on the confirmation page ("alice@acme.example").
    #[arg(long = "for")]
    pub user: Option<String>,
}
