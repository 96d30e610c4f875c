//! `[webhooks.NAME]`: an application outside AWS that hears about events.
//! Each endpoint names its URL, the event types it wants and the Secrets
//! Manager secret holding its signing secret (`whsec_…`, never in this file).
//! The `webhooks` function delivers to it ([`crate::webhooks`]).
//!
//! ```toml
//! [webhooks.crm]
//! url = "https://crm.example.com/hooks/oauth-sync"
//! events = ["connection.*", "sync.run.failed"]
//! signing_secret = "oauth-sync/webhooks/crm"
//! ```

use serde::Deserialize;
use url::Url;

use super::limits::{self, NameChars};
use super::{FieldProblem, all_problems};

/// The event types the functions put on the bus (`detail-type`, source
/// `oauth-sync`). An endpoint may name these, a prefix of them (`sync.*`) or
/// `*`; anything else is a typo that would silently deliver nothing.
pub const EVENT_TYPES: [&str; 10] = [
    "connection.connected",
    "connection.refresh_failed",
    "connection.needs_reauth",
    "connection.revoked",
    "sync.run.finished",
    "sync.run.failed",
    "sync.job.parked",
    "record.inserted",
    "record.updated",
    "record.deleted",
];

/// A user's `[webhooks.NAME]` table as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WebhookEntry {
    url: Option<String>,
    events: Option<Vec<String>>,
    signing_secret: Option<String>,
}

/// Which event types an endpoint wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventPattern {
    /// `*`: every event.
    All,
    /// `sync.*`: every type that starts with `sync.` (the dot kept).
    Prefix(String),
    /// One event type.
    Exact(String),
}

impl EventPattern {
    pub fn matches(&self, event_type: &str) -> bool {
        match self {
            EventPattern::All => true,
            EventPattern::Prefix(prefix) => event_type.starts_with(prefix.as_str()),
            EventPattern::Exact(exact) => event_type == exact,
        }
    }
}

/// One configured webhook endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    /// The table's name: part of every `webhook-id`, and the delivery's label in logs.
    pub name: String,
    /// https, or http on a loopback address (a receiver on the same machine).
    pub url: Url,
    pub events: Vec<EventPattern>,
    /// Secrets Manager secret whose text is the signing secret `whsec_<base64>`.
    pub signing_secret: String,
}

impl Webhook {
    /// Does this endpoint want events of `event_type`?
    pub fn wants(&self, event_type: &str) -> bool {
        self.events.iter().any(|p| p.matches(event_type))
    }
}

/// Is `url` one a webhook may be sent to: https, or http to a loopback
/// address (a receiver on the same machine, as in tests)? The configuration's
/// one rule, [`super::secure_url`].
pub fn webhook_url_allowed(url: &Url) -> bool {
    super::secure_url(url)
}

/// Every problem of one webhook table: its name, and the first problem of
/// its settings.
pub(crate) fn resolve(name: &str, entry: WebhookEntry) -> Result<Webhook, Vec<FieldProblem>> {
    let problems: Vec<FieldProblem> =
        limits::check_name("webhook", name, NameChars::Lower, "it is part of every webhook-id")
            .err()
            .into_iter()
            .collect();
    all_problems(problems, resolve_with(name, entry))
}

/// The endpoint its table makes, or the first problem.
fn resolve_with(name: &str, entry: WebhookEntry) -> Result<Webhook, FieldProblem> {
    let text = entry
        .url
        .ok_or(("url", "missing field `url`: where the webhooks are POSTed".to_owned()))?;
    let url = Url::parse(text.trim()).map_err(|e| ("url", format!("invalid URL `{text}`: {e}")))?;
    if !webhook_url_allowed(&url) {
        return Err((
            "url",
            format!("`{text}` must be an https:// URL (http:// only to a loopback address such as 127.0.0.1)"),
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        // It would be logged with the URL, and it is not how receivers authenticate us.
        return Err((
            "url",
            "credentials never go in the URL: receivers verify the webhook-signature header".to_owned(),
        ));
    }
    let events = entry.events.ok_or((
        "events",
        format!(
            "missing field `events`: the event types to send, e.g. [\"connection.*\", \"sync.run.failed\"] or [\"*\"] \
             (known: {})",
            EVENT_TYPES.join(", ")
        ),
    ))?;
    if events.is_empty() {
        return Err((
            "events",
            "an empty list would send nothing; name event types, a prefix such as `sync.*`, or `*`".to_owned(),
        ));
    }
    let events = events
        .iter()
        .map(|e| pattern(e))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|m| ("events", m))?;
    let signing_secret = entry.signing_secret.filter(|s| !s.trim().is_empty()).ok_or((
        "signing_secret",
        "missing field `signing_secret`: the Secrets Manager secret holding the endpoint's signing secret \
         (whsec_ followed by 24 to 64 random bytes in base64; docs/webhooks.md)"
            .to_owned(),
    ))?;
    if signing_secret.starts_with("whsec_") {
        return Err((
            "signing_secret",
            "names the Secrets Manager secret, not the signing secret itself: store the whsec_ value in Secrets \
             Manager and name that secret here"
                .to_owned(),
        ));
    }
    Ok(Webhook {
        name: name.to_owned(),
        url,
        events,
        signing_secret,
    })
}

fn pattern(text: &str) -> Result<EventPattern, String> {
    let known = || EVENT_TYPES.join(", ");
    if text == "*" {
        return Ok(EventPattern::All);
    }
    if let Some(prefix) = text.strip_suffix('*') {
        if !prefix.ends_with('.') || prefix.contains('*') {
            return Err(format!(
                "`{text}`: a prefix ends in `.*` (such as `sync.*`), or use `*` for every event"
            ));
        }
        if !EVENT_TYPES.iter().any(|t| t.starts_with(prefix)) {
            return Err(format!("`{text}` matches no event type (known: {})", known()));
        }
        return Ok(EventPattern::Prefix(prefix.to_owned()));
    }
    if EVENT_TYPES.contains(&text) {
        Ok(EventPattern::Exact(text.to_owned()))
    } else {
        Err(format!("unknown event type `{text}` (known: {})", known()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_types_an_endpoint_may_name_are_those_with_a_schema() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/events");
        let mut documented: Vec<String> = std::fs::read_dir(dir)
            .expect("docs/events")
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .filter_map(|name| name.strip_suffix(".json").map(str::to_owned))
            .collect();
        documented.sort();
        let mut known: Vec<&str> = EVENT_TYPES.to_vec();
        known.sort_unstable();
        assert_eq!(documented, known);
    }

    #[test]
    fn patterns_match_exact_prefix_and_all() {
        let exact = pattern("sync.run.failed").expect("exact");
        assert!(exact.matches("sync.run.failed") && !exact.matches("sync.run.finished"));
        let prefix = pattern("sync.*").expect("prefix");
        assert!(prefix.matches("sync.job.parked") && !prefix.matches("connection.revoked"));
        let run = pattern("sync.run.*").expect("prefix");
        assert!(run.matches("sync.run.finished") && !run.matches("sync.job.parked"));
        assert!(pattern("*").expect("all").matches("record.deleted"));
        for bad in ["sync", "sync*", "sync.run.finshed", "billing.*", "*.run", "s*.x.*", ""] {
            assert!(pattern(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_https_or_loopback_http() {
        for ok in [
            "https://hooks.example.com/x",
            "http://127.0.0.1:8080/x",
            "http://[::1]/x",
            "http://localhost:1/x",
        ] {
            assert!(webhook_url_allowed(&Url::parse(ok).expect("url")), "{ok}");
        }
        for bad in [
            "http://hooks.example.com/x",
            "http://10.0.0.1/x",
            "ftp://127.0.0.1/x",
            "http://localhost.example.com/x",
        ] {
            assert!(!webhook_url_allowed(&Url::parse(bad).expect("url")), "{bad}");
        }
    }

    const PROVIDER: &str = "[providers.g]\npreset = \"google\"\ncredentials_secret = \"s\"\n";

    /// The configuration, or its first error.
    fn parse(webhooks: &str) -> Result<crate::config::Config, crate::config::ConfigError> {
        crate::config::Config::parse(&format!("{PROVIDER}{webhooks}"), "oauth-sync.toml").map_err(|e| e.first().clone())
    }

    #[test]
    fn an_endpoint_resolves() {
        let config = parse(
            "[webhooks.crm]\nurl = \"https://crm.example.com/hooks\"\nevents = [\"connection.*\", \"sync.run.failed\"]\n\
             signing_secret = \"oauth-sync/webhooks/crm\"\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let crm = &config.webhooks["crm"];
        assert_eq!(crm.url.as_str(), "https://crm.example.com/hooks");
        assert_eq!(crm.signing_secret, "oauth-sync/webhooks/crm");
        assert!(crm.wants("connection.needs_reauth") && crm.wants("sync.run.failed"));
        assert!(!crm.wants("sync.run.finished") && !crm.wants("record.inserted"));
        assert!(parse("").expect("no webhooks").webhooks.is_empty());
    }

    #[test]
    fn every_webhook_mistake_is_named_with_its_line_and_field() {
        let ok_url = "url = \"https://h.example/x\"\n";
        let ok_events = "events = [\"*\"]\n";
        let ok_secret = "signing_secret = \"oauth-sync/wh\"\n";
        // (table body, line of the mistake counted from the table header, field, what the message says)
        let cases = [
            (
                format!("url = \"http://h.example/x\"\n{ok_events}{ok_secret}"),
                2,
                "url",
                "https://",
            ),
            (
                format!("url = \"not a url\"\n{ok_events}{ok_secret}"),
                2,
                "url",
                "invalid URL",
            ),
            (
                format!("url = \"https://u:p@h.example/x\"\n{ok_events}{ok_secret}"),
                2,
                "url",
                "credentials",
            ),
            (format!("{ok_events}{ok_secret}"), 1, "url", "missing field `url`"),
            (
                format!("{ok_url}events = [\"sync.run.finshed\"]\n{ok_secret}"),
                3,
                "events",
                "unknown event type `sync.run.finshed`",
            ),
            (
                format!("{ok_url}events = [\"billing.*\"]\n{ok_secret}"),
                3,
                "events",
                "matches no event type",
            ),
            (format!("{ok_url}events = []\n{ok_secret}"), 3, "events", "empty"),
            (format!("{ok_url}{ok_secret}"), 1, "events", "missing field `events`"),
            (
                format!("{ok_url}{ok_events}"),
                1,
                "signing_secret",
                "missing field `signing_secret`",
            ),
            (
                format!("{ok_url}{ok_events}signing_secret = \"whsec_planted\"\n"),
                4,
                "signing_secret",
                "not the signing secret itself",
            ),
        ];
        for (body, line, field, says) in cases {
            let e = parse(&format!("[webhooks.app]\n{body}")).expect_err(&body);
            assert_eq!(
                (e.line, e.field.as_str()),
                (line + 3, format!("webhooks.app.{field}").as_str()),
                "{e}"
            );
            assert!(e.message.contains(says), "{e}");
            assert!(!e.to_string().contains("planted"), "never quotes a signing secret: {e}");
        }
        let e =
            parse(&format!("[webhooks.app]\n{ok_url}{ok_events}{ok_secret}timeout = 3\n")).expect_err("unknown key");
        assert_eq!(
            (e.line, e.message.contains("unknown field `timeout`")),
            (8, true),
            "{e}"
        );
        let e = parse(&format!("[webhooks.App]\n{ok_url}{ok_events}{ok_secret}")).expect_err("bad name");
        assert_eq!((e.line, e.field.as_str()), (4, "webhooks.App"), "{e}");
    }
}
