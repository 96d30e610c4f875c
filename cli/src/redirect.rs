//! `oauth-sync redirect-uris`: the redirect URI to register at each provider,
//! for scripts. One line per provider, `provider<TAB>uri`; with `--json` an
//! object from provider to URI. The same URIs `doctor` checks and explains.

use std::path::Path;

use anyhow::Context;
use shared::config::Config;

use crate::output::write_out;

/// Prints the redirect URI of every configured provider (or of `only`).
pub async fn print(config_file: &Path, only: Option<&str>, as_json: bool) -> anyhow::Result<()> {
    let config = Config::load_and_discover(config_file).await?;
    let uris = redirect_uris(&config, only).with_context(|| config_file.display().to_string())?;
    if as_json {
        let object: serde_json::Map<String, serde_json::Value> = uris
            .into_iter()
            .map(|(provider, uri)| (provider, serde_json::Value::String(uri.into())))
            .collect();
        return write_out(&format!("{}\n", serde_json::Value::Object(object)));
    }
    write_out(
        &uris
            .iter()
            .map(|(provider, uri)| format!("{provider}\t{uri}\n"))
            .collect::<String>(),
    )
}

/// `(provider, {service.callback_url}/{provider})`, in provider order.
fn redirect_uris(config: &Config, only: Option<&str>) -> anyhow::Result<Vec<(String, url::Url)>> {
    let names: Vec<&str> = match only {
        Some(name) => vec![config.provider(name)?.name.as_str()],
        None => config.providers.keys().map(String::as_str).collect(),
    };
    anyhow::ensure!(!names.is_empty(), "no providers configured");
    names
        .into_iter()
        .map(|name| {
            let uri = config.service.redirect_uri(name).context(
                "service.callback_url is not set: set it to the stack's CallbackUrl output \
                 (or the local URL `scripts/stack start --functions` prints)",
            )?;
            Ok((name.to_owned(), uri))
        })
        .collect()
}
