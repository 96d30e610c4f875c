//! The parameters a connection learns at login (Exact Online's division):
//! one API call each with the fresh access token, as the provider's preset
//! says (`[providers.NAME.discover]`). What was learned is stored with the
//! connection and fills the `{name}` placeholders of its URLs.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::config::{ProviderSettings, fill_template};
use crate::json::{scalar_text, value_at};
use crate::secret::AccessToken;
use crate::telemetry::error_chain;

/// How long the login waits for a connection parameter's API call.
const LEARN_TIMEOUT: Duration = Duration::from_secs(10);

/// Learns the provider's connection parameters (Exact Online's division) with
/// a fresh access token, one API call each. Returns what was learned and, when
/// something could not be, why (the connection is then not synced).
pub async fn learn(
    http: &reqwest::Client,
    settings: &ProviderSettings,
    access_token: &AccessToken,
) -> (BTreeMap<String, String>, Option<String>) {
    let mut params = BTreeMap::new();
    let mut errors = Vec::new();
    for (name, discovery) in &settings.discover {
        match learn_one(http, settings, discovery, access_token).await {
            Ok(value) => {
                params.insert(name.clone(), value);
            }
            Err(e) => errors.push(format!("`{name}`: {e}")),
        }
    }
    let error = (!errors.is_empty()).then(|| errors.join("; "));
    (params, error)
}

async fn learn_one(
    http: &reqwest::Client,
    settings: &ProviderSettings,
    discovery: &crate::config::Discovery,
    access_token: &AccessToken,
) -> Result<String, String> {
    let url = fill_template(&discovery.url, &settings.params, &[]).map_err(|e| e.to_string())?;
    let response = http
        .get(&url)
        .bearer_auth(access_token.secret())
        .header(reqwest::header::ACCEPT, "application/json")
        .timeout(LEARN_TIMEOUT)
        .send()
        .await
        .map_err(|e| format!("the API call failed: {}", error_chain(&e)))?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| format!("reading the answer failed: {}", error_chain(&e)))?;
    if !status.is_success() {
        return Err(format!(
            "the API answered HTTP {}: {}",
            status.as_u16(),
            crate::text::excerpt(&String::from_utf8_lossy(&body), &[access_token.secret()])
        ));
    }
    let json: Value = serde_json::from_slice(&body).map_err(|e| format!("the answer is not JSON: {e}"))?;
    value_at(&json, &discovery.field)
        .and_then(scalar_text)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| format!("the answer has no `{}`", discovery.field))
}
