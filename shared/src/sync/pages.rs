//! Pagination styles and the shape of a page: where the records are and
//! where the next page is. Pure functions over a request URL, a `Link`
//! header and a body, so every style is tested without a server.
//!
//! A next-page link is followed only on the API's own origin: a page that
//! points elsewhere would receive the bearer token.

use serde_json::Value;
use url::Url;

use crate::config::Pagination;
use crate::json::{scalar_text, value_at};

/// Records per page asked for by the offset style when the sync's query does
/// not set the limit.
pub const DEFAULT_LIMIT: u64 = 100;

/// One page as the provider sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub records: Vec<Value>,
    /// The next page of this pass, if any.
    pub next: Option<Url>,
    /// Graph delta queries: the link that starts the next pass (on the last page).
    pub delta_link: Option<Url>,
}

/// Why a page cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    /// Not JSON, or cut off.
    #[error("the page is not valid JSON ({0})")]
    InvalidJson(String),
    #[error("the page has no record array at `{0}`")]
    NoRecords(String),
    /// A next link to another host would carry the bearer token there.
    #[error("the page's next link goes to another origin ({0}); not followed")]
    OtherOrigin(String),
    #[error("the page's next link is not a URL: {0}")]
    BadLink(String),
}

impl PageError {
    /// A truncated or garbled answer is worth fetching again; a page of the
    /// wrong shape is not.
    pub fn is_transient(&self) -> bool {
        matches!(self, PageError::InvalidJson(_))
    }
}

/// The first request of a pass: `base` with the style's own first-page
/// parameters added (offset and page number styles).
pub fn first_page(pagination: &Pagination, mut base: Url) -> Url {
    match pagination {
        Pagination::Offset {
            offset_param,
            limit_param,
            first,
        } => {
            let has_limit = base.query_pairs().any(|(k, _)| k == limit_param.as_str());
            set_param(&mut base, offset_param, &first.to_string());
            if !has_limit {
                set_param(&mut base, limit_param, &DEFAULT_LIMIT.to_string());
            }
            base
        }
        Pagination::PageNumber { param, first } => {
            set_param(&mut base, param, &first.to_string());
            base
        }
        _ => base,
    }
}

/// Reads a page: its records at `records_path` and the link to the next one.
pub fn parse_page(
    pagination: &Pagination,
    records_path: &str,
    request: &Url,
    link_header: Option<&str>,
    body: &[u8],
) -> Result<Page, PageError> {
    let json: Value = serde_json::from_slice(body).map_err(|e| PageError::InvalidJson(e.to_string()))?;
    let records = match value_at(&json, records_path) {
        Some(Value::Array(items)) => items.clone(),
        // OData v2 also answers a bare `{"d": [...]}`.
        _ if *pagination == Pagination::OdataV2 => match json.get("d") {
            Some(Value::Array(items)) => items.clone(),
            _ => return Err(PageError::NoRecords(records_path.to_owned())),
        },
        _ => return Err(PageError::NoRecords(records_path.to_owned())),
    };
    let text_at = |path: &str| value_at(&json, path).and_then(scalar_text).filter(|s| !s.is_empty());
    let link = |text: Option<String>| text.map(|t| same_origin(request, &t)).transpose();
    let (next, delta_link) = match pagination {
        Pagination::OdataV2 => (link(text_at("d.__next"))?, None),
        Pagination::OdataNextLink => (
            link(json.get("@odata.nextLink").and_then(scalar_text))?,
            link(json.get("@odata.deltaLink").and_then(scalar_text))?,
        ),
        Pagination::NextRecordsUrl => {
            let done = json.get("done").and_then(Value::as_bool).unwrap_or(true);
            let next = if done { None } else { text_at("nextRecordsUrl") };
            (link(next)?, None)
        }
        Pagination::Cursor { param, next_field, .. } => {
            let next = text_at(next_field).map(|cursor| {
                let mut url = request.clone();
                set_param(&mut url, param, &cursor);
                url
            });
            (next, None)
        }
        Pagination::LinkHeader => (link(link_header.and_then(next_link))?, None),
        Pagination::Offset {
            offset_param,
            limit_param,
            first,
        } => {
            let get = |key: &str| {
                request
                    .query_pairs()
                    .find(|(k, _)| k == key)
                    .and_then(|(_, v)| v.parse::<u64>().ok())
            };
            let limit = get(limit_param).unwrap_or(DEFAULT_LIMIT);
            let offset = get(offset_param).unwrap_or(*first);
            let count = u64::try_from(records.len()).unwrap_or(u64::MAX);
            let next = (count >= limit && count > 0).then(|| {
                let mut url = request.clone();
                set_param(&mut url, offset_param, &(offset + count).to_string());
                url
            });
            (next, None)
        }
        Pagination::PageNumber { param, first } => {
            let page = request
                .query_pairs()
                .find(|(k, _)| k == param.as_str())
                .and_then(|(_, v)| v.parse::<u64>().ok())
                .unwrap_or(*first);
            let next = (!records.is_empty()).then(|| {
                let mut url = request.clone();
                set_param(&mut url, param, &(page + 1).to_string());
                url
            });
            (next, None)
        }
    };
    Ok(Page {
        records,
        next,
        delta_link,
    })
}

/// Sets `key` to `value` in the URL's query, replacing an earlier value.
pub fn set_param(url: &mut Url, key: &str, value: &str) {
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != key)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    url.query_pairs_mut().clear().extend_pairs(kept).append_pair(key, value);
}

/// `link` resolved against the request, refused unless it stays on the
/// request's origin (scheme, host and port).
fn same_origin(request: &Url, link: &str) -> Result<Url, PageError> {
    let url = request.join(link).map_err(|e| PageError::BadLink(format!("{e}")))?;
    if url.origin() != request.origin() {
        return Err(PageError::OtherOrigin(shorten(url.origin().ascii_serialization())));
    }
    Ok(url)
}

/// The most characters of a page's text an error quotes: the run's error is
/// stored with the run and logged, and a host name can be megabytes long.
const QUOTE_LIMIT: usize = 100;

fn shorten(text: String) -> String {
    match text.char_indices().nth(QUOTE_LIMIT) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// The `rel="next"` target of an RFC 8288 `Link` header.
fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        params
            .split(';')
            .filter_map(|p| p.split_once('='))
            .any(|(k, v)| {
                k.trim().eq_ignore_ascii_case("rel")
                    && v.trim()
                        .trim_matches('"')
                        .split_whitespace()
                        .any(|r| r.eq_ignore_ascii_case("next"))
            })
            .then(|| target.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn odata_v2_reads_results_and_next() {
        let body = br#"{"d":{"results":[{"ID":"a"},{"ID":"b"}],"__next":"https://api.test/v1/1/x?$skiptoken=b"}}"#;
        let page = parse_page(
            &Pagination::OdataV2,
            "d.results",
            &url("https://api.test/v1/1/x"),
            None,
            body,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(page.records.len(), 2);
        assert_eq!(
            page.next.map(String::from).as_deref(),
            Some("https://api.test/v1/1/x?$skiptoken=b")
        );
        let last = br#"{"d":{"results":[]}}"#;
        let page = parse_page(
            &Pagination::OdataV2,
            "d.results",
            &url("https://api.test/x"),
            None,
            last,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((page.records.len(), page.next), (0, None));
        let bare = br#"{"d":[{"ID":"a"}]}"#;
        let page = parse_page(
            &Pagination::OdataV2,
            "d.results",
            &url("https://api.test/x"),
            None,
            bare,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(page.records.len(), 1);
    }

    #[test]
    fn a_next_link_to_another_origin_is_refused() {
        let body = br#"{"d":{"results":[],"__next":"https://evil.test/steal"}}"#;
        let e = parse_page(
            &Pagination::OdataV2,
            "d.results",
            &url("https://api.test/x"),
            None,
            body,
        )
        .unwrap_err();
        assert!(matches!(e, PageError::OtherOrigin(_)), "{e}");
    }

    #[test]
    fn graph_pages_end_with_a_delta_link() {
        let request = url("https://graph.test/v1.0/me/contacts/delta");
        let body =
            br#"{"value":[{"id":"1"}],"@odata.nextLink":"https://graph.test/v1.0/me/contacts/delta?$skiptoken=2"}"#;
        let page =
            parse_page(&Pagination::OdataNextLink, "value", &request, None, body).unwrap_or_else(|e| panic!("{e}"));
        assert!(page.next.is_some() && page.delta_link.is_none());
        let body = br#"{"value":[{"id":"1","@removed":{"reason":"deleted"}}],"@odata.deltaLink":"https://graph.test/v1.0/me/contacts/delta?$deltatoken=9"}"#;
        let page =
            parse_page(&Pagination::OdataNextLink, "value", &request, None, body).unwrap_or_else(|e| panic!("{e}"));
        assert!(page.next.is_none() && page.delta_link.is_some());
    }

    #[test]
    fn salesforce_next_records_url_is_relative_to_the_instance() {
        let request = url("https://na1.sf.test/services/data/v62.0/query?q=SELECT+Id+FROM+Account");
        let body = br#"{"done":false,"records":[{"Id":"1"}],"nextRecordsUrl":"/services/data/v62.0/query/01g-2000"}"#;
        let page =
            parse_page(&Pagination::NextRecordsUrl, "records", &request, None, body).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            page.next.map(String::from).as_deref(),
            Some("https://na1.sf.test/services/data/v62.0/query/01g-2000")
        );
        let body = br#"{"done":true,"records":[]}"#;
        let page =
            parse_page(&Pagination::NextRecordsUrl, "records", &request, None, body).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(page.next, None);
    }

    #[test]
    fn cursor_link_header_offset_and_page_number() {
        let cursor = Pagination::Cursor {
            param: "after".into(),
            next_field: "paging.next.after".into(),
            items_field: "results".into(),
        };
        let request = url("https://api.test/objects?limit=2");
        let body = br#"{"results":[{"id":1}],"paging":{"next":{"after":"abc"}}}"#;
        let page = parse_page(&cursor, "results", &request, None, body).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            page.next.map(String::from).as_deref(),
            Some("https://api.test/objects?limit=2&after=abc")
        );

        let header = r#"<https://api.test/items?page=3>; rel="next", <https://api.test/items?page=9>; rel="last""#;
        let page = parse_page(
            &Pagination::LinkHeader,
            "",
            &url("https://api.test/items?page=2"),
            Some(header),
            b"[{}]",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            page.next.map(String::from).as_deref(),
            Some("https://api.test/items?page=3")
        );

        let offset = Pagination::Offset {
            offset_param: "start".into(),
            limit_param: "max".into(),
            first: 1,
        };
        let first = first_page(&offset, url("https://api.test/q?max=2"));
        assert_eq!(first.as_str(), "https://api.test/q?max=2&start=1");
        let page = parse_page(&offset, "", &first, None, b"[{},{}]").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            page.next.map(String::from).as_deref(),
            Some("https://api.test/q?max=2&start=3")
        );
        let page = parse_page(&offset, "", &first, None, b"[{}]").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(page.next, None, "a short page is the last");

        let numbered = Pagination::PageNumber {
            param: "page".into(),
            first: 1,
        };
        let first = first_page(&numbered, url("https://api.test/Invoices"));
        let page =
            parse_page(&numbered, "Invoices", &first, None, br#"{"Invoices":[{}]}"#).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            page.next.map(String::from).as_deref(),
            Some("https://api.test/Invoices?page=2")
        );
        let page =
            parse_page(&numbered, "Invoices", &first, None, br#"{"Invoices":[]}"#).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(page.next, None);
    }

    #[test]
    fn a_refused_next_link_is_quoted_short() {
        // Found by fuzz::pages: a 5,000-character host came back whole in the error.
        let host = "a".repeat(5_000);
        let body = format!(r#"{{"d":{{"results":[],"__next":"https://{host}.test/"}}}}"#);
        let e = parse_page(
            &Pagination::OdataV2,
            "d.results",
            &url("https://api.test/x"),
            None,
            body.as_bytes(),
        )
        .unwrap_err();
        assert!(matches!(e, PageError::OtherOrigin(_)), "{e}");
        let shown = e.to_string();
        assert!(shown.contains("https://aaaa") && shown.contains('…'), "{shown}");
        assert!(shown.chars().count() < 200, "{} chars", shown.chars().count());
    }

    #[test]
    fn truncated_json_is_transient_and_a_wrong_shape_is_not() {
        let e = parse_page(
            &Pagination::OdataV2,
            "d.results",
            &url("https://a.test/"),
            None,
            br#"{"d":{"resu"#,
        )
        .unwrap_err();
        assert!(e.is_transient(), "{e}");
        let e = parse_page(
            &Pagination::OdataNextLink,
            "value",
            &url("https://a.test/"),
            None,
            br#"{"x":1}"#,
        )
        .unwrap_err();
        assert!(!e.is_transient(), "{e}");
    }
}
