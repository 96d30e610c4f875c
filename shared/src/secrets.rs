//! Secrets Manager: the OAuth client credentials of each provider, the token
//! key ring, the link-signing key and the configuration; and the writes the
//! operator CLI makes (`keys init|rotate|retire`, `config push`).
//!
//! Errors name the secret, never its value: a JSON error from serde would quote
//! the offending value, so malformed secrets are described, not echoed. The
//! SDK's own `Debug` of a request redacts `SecretString`.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde_json::Value;

use crate::oauth::ClientCredentials;
use crate::secret::ClientSecret;

/// Why a secret could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error(
        "secret `{name}` does not exist (create it with: aws secretsmanager create-secret --name {name} --secret-string ...)"
    )]
    NotFound { name: String },
    #[error("secret `{name}` has no SecretString")]
    NotText { name: String },
    #[error("secret `{name}` is malformed: {reason}")]
    Malformed { name: String, reason: &'static str },
    #[error("cannot read secret `{name}` from Secrets Manager")]
    Service {
        name: String,
        #[source]
        source: Box<aws_sdk_secretsmanager::Error>,
    },
    #[error("secret `{name}` already exists; nothing was changed")]
    AlreadyExists { name: String },
    /// A read-modify-write lost: someone changed the secret since it was read.
    #[error(
        "secret `{name}` changed since it was read (another operator?); nothing was changed, run the command again"
    )]
    ChangedMeanwhile { name: String },
    #[error("cannot write secret `{name}` to Secrets Manager")]
    Write {
        name: String,
        #[source]
        source: Box<aws_sdk_secretsmanager::Error>,
    },
}

/// A secret's text and the id of the version it came from, for
/// [`SecretStore::replace`].
pub struct Versioned {
    /// The secret's text: never print it.
    pub text: String,
    pub version_id: String,
}

/// Names the version, never the text.
impl std::fmt::Debug for Versioned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Versioned")
            .field("version_id", &self.version_id)
            .finish_non_exhaustive()
    }
}

/// One `GetSecretValue` of `name`'s AWSCURRENT version.
async fn fetch(client: &aws_sdk_secretsmanager::Client, name: &str) -> Result<Versioned, SecretsError> {
    let output = client
        .get_secret_value()
        .secret_id(name)
        // AWS's default, named: the Secrets Manager emulator needs it after a replace.
        .version_stage("AWSCURRENT")
        .send()
        .await
        .map_err(|e| {
            let error = aws_sdk_secretsmanager::Error::from(e);
            match error {
                aws_sdk_secretsmanager::Error::ResourceNotFoundException(_) => {
                    SecretsError::NotFound { name: name.to_owned() }
                }
                other => SecretsError::Service {
                    name: name.to_owned(),
                    source: Box::new(other),
                },
            }
        })?;
    let text = output
        .secret_string
        .ok_or_else(|| SecretsError::NotText { name: name.to_owned() })?;
    Ok(Versioned {
        text,
        version_id: output.version_id.unwrap_or_default(),
    })
}

/// The staging label a replacement gets before it becomes `AWSCURRENT`.
const NEXT_STAGE: &str = "OAUTH_SYNC_NEXT";

/// Reads secrets by name.
#[derive(Debug, Clone)]
pub struct SecretStore {
    client: aws_sdk_secretsmanager::Client,
    /// Reads started before anything asked for them ([`SecretStore::read_ahead`]),
    /// by name: the first read of that name takes one instead of calling.
    ahead: Arc<Mutex<Vec<(String, ReadAhead)>>>,
}

type ReadAhead = tokio::task::JoinHandle<Result<Versioned, SecretsError>>;

impl SecretStore {
    pub fn new(client: aws_sdk_secretsmanager::Client) -> SecretStore {
        SecretStore {
            client,
            ahead: Arc::default(),
        }
    }

    fn ahead(&self) -> MutexGuard<'_, Vec<(String, ReadAhead)>> {
        self.ahead.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts reading secret `name` in the background, before anything
    /// needs it (a function's start reads the secrets it will need beside its
    /// configuration, whose read would otherwise come first). The next read
    /// of `name` takes this one's answer, once; if it failed, that read asks
    /// again. Call it inside the runtime.
    pub fn read_ahead(&self, name: &str) {
        let (client, owned) = (self.client.clone(), name.to_owned());
        let read = tokio::spawn(async move { fetch(&client, &owned).await });
        self.ahead().push((name.to_owned(), read));
    }

    /// Drops the reads ahead of any secret but `wanted` (the configuration
    /// named others): nothing will take them.
    pub fn keep_reads_ahead_of(&self, wanted: &[&str]) {
        self.ahead().retain(|(name, read)| {
            let keep = wanted.contains(&name.as_str());
            if !keep {
                read.abort();
            }
            keep
        });
    }

    /// The answer of a read ahead of `name`, if one was started and
    /// succeeded.
    async fn taken_ahead(&self, name: &str) -> Option<Versioned> {
        let read = {
            let mut ahead = self.ahead();
            let at = ahead.iter().position(|(n, _)| n == name)?;
            ahead.swap_remove(at).1
        };
        match read.await {
            Ok(Ok(read)) => Some(read),
            Ok(Err(error)) => {
                tracing::debug!(error = %crate::telemetry::error_chain(&error), "a read ahead failed; reading again");
                None
            }
            Err(_) => None,
        }
    }

    /// The secret's text (the AWSCURRENT version).
    pub async fn text(&self, name: &str) -> Result<String, SecretsError> {
        Ok(self.versioned(name).await?.text)
    }

    /// The secret's text (the AWSCURRENT version) and that version's id.
    pub async fn versioned(&self, name: &str) -> Result<Versioned, SecretsError> {
        match self.taken_ahead(name).await {
            Some(read) => Ok(read),
            None => fetch(&self.client, name).await,
        }
    }

    /// Creates the secret with `text`; refuses, changing nothing, when a
    /// secret of that name exists.
    pub async fn create(&self, name: &str, text: &str, description: &str) -> Result<(), SecretsError> {
        use aws_sdk_secretsmanager::operation::create_secret::CreateSecretError;
        match self
            .client
            .create_secret()
            .name(name)
            .description(description)
            .secret_string(text)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => match e.into_service_error() {
                CreateSecretError::ResourceExistsException(_) => {
                    Err(SecretsError::AlreadyExists { name: name.to_owned() })
                }
                other => Err(write_error(name, other.into())),
            },
        }
    }

    /// Writes `text` as the secret's new current version, creating the
    /// secret when it does not exist (`config push`).
    pub async fn put(&self, name: &str, text: &str, description: &str) -> Result<(), SecretsError> {
        use aws_sdk_secretsmanager::operation::put_secret_value::PutSecretValueError;
        match self
            .client
            .put_secret_value()
            .secret_id(name)
            .secret_string(text)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => match e.into_service_error() {
                PutSecretValueError::ResourceNotFoundException(_) => self.create(name, text, description).await,
                other => Err(write_error(name, other.into())),
            },
        }
    }

    /// Replaces the secret's text, only if its current version is still
    /// `read_version` (compare-and-swap; Secrets Manager has no conditional
    /// put): the new version is stored under a label of its own, then
    /// `AWSCURRENT` moves to it from `read_version`, which Secrets Manager
    /// refuses when the label has moved since. So two operators rotating at
    /// once cannot drop each other's keys.
    pub async fn replace(&self, name: &str, read_version: &str, text: &str) -> Result<(), SecretsError> {
        use aws_sdk_secretsmanager::operation::update_secret_version_stage::UpdateSecretVersionStageError;
        let put = self
            .client
            .put_secret_value()
            .secret_id(name)
            .secret_string(text)
            .version_stages(NEXT_STAGE)
            .send()
            .await
            .map_err(|e| write_error(name, e.into()))?;
        let new_version = put.version_id.unwrap_or_default();
        let moved = self
            .client
            .update_secret_version_stage()
            .secret_id(name)
            .version_stage("AWSCURRENT")
            .remove_from_version_id(read_version)
            .move_to_version_id(&new_version)
            .send()
            .await;
        match moved {
            Ok(_) => Ok(()),
            Err(e) => {
                // Unlabel the version that lost, so Secrets Manager drops it.
                let _ = self
                    .client
                    .update_secret_version_stage()
                    .secret_id(name)
                    .version_stage(NEXT_STAGE)
                    .remove_from_version_id(&new_version)
                    .send()
                    .await;
                match e.into_service_error() {
                    UpdateSecretVersionStageError::InvalidParameterException(_) => {
                        Err(SecretsError::ChangedMeanwhile { name: name.to_owned() })
                    }
                    other => Err(write_error(name, other.into())),
                }
            }
        }
    }

    /// A provider's client credentials: `{"client_id": "...", "client_secret": "..."}`.
    pub async fn client_credentials(&self, name: &str) -> Result<ClientCredentials, SecretsError> {
        parse_client_credentials(name, &self.text(name).await?)
    }
}

fn write_error(name: &str, source: aws_sdk_secretsmanager::Error) -> SecretsError {
    SecretsError::Write {
        name: name.to_owned(),
        source: Box::new(source),
    }
}

/// Parses a client-credentials secret without ever quoting it.
pub fn parse_client_credentials(name: &str, text: &str) -> Result<ClientCredentials, SecretsError> {
    const SHAPE: &str = "expected a JSON object with non-empty string fields `client_id` and `client_secret`";
    let malformed = || SecretsError::Malformed {
        name: name.to_owned(),
        reason: SHAPE,
    };
    let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(text) else {
        return Err(malformed());
    };
    let field = |key: &str| {
        fields
            .get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    match (field("client_id"), field("client_secret")) {
        (Some(client_id), Some(secret)) => Ok(ClientCredentials {
            client_id,
            client_secret: ClientSecret::new(secret),
        }),
        _ => Err(malformed()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Secrets Manager stand-in answering every `GetSecretValue` with one
    /// secret, and how many it was asked.
    async fn secrets_manager() -> (SecretStore, Arc<std::sync::atomic::AtomicUsize>) {
        let body = r#"{"Name":"oauth-sync/link-key","SecretString":"the-keys","VersionId":"v1"}"#;
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/x-amz-json-1.1\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let (endpoint, asked) = crate::aws::http::tests::server(answer).await;
        let config = aws_sdk_secretsmanager::Config::builder()
            .behavior_version(aws_sdk_secretsmanager::config::BehaviorVersion::latest())
            .region(aws_sdk_secretsmanager::config::Region::new("eu-west-1"))
            .credentials_provider(aws_sdk_secretsmanager::config::Credentials::new(
                "AKIDTEST",
                "not-a-secret",
                None,
                None,
                "test",
            ))
            .endpoint_url(endpoint)
            .http_client(crate::aws::http::sdk_http_client())
            .build();
        (
            SecretStore::new(aws_sdk_secretsmanager::Client::from_conf(config)),
            asked,
        )
    }

    /// Until the stand-in has been asked `n` times (a read ahead runs in
    /// the background).
    async fn asked(counter: &std::sync::atomic::AtomicUsize, n: usize) {
        while counter.load(std::sync::atomic::Ordering::SeqCst) < n {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_read_ahead_answers_the_first_read_of_its_secret() {
        let (secrets, counter) = secrets_manager().await;
        secrets.read_ahead("oauth-sync/link-key");
        asked(&counter, 1).await;
        assert_eq!(secrets.text("oauth-sync/link-key").await.expect("read"), "the-keys");
        assert_eq!(
            counter.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "one call for both"
        );
        // Taken once: the next read asks again.
        secrets.text("oauth-sync/link-key").await.expect("read");
        assert_eq!(counter.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_read_ahead_the_configuration_does_not_want_is_dropped() {
        let (secrets, counter) = secrets_manager().await;
        secrets.read_ahead("oauth-sync/link-key");
        asked(&counter, 1).await;
        secrets.keep_reads_ahead_of(&["elsewhere/link-key"]);
        assert!(secrets.ahead().is_empty());
        secrets.text("oauth-sync/link-key").await.expect("read");
        assert_eq!(counter.load(std::sync::atomic::Ordering::SeqCst), 2, "read again");
    }

    #[test]
    fn client_credentials_parse_and_never_echo() {
        let ok = parse_client_credentials("s", r#"{"client_id": "id", "client_secret": "planted"}"#).expect("parses");
        assert_eq!((ok.client_id.as_str(), ok.client_secret.secret()), ("id", "planted"));
        for bad in [
            r#"{"client_id": "id", "client_secret": 12345678}"#,
            "planted-not-json",
            r#"{"client_secret": "planted"}"#,
        ] {
            let e = parse_client_credentials("s", bad).unwrap_err();
            assert!(
                !format!("{e} {e:?}").contains("planted") && !format!("{e}").contains("12345678"),
                "{e}"
            );
        }
    }
}
