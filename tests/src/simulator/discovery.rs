//! `GET /.well-known/openid-configuration`: the simulator's OpenID Connect
//! Discovery 1.0 document, built from its configuration (issuer = its base
//! URL, its endpoints, the client authentication it accepts, S256, and RFC
//! 9207 `iss` when it sends one), with members changed or removed by the
//! test, or a fault instead of the document.

use serde_json::{Map, Value, json};
use shared::config::ClientAuth;

use super::{SimConfig, Simulator};

/// What the discovery endpoint serves. The default is a valid document.
#[derive(Debug, Clone, Default)]
pub struct DiscoveryDoc {
    /// Members set in the document; a `null` removes the member.
    pub members: Map<String, Value>,
    /// Served instead of the document.
    pub fault: Option<DiscoveryFault>,
}

impl DiscoveryDoc {
    /// The document with `member` set to `value` (`Value::Null` removes it).
    pub fn with(mut self, member: &str, value: Value) -> DiscoveryDoc {
        self.members.insert(member.to_owned(), value);
        self
    }
}

/// A broken discovery answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoveryFault {
    /// An HTML page with status 200.
    NotJson,
    /// A valid JSON document padded past any sane size (200 KiB).
    Oversized,
    /// This status, no document.
    Status(u16),
}

/// (status, content type, body)
pub(crate) type DiscoveryAnswer = (u16, &'static str, String);

impl Simulator {
    /// The discovery answer as configured now.
    pub(crate) fn discovery(&self) -> DiscoveryAnswer {
        let config = self.config();
        self.state().counters.discovery_requests += 1;
        let document = document(&config, &self.base_url());
        match &config.discovery.fault {
            None => (200, "application/json", document.to_string()),
            Some(DiscoveryFault::NotJson) => (
                200,
                "text/html",
                "<html><body><h1>Welcome</h1><p>Sign in to continue.</p></body></html>".to_owned(),
            ),
            Some(DiscoveryFault::Oversized) => {
                let mut document = document;
                document["x_padding"] = json!("x".repeat(200 * 1024));
                (200, "application/json", document.to_string())
            }
            Some(DiscoveryFault::Status(status)) => (*status, "text/plain", "no document here".to_owned()),
        }
    }
}

fn document(config: &SimConfig, base_url: &str) -> Value {
    let auth_method = match config.client_auth {
        ClientAuth::Basic => "client_secret_basic",
        ClientAuth::Body => "client_secret_post",
    };
    let mut document = json!({
        "issuer": base_url,
        "authorization_endpoint": format!("{base_url}/authorize"),
        "token_endpoint": format!("{base_url}/token"),
        "revocation_endpoint": format!("{base_url}/revoke"),
        "jwks_uri": format!("{base_url}/jwks"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "token_endpoint_auth_methods_supported": [auth_method],
        "scopes_supported": ["openid", "profile", "offline_access"],
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": config.issuer.is_some(),
    });
    if let Some(object) = document.as_object_mut() {
        for (member, value) in &config.discovery.members {
            if value.is_null() {
                object.remove(member);
            } else {
                object.insert(member.clone(), value.clone());
            }
        }
    }
    document
}
