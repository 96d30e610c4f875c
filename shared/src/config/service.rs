//! `[service]`: the deployment-wide settings — the deployed callback, the
//! secrets holding the keys, where a finished login may send the user back
//! to, and how many refreshes a run keeps in flight.

use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;
use url::Url;

use super::errors::{ConfigError, Locator};
use super::{limits, parse_http_url, webhook_url_allowed};

/// Deployment-wide settings (`[service]`).
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    /// The deployed `/callback` URL (the stack's `CallbackUrl` output). Each
    /// provider's redirect URI is this plus `/{provider}`
    /// ([`ServiceSettings::redirect_uri`]): one per authorization server, the
    /// RFC 9700 mix-up defence.
    pub callback_url: Option<Url>,
    /// Secrets Manager secret holding the token-encryption key ring.
    pub token_key_secret: String,
    /// Secrets Manager secret holding the connect-link signing key.
    pub link_key_secret: String,
    /// Where a finished login may send the user back to: https (or http on
    /// a loopback address), without user info, query or fragment, since a
    /// return URL is matched on scheme, host, port and path
    /// ([`crate::login::link::check_return_url`]).
    pub return_url_allow_list: Vec<Url>,
    /// Refreshes one token-refresher run keeps in flight (1–256). By
    /// Little's law a run carries this many ÷ the provider's token-endpoint
    /// latency refreshes a second: 16 at 300 ms is about 50/s.
    pub refresh_concurrency: usize,
    /// Refreshes in flight to one provider's token endpoint at most, across
    /// every shard group of the token-refresher (1–10,000; default 64), for a
    /// provider without its own `token_concurrency`.
    pub token_concurrency: u64,
}

impl ServiceSettings {
    /// The redirect URI of one provider: `{callback_url}/{provider}`. One per
    /// provider, so the path names the authorization server the answer must
    /// come from (RFC 9700 §4.4 mix-up defence). Register exactly this.
    pub fn redirect_uri(&self, provider: &str) -> Option<Url> {
        let mut url = self.callback_url.clone()?;
        let path = format!("{}/{provider}", url.path().trim_end_matches('/'));
        url.set_path(&path);
        url.set_query(None);
        url.set_fragment(None);
        Some(url)
    }
}

impl Default for ServiceSettings {
    fn default() -> Self {
        Self {
            callback_url: None,
            token_key_secret: "oauth-sync/token-keys".to_owned(),
            link_key_secret: "oauth-sync/link-key".to_owned(),
            return_url_allow_list: Vec::new(),
            refresh_concurrency: DEFAULT_REFRESH_CONCURRENCY,
            token_concurrency: DEFAULT_TOKEN_CONCURRENCY,
        }
    }
}

/// The refresher's default: 16 refreshes in flight.
pub const DEFAULT_REFRESH_CONCURRENCY: usize = 16;
/// The most refreshes one run may keep in flight.
pub const MAX_REFRESH_CONCURRENCY: usize = 256;
/// Refreshes in flight to one provider, across the refresher's shard groups.
pub const DEFAULT_TOKEN_CONCURRENCY: u64 = 64;
/// The most `token_concurrency` may be.
pub const MAX_TOKEN_CONCURRENCY: u64 = 10_000;

/// A user's `[service]` table as written; URLs keep their place in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServiceEntry {
    callback_url: Option<Spanned<String>>,
    token_key_secret: Option<String>,
    link_key_secret: Option<String>,
    #[serde(default)]
    return_url_allow_list: Vec<Spanned<String>>,
    refresh_concurrency: Option<usize>,
    token_concurrency: Option<u64>,
}

/// The settings the table at `span` makes, or every problem, each at its
/// place: a URL at the URL (an allow-list entry at that entry).
pub(crate) fn resolve(
    locate: &Locator<'_>,
    span: Range<usize>,
    entry: ServiceEntry,
) -> Result<ServiceSettings, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let defaults = ServiceSettings::default();
    let callback_url = entry
        .callback_url
        .and_then(|text| match parse_http_url(text.get_ref()) {
            Ok(url) => Some(url),
            Err(message) => {
                errors.push(locate.error(Some(text.span()), "service.callback_url", &message));
                None
            }
        });
    let mut return_url_allow_list = Vec::new();
    for text in &entry.return_url_allow_list {
        match return_url_entry(text.get_ref()) {
            Ok(url) => return_url_allow_list.push(url),
            Err(message) => errors.push(locate.error(Some(text.span()), "service.return_url_allow_list", &message)),
        }
    }
    let refresh_concurrency = entry.refresh_concurrency.unwrap_or(defaults.refresh_concurrency);
    let concurrency = i128::try_from(refresh_concurrency).unwrap_or(i128::MAX);
    if let Err((key, message)) = limits::check_whole("refresh_concurrency", concurrency) {
        errors.push(locate.field_error(span.clone(), "service", key, &message));
    }
    let token_concurrency = entry.token_concurrency.unwrap_or(defaults.token_concurrency);
    if let Err((key, message)) = limits::check_whole("token_concurrency", token_concurrency) {
        errors.push(locate.field_error(span, "service", key, &message));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(ServiceSettings {
        callback_url,
        token_key_secret: entry.token_key_secret.unwrap_or(defaults.token_key_secret),
        link_key_secret: entry.link_key_secret.unwrap_or(defaults.link_key_secret),
        return_url_allow_list,
        refresh_concurrency,
        token_concurrency,
    })
}

/// One `return_url_allow_list` entry. A return URL is matched on scheme,
/// host, port and path, and one with user info is refused, so anything
/// else in an entry would not restrict what it allows (a query, a
/// fragment) or is a credential (user info): refused, as plain http to
/// anywhere but this machine, which would carry the login's outcome
/// unencrypted.
fn return_url_entry(text: &str) -> Result<Url, String> {
    let url = super::parse_absolute(text)?;
    let matched = "a return URL is matched on scheme, host, port and path only";
    if !url.username().is_empty() || url.password().is_some() {
        // Not quoted: the password would reach the log.
        let host = url.host_str().unwrap_or_default();
        return Err(format!(
            "the entry for `{host}` has user info (`name:password@`): {matched}, and one with user info is \
             always refused; write the entry without it"
        ));
    }
    if let Some(query) = url.query() {
        return Err(format!(
            "`{text}` has a query: {matched}, so it would allow any query; remove `?{query}`"
        ));
    }
    if let Some(fragment) = url.fragment() {
        return Err(format!(
            "`{text}` has a fragment: {matched}, so it would allow any fragment; remove `#{fragment}`"
        ));
    }
    if !webhook_url_allowed(&url) {
        return Err(format!(
            "`{text}` must be https (http only to a loopback address such as 127.0.0.1): the user's browser \
             carries the login's outcome there"
        ));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_allow_list_entry_is_what_a_return_url_is_matched_on() {
        for ok in [
            "https://app.example.com/done",
            "https://app.example.com:8443/",
            "http://127.0.0.1:3000/back",
            "http://localhost/back",
        ] {
            assert!(return_url_entry(ok).is_ok(), "{ok}");
        }
        for (bad, says) in [
            ("https://user:pw-planted@app.example.com/", "has user info"),
            ("https://user@app.example.com/", "has user info"),
            ("https://app.example.com/done?tenant=1", "remove `?tenant=1`"),
            ("https://app.example.com/done#top", "remove `#top`"),
            ("http://app.example.com/done", "must be https"),
            ("ftp://app.example.com/", "invalid URL"),
            ("/done", "invalid URL"),
        ] {
            let e = return_url_entry(bad).expect_err(bad);
            assert!(e.contains(says), "{bad}: {e}");
            assert!(!e.contains("planted"), "{e}");
        }
    }
}
