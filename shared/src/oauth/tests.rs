//! The token client's unit tests: answers read as each provider sends them.

use super::transport::{MAX_RETRY_AFTER_SECS, Seen, for_the_crate, retry_after};
use super::*;
use crate::config::PresetName;
use reqwest::StatusCode;
use serde_json::json;

#[test]
fn retry_after_is_read_as_seconds_and_bounded() {
    let header = |value: &str| {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::RETRY_AFTER,
            reqwest::header::HeaderValue::from_str(value).expect("header value"),
        );
        retry_after(&headers)
    };
    assert_eq!(header("120"), Some(120));
    assert_eq!(header(" 7 "), Some(7));
    assert_eq!(header("99999999999"), Some(MAX_RETRY_AFTER_SECS));
    assert_eq!(header("Wed, 21 Oct 2015 07:28:00 GMT"), None, "dates are not read");
    assert_eq!(header("-5"), None);
    assert_eq!(retry_after(&reqwest::header::HeaderMap::new()), None);

    let e = TokenError::Unavailable {
        status: 429,
        retry_after: None,
    }
    .with_retry_after(Some(30));
    assert_eq!(e.retry_after(), Some(std::time::Duration::from_secs(30)));
    assert!(e.to_string().contains("retry after 30 s"), "{e}");
    let other = TokenError::Unreachable("refused".into()).with_retry_after(Some(30));
    assert_eq!(other.retry_after(), None, "only an unavailable answer carries it");
}

fn parse(preset: PresetName, status: u16, body: Value) -> Result<TokenSet, TokenError> {
    let status = StatusCode::from_u16(status).expect("status");
    parse_token_response(
        &preset.settings(),
        status,
        body.to_string().as_bytes(),
        &["rt-sent-secret"],
    )
}

#[test]
fn basic_auth_form_encodes_before_base64() {
    // RFC 6749 §2.3.1: "a:b+c" becomes "a%3Ab%2Bc" before base64.
    let header = basic_auth("id 1", "a:b+c");
    let decoded = STANDARD.decode(header.trim_start_matches("Basic ")).expect("base64");
    assert_eq!(String::from_utf8(decoded).expect("utf8"), "id+1:a%3Ab%2Bc");
}

#[test]
fn exact_expires_in_as_string() {
    let set = parse(
        PresetName::ExactOnline,
        200,
        json!({"access_token": "at", "token_type": "bearer", "expires_in": "600", "refresh_token": "rt"}),
    )
    .expect("parses");
    assert_eq!((set.expires_in, set.expires_in_assumed), (600, false));
    assert_eq!(set.refresh_token.map(|t| t.secret().to_owned()).as_deref(), Some("rt"));
}

#[test]
fn salesforce_without_expires_in_uses_the_preset() {
    let set = parse(
        PresetName::Salesforce,
        200,
        json!({"access_token": "at", "instance_url": "https://na1.example", "issued_at": "1", "signature": "x"}),
    )
    .expect("parses");
    assert_eq!((set.expires_in, set.expires_in_assumed), (7200, true));
    assert_eq!(set.instance_url.as_deref(), Some("https://na1.example"));
    assert!(
        set.refresh_token.is_none(),
        "no refresh token: the caller keeps the old one"
    );
}

#[test]
fn extra_fields_and_scopes() {
    let set = parse(
        PresetName::Microsoft,
        200,
        json!({"access_token": "at", "token_type": "Bearer", "expires_in": 4000, "ext_expires_in": 4000, "scope": "User.Read Contacts.Read", "refresh_token": "rt", "id_token": "x"}),
    )
    .expect("parses");
    assert_eq!(
        set.scope.as_deref(),
        Some(&["User.Read".to_owned(), "Contacts.Read".to_owned()][..])
    );
}

#[test]
fn unusable_responses_are_named_without_quoting_tokens() {
    let e = parse(
        PresetName::Generic,
        200,
        json!({"token_type": "bearer", "refresh_token": "rt-planted"}),
    )
    .unwrap_err();
    assert!(
        matches!(&e, TokenError::InvalidResponse(m) if m.contains("no `access_token`")),
        "{e}"
    );
    assert!(!e.to_string().contains("planted"));

    let e = parse(
        PresetName::Generic,
        200,
        json!({"access_token": "at-planted", "expires_in": "ten"}),
    )
    .unwrap_err();
    assert!(e.to_string().contains("`expires_in` is not a number"), "{e}");
    assert!(!e.to_string().contains("planted"));

    let e = parse(
        PresetName::Generic,
        200,
        json!({"access_token": "at", "token_type": "mac"}),
    )
    .unwrap_err();
    assert!(e.to_string().contains("token_type `mac`"), "{e}");

    let e = parse_token_response(
        &PresetName::Generic.settings(),
        StatusCode::OK,
        b"{\"access_token\": \"at-planted\", \"refresh_tok",
        &[],
    )
    .unwrap_err();
    assert!(
        matches!(&e, TokenError::InvalidResponse(m) if m.contains("not a JSON object")),
        "{e}"
    );
    assert!(!e.to_string().contains("planted"));
}

#[test]
fn echoed_secrets_are_scrubbed_even_encoded_or_at_the_cut() {
    let secret = "cs:planted+secret/value";
    let encoded: String = byte_serialize(secret.as_bytes()).collect();
    let long = format!("{}{secret}", "x".repeat(crate::text::MAX_EXCERPT - 5));
    for description in [format!("bad client {secret}"), format!("bad client {encoded}"), long] {
        let body = json!({"error": "invalid_request", "error_description": description});
        let e = parse_token_response(
            &PresetName::Generic.settings(),
            StatusCode::BAD_REQUEST,
            body.to_string().as_bytes(),
            &["rt-sent", secret],
        )
        .unwrap_err();
        let text = format!("{e} {e:?}");
        assert!(
            !text.contains("planted") && !text.contains("cs:p") && !text.contains("cs%3Ap"),
            "{text}"
        );
    }
}

#[test]
fn provider_text_is_kept_on_one_line() {
    // Found by fuzz::token_answer: `"expires_in": "\u2028"` was quoted with
    // the line separator in it.
    let e = parse(
        PresetName::ExactOnline,
        200,
        json!({"access_token": "at", "expires_in": "1\u{2028}2"}),
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("`expires_in` is not a number of seconds: \"12\""),
        "{e}"
    );
    let e = parse(
        PresetName::Generic,
        400,
        json!({"error": "invalid_request", "error_description": "a\u{2029}b\r\nc\u{85}d"}),
    )
    .unwrap_err();
    assert!(e.to_string().ends_with(": abcd"), "{e}");
}

#[test]
fn a_cut_off_token_answer_with_an_error_status_is_not_quoted() {
    // Found by fuzz::token_answer: a 300 whose body was a token answer cut
    // short quoted the new access token as "non-JSON answer: {...".
    for body in [
        &br#"{"access_token":"at-planted-0b7e55d1c9","token_type":"Bea"#[..],
        b"access_token=at-planted-0b7e55d1c9&token_type=bearer",
        // The long run: a stray byte before the JSON hid its `{`.
        b"\xff{\"x\":1,\"access_token\":\"at-planted-0b7e55d1c9\"",
        b"\xef\xbb\xbf{\"y\":\"at-planted-0b7e55d1c9\"",
        b"<pre>access_token: at-planted-0b7e55d1c9</pre>",
    ] {
        let e =
            parse_token_response(&PresetName::Generic.settings(), StatusCode::MULTIPLE_CHOICES, body, &[]).unwrap_err();
        let text = format!("{e} {e:?}");
        assert!(!text.contains("planted"), "{text}");
        assert!(text.contains("not valid JSON") && text.contains("bytes"), "{text}");
    }
    let e = parse_token_response(
        &PresetName::Generic.settings(),
        StatusCode::FORBIDDEN,
        b"<html>Forbidden by the firewall</html>",
        &[],
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("Forbidden by the firewall"),
        "an error page is still quoted: {e}"
    );
}

#[test]
fn expires_in_as_a_decimal_string_is_read() {
    let set = parse(
        PresetName::Generic,
        200,
        json!({"access_token": "at", "expires_in": "3600.0"}),
    )
    .expect("parses");
    assert_eq!(set.expires_in, 3600);
}

#[test]
fn errors_are_classified_per_preset() {
    let e = parse(
        PresetName::ExactOnline,
        401,
        json!({"error": "unauthorized_client", "error_description": "Old refresh token used."}),
    )
    .unwrap_err();
    assert!(
        matches!(&e, TokenError::DeadToken { message, .. } if message == "Old refresh token used."),
        "{e}"
    );

    let e = parse(
        PresetName::Hubspot,
        400,
        json!({"status": "BAD_REFRESH_TOKEN", "message": "missing or unknown refresh token"}),
    )
    .unwrap_err();
    assert!(
        matches!(&e, TokenError::DeadToken { error, .. } if error == "BAD_REFRESH_TOKEN"),
        "{e}"
    );

    let e = parse(PresetName::Zoho, 200, json!({"error": "invalid_code"})).unwrap_err();
    assert!(matches!(e, TokenError::DeadToken { .. }), "{e}");

    let e = parse(
        PresetName::Microsoft,
        401,
        json!({"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided."}),
    )
    .unwrap_err();
    assert!(matches!(e, TokenError::InvalidClient { .. }), "{e}");

    let e = parse(PresetName::Xero, 503, json!({"error": "temporarily_unavailable"})).unwrap_err();
    assert!(e.is_transient(), "{e}");
    let e = parse(PresetName::Xero, 504, json!({})).unwrap_err();
    assert!(
        matches!(e, TokenError::OutcomeUnknown(_)),
        "a gateway timeout may hide a rotation: {e}"
    );

    let e = parse_token_response(
        &PresetName::Generic.settings(),
        StatusCode::BAD_REQUEST,
        b"<html>oops rt-sent-secret</html>",
        &["rt-sent-secret"],
    )
    .unwrap_err();
    assert!(
        matches!(&e, TokenError::Rejected { message, .. } if message.contains("non-JSON answer")),
        "{e}"
    );
    assert!(
        !e.to_string().contains("rt-sent-secret"),
        "echoed secrets are scrubbed: {e}"
    );
}

/// For a refresh: was it certainly not processed, is its outcome unknown,
/// or is the token dead?
fn class(e: &TokenError) -> &'static str {
    match e {
        TokenError::DeadToken { .. } => "dead",
        e if e.outcome_unknown() => "unknown",
        _ => "not processed",
    }
}

#[test]
fn each_answer_has_one_class_for_a_refresh() {
    let table: &[(u16, Value, &str)] = &[
        (503, json!({"error": "temporarily_unavailable"}), "not processed"),
        (429, json!({}), "not processed"),
        (400, json!({"error": "invalid_request"}), "not processed"),
        (401, json!({"error": "invalid_client"}), "not processed"),
        (403, json!({}), "not processed"),
        (404, json!({}), "not processed"),
        (501, json!({}), "not processed"),
        (400, json!({"error": "invalid_grant"}), "dead"),
        (408, json!({}), "unknown"),
        (500, json!({"error": "server_error"}), "unknown"),
        (502, json!({}), "unknown"),
        (504, json!({}), "unknown"),
        (200, json!({"token_type": "bearer"}), "unknown"),
    ];
    for (status, body, expected) in table {
        let e = parse(PresetName::Generic, *status, body.clone()).unwrap_err();
        assert_eq!(class(&e), *expected, "HTTP {status} {body}: {e}");
    }
    for status in 520..=527 {
        let e = parse(PresetName::Generic, status, json!({})).unwrap_err();
        assert_eq!(class(&e), "unknown", "CDN {status}: {e}");
    }
    for status in [429, 503] {
        let e = parse(PresetName::Generic, status, json!({})).unwrap_err();
        assert!(e.is_transient(), "{status}: {e}");
    }
    let e = parse_token_response(&PresetName::Generic.settings(), StatusCode::OK, b"<html>", &[]).unwrap_err();
    assert_eq!(class(&e), "unknown", "an unusable 2xx: {e}");
    let e = parse_token_response(&PresetName::Generic.settings(), StatusCode::BAD_GATEWAY, b"", &[]).unwrap_err();
    assert_eq!(class(&e), "unknown", "an empty 502: {e}");
}

#[test]
fn transport_failures_are_not_sent_or_unknown() {
    let e = TokenError::from(TransportError::NotSent("connection refused".into()));
    assert!(e.is_transient() && !e.outcome_unknown(), "{e}");
    let e = TokenError::from(TransportError::Unbuildable("bad header".into()));
    assert!(e.is_transient() && !e.outcome_unknown(), "{e}");
    for failure in [
        TransportError::Timeout("operation timed out".into()),
        TransportError::Dropped("connection closed before message completed".into()),
        TransportError::TooLarge,
    ] {
        let e = TokenError::from(failure);
        assert!(e.outcome_unknown() && !e.is_transient(), "{e}");
    }
}

#[test]
fn retry_after_of_the_answer_reaches_the_error() {
    let client = OauthClient::new(ClientId::new("client".to_owned()))
        .set_token_uri(TokenUrl::new("https://auth.example/token".to_owned()).expect("url"));
    let token = oauth2::RefreshToken::new("rt".to_owned());
    let answer = |_| Ok::<_, TransportError>(for_the_crate(StatusCode::TOO_MANY_REQUESTS, Vec::new()));
    let result = client.exchange_refresh_token(&token).request(&answer);
    let seen = Seen {
        status: StatusCode::TOO_MANY_REQUESTS,
        retry_after: Some(7),
    };
    let e = interpret(&PresetName::Generic.settings(), Some(seen), result, &[]).unwrap_err();
    assert_eq!(e.retry_after(), Some(std::time::Duration::from_secs(7)), "{e}");
}

#[test]
fn any_2xx_with_a_token_is_a_success() {
    let body = json!({"access_token": "at", "token_type": "Bearer", "expires_in": 60});
    let set = parse_token_response(
        &PresetName::Generic.settings(),
        StatusCode::CREATED,
        body.to_string().as_bytes(),
        &[],
    )
    .expect("201 reads like 200");
    assert_eq!(set.access_token.secret(), "at");
}

/// The request the crate builds for a refresh, captured.
fn refresh_request(auth: AuthType, id: &str, secret: &str) -> oauth2::HttpRequest {
    let client = OauthClient::new(ClientId::new(id.to_owned()))
        .set_client_secret(oauth2::ClientSecret::new(secret.to_owned()))
        .set_auth_type(auth)
        .set_token_uri(TokenUrl::new("https://auth.example/token".to_owned()).expect("url"));
    let token = oauth2::RefreshToken::new("rt".to_owned());
    let captured = std::sync::Mutex::new(None);
    let answer = |request: oauth2::HttpRequest| {
        *captured.lock().expect("lock") = Some(request);
        let body = json!({"access_token": "at"}).to_string().into_bytes();
        Ok::<_, TransportError>(for_the_crate(StatusCode::OK, body))
    };
    client.exchange_refresh_token(&token).request(&answer).expect("token");
    captured.into_inner().expect("lock").expect("a request")
}

#[test]
fn the_crate_encodes_basic_client_credentials_like_rfc_6749() {
    let request = refresh_request(AuthType::BasicAuth, "id 1", "a:b+c");
    let header = request.headers()[AUTHORIZATION].to_str().expect("ascii");
    assert_eq!(header, basic_auth("id 1", "a:b+c"));
    let body = String::from_utf8(request.body().clone()).expect("utf8");
    assert!(!body.contains("client_secret"), "{body}");
    assert!(
        body.contains("grant_type=refresh_token") && body.contains("refresh_token=rt"),
        "{body}"
    );

    let request = refresh_request(AuthType::RequestBody, "id 1", "a:b+c");
    assert!(request.headers().get(AUTHORIZATION).is_none());
    let body = String::from_utf8(request.body().clone()).expect("utf8");
    assert!(
        body.contains("client_id=id+1") && body.contains("client_secret=a%3Ab%2Bc"),
        "{body}"
    );
}

#[test]
fn the_authorize_url_carries_the_request_and_s256() {
    let config = crate::config::Config::parse(
        "[providers.g]\npreset = \"generic\"\ncredentials_secret = \"s\"\n\
         authorize_url = \"https://a.example/auth?tenant=t\"\ntoken_url = \"https://a.example/token\"\n\
         scopes = [\"read\", \"offline_access\"]\nauthorize_params = { prompt = \"consent\" }\n",
        "test.toml",
    )
    .expect("config");
    let provider = &config.providers["g"];
    let url = authorize_url(provider, "client 1", "https://cb.example/callback/g", "st", Some("ch"));
    let query: std::collections::HashMap<String, String> = url.query_pairs().into_owned().collect();
    let expected = [
        ("tenant", "t"),
        ("response_type", "code"),
        ("client_id", "client 1"),
        ("redirect_uri", "https://cb.example/callback/g"),
        ("scope", "read offline_access"),
        ("state", "st"),
        ("code_challenge", "ch"),
        ("code_challenge_method", "S256"),
        ("prompt", "consent"),
    ];
    for (key, value) in expected {
        assert_eq!(query.get(key).map(String::as_str), Some(value), "{key} in {url}");
    }
    assert_eq!(query.len(), expected.len(), "{url}");

    let bare = authorize_url(provider, "client 1", "https://cb.example/callback/g", "st", None);
    assert!(!bare.as_str().contains("code_challenge"), "{bare}");
}

#[test]
fn an_error_answer_prints_only_its_code() {
    let answer: ProviderError = serde_json::from_value(json!({
        "error": "invalid_request",
        "error_description": "bad token rt-planted"
    }))
    .expect("any JSON");
    let text = format!("{answer} {answer:?}");
    assert!(text.contains("invalid_request") && !text.contains("planted"), "{text}");
}
