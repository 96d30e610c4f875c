//! A data API page: records and the link to the next page, in every
//! pagination style. `pages.rs` promises that a next link is followed only on
//! the API's own origin (the bearer token goes with it), so every link a page
//! can yield is checked against the request's origin.

use proptest::prelude::*;
use serde_json::{Value, json};
use url::Url;

use super::{assert_clear_error, cases, hostile_string, raw_bytes, truncate};
use crate::config::Pagination;
use crate::sync::pages::{Page, PageError, parse_page};

/// Where the requests go: hosts with ports, IPs, IDN and odd paths.
fn request() -> impl Strategy<Value = Url> {
    let origin = proptest::sample::select(vec![
        "https://api.test",
        "http://api.test:8080",
        "https://start.exactonline.nl",
        "https://127.0.0.1:9443",
        "https://[::1]",
        "https://xn--bcher-kva.test",
    ]);
    let path = proptest::sample::select(vec![
        "/",
        "/api/v1/1/sync/Project/Projects",
        "/v1.0/me/contacts/delta",
        "/services/data/v62.0/query",
        "/a%20b/..;/c",
    ]);
    let query = proptest::option::of("[a-z$]{1,6}=[A-Za-z0-9,%]{0,12}(&[a-z]{1,5}=[0-9]{1,4}){0,2}");
    (origin, path, query).prop_map(|(origin, path, query)| {
        let text = match query {
            Some(q) => format!("{origin}{path}?{q}"),
            None => format!("{origin}{path}"),
        };
        Url::parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"))
    })
}

/// Every pagination style, with the record path a sync would configure.
fn style() -> impl Strategy<Value = (Pagination, String)> {
    prop_oneof![
        Just((Pagination::OdataV2, "d.results".to_owned())),
        Just((Pagination::OdataNextLink, "value".to_owned())),
        Just((Pagination::NextRecordsUrl, "records".to_owned())),
        Just((Pagination::LinkHeader, String::new())),
        (
            "[a-z]{1,8}",
            prop_oneof![Just("paging.next.after".to_owned()), "[a-z.0-9]{0,12}"]
        )
            .prop_map(|(param, next_field)| (
                Pagination::Cursor {
                    param,
                    next_field,
                    items_field: "results".to_owned()
                },
                "results".to_owned()
            )),
        ("[a-z$]{1,8}", "[a-z$]{1,8}", any::<u64>()).prop_map(|(offset_param, limit_param, first)| (
            Pagination::Offset {
                offset_param,
                limit_param,
                first
            },
            String::new()
        )),
        ("[a-z]{1,8}", any::<u64>())
            .prop_map(|(param, first)| (Pagination::PageNumber { param, first }, "items".to_owned())),
    ]
}

/// A next link: on the request's origin, relative, or trying to leave it by
/// every trick a URL parser has been fooled with.
fn link() -> impl Strategy<Value = Value> {
    let text = prop_oneof![
        proptest::sample::select(vec![
            "https://api.test/next?$skiptoken=2",
            "/services/data/v62.0/query/01g-2000",
            "?page=2",
            "next",
            "../../../x",
            "//evil.test/steal",
            "https://evil.test/steal",
            "http://api.test/next",
            "https://api.test:444/next",
            "https://api.test.evil.test/next",
            "https://api.test@evil.test/next",
            "https://evil.test#@api.test/",
            "https:evil.test",
            "https:\\\\evil.test\\x",
            "/\\evil.test/x",
            "\\\\evil.test",
            " \t\nhttps://evil.test/",
            "\u{0}https://evil.test/",
            "javascript:alert(1)",
            "data:text/plain,x",
            "file:///etc/passwd",
            "https://ＡＰＩ.test/",
            "https://[::2]/",
            "https://0x7f.1/",
            "",
        ])
        .prop_map(str::to_owned),
        (1usize..5_000).prop_map(|n| format!("https://{}.test/", "a".repeat(n))),
        (1usize..200).prop_map(|n| format!("https://{}evil.test/", "a.".repeat(n))),
        hostile_string(),
    ];
    prop_oneof![
        8 => text.prop_map(Value::from),
        1 => Just(json!(12345)),
        1 => Just(json!(["https://evil.test/"])),
        1 => Just(Value::Null),
    ]
}

/// A page body for `style`, with `records` records and `link` where that style
/// keeps its next link.
fn body(style: &Pagination, records: usize, link: &Value, done: Option<bool>) -> (Value, Option<String>) {
    let items: Vec<Value> = (0..records).map(|i| json!({"ID": i, "Name": "x"})).collect();
    let header = link.as_str().map(|l| format!("<{l}>; rel=\"next\""));
    let body = match style {
        Pagination::OdataV2 => json!({"d": {"results": items, "__next": link}}),
        Pagination::OdataNextLink => json!({"value": items, "@odata.nextLink": link, "@odata.deltaLink": link}),
        Pagination::NextRecordsUrl => json!({"records": items, "done": done, "nextRecordsUrl": link}),
        Pagination::Cursor { .. } => json!({"results": items, "paging": {"next": {"after": link}}}),
        Pagination::LinkHeader | Pagination::Offset { .. } => Value::from(items),
        Pagination::PageNumber { .. } => json!({"items": items}),
    };
    (body, header)
}

/// What every result must satisfy, whatever the input.
fn check(
    request: &Url,
    body: &[u8],
    header: Option<&str>,
    result: &Result<Page, PageError>,
) -> Result<(), TestCaseError> {
    match result {
        Err(e) => assert_clear_error(e, &[]),
        Ok(page) => {
            prop_assert!(
                page.records.len() <= body.len() / 2,
                "more records than the body can hold"
            );
            let room = request.as_str().len() + body.len() + header.map_or(0, str::len) + 64;
            for next in page.next.iter().chain(&page.delta_link) {
                prop_assert_eq!(
                    next.origin(),
                    request.origin(),
                    "the page leads from {} to {}",
                    request,
                    next
                );
                prop_assert!(next.as_str().len() <= room * 3, "a next link larger than its input");
            }
            Ok(())
        }
    }
}

proptest! {
    #![proptest_config(cases(512))]

    /// A page in its style's shape, whatever its links say: records read,
    /// and no link away from the API's origin.
    #[test]
    fn no_page_leads_away_from_the_api_origin(
        request in request(),
        (style, records_path) in style(),
        records in 0usize..5,
        link in link(),
        done in proptest::option::of(any::<bool>()),
        damage in any::<u8>(),
        at in any::<usize>(),
    ) {
        let (json, header) = body(&style, records, &link, done);
        let text = json.to_string();
        let body = match damage % 6 {
            0 => truncate(&text, at).to_owned(),
            // A duplicate key: the last one wins in serde_json's map.
            1 => format!("{{\"@odata.nextLink\":\"https://evil.test/\",\"nextRecordsUrl\":\"//evil.test\",{}", text.get(1..).unwrap_or_default()),
            _ => text,
        };
        let result = parse_page(&style, &records_path, &request, header.as_deref(), body.as_bytes());
        check(&request, body.as_bytes(), header.as_deref(), &result)?;
        if damage % 6 > 1 {
            let page = result.as_ref();
            if let Ok(page) = page {
                prop_assert_eq!(page.records.len(), records);
            } else if link.as_str().is_some_and(|l| {
                !l.starts_with("//") && l.chars().all(|c| c.is_ascii_alphanumeric() || "/-_.?=&$%".contains(c))
            }) {
                prop_assert!(false, "a same-origin page was refused: {:?}", result);
            }
        }
    }

    /// A `Link` header from anywhere, with a body that is a record array.
    #[test]
    fn link_headers_never_lead_away(
        request in request(),
        header in prop_oneof![
            link().prop_map(|l| format!("<{}>; rel=\"next\"", l.as_str().unwrap_or("x"))),
            hostile_string(),
            "(<[^>]{0,30}>(; ?[a-z]{1,5}=\"?[a-z ]{0,10}\"?){0,3}, ?){0,4}",
        ],
    ) {
        let result = parse_page(&Pagination::LinkHeader, "", &request, Some(&header), b"[{}]");
        check(&request, b"[{}]", Some(&header), &result)?;
    }

    /// Bytes that are not a page at all.
    #[test]
    fn raw_bytes_give_records_or_a_clear_error(
        request in request(),
        (style, records_path) in style(),
        body in raw_bytes(),
    ) {
        let result = parse_page(&style, &records_path, &request, None, &body);
        check(&request, &body, None, &result)?;
    }
}
