//! `oauth-sync keys …`: the deployment's keys, made and changed by the CLI,
//! never by hand. Key material goes from the CSPRNG to Secrets Manager and is
//! never printed, logged or put in an error: the output names secrets and key
//! ids only. (`config push`, which writes the config secret, is in `config`.)

use std::collections::BTreeMap;

use anyhow::Context;
use shared::aws::AwsClients;
use shared::config::Config;
use shared::connection::store::{ConnectionStore, Write};
use shared::connection::{Connection, Sealed};
use shared::crypto::{KeyRing, KeyRingSecret, sealed_key_id};
use shared::secrets::{SecretStore, SecretsError};

use crate::output::write_out;

/// Attempts per connection when concurrent writes keep changing it.
const RESEAL_ATTEMPTS: usize = 5;

/// Which of the two key rings a command is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ring {
    /// Encrypts tokens at rest (`service.token_key_secret`).
    Token,
    /// Signs connect links (`service.link_key_secret`).
    Link,
}

impl Ring {
    fn secret(self, config: &Config) -> &str {
        match self {
            Ring::Token => &config.service.token_key_secret,
            Ring::Link => &config.service.link_key_secret,
        }
    }

    fn what(self) -> &'static str {
        match self {
            Ring::Token => "token key ring",
            Ring::Link => "link key",
        }
    }

    /// Key ids: `k1, k2…` for tokens, `l1, l2…` for links.
    fn prefix(self) -> &'static str {
        match self {
            Ring::Token => "k",
            Ring::Link => "l",
        }
    }
}

fn secrets(aws: &AwsClients) -> SecretStore {
    SecretStore::new(aws.secrets.clone())
}

/// Creates whichever of the two key secrets is missing, each with one fresh
/// random 32-byte key; one that exists is left exactly as it is. Fails when
/// both exist (nothing to do, nothing changed).
pub async fn init(config: &Config, as_json: bool) -> anyhow::Result<()> {
    let aws = crate::aws::clients().await;
    let store = secrets(&aws);
    let mut report = Vec::new();
    for ring in [Ring::Token, Ring::Link] {
        let name = ring.secret(config);
        let state = match store.text(name).await {
            Ok(_) => "exists; left as it is".to_owned(),
            Err(SecretsError::NotFound { .. }) => {
                let secret = KeyRingSecret::generate(ring.prefix())?;
                let description = format!("oauth-sync {} (made by `oauth-sync keys init`)", ring.what());
                match store.create(name, &secret.to_secret_text(), &description).await {
                    Ok(()) => format!("created with key {}", secret.current()),
                    // Made by someone else since we looked: theirs stays.
                    Err(SecretsError::AlreadyExists { .. }) => "exists; left as it is".to_owned(),
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        };
        report.push((ring.what(), name.to_owned(), state));
    }
    let created = report
        .iter()
        .filter(|(_, _, state)| state.starts_with("created"))
        .count();
    if as_json {
        let value: Vec<_> = report
            .iter()
            .map(|(what, name, state)| serde_json::json!({"secret": name, "what": what, "result": state}))
            .collect();
        write_out(&format!("{}\n", serde_json::to_string_pretty(&value)?))?;
    } else {
        let mut out = String::new();
        for (what, name, state) in &report {
            out.push_str(&format!("{what} `{name}`: {state}\n"));
        }
        write_out(&out)?;
    }
    anyhow::ensure!(
        created > 0,
        "both key secrets exist already; nothing was changed (rotate with `oauth-sync keys rotate [--link]`)"
    );
    Ok(())
}

/// Reads a key ring secret for a read-modify-write.
async fn read_ring(store: &SecretStore, ring: Ring, name: &str) -> anyhow::Result<(KeyRingSecret, String)> {
    let read = store.versioned(name).await?;
    let secret = KeyRingSecret::parse(&read.text).with_context(|| format!("{} `{name}`", ring.what()))?;
    Ok((secret, read.version_id))
}

/// Adds a fresh key to the ring and makes it current; the old keys stay.
pub async fn rotate(config: &Config, ring: Ring, as_json: bool) -> anyhow::Result<()> {
    let aws = crate::aws::clients().await;
    let store = secrets(&aws);
    let name = ring.secret(config);
    let (mut secret, version) = read_ring(&store, ring, name).await?;
    let old = secret.current().to_owned();
    let new = secret.rotate()?;
    store.replace(name, &version, &secret.to_secret_text()).await?;
    let keys: Vec<&str> = secret.key_ids().collect();
    if as_json {
        let value = serde_json::json!({"secret": name, "current": new, "previous": old, "keys": keys});
        return write_out(&format!("{value}\n"));
    }
    let next = match ring {
        Ring::Token => format!(
            "Running functions check the ring at most once a minute: 6 minutes from now (their check and the \
             longest invocation), nothing new is sealed under {old}. Then run `oauth-sync keys reseal` and \
             `oauth-sync keys retire {old}`."
        ),
        Ring::Link => format!(
            "New connect links are signed with {new}; links signed with {old} keep working until \
             `oauth-sync keys retire --link {old}`."
        ),
    };
    write_out(&format!(
        "{} `{name}`: added {new}, now current (keys: {})\n{next}\n",
        ring.what(),
        keys.join(", ")
    ))
}

/// How many connections hold a value sealed under each key id (or an
/// unreadable one, under `?`).
fn sealed_counts(connections: &[Connection]) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for connection in connections {
        let mut ids: Vec<&str> = [&connection.access_token, &connection.refresh_token]
            .into_iter()
            .flatten()
            .map(|sealed| sealed_key_id(&sealed.0).unwrap_or("?"))
            .collect();
        ids.dedup();
        for id in ids {
            *counts.entry(id.to_owned()).or_insert(0) += 1;
        }
    }
    counts
}

/// Removes a key from the ring. The token ring refuses while any connection
/// is still sealed under it; no ring lets its current key go.
pub async fn retire(config: &Config, ring: Ring, id: &str, as_json: bool) -> anyhow::Result<()> {
    let aws = crate::aws::clients().await;
    let store = secrets(&aws);
    let name = ring.secret(config);
    let (mut secret, version) = read_ring(&store, ring, name).await?;
    // Checked before the scan: a typo or the current key costs no Scan.
    secret.retire(id).with_context(|| format!("{} `{name}`", ring.what()))?;
    if ring == Ring::Token {
        let connections = crate::store().await?.1.list().await?;
        let sealed = sealed_counts(&connections).get(id).copied().unwrap_or(0);
        anyhow::ensure!(
            sealed == 0,
            "{sealed} connection(s) are still sealed under key {id}; nothing was changed (run `oauth-sync keys \
             reseal` first)"
        );
    }
    store.replace(name, &version, &secret.to_secret_text()).await?;
    let keys: Vec<&str> = secret.key_ids().collect();
    if as_json {
        let value = serde_json::json!({"secret": name, "retired": id, "current": secret.current(), "keys": keys});
        return write_out(&format!("{value}\n"));
    }
    let note = match ring {
        Ring::Token => "no connection was sealed under it".to_owned(),
        Ring::Link => format!("connect links signed with {id} no longer work"),
    };
    write_out(&format!(
        "{} `{name}`: retired {id} ({note}); keys: {}\n",
        ring.what(),
        keys.join(", ")
    ))
}

/// What `keys reseal` did, per connection outcome.
#[derive(Debug, Default)]
struct ResealReport {
    scanned: u64,
    resealed: u64,
    already_current: u64,
    /// Conflicts: a concurrent write won, and the connection was read again.
    retried: u64,
    /// Still changing after every attempt, or gone: left for the next run.
    skipped: Vec<String>,
    /// Sealed under a key the ring no longer lists, or corrupt: named, not touched.
    unreadable: Vec<String>,
}

/// Re-encrypts every connection sealed under a non-current key with the
/// current key, through conditional writes on the version and the exact
/// sealed bytes read; `token_version` is not touched.
pub async fn reseal(config: &Config, as_json: bool) -> anyhow::Result<()> {
    let (aws, store) = crate::store().await?;
    let name = &config.service.token_key_secret;
    let ring =
        KeyRing::from_json(&secrets(&aws).text(name).await?).with_context(|| format!("token key ring `{name}`"))?;
    let mut report = ResealReport::default();
    for connection in store.list().await? {
        report.scanned += 1;
        reseal_one(&store, &ring, connection, &mut report).await?;
    }
    if as_json {
        let value = serde_json::json!({
            "current": ring.current_key_id(),
            "scanned": report.scanned,
            "resealed": report.resealed,
            "already_current": report.already_current,
            "retried": report.retried,
            "skipped": report.skipped,
            "unreadable": report.unreadable,
        });
        write_out(&format!("{}\n", serde_json::to_string_pretty(&value)?))?;
    } else {
        let mut out = format!(
            "{} connection(s) scanned: {} resealed under {}, {} already under it, {} changed meanwhile and read again, \
             {} skipped, {} unreadable\n",
            report.scanned,
            report.resealed,
            ring.current_key_id(),
            report.already_current,
            report.retried,
            report.skipped.len(),
            report.unreadable.len()
        );
        for line in report.skipped.iter().chain(&report.unreadable) {
            out.push_str(&format!("  {line}\n"));
        }
        write_out(&out)?;
    }
    anyhow::ensure!(
        report.skipped.is_empty() && report.unreadable.is_empty(),
        "{} connection(s) not resealed (see above); run `oauth-sync keys reseal` again for the skipped ones",
        report.skipped.len() + report.unreadable.len()
    );
    Ok(())
}

async fn reseal_one(
    store: &ConnectionStore,
    ring: &KeyRing,
    mut connection: Connection,
    report: &mut ResealReport,
) -> anyhow::Result<()> {
    for _ in 0..RESEAL_ATTEMPTS {
        let id = connection.id.as_str();
        let reseal = |field: &str, value: &Option<Sealed>| match value {
            Some(sealed) => ring.reseal(id, field, &sealed.0).map(|v| v.map(Sealed)),
            None => Ok(None),
        };
        let (access, refresh) = match (
            reseal("access_token", &connection.access_token),
            reseal("refresh_token", &connection.refresh_token),
        ) {
            (Ok(access), Ok(refresh)) => (access, refresh),
            (Err(e), _) | (_, Err(e)) => {
                report.unreadable.push(format!("{id}: {e}"));
                return Ok(());
            }
        };
        if access.is_none() && refresh.is_none() {
            report.already_current += 1;
            return Ok(());
        }
        match store.reseal(&connection, access.as_ref(), refresh.as_ref()).await? {
            Write::Done => {
                report.resealed += 1;
                return Ok(());
            }
            Write::Conflict(Some(now)) => {
                report.retried += 1;
                connection = *now;
            }
            Write::Conflict(None) => {
                report.skipped.push(format!("{id}: deleted meanwhile"));
                return Ok(());
            }
        }
    }
    report.skipped.push(format!(
        "{}: changed by {RESEAL_ATTEMPTS} concurrent writes in a row",
        connection.id
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use oauth_sync_tests::simulator::SimConfig;
    use oauth_sync_tests::stack::RefreshFixture;
    use shared::config::PresetName;
    use shared::refresh::RefreshSettings;

    use super::*;

    /// Against the local stack: a reseal that loses to a refresh reads the
    /// connection again and reseals what the refresh wrote.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reseal_that_loses_to_a_refresh_retries_from_the_refreshed_tokens() {
        let fixture = RefreshFixture::start(
            SimConfig::for_preset(PresetName::Google),
            RefreshSettings::default(),
            "",
            "reseal-retry",
        )
        .await;
        let id = fixture.connect("acme-retry").await;
        let store = fixture.service.store();
        let stale = store.get(&id).await.expect("read").expect("exists");
        fixture
            .service
            .refresh_now(&id, Instant::now() + Duration::from_secs(30))
            .await
            .expect("refresh");
        let refreshed = store.get(&id).await.expect("read").expect("exists");

        let name = &fixture.config.service.token_key_secret;
        let secrets = SecretStore::new(fixture.aws.secrets.clone());
        let mut ring = KeyRingSecret::parse(&secrets.text(name).await.expect("ring")).expect("ring");
        ring.rotate().expect("rng");
        let ring = KeyRing::from_json(&ring.to_secret_text()).expect("ring");

        let mut report = ResealReport::default();
        reseal_one(store, &ring, stale, &mut report).await.expect("reseal");
        assert_eq!((report.retried, report.resealed), (1, 1), "{report:?}");
        let now = store.get(&id).await.expect("read").expect("exists");
        assert_eq!(now.token_version, refreshed.token_version);
        let open = |c: &Connection, field: &str, ring: &KeyRing| {
            let sealed = if field == "access_token" {
                &c.access_token
            } else {
                &c.refresh_token
            };
            ring.open(id.as_str(), field, &sealed.as_ref().expect("sealed").0)
                .expect("opens")
        };
        for field in ["access_token", "refresh_token"] {
            assert_eq!(
                open(&now, field, &ring),
                open(&refreshed, field, &fixture.service.keys().await.expect("the key ring")),
                "{field}"
            );
        }
    }
}
