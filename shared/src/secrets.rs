//! Secrets Manager: the OAuth client credentials of each provider (and, in
//! later modules, the token key ring and the link-signing key).
//!
//! Errors name the secret, never its value: a JSON error from serde would quote
//! the offending value, so malformed secrets are described, not echoed.

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
}

/// Reads secrets by name.
#[derive(Debug, Clone)]
pub struct SecretStore {
    client: aws_sdk_secretsmanager::Client,
}

impl SecretStore {
    pub fn new(client: aws_sdk_secretsmanager::Client) -> SecretStore {
        SecretStore { client }
    }

    /// The secret's text (the AWSCURRENT version).
    pub async fn text(&self, name: &str) -> Result<String, SecretsError> {
        let output = self
            .client
            .get_secret_value()
            .secret_id(name)
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
        output
            .secret_string
            .ok_or_else(|| SecretsError::NotText { name: name.to_owned() })
    }

    /// A provider's client credentials: `{"client_id": "...", "client_secret": "..."}`.
    pub async fn client_credentials(&self, name: &str) -> Result<ClientCredentials, SecretsError> {
        parse_client_credentials(name, &self.text(name).await?)
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
