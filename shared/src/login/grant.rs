//! What a login's token response says about the grant, in words an operator
//! can act on: the scopes the provider dropped (the offline scope included)
//! and, when no refresh token came back, what usually fixes that at this
//! provider.
//!
//! The rules follow the providers' documented behaviour:
//! - RFC 6749 §5.1: `scope` is returned only when it differs from the
//!   request, so a response without it dropped nothing.
//! - OpenID Connect Core §11: an `offline_access` request is honoured only
//!   with `prompt=consent` (or another way the server asks for consent);
//!   servers drop the scope silently otherwise.
//! - Microsoft never echoes `offline_access` in `scope`, and may qualify
//!   Graph scopes with the resource (`https://graph.microsoft.com/User.Read`).
//! - Google and Zoho return a refresh token only with `access_type=offline`,
//!   and only on first consent unless `prompt=consent`; Dropbox only with
//!   `token_access_type=offline`.

use crate::config::{PresetName, Provider};
use crate::oauth::TokenSet;

/// The OpenID Connect scope that asks for a refresh token.
const OIDC_OFFLINE_SCOPE: &str = "offline_access";

/// The requested scopes that `granted` lacks. A granted scope matches a
/// requested one exactly or qualified by a resource (`…/User.Read`). The
/// offline scope counts as dropped only when no refresh token came back:
/// providers that honour it often leave it out of `scope` (Microsoft).
pub fn dropped_scopes(
    requested: &[String],
    granted: &[String],
    offline_scope: Option<&str>,
    refresh_token_came: bool,
) -> Vec<String> {
    requested
        .iter()
        .filter(|wanted| {
            let offline = Some(wanted.as_str()) == offline_scope || wanted.as_str() == OIDC_OFFLINE_SCOPE;
            if offline && refresh_token_came {
                return false;
            }
            !granted
                .iter()
                .any(|g| g == *wanted || g.strip_suffix(wanted.as_str()).is_some_and(|r| r.ends_with('/')))
        })
        .cloned()
        .collect()
}

/// What the operator must know about a login that worked, with the likely
/// fix: shown on the callback page and logged.
pub fn warnings(provider: &Provider, tokens: &TokenSet) -> Vec<String> {
    let settings = &provider.settings;
    let display = settings.display_name.as_deref().unwrap_or(&provider.name);
    let offline_scope = settings.offline_scope.as_deref();
    let refresh_token_came = tokens.refresh_token.is_some();
    let dropped = tokens
        .scope
        .as_deref()
        .map(|granted| dropped_scopes(&settings.scopes, granted, offline_scope, refresh_token_came))
        .unwrap_or_default();
    let (offline_dropped, other_dropped): (Vec<&String>, Vec<&String>) = dropped
        .iter()
        .partition(|s| Some(s.as_str()) == offline_scope || s.as_str() == OIDC_OFFLINE_SCOPE);
    let mut warnings = Vec::new();
    if !refresh_token_came {
        let what = match offline_dropped.as_slice() {
            [] => format!("{display} sent no refresh token"),
            scopes => format!(
                "{display} dropped the {} scope and sent no refresh token",
                quoted(scopes.iter().map(|s| s.as_str()))
            ),
        };
        warnings.push(format!(
            "{what}, so this connection stops working when the access token expires (in {}); {}",
            crate::when::duration(tokens.expires_in),
            refresh_token_fix(provider, display)
        ));
    }
    if !other_dropped.is_empty() {
        warnings.push(format!(
            "{display} granted fewer scopes than requested; dropped: {}. Calls that need them will be refused; \
             check that the app at {display} may ask for them and that the user consented",
            quoted(other_dropped.iter().map(|s| s.as_str()))
        ));
    }
    warnings
}

/// What usually makes this provider issue a refresh token.
fn refresh_token_fix(provider: &Provider, display: &str) -> String {
    let settings = &provider.settings;
    let table = format!("[providers.{}]", provider.name);
    let param = |name: &str| settings.authorize_params.get(name).map(String::as_str);
    let asks_consent = param("prompt").is_some_and(|p| p.split(' ').any(|v| v == "consent"));
    if let Some(scope) = &settings.offline_scope
        && !settings.scopes.contains(scope)
    {
        return format!("add the `{scope}` scope to `scopes` in {table}");
    }
    match provider.preset {
        PresetName::Google | PresetName::Zoho => {
            if param("access_type") != Some("offline") {
                format!(
                    "{display} issues refresh tokens only with `access_type=offline`: set \
                     `authorize_params = {{ access_type = \"offline\", prompt = \"consent\" }}` in {table}"
                )
            } else if !asks_consent {
                format!(
                    "{display} issues a refresh token only at the first consent: add `prompt = \"consent\"` to \
                     `authorize_params` in {table}, or have the user remove the app's access in their account \
                     and log in again"
                )
            } else {
                format!(
                    "`access_type=offline` and `prompt=consent` are set, so the app at {display} is probably not \
                     allowed offline access: check its consent screen and scopes"
                )
            }
        }
        PresetName::Dropbox if param("token_access_type") != Some("offline") => format!(
            "{display} issues refresh tokens only with `token_access_type=offline`: add it to `authorize_params` \
             in {table}"
        ),
        PresetName::Microsoft => format!(
            "the user or the tenant's administrator did not consent to `offline_access`: grant admin consent for \
             the app registration at {display}, or have the user log in again and accept it"
        ),
        PresetName::Salesforce => format!(
            "add the \"Perform requests at any time (refresh_token, offline_access)\" OAuth scope to the connected \
             app at {display}, and check its refresh token policy"
        ),
        _ if settings.offline_scope.as_deref() == Some(OIDC_OFFLINE_SCOPE) && !asks_consent => format!(
            "OpenID Connect servers grant `offline_access` only when consent is asked (OpenID Connect Core §11): \
             add `authorize_params = {{ prompt = \"consent\" }}` in {table}, and check that the client may use \
             refresh tokens at {display}"
        ),
        PresetName::Generic if settings.offline_scope.is_none() => format!(
            "set `offline_scope` in {table} (`offline_access` at OpenID Connect servers) and check that the \
             client may use refresh tokens at {display}"
        ),
        _ => format!(
            "check the app's \"allow refresh tokens\" (offline access) setting at {display}, or revoke its \
             earlier grant there so that consent is asked again"
        ),
    }
}

fn quoted<'a>(scopes: impl Iterator<Item = &'a str>) -> String {
    scopes.map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::secret::{AccessToken, RefreshToken};

    fn provider(table: &str) -> Provider {
        let text = format!("[providers.p]\ncredentials_secret = \"s\"\n{table}\n");
        let mut config = Config::parse(&text, "oauth-sync.toml").expect("config parses");
        config.providers.remove("p").expect("provider p")
    }

    fn tokens(refresh: bool, scope: Option<&str>) -> TokenSet {
        TokenSet {
            access_token: AccessToken::new("at"),
            refresh_token: refresh.then(|| RefreshToken::new("rt")),
            expires_in: 3600,
            expires_in_assumed: false,
            scope: scope.map(|s| s.split(' ').map(str::to_owned).collect()),
            instance_url: None,
            api_domain: None,
            refresh_token_expires_in: None,
        }
    }

    const GENERIC_OIDC: &str = "preset = \"generic\"\nauthorize_url = \"https://id.example/authorize\"\n\
        token_url = \"https://id.example/token\"\nscopes = [\"openid\", \"offline_access\", \"api\"]\n\
        offline_scope = \"offline_access\"\ndisplay_name = \"Example ID\"";

    #[test]
    fn a_dropped_offline_scope_is_named_with_prompt_consent_at_an_oidc_server() {
        let warnings = warnings(&provider(GENERIC_OIDC), &tokens(false, Some("openid api")));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        let w = &warnings[0];
        assert!(
            w.starts_with("Example ID dropped the `offline_access` scope and sent no refresh token"),
            "{w}"
        );
        assert!(
            w.contains("stops working when the access token expires (in 1 h)"),
            "{w}"
        );
        assert!(w.contains("prompt = \"consent\""), "{w}");
        assert!(w.contains("[providers.p]"), "{w}");
    }

    #[test]
    fn with_prompt_consent_set_the_fix_is_the_client_setting() {
        let table = format!("{GENERIC_OIDC}\nauthorize_params = {{ prompt = \"login consent\" }}");
        let w = &warnings(&provider(&table), &tokens(false, None))[0];
        assert!(w.starts_with("Example ID sent no refresh token"), "{w}");
        assert!(w.contains("allow refresh tokens"), "{w}");
    }

    #[test]
    fn other_dropped_scopes_are_named_apart_from_the_refresh_token() {
        let warnings = warnings(&provider(GENERIC_OIDC), &tokens(true, Some("openid")));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("Example ID granted fewer scopes than requested; dropped: `api`."),
            "{}",
            warnings[0]
        );
    }

    #[test]
    fn microsoft_never_echoes_offline_access_and_may_qualify_graph_scopes() {
        let microsoft = provider("preset = \"microsoft\"\nscopes = [\"offline_access\", \"User.Read\", \"Mail.Read\"]");
        let echoed = tokens(true, Some("https://graph.microsoft.com/User.Read Mail.Read"));
        assert!(warnings(&microsoft, &echoed).is_empty());
        let w = warnings(&microsoft, &tokens(false, Some("User.Read Mail.Read")));
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("Microsoft dropped the `offline_access` scope"),
            "{}",
            w[0]
        );
        assert!(w[0].contains("admin"), "{}", w[0]);
        // A scope that merely ends with the same letters is not the same scope.
        assert_eq!(
            dropped_scopes(&["Read".to_owned()], &["Mail.Read".to_owned()], None, true),
            ["Read"]
        );
    }

    #[test]
    fn each_preset_names_its_own_fix() {
        let cases = [
            (
                "preset = \"google\"\nauthorize_params = { access_type = \"online\" }",
                "access_type=offline",
            ),
            (
                "preset = \"zoho\"\nauthorize_params = { prompt = \"select_account\" }",
                "prompt = \"consent\"",
            ),
            ("preset = \"google\"", "not allowed offline access"),
            (
                "preset = \"dropbox\"\nauthorize_params = { token_access_type = \"online\" }",
                "token_access_type=offline",
            ),
            ("preset = \"salesforce\"", "Perform requests at any time"),
            (
                "preset = \"xero\"\nscopes = [\"accounting.transactions\"]",
                "add the `offline_access` scope",
            ),
            ("preset = \"exact_online\"", "allow refresh tokens"),
            (
                "preset = \"generic\"\nauthorize_url = \"https://id.example/a\"\ntoken_url = \"https://id.example/t\"",
                "set `offline_scope`",
            ),
        ];
        for (table, fix) in cases {
            let w = warnings(&provider(table), &tokens(false, None));
            assert_eq!(w.len(), 1, "{table}: {w:?}");
            assert!(w[0].contains(fix), "{table}: {}", w[0]);
        }
    }

    #[test]
    fn a_full_grant_says_nothing() {
        assert!(warnings(&provider(GENERIC_OIDC), &tokens(true, None)).is_empty());
        assert!(
            warnings(
                &provider(GENERIC_OIDC),
                &tokens(true, Some("openid offline_access api"))
            )
            .is_empty()
        );
    }
}
