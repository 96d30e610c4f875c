//! Signed connect links (DESIGN invariant 7). A login
//! starts only from a link the operator made. The link is signed with
//! HMAC-SHA256 over the provider, connection id, kind, return URL, issue time
//! and expiry,
//! using a key ring from Secrets Manager (`service.link_key_secret`, same
//! `{"current", "keys"}` format as the token keys), so link keys rotate
//! without breaking links already sent. An unsigned, tampered or expired link
//! is refused before anything is written. A link finishes one login (see
//! [`link_id`]), and one made before its connection was revoked cannot bring
//! it back (`issued_at`).

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use url::Url;

use crate::connection::{ConnectionId, ConnectionKind};
use crate::crypto::{CryptoError, parse_key_ring};

/// The longest a connect link may live.
pub const MAX_LINK_LIFETIME: Duration = Duration::from_secs(30 * 86_400);

/// What a connect link grants: one login, for this connection at this provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectClaims {
    pub provider: String,
    pub connection: ConnectionId,
    pub kind: ConnectionKind,
    /// Where to send the user after the login; must be on the allow-list.
    pub return_url: Option<Url>,
    /// When the link was made, epoch milliseconds.
    pub issued_at: i64,
    /// Epoch seconds.
    pub expires_at: i64,
    /// What the connection is for, shown on the confirmation page
    /// ("Connect your Exact Online account to {label}"); the connection id when absent.
    pub label: Option<String>,
    /// Who the link is for ("alice@acme.example"), shown on the confirmation page.
    pub user: Option<String>,
}

/// The longest `label` or `user` a link may carry, in characters.
pub const MAX_LINK_TEXT: usize = 120;

/// Checks a link's `label` or `user`: 1 to [`MAX_LINK_TEXT`] characters, no
/// control characters (which also keeps the signed text unambiguous) and no
/// invisible format characters (a right-to-left override would make
/// `Acme \u{202e}gnp.exe` read "Acme exe.png" on the confirmation page). The
/// page escapes it; this keeps it short, on one line, and read as written.
pub fn check_link_text(field: &'static str, text: &str) -> Result<(), LinkError> {
    let length = text.chars().count();
    let hidden = |c: char| c.is_control() || crate::text::is_invisible_format(c);
    if length == 0 || length > MAX_LINK_TEXT || text.chars().any(hidden) {
        return Err(LinkError::Malformed(field));
    }
    Ok(())
}

/// How far in the future a link's `issued` may lie (clock skew between the
/// operator's machine and the function).
const ISSUED_SKEW_SECS: i64 = 300;

/// Why a connect link was refused. Each is shown to a person as "this link
/// cannot be used" with the reason; none changes anything.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("the link has no `{0}`: it was not made by `oauth-sync connect-link`")]
    Missing(&'static str),
    #[error("the link's `{0}` is malformed")]
    Malformed(&'static str),
    #[error("the link's signature does not match: it was changed, or its key is no longer listed")]
    BadSignature,
    #[error("the link expired at {}; ask for a new one", crate::when::utc(*.0 * 1000))]
    Expired(i64),
    #[error("the link is for provider `{link}`, not `{path}`")]
    WrongProvider { link: String, path: String },
    #[error("return URL `{0}` is not on service.return_url_allow_list")]
    ReturnUrlNotAllowed(String),
    #[error("a link may live at most {} days", MAX_LINK_LIFETIME.as_secs() / 86_400)]
    TooLong,
    #[error("this link was already used to connect; ask for a new one")]
    Used,
    #[error("this link was made before connection {0} was disconnected; ask for a new one")]
    PredatesRevoke(ConnectionId),
    #[error("service.callback_url is not set, so there is no address for the link")]
    NoCallbackUrl,
    #[error(transparent)]
    Keys(#[from] CryptoError),
}

/// The connect-link signing keys.
pub struct LinkKeys {
    current: String,
    keys: BTreeMap<String, hmac::Key>,
}

impl std::fmt::Debug for LinkKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkKeys")
            .field("current", &self.current)
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl LinkKeys {
    /// Parses the link key secret (create one with `KeyRing::generate_json`).
    pub fn from_json(text: &str) -> Result<LinkKeys, CryptoError> {
        let (current, raw) = parse_key_ring(text)?;
        let keys = raw
            .into_iter()
            .map(|(id, bytes)| (id, hmac::Key::new(hmac::HMAC_SHA256, &bytes)))
            .collect();
        Ok(LinkKeys { current, keys })
    }

    /// The link: `{callback_url without its last segment}/connect/{provider}?…`,
    /// signed with the current key.
    pub fn connect_url(&self, callback_url: Option<&Url>, claims: &ConnectClaims) -> Result<Url, LinkError> {
        for (field, text) in [("label", &claims.label), ("for", &claims.user)] {
            if let Some(text) = text {
                check_link_text(field, text)?;
            }
        }
        let mut url = callback_url.ok_or(LinkError::NoCallbackUrl)?.clone();
        let base = url.path().rsplit_once('/').map_or("", |(base, _)| base).to_owned();
        url.set_path(&format!("{base}/connect/{}", claims.provider));
        url.set_fragment(None);
        let key = self
            .keys
            .get(&self.current)
            .ok_or_else(|| CryptoError::UnknownKey(self.current.clone()))?;
        let signature = URL_SAFE_NO_PAD.encode(hmac::sign(key, message(claims).as_bytes()));
        {
            let mut query = url.query_pairs_mut();
            query.clear();
            query.append_pair("connection", claims.connection.as_str());
            query.append_pair("kind", claims.kind.as_str());
            if let Some(return_url) = &claims.return_url {
                query.append_pair("return", return_url.as_str());
            }
            if let Some(label) = &claims.label {
                query.append_pair("label", label);
            }
            if let Some(user) = &claims.user {
                query.append_pair("for", user);
            }
            query.append_pair("issued", &claims.issued_at.to_string());
            query.append_pair("expires", &claims.expires_at.to_string());
            query.append_pair("kid", &self.current);
            query.append_pair("sig", &signature);
        }
        Ok(url)
    }

    /// Checks a link's query for `/connect/{provider}`: signature (constant
    /// time), expiry and the return URL allow-list.
    pub fn verify(
        &self,
        provider: &str,
        query: &BTreeMap<String, String>,
        now_secs: i64,
        allow_list: &[Url],
    ) -> Result<ConnectClaims, LinkError> {
        let get = |key: &'static str| query.get(key).map(String::as_str).ok_or(LinkError::Missing(key));
        let connection = ConnectionId::parse(get("connection")?).map_err(|_| LinkError::Malformed("connection"))?;
        let kind = match get("kind")? {
            "per_user" => ConnectionKind::PerUser,
            "shared" => ConnectionKind::Shared,
            _ => return Err(LinkError::Malformed("kind")),
        };
        let return_url = match query.get("return") {
            Some(text) => Some(Url::parse(text).map_err(|_| LinkError::Malformed("return"))?),
            None => None,
        };
        let label = query.get("label").cloned();
        let user = query.get("for").cloned();
        for (field, text) in [("label", &label), ("for", &user)] {
            if let Some(text) = text {
                check_link_text(field, text)?;
            }
        }
        let issued_at: i64 = get("issued")?.parse().map_err(|_| LinkError::Malformed("issued"))?;
        let expires_at: i64 = get("expires")?.parse().map_err(|_| LinkError::Malformed("expires"))?;
        let signature = URL_SAFE_NO_PAD
            .decode(get("sig")?)
            .map_err(|_| LinkError::Malformed("sig"))?;
        let key = self.keys.get(get("kid")?).ok_or(LinkError::BadSignature)?;
        let claims = ConnectClaims {
            provider: provider.to_owned(),
            connection,
            kind,
            return_url,
            issued_at,
            expires_at,
            label,
            user,
        };
        hmac::verify(key, message(&claims).as_bytes(), &signature).map_err(|_| LinkError::BadSignature)?;
        if expires_at <= now_secs {
            return Err(LinkError::Expired(expires_at));
        }
        // Also checked when a link is made; here in case a key leaked into a hand-made one.
        let longest = i64::try_from(MAX_LINK_LIFETIME.as_secs()).unwrap_or(i64::MAX);
        if expires_at > now_secs.saturating_add(longest + 60) {
            return Err(LinkError::TooLong);
        }
        if issued_at / 1000 > now_secs.saturating_add(ISSUED_SKEW_SECS) {
            return Err(LinkError::Malformed("issued"));
        }
        if let Some(return_url) = &claims.return_url {
            check_return_url(return_url, allow_list)?;
        }
        Ok(claims)
    }
}

/// The signed text. No field can hold a newline (ids and provider names are
/// restricted, URLs are serialised, times are digits, label and user have no
/// control characters), so it is unambiguous. A link without label and user
/// signs the v2 text, so links made before those existed still verify.
fn message(claims: &ConnectClaims) -> String {
    let v2 = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        claims.provider,
        claims.connection,
        claims.kind.as_str(),
        claims.return_url.as_ref().map_or("", Url::as_str),
        claims.issued_at,
        claims.expires_at
    );
    if claims.label.is_none() && claims.user.is_none() {
        return format!("oauth-sync connect v2\n{v2}");
    }
    // `-` for absent, `+text` for present: "absent" and "empty" never sign alike.
    let part = |text: &Option<String>| text.as_ref().map_or_else(|| "-".to_owned(), |t| format!("+{t}"));
    format!(
        "oauth-sync connect v3\n{v2}\n{}\n{}",
        part(&claims.label),
        part(&claims.user)
    )
}

/// The confirmation page's form token: an HMAC, under the link key, of the
/// browser cookie's hash and the link's id. It proves the POST comes from a
/// page this service rendered for this browser and this link, without the
/// cookie's value ever appearing in the page. `kid.signature`, so keys rotate.
pub fn form_token(keys: &LinkKeys, cookie: &str, link_id: &str) -> Result<String, LinkError> {
    let key = keys
        .keys
        .get(&keys.current)
        .ok_or_else(|| CryptoError::UnknownKey(keys.current.clone()))?;
    let signature = hmac::sign(key, form_message(cookie, link_id).as_bytes());
    Ok(format!("{}.{}", keys.current, URL_SAFE_NO_PAD.encode(signature)))
}

/// Does `token` belong to this cookie and link? Constant time.
pub fn form_token_matches(keys: &LinkKeys, token: &str, cookie: &str, link_id: &str) -> bool {
    let Some((kid, signature)) = token.split_once('.') else {
        return false;
    };
    let (Some(key), Ok(signature)) = (keys.keys.get(kid), URL_SAFE_NO_PAD.decode(signature)) else {
        return false;
    };
    hmac::verify(key, form_message(cookie, link_id).as_bytes(), &signature).is_ok()
}

fn form_message(cookie: &str, link_id: &str) -> String {
    format!(
        "oauth-sync confirm v1\n{}\n{link_id}",
        crate::login::attempts::browser_key(cookie)
    )
}

/// A login cookie's value: `random.kid.mac`, the browser's 256 random bits
/// and this service's HMAC over them, so that a cookie the server did not
/// issue (one an attacker planted, say) is never adopted: it gets a fresh one.
pub fn new_cookie(keys: &LinkKeys, random: &str) -> Result<String, LinkError> {
    let key = keys
        .keys
        .get(&keys.current)
        .ok_or_else(|| CryptoError::UnknownKey(keys.current.clone()))?;
    let mac = hmac::sign(key, cookie_message(random).as_bytes());
    Ok(format!("{random}.{}.{}", keys.current, URL_SAFE_NO_PAD.encode(mac)))
}

/// Did this service issue the cookie `value` (with a key it still lists)? Constant time.
pub fn cookie_is_ours(keys: &LinkKeys, value: &str) -> bool {
    let mut parts = value.splitn(3, '.');
    let (Some(random), Some(kid), Some(mac)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let (Some(key), Ok(mac)) = (keys.keys.get(kid), URL_SAFE_NO_PAD.decode(mac)) else {
        return false;
    };
    random.len() == 43 && hmac::verify(key, cookie_message(random).as_bytes(), &mac).is_ok()
}

fn cookie_message(random: &str) -> String {
    format!("oauth-sync cookie v1\n{random}")
}

/// A link's identity for "one login per link": the hash of its signature
/// (which covers every claim), once the link has been verified.
pub fn link_id(query: &BTreeMap<String, String>) -> Option<String> {
    query
        .get("sig")
        .map(|sig| crate::crypto::sha256_b64url(format!("link:{sig}").as_bytes()))
}

/// A connect link as asked for by the CLI's `connect-link` or the API's
/// `POST /links`, before any check: [`LinkOrder::claims`] is the one place
/// that checks it, so both refuse the same input for the same reason.
#[derive(Debug, Clone, Default)]
pub struct LinkOrder {
    pub provider: String,
    /// The connection the login creates or renews; a fresh id when absent.
    pub connection: Option<String>,
    pub kind: ConnectionKind,
    pub return_url: Option<String>,
    pub lifetime: Duration,
    pub label: Option<String>,
    pub user: Option<String>,
}

/// What in a [`LinkOrder`] is wrong: the field (its API name; the CLI maps
/// it to its flag) and why. Nothing was signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct LinkOrderError {
    pub field: &'static str,
    pub reason: String,
}

impl LinkOrder {
    /// The claims of the link, checked against the configuration: a
    /// configured provider, a valid connection id, a lifetime up to
    /// [`MAX_LINK_LIFETIME`], a return URL on the allow-list, one-line texts.
    pub fn claims(&self, config: &crate::config::Config, now_ms: i64) -> Result<ConnectClaims, LinkOrderError> {
        let wrong = |field: &'static str, reason: String| LinkOrderError { field, reason };
        let provider = config
            .provider(&self.provider)
            .map_err(|e| wrong("provider", e.to_string()))?;
        let connection = match &self.connection {
            Some(id) => ConnectionId::parse(id).map_err(|e| wrong("connection", e.to_string()))?,
            None => ConnectionId::parse(&format!("conn-{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)))
                .map_err(|e| wrong("connection", e.to_string()))?,
        };
        if self.lifetime.is_zero() {
            return Err(wrong("expires_in", "a link must live at least one second".to_owned()));
        }
        if self.lifetime > MAX_LINK_LIFETIME {
            return Err(wrong("expires_in", LinkError::TooLong.to_string()));
        }
        let return_url = match &self.return_url {
            Some(text) => {
                let url = crate::config::parse_http_url(text).map_err(|e| wrong("return_url", e))?;
                check_return_url(&url, &config.service.return_url_allow_list)
                    .map_err(|e| wrong("return_url", e.to_string()))?;
                Some(url)
            }
            None => None,
        };
        for (field, text) in [("label", &self.label), ("for", &self.user)] {
            if let Some(text) = text {
                check_link_text(field, text).map_err(|_| {
                    wrong(
                        field,
                        format!("1 to {MAX_LINK_TEXT} characters on one line, without invisible formatting characters"),
                    )
                })?;
            }
        }
        let lifetime_secs = i64::try_from(self.lifetime.as_secs()).unwrap_or(i64::MAX);
        Ok(ConnectClaims {
            provider: provider.name.clone(),
            connection,
            kind: self.kind,
            return_url,
            issued_at: now_ms,
            expires_at: now_ms / 1000 + lifetime_secs,
            label: self.label.clone(),
            user: self.user.clone(),
        })
    }
}

/// A return URL is allowed when an allow-list entry has its scheme, host and
/// port, and its path is the entry's path or below it (`/done` allows
/// `/done` and `/done/x`, not `/done-evil`). A URL with user info
/// (`https://user@host/`) is never allowed.
pub fn check_return_url(url: &Url, allow_list: &[Url]) -> Result<(), LinkError> {
    let below = |entry: &str, path: &str| {
        path == entry
            || entry.ends_with('/') && path.starts_with(entry)
            || path.strip_prefix(entry).is_some_and(|rest| rest.starts_with('/'))
    };
    let no_user_info = url.username().is_empty() && url.password().is_none();
    let allowed = no_user_info
        && allow_list.iter().any(|entry| {
            entry.scheme() == url.scheme()
                && entry.host_str() == url.host_str()
                && entry.port_or_known_default() == url.port_or_known_default()
                && below(entry.path(), url.path())
        });
    if allowed {
        Ok(())
    } else {
        Err(LinkError::ReturnUrlNotAllowed(url.to_string()))
    }
}

/// A link lifetime such as `90s`, `30m`, `1h` or `7d`, at most 30 days.
pub fn parse_lifetime(text: &str) -> Result<Duration, LinkError> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| LinkError::Malformed("expires"))?;
    let seconds = match unit {
        "s" => number,
        "m" => number.saturating_mul(60),
        "h" => number.saturating_mul(3600),
        "d" => number.saturating_mul(86_400),
        _ => return Err(LinkError::Malformed("expires")),
    };
    let lifetime = Duration::from_secs(seconds);
    if lifetime.is_zero() {
        return Err(LinkError::Malformed("expires"));
    }
    if lifetime > MAX_LINK_LIFETIME {
        return Err(LinkError::TooLong);
    }
    Ok(lifetime)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::KeyRing;

    #[test]
    fn only_a_cookie_this_service_issued_is_ours() {
        let (_, ring) = keys("l1");
        let random = "A".repeat(43);
        let cookie = new_cookie(&ring, &random).expect("cookie");
        assert!(cookie_is_ours(&ring, &cookie));
        assert!(!cookie_is_ours(&ring, &random), "a bare random value was not issued");
        assert!(!cookie_is_ours(&ring, &cookie.replace("AAAA", "AAAB")), "a changed one");
        let (_, other) = keys("l1");
        assert!(!cookie_is_ours(&other, &cookie), "another deployment's");
        assert!(!cookie_is_ours(&ring, ""));
    }

    #[test]
    fn link_texts_with_invisible_formatting_are_refused() {
        for text in [
            "Acme \u{202e}gnp.exe",
            "Ac\u{200b}me",
            "\u{2066}Acme\u{2069}",
            "\u{feff}Acme",
        ] {
            assert!(check_link_text("label", text).is_err(), "{text:?}");
        }
        for text in ["Acme", "Café Zürich", "株式会社", "Acme (NL) – Books"] {
            assert!(check_link_text("label", text).is_ok(), "{text:?}");
        }
    }

    fn keys(id: &str) -> (String, LinkKeys) {
        let json = KeyRing::generate_json(id).expect("rng");
        let keys = LinkKeys::from_json(&json).expect("keys");
        (json, keys)
    }

    fn claims() -> ConnectClaims {
        ConnectClaims {
            provider: "exact".to_owned(),
            connection: ConnectionId::parse("acme-1").expect("id"),
            kind: ConnectionKind::Shared,
            return_url: Some(Url::parse("https://app.example.com/integrations/done?x=1").expect("url")),
            issued_at: 500_000,
            expires_at: 2_000,
            label: None,
            user: None,
        }
    }

    fn allow() -> Vec<Url> {
        vec![Url::parse("https://app.example.com/integrations").expect("url")]
    }

    fn query_of(url: &Url) -> BTreeMap<String, String> {
        url.query_pairs().into_owned().collect()
    }

    fn callback() -> Url {
        Url::parse("https://abc.execute-api.eu-west-1.amazonaws.com/prod/callback").expect("url")
    }

    #[test]
    fn a_signed_link_verifies_and_names_its_claims() {
        let (_, keys) = keys("k1");
        let url = keys.connect_url(Some(&callback()), &claims()).expect("link");
        assert!(
            url.as_str()
                .starts_with("https://abc.execute-api.eu-west-1.amazonaws.com/prod/connect/exact?"),
            "{url}"
        );
        let verified = keys.verify("exact", &query_of(&url), 1_000, &allow()).expect("valid");
        assert_eq!(verified, claims());
    }

    #[test]
    fn tampering_expiry_and_wrong_keys_are_refused() {
        let (_, keys) = keys("k1");
        let url = keys.connect_url(Some(&callback()), &claims()).expect("link");
        let query = query_of(&url);
        for (key, value) in [
            ("connection", "acme-2"),
            ("kind", "per_user"),
            ("return", "https://app.example.com/integrations/other"),
            ("expires", "999999"),
            ("issued", "1"),
            ("sig", "AAAA"),
        ] {
            let mut tampered = query.clone();
            tampered.insert(key.to_owned(), value.to_owned());
            assert_eq!(
                keys.verify("exact", &tampered, 1_000, &allow()),
                Err(LinkError::BadSignature),
                "{key}"
            );
        }
        assert_eq!(
            keys.verify("xero", &query, 1_000, &allow()),
            Err(LinkError::BadSignature),
            "another provider"
        );
        assert_eq!(
            keys.verify("exact", &query, 2_000, &allow()),
            Err(LinkError::Expired(2_000))
        );
        // Signed, but made in the future (beyond the clock-skew allowance).
        let mut future = claims();
        future.issued_at = 1_000_000 + 600_000;
        let url = keys.connect_url(Some(&callback()), &future).expect("link");
        assert_eq!(
            keys.verify("exact", &query_of(&url), 1_000, &allow()),
            Err(LinkError::Malformed("issued"))
        );
        // Signed, but longer-lived than any link `connect_url` makes.
        assert_eq!(
            keys.verify("exact", &query, 2_000 - 31 * 86_400, &allow()),
            Err(LinkError::TooLong)
        );
        let mut unsigned = query.clone();
        unsigned.remove("sig");
        assert_eq!(
            keys.verify("exact", &unsigned, 1_000, &allow()),
            Err(LinkError::Missing("sig"))
        );
        let (_, other) = self::keys("k1");
        assert_eq!(
            other.verify("exact", &query, 1_000, &allow()),
            Err(LinkError::BadSignature),
            "another key"
        );
    }

    #[test]
    fn link_keys_rotate() {
        let (old_json, old) = keys("k1");
        let url = old.connect_url(Some(&callback()), &claims()).expect("link");
        let old: serde_json::Value = serde_json::from_str(&old_json).expect("json");
        let new: serde_json::Value = serde_json::from_str(&KeyRing::generate_json("k2").expect("rng")).expect("json");
        let both = serde_json::json!({"current": "k2", "keys": {"k1": old["keys"]["k1"], "k2": new["keys"]["k2"]}});
        let rotated = LinkKeys::from_json(&both.to_string()).expect("keys");
        rotated
            .verify("exact", &query_of(&url), 1_000, &allow())
            .expect("links signed with k1 still work");
        let fresh = rotated.connect_url(Some(&callback()), &claims()).expect("link");
        assert_eq!(query_of(&fresh)["kid"], "k2");
    }

    #[test]
    fn return_urls_must_be_on_the_allow_list() {
        let allowed = allow();
        for bad in [
            "https://app.example.com.evil.example/integrations",
            "http://app.example.com/integrations",
            "https://app.example.com:8443/integrations",
            "https://app.example.com/other",
            "https://app.example.com/integrations-evil",
            "https://user@app.example.com/integrations",
            "https://user:pass@app.example.com/integrations/done",
        ] {
            let url = Url::parse(bad).expect("url");
            assert!(check_return_url(&url, &allowed).is_err(), "{bad}");
        }
        for good in [
            "https://app.example.com/integrations",
            "https://app.example.com/integrations/done?x=1",
            "https://app.example.com:443/integrations/",
        ] {
            let url = Url::parse(good).expect("url");
            assert!(check_return_url(&url, &allowed).is_ok(), "{good}");
        }
        let folder = [Url::parse("https://app.example.com/integrations/").expect("url")];
        let below = Url::parse("https://app.example.com/integrations/done").expect("url");
        assert!(check_return_url(&below, &folder).is_ok());
        let (_, keys) = keys("k1");
        let mut claims = claims();
        claims.return_url = Some(Url::parse("https://evil.example/").expect("url"));
        let url = keys.connect_url(Some(&callback()), &claims).expect("link");
        assert!(matches!(
            keys.verify("exact", &query_of(&url), 1_000, &allowed),
            Err(LinkError::ReturnUrlNotAllowed(_))
        ));
    }

    #[test]
    fn lifetimes_parse() {
        assert_eq!(parse_lifetime("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_lifetime("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_lifetime("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_lifetime("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_lifetime("31d"), Err(LinkError::TooLong));
        for bad in ["", "h", "10", "0h", "1w", "-1h"] {
            assert!(parse_lifetime(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_label_and_user_are_signed_and_links_without_them_keep_the_old_signature() {
        let (_, keys) = keys("k1");
        let mut labelled = claims();
        labelled.label = Some("Acme projects <sync>".to_owned());
        labelled.user = Some("alice@acme.example".to_owned());
        let url = keys.connect_url(Some(&callback()), &labelled).expect("link");
        let query = query_of(&url);
        assert_eq!(keys.verify("exact", &query, 1_000, &allow()), Ok(labelled.clone()));
        for (key, value) in [("label", "Evil Corp"), ("for", "mallory@evil.example")] {
            let mut tampered = query.clone();
            tampered.insert(key.to_owned(), value.to_owned());
            assert_eq!(
                keys.verify("exact", &tampered, 1_000, &allow()),
                Err(LinkError::BadSignature),
                "{key}"
            );
            let mut removed = query.clone();
            removed.remove(key);
            assert_eq!(
                keys.verify("exact", &removed, 1_000, &allow()),
                Err(LinkError::BadSignature),
                "{key}"
            );
        }
        // The v2 text, unchanged, for a link without them.
        assert!(message(&claims()).starts_with("oauth-sync connect v2\nexact\nacme-1\n"));
        for bad in [String::new(), "x".repeat(MAX_LINK_TEXT + 1), "two\nlines".to_owned()] {
            let mut claims = claims();
            claims.label = Some(bad.clone());
            assert_eq!(
                keys.connect_url(Some(&callback()), &claims),
                Err(LinkError::Malformed("label")),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_form_token_belongs_to_one_browser_and_one_link() {
        let (_, keys) = keys("k1");
        let token = form_token(&keys, "cookie-a", "link-1").expect("token");
        assert!(form_token_matches(&keys, &token, "cookie-a", "link-1"));
        assert!(
            !form_token_matches(&keys, &token, "cookie-b", "link-1"),
            "another browser"
        );
        assert!(!form_token_matches(&keys, &token, "cookie-a", "link-2"), "another link");
        for forged in ["", "k1.", "k1.AAAA", "k2.x", "no-dot"] {
            assert!(!form_token_matches(&keys, forged, "cookie-a", "link-1"), "{forged}");
        }
        let (_, other) = self::keys("k1");
        assert!(!form_token_matches(&other, &token, "cookie-a", "link-1"), "another key");
        assert!(!token.contains("cookie-a"));
    }
}
