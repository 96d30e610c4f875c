//! Doctor's checks against canned answers and a local token endpoint.

use super::*;
use crate::config::Config;
use crate::oauth::{ClientCredentials, TokenError};

fn answer(status: u16, error: &str, message: &str) -> [TokenError; 3] {
    let (error, message) = (error.to_owned(), message.to_owned());
    [
        TokenError::DeadToken {
            status,
            error: error.clone(),
            message: message.clone(),
        },
        TokenError::InvalidClient {
            status,
            error: error.clone(),
            message: message.clone(),
        },
        TokenError::Rejected { status, error, message },
    ]
}

#[test]
fn ip_restriction_answers_are_named_as_such_and_others_are_not() {
    for (status, error, message, restricted) in [
        (400, "invalid_grant", "ip restricted", true),
        (400, "invalid_grant", "IP_RESTRICTED", true),
        (400, "IP_RESTRICTED", "no description", true),
        (
            403,
            "access_denied",
            "Your IP address 203.0.113.9 is not on the allow-list",
            true,
        ),
        (403, "no error code", "non-JSON answer: Forbidden: IP not allowed", true),
        (401, "unauthorized", "Requests from this IP are blocked", true),
        (400, "invalid_grant", "expired access/refresh token", false),
        (400, "invalid_grant", "token is invalid", false),
        (401, "invalid_client", "invalid client credentials", false),
        (403, "forbidden", "redirect_uri is not in the allowlist", false),
        (403, "insufficient_scope", "ship it", false),
    ] {
        for e in answer(status, error, message) {
            let found = ip_restriction(&e);
            assert_eq!(found.is_some(), restricted, "{e}");
            if let Some(found) = found {
                assert!(found.contains(message), "{found}");
            }
        }
    }
    assert_eq!(ip_restriction(&TokenError::Unreachable("ip".into())), None);
}

/// A token endpoint that answers every request with `status` and `body`.
async fn token_endpoint(status: u16, body: &'static str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut request = vec![0u8; 16 * 1024];
            let _ = socket.read(&mut request).await;
            let response = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
        }
    });
    format!("http://{address}/token")
}

#[tokio::test]
async fn doctor_names_a_salesforce_ip_restriction_and_suggests_the_vpc_parameters() {
    let url = token_endpoint(400, r#"{"error":"invalid_grant","error_description":"ip restricted"}"#).await;
    let text = format!(
        "[providers.sf]\npreset = \"salesforce\"\ncredentials_secret = \"s\"\n\
         authorize_url = \"https://login.salesforce.com/services/oauth2/authorize\"\ntoken_url = \"{url}\"\n"
    );
    let config = Config::parse(&text, "test.toml").unwrap_or_else(|e| panic!("{e}"));
    let credentials = ClientCredentials {
        client_id: "id".into(),
        client_secret: crate::secret::ClientSecret::new("cs-planted"),
    };
    let http = crate::http::client(std::time::Duration::from_secs(5), crate::http::Pooling::Off).expect("client");
    let found = probe_token_endpoint(&config.providers["sf"], &credentials, &http).await;
    assert_eq!(found.verdict, Verdict::Fail, "{found:?}");
    assert!(
        found
            .detail
            .contains("refused the caller's IP address (HTTP 400 invalid_grant: ip restricted)")
            && found.detail.contains("VpcSubnetIds and VpcSecurityGroupId"),
        "{}",
        found.detail
    );
    assert!(!found.detail.contains("planted"));

    // The same endpoint's ordinary dead-token answer means the credentials were accepted.
    let url = token_endpoint(
        400,
        r#"{"error":"invalid_grant","error_description":"expired access/refresh token"}"#,
    )
    .await;
    let config = Config::parse(&text.replace(&url_of(&text), &url), "test.toml").unwrap_or_else(|e| panic!("{e}"));
    let found = probe_token_endpoint(&config.providers["sf"], &credentials, &http).await;
    assert_eq!(found.verdict, Verdict::Ok, "{found:?}");
}

fn url_of(text: &str) -> String {
    let start = text.find("token_url = \"").expect("token_url") + "token_url = \"".len();
    text[start..].split('"').next().expect("url").to_owned()
}

#[test]
fn a_generic_provider_without_an_offline_scope_is_told_how_to_check_refresh_tokens() {
    let findings = |table: &str| {
        let text = format!("[providers.p]\ncredentials_secret = \"s\"\n{table}");
        let config = Config::parse(&text, "test.toml").unwrap_or_else(|e| panic!("{e}"));
        check_settings(&config.providers["p"], &config.service)
            .into_iter()
            .filter(|f| f.check == "refresh token scope")
            .collect::<Vec<_>>()
    };
    let generic = "preset = \"generic\"\nauthorize_url = \"https://id.example/auth\"\n\
                   token_url = \"https://id.example/token\"\n";
    let found = findings(generic);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].verdict, Verdict::Warn);
    assert!(
        found[0]
            .detail
            .contains("whether a login gets a refresh token cannot be checked")
            && found[0]
                .detail
                .contains("offline_scope = \"offline_access\" for OpenID Connect servers"),
        "{}",
        found[0].detail
    );
    // Set, it is checked instead; a preset that knows its provider is not warned about.
    let set = findings(&format!(
        "{generic}scopes = [\"offline_access\"]\noffline_scope = \"offline_access\"\n"
    ));
    assert_eq!(set.len(), 1);
    assert_eq!(set[0].verdict, Verdict::Ok);
    assert!(findings("preset = \"hubspot\"\n").is_empty());
}

#[test]
fn stack_outputs_name_the_callback_url_to_set_and_the_tables_to_export() {
    let outputs: std::collections::BTreeMap<String, String> = [
        (
            "CallbackUrl",
            "https://abc.execute-api.eu-west-1.amazonaws.com/callback",
        ),
        ("ConnectionsTableName", "stack-Connections-1"),
        ("RecordsTableName", "stack-Records-1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let mut service = ServiceSettings::default();
    let env = |var: &str| (var == crate::runtime::CONNECTIONS_TABLE_ENV).then(|| "stack-Connections-1".to_owned());
    let found = check_stack_outputs(&outputs, &service, &env);
    assert_eq!(found[0].verdict, Verdict::Fail);
    assert!(
        found[0]
            .detail
            .contains("set service.callback_url = \"https://abc.execute-api"),
        "{:?}",
        found[0]
    );
    assert_eq!(
        (found[1].check, found[1].verdict),
        ("ConnectionsTableName", Verdict::Ok)
    );
    assert_eq!((found[2].check, found[2].verdict), ("RecordsTableName", Verdict::Warn));
    assert!(
        found[2]
            .detail
            .contains("export OAUTH_SYNC_RECORDS_TABLE=stack-Records-1")
    );
    service.callback_url = Url::parse("https://abc.execute-api.eu-west-1.amazonaws.com/callback").ok();
    assert_eq!(check_stack_outputs(&outputs, &service, &env)[0].verdict, Verdict::Ok);
}
