//! The token endpoint's answer: a status and a body become a `TokenSet` or a
//! `TokenError`, read exactly as a refresh reads it (the `oauth2` crate's
//! response handling, then ours).

use proptest::prelude::*;
use reqwest::StatusCode;
use serde_json::{Map, Value, json};

use super::{assert_clear_error, cases, edge_integer, hostile_string, raw_bytes, truncate};
use crate::config::PresetName;
use crate::oauth::{TokenError, TokenSet, parse_token_response};

/// The refresh token the request sent; a provider may echo it anywhere.
const SENT: &str = "rt-sent-4f9c2a7e81d3";
/// Tokens planted in the answer's token fields; no error may quote them.
const PLANTED_ACCESS: &str = "at-planted-0b7e55d1c9";
const PLANTED_REFRESH: &str = "rt-planted-93aa0c4e27";
const PLANTED_ID: &str = "id-planted-61f0d2b8ee";

fn parse(preset: PresetName, status: u16, body: &[u8]) -> Result<TokenSet, TokenError> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    parse_token_response(&preset.settings(), status, body, &[SENT])
}

fn preset() -> impl Strategy<Value = PresetName> {
    proptest::sample::select(PresetName::ALL.to_vec())
}

/// Statuses a token endpoint and the gateways before it answer with.
fn status() -> impl Strategy<Value = u16> {
    prop_oneof![
        4 => Just(200u16),
        1 => proptest::sample::select(vec![
            201u16, 204, 299, 301, 302, 400, 401, 403, 404, 408, 429, 500, 502, 503, 504, 520, 527, 599,
        ]),
        1 => 100u16..1000,
    ]
}

/// `expires_in` as providers send it and as they should not.
fn expires_in() -> impl Strategy<Value = Value> {
    prop_oneof![
        edge_integer().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop_oneof![
            Just(1e300),
            Just(-0.0),
            Just(0.5),
            Just(3599.9),
            Just(-1.5),
            any::<f64>()
        ]
        .prop_map(|f| json!(f)),
        proptest::sample::select(vec![
            "600",
            " 3600 ",
            "3600.0",
            "1e3",
            "-5",
            "ten",
            "",
            "NaN",
            "inf",
            "1e400",
            "0x10",
            "18446744073709551616",
        ])
        .prop_map(Value::from),
        hostile_string().prop_map(Value::from),
        Just(Value::Bool(true)),
        Just(json!([600])),
        Just(json!({"seconds": 600})),
    ]
}

/// `scope` with odd whitespace, duplicates and wrong types.
fn scope() -> impl Strategy<Value = Value> {
    prop_oneof![
        proptest::collection::vec(("[A-Za-z.:/_-]{1,12}", "[ \t\r\n\u{a0}\u{2003}]{1,3}"), 0..6)
            .prop_map(|parts| Value::from(parts.into_iter().map(|(s, w)| s + &w).collect::<String>())),
        hostile_string().prop_map(Value::from),
        Just(json!(["openid", "email"])),
        Just(json!(42)),
    ]
}

/// A value of any JSON type, nested up to a few levels, holding `planted`
/// somewhere when given.
fn any_json(planted: Option<&'static str>) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        edge_integer().prop_map(Value::from),
        hostile_string().prop_map(Value::from),
        Just(planted.map_or(Value::Null, Value::from)),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A token field: usually the planted token, sometimes something else.
fn token_field(planted: &'static str) -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        4 => Just(Some(Value::from(planted))),
        1 => Just(None),
        1 => Just(Some(Value::Null)),
        1 => Just(Some(Value::from(""))),
        1 => any_json(Some(planted)).prop_map(Some),
    ]
}

/// Answer fields a provider may send, each optional.
#[derive(Debug, Clone)]
struct Answer {
    access_token: Option<Value>,
    refresh_token: Option<Value>,
    id_token: Option<Value>,
    token_type: Option<Value>,
    expires_in: Option<Value>,
    scope: Option<Value>,
    error: Option<Value>,
    error_description: Option<Value>,
    extra: Vec<(String, Value)>,
}

impl Answer {
    fn body(&self) -> Map<String, Value> {
        let mut map = Map::new();
        let fields = [
            ("access_token", &self.access_token),
            ("refresh_token", &self.refresh_token),
            ("id_token", &self.id_token),
            ("token_type", &self.token_type),
            ("expires_in", &self.expires_in),
            ("scope", &self.scope),
            ("error", &self.error),
            ("error_description", &self.error_description),
        ];
        for (key, value) in fields {
            if let Some(value) = value {
                map.insert(key.to_owned(), value.clone());
            }
        }
        for (key, value) in &self.extra {
            map.insert(key.clone(), value.clone());
        }
        map
    }
}

fn answer() -> impl Strategy<Value = Answer> {
    let tokens = (
        token_field(PLANTED_ACCESS),
        token_field(PLANTED_REFRESH),
        token_field(PLANTED_ID),
    );
    let shape = (
        proptest::option::of(prop_oneof![
            proptest::sample::select(vec!["Bearer", "bearer", "BEARER", "mac", "", "Bearer "]).prop_map(Value::from),
            any_json(None),
        ]),
        proptest::option::of(expires_in()),
        proptest::option::of(scope()),
    );
    let refusal = (
        proptest::option::weighted(
            0.3,
            prop_oneof![
                proptest::sample::select(vec![
                    "invalid_grant",
                    "invalid_client",
                    "unauthorized_client",
                    "invalid_request",
                ])
                .prop_map(Value::from),
                Just(Value::from(SENT)),
                any_json(None),
            ],
        ),
        proptest::option::weighted(
            0.3,
            prop_oneof![
                Just(Value::from(format!("refresh token {SENT} is expired"))),
                hostile_string().prop_map(|s| Value::from(format!("{s}{SENT}{s}"))),
                hostile_string().prop_map(Value::from),
            ],
        ),
        proptest::collection::vec(
            (
                prop_oneof![
                    proptest::sample::select(vec![
                        "instance_url",
                        "api_domain",
                        "x_refresh_token_expires_in",
                        "status",
                        "errorCode",
                        "message",
                        "ext_expires_in",
                    ])
                    .prop_map(str::to_owned),
                    "[a-z_@.]{1,12}",
                ],
                any_json(Some(SENT)),
            ),
            0..3,
        ),
    );
    (tokens, shape, refusal).prop_map(
        |((access_token, refresh_token, id_token), (token_type, expires_in, scope), (error, description, extra))| {
            Answer {
                access_token,
                refresh_token,
                id_token,
                token_type,
                expires_in,
                scope,
                error,
                error_description: description,
                extra,
            }
        },
    )
}

/// Serialized, then sometimes damaged at the text level: a duplicate key
/// (JSON allows them; the last wins), a cut, or bytes that are not UTF-8.
///
/// One function: a generator with one arm per shape of token answer (test-
/// only).
fn serialize(answer: &Answer, damage: u8, at: usize) -> Vec<u8> {
    let text = Value::Object(answer.body()).to_string();
    match damage % 8 {
        0 => format!("{{\"access_token\":\"{PLANTED_ACCESS}\",{}", &text[1..]).into_bytes(),
        1 => format!("{{\"expires_in\":\"-1\",{}", &text[1..]).into_bytes(),
        2 => truncate(&text, at).as_bytes().to_vec(),
        3 => {
            let mut bytes = text.into_bytes();
            let i = at % bytes.len();
            bytes.insert(i, 0xff);
            bytes
        }
        _ => text.into_bytes(),
    }
}

/// The secrets that may appear in this body: every planted token, and what we sent.
const SECRETS: [&str; 4] = [SENT, PLANTED_ACCESS, PLANTED_REFRESH, PLANTED_ID];

proptest! {
    #![proptest_config(cases(512))]

    /// Whatever the answer, the call returns a token set or a clear error
    /// that quotes none of the tokens, sent or received.
    #[test]
    fn any_answer_gives_tokens_or_a_clear_error_without_secrets(
        preset in preset(),
        status in status(),
        answer in answer(),
        damage in any::<u8>(),
        at in any::<usize>(),
    ) {
        let body = serialize(&answer, damage, at);
        match parse(preset, status, &body) {
            Err(e) => assert_clear_error(&e, &SECRETS)?,
            Ok(set) => {
                prop_assert!((200..300).contains(&status), "HTTP {status} gave tokens");
                let access = set.access_token.secret();
                prop_assert!(!access.is_empty());
                prop_assert!(access.len() <= body.len(), "a token longer than the answer");
                if let Some(refresh) = &set.refresh_token {
                    prop_assert!(!refresh.secret().is_empty());
                }
                // A one-letter token is in any text; the planted ones are in none.
                let debug = format!("{set:?}");
                for planted in [PLANTED_ACCESS, PLANTED_REFRESH, PLANTED_ID] {
                    prop_assert!(!debug.contains(planted), "TokenSet's Debug shows {planted}");
                }
                if let Some(scopes) = &set.scope {
                    prop_assert!(scopes.iter().all(|s| !s.is_empty() && !s.chars().any(char::is_whitespace)));
                }
                let defaulted = answer.expires_in.as_ref().is_none_or(Value::is_null);
                prop_assert_eq!(set.expires_in_assumed, defaulted);
            }
        }
    }

    /// A well-formed answer reads as exactly what it says.
    #[test]
    fn a_valid_answer_reads_as_what_it_says(
        preset in preset(),
        status in 200u16..300,
        access in "[A-Za-z0-9._~+/=-]{1,2048}",
        refresh in proptest::option::of("[A-Za-z0-9._~+/=-]{1,2048}"),
        expires in prop_oneof![
            (0u64..=u64::MAX).prop_map(|n| (json!(n), n)),
            (0u64..1_000_000_000).prop_map(|n| (json!(n.to_string()), n)),
            (0u64..1_000_000).prop_map(|n| (json!(format!(" {n}.0 ")), n)),
        ],
        token_type in proptest::sample::select(vec!["Bearer", "bearer", "BeArEr"]),
        scopes in proptest::collection::vec("[A-Za-z0-9.:/_-]{1,20}", 0..5),
        separator in "[ \t]{1,3}",
    ) {
        let mut body = json!({
            "access_token": access,
            "token_type": token_type,
            "expires_in": expires.0,
            "scope": scopes.join(&separator),
        });
        if let Some(refresh) = &refresh {
            body["refresh_token"] = json!(refresh);
        }
        let set = parse(preset, status, body.to_string().as_bytes());
        let set = set.map_err(|e| TestCaseError::fail(format!("{body}: {e}")))?;
        prop_assert_eq!(set.access_token.secret(), access.as_str());
        prop_assert_eq!(set.refresh_token.as_ref().map(|t| t.secret()), refresh.as_deref());
        prop_assert_eq!((set.expires_in, set.expires_in_assumed), (expires.1, false));
        prop_assert_eq!(set.scope, Some(scopes));
    }

    /// Bytes that are not a token answer at all.
    #[test]
    fn raw_bytes_give_a_clear_error(preset in preset(), status in status(), body in raw_bytes()) {
        if let Err(e) = parse(preset, status, &body) {
            assert_clear_error(&e, &SECRETS)?;
        }
    }
}
