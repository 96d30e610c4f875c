//! What a value in the configuration file may be, said in the file's
//! words: every whole number has a range ([`WHOLE_NUMBERS`]), and serde's
//! words for a wrong type (`expected u64`, `as i128`, `struct
//! ProviderEntry`, `sequence`) become TOML's (a whole number, a table, an
//! array), so no error names a Rust type.

use super::FieldProblem;

/// Seconds in a day, for the ranges below.
const DAY: i128 = 86_400;

/// What one whole-number key may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Whole {
    pub(crate) key: &'static str,
    pub(crate) min: i128,
    pub(crate) max: i128,
    unit: Unit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Seconds,
    Count,
    HttpStatus,
}

/// Every whole-number key of the file and its range. The upper bounds are
/// far above any real value; they keep a typo from becoming a schedule
/// that overflows (`interval_secs` in milliseconds) or never comes.
pub(crate) const WHOLE_NUMBERS: [Whole; 13] = [
    // [service]
    Whole::count("refresh_concurrency", 1, super::MAX_REFRESH_CONCURRENCY as i128),
    // [service] and [providers.NAME]
    Whole::count("token_concurrency", 1, super::MAX_TOKEN_CONCURRENCY as i128),
    // [providers.NAME]
    Whole::seconds("refresh_lead_secs", 0, DAY),
    Whole::seconds("min_refresh_interval_secs", 0, DAY),
    Whole::seconds("reuse_grace_secs", 0, DAY),
    Whole::seconds("refresh_token_idle_secs", 3_600, 3_650 * DAY),
    Whole::seconds("default_expires_in_secs", 60, 365 * DAY),
    Whole::count("error_budget_per_hour", 1, 100_000),
    // `dead_token = [{ status = 400, … }]`
    Whole {
        key: "status",
        min: 100,
        max: 599,
        unit: Unit::HttpStatus,
    },
    // `pagination = { style = "offset" | "page_number", first = … }`
    Whole::count("first", 0, 1_000_000),
    // [syncs.NAME]
    Whole::seconds("interval_secs", 60, 365 * DAY),
    Whole::seconds("sweep_interval_secs", 60, 365 * DAY),
    // Exact Online's `EntityType` is an Edm.Int32.
    Whole::count("deleted_entity_type", 0, 2_147_483_647),
];

impl Whole {
    const fn seconds(key: &'static str, min: i128, max: i128) -> Whole {
        Whole {
            key,
            min,
            max,
            unit: Unit::Seconds,
        }
    }

    const fn count(key: &'static str, min: i128, max: i128) -> Whole {
        Whole {
            key,
            min,
            max,
            unit: Unit::Count,
        }
    }

    /// The rule of `key`, if it is a whole-number key.
    pub(crate) fn of(key: &str) -> Option<Whole> {
        WHOLE_NUMBERS.iter().find(|w| w.key == key).copied()
    }

    /// "a whole number of seconds between 60 and 31536000 (365 days)".
    pub(crate) fn words(&self) -> String {
        let (min, max) = (self.min, self.max);
        match self.unit {
            Unit::Seconds => format!("a whole number of seconds between {min} and {max}{}", in_days(max)),
            Unit::Count => format!("a whole number between {min} and {max}"),
            Unit::HttpStatus => format!("an HTTP status between {min} and {max}"),
        }
    }

    /// Whether `value` is in range, and if not, the message that says so.
    pub(crate) fn check(&self, value: i128) -> Result<(), String> {
        if value < self.min {
            Err(format!(
                "must be {}; {value} is below the minimum of {}",
                self.words(),
                self.min
            ))
        } else if value > self.max {
            Err(format!(
                "must be {}; {value} is above the maximum of {}",
                self.words(),
                self.max
            ))
        } else {
            Ok(())
        }
    }
}

/// " (365 days)" for a whole number of days, else nothing.
fn in_days(seconds: i128) -> String {
    match seconds / DAY {
        days if days == 0 || seconds % DAY != 0 => String::new(),
        1 => " (1 day)".to_owned(),
        days => format!(" ({days} days)"),
    }
}

/// `key`'s value checked against its range; no problem for a key without one.
pub(crate) fn check_whole(key: &'static str, value: impl Into<i128>) -> Result<(), FieldProblem> {
    match Whole::of(key) {
        Some(rule) => rule.check(value.into()).map_err(|message| (key, message)),
        None => Ok(()),
    }
}

/// serde's message about the value at `field` (a dotted path, as
/// `providers.x.dead_token[0].status`) in the file's words.
pub(crate) fn in_words(field: &str, message: &str) -> String {
    let key = field
        .rsplit('.')
        .next()
        .unwrap_or(field)
        .split('[')
        .next()
        .unwrap_or_default();
    if let Some(number) = number_in_words(key, message) {
        return number;
    }
    if message.starts_with("invalid length") && message.contains("expected struct") {
        // A struct read from an array.
        return "invalid type: array, expected a table".to_owned();
    }
    let mut out = message.to_owned();
    // `expected struct ProviderEntry`, `expected internally tagged enum
    // Pagination`, `expected enum PresetName` name types; TOML has tables and strings.
    for (prefix, words) in [
        ("expected internally tagged enum ", "expected a table"),
        ("expected struct ", "expected a table"),
        ("expected enum ", "expected a string"),
    ] {
        while let Some(at) = out.find(prefix) {
            let name_end = out[at + prefix.len()..]
                .find(|c: char| !c.is_alphanumeric() && c != '_')
                .map_or(out.len(), |end| at + prefix.len() + end);
            out.replace_range(at..name_end, words);
        }
    }
    for (serde, toml) in [
        ("expected a map", "expected a table"),
        ("expected a sequence", "expected an array"),
        ("invalid type: map", "invalid type: table"),
        ("invalid type: sequence", "invalid type: array"),
        ("wanted string or table", "invalid type, expected a string"),
        // `integer `99999999999999999999` as i128`: the number is all a person wrote.
        (" as i128", ""),
        (" as u128", ""),
    ] {
        out = out.replace(serde, toml);
    }
    out
}

/// A wrong value for a whole-number key in words: the key's range and what
/// was written instead. `None` when the message is not about one.
fn number_in_words(key: &str, message: &str) -> Option<String> {
    if message == "integer number overflowed" {
        return Some(match Whole::of(key) {
            Some(rule) => format!("must be {}; the number is too large", rule.words()),
            None => "invalid value: a number too large to read".to_owned(),
        });
    }
    let rest = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))?;
    let (unexpected, expected) = rest.rsplit_once(", expected ")?;
    let signed = match expected {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => false,
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => true,
        // A number beyond i64 read as any TOML value (the offset
        // pagination's `first` is read that way first).
        "any valid TOML value" if Whole::of(key).is_some() && unexpected.starts_with("integer `") => false,
        _ => return None,
    };
    let rule = Whole::of(key).unwrap_or(Whole {
        key: "",
        min: if signed { i128::from(i64::MIN) } else { 0 },
        max: i128::from(u64::MAX),
        unit: Unit::Count,
    });
    let words = match Whole::of(key) {
        Some(rule) => rule.words(),
        None if signed => "a whole number".to_owned(),
        None => "a whole number of 0 or more".to_owned(),
    };
    // `integer `-5``, `integer `99999999999999999999` as i128`
    if let Some(number) = unexpected.strip_prefix("integer `") {
        let number = number.split('`').next().unwrap_or_default();
        let detail = match number.parse::<i128>() {
            Ok(value) if value < rule.min => format!("{value} is below the minimum of {}", rule.min),
            Ok(value) if value > rule.max && Whole::of(key).is_some() => {
                format!("{value} is above the maximum of {}", rule.max)
            }
            _ => format!("{number} is too large"),
        };
        return Some(format!("must be {words}; {detail}"));
    }
    let got = if let Some(text) = unexpected.strip_prefix("string ") {
        format!("got the string {text} (write the number without quotes)")
    } else if let Some(number) = unexpected.strip_prefix("floating point ") {
        format!("got {number}, which is not whole")
    } else if let Some(value) = unexpected.strip_prefix("boolean ") {
        format!("got {value}")
    } else {
        match unexpected {
            "map" => "got a table".to_owned(),
            "sequence" => "got an array".to_owned(),
            other => format!("got {other}"),
        }
    };
    Some(format!("must be {words}; {got}"))
}

/// The most characters of a provider, sync or webhook name (a table's
/// `NAME`): it is part of URLs, record keys and webhook ids.
pub const MAX_NAME_CHARS: usize = 64;
/// The most characters of a provider's `display_name`, which the login
/// pages show ("Connect your … account").
pub const MAX_DISPLAY_NAME_CHARS: usize = 100;
/// The most characters of one scope (`scopes`, `offline_scope`); the
/// longest real ones are URLs of about 60.
pub const MAX_SCOPE_CHARS: usize = 200;

/// Which characters a table's `NAME` may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NameChars {
    /// `a-z 0-9 _ -`: providers (in URLs) and webhooks (in webhook ids).
    Lower,
    /// `A-Z a-z 0-9 _ - .`: syncs (in record keys).
    Mixed,
}

/// A problem with the `NAME` of `[providers.NAME]` (`kind` "provider"),
/// `[syncs.NAME]` or `[webhooks.NAME]`; `why` says where the name goes.
pub(crate) fn check_name(kind: &str, name: &str, chars: NameChars, why: &str) -> Result<(), FieldProblem> {
    let (allowed, listed): (fn(u8) -> bool, &str) = match chars {
        NameChars::Lower => (
            |b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-',
            "a-z, 0-9, `_` and `-`",
        ),
        NameChars::Mixed => (
            |b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.',
            "A-Z a-z 0-9 `_` `-` `.`",
        ),
    };
    if name.is_empty() || !name.bytes().all(allowed) {
        return Err(("", format!("{kind} name `{name}` may use only {listed} ({why})")));
    }
    if name.len() > MAX_NAME_CHARS {
        return Err((
            "",
            format!(
                "{kind} name `{name}` has {} characters; at most {MAX_NAME_CHARS} ({why})",
                name.len()
            ),
        ));
    }
    Ok(())
}

/// A problem with a provider's `display_name`: 1 to
/// [`MAX_DISPLAY_NAME_CHARS`] characters on one line, none of them
/// invisible formatting (a right-to-left override would make the page read
/// other than what was written), as a connect link's label.
pub(crate) fn check_display_name(text: &str) -> Result<(), String> {
    let length = text.chars().count();
    let shown = "the login pages show it";
    if text.trim().is_empty() {
        return Err(format!(
            "must not be empty ({shown}; leave it out to show the provider's key)"
        ));
    }
    if length > MAX_DISPLAY_NAME_CHARS {
        return Err(format!(
            "has {length} characters; at most {MAX_DISPLAY_NAME_CHARS} ({shown})"
        ));
    }
    let hidden =
        |c: char| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') || crate::text::is_invisible_format(c);
    if text.chars().any(hidden) {
        return Err(format!(
            "must be one line without control or invisible formatting characters ({shown})"
        ));
    }
    Ok(())
}

/// A problem with one scope: RFC 6749 §3.3 `scope-token`, at most
/// [`MAX_SCOPE_CHARS`] characters. A space would make it two scopes.
pub(crate) fn check_scope(scope: &str) -> Result<(), String> {
    let token = |c: char| matches!(c, '\x21' | '\x23'..='\x5B' | '\x5D'..='\x7E');
    if scope.chars().any(|c| c == ' ') && scope.split(' ').all(|s| s.chars().all(token)) {
        return Err(format!(
            "`{scope}` is several scopes: write each as its own list item ([\"a\", \"b\"], not \"a b\")"
        ));
    }
    if scope.is_empty() || !scope.chars().all(token) {
        return Err(format!(
            "`{scope}` is not a scope: 1 to {MAX_SCOPE_CHARS} printable ASCII characters other than space, `\"` \
             and `\\` (RFC 6749 §3.3)"
        ));
    }
    if scope.len() > MAX_SCOPE_CHARS {
        return Err(format!(
            "`{scope}` has {} characters; a scope has at most {MAX_SCOPE_CHARS}",
            scope.len()
        ));
    }
    Ok(())
}

/// Rust's names for types, which mean nothing to a person writing TOML.
#[cfg(test)]
const RUST_TYPE_NAMES: [&str; 17] = [
    "i8", "i16", "i32", "i64", "i128", "isize", "u8", "u16", "u32", "u64", "u128", "usize", "f32", "f64", "struct",
    "enum", "sequence",
];

/// The first Rust type name `message` has as a word, if any. A word runs
/// over letters, digits and `_`, as a TOML bare key does: the quoted key
/// `providers.u8_` (a name the config fuzz test made up) names no type.
#[cfg(test)]
pub(crate) fn names_a_rust_type(message: &str) -> Option<&'static str> {
    let words: Vec<&str> = message
        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .collect();
    RUST_TYPE_NAMES.into_iter().find(|name| words.contains(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_read_as_words() {
        let interval = Whole::of("interval_secs").expect("a rule");
        assert_eq!(
            interval.words(),
            "a whole number of seconds between 60 and 31536000 (365 days)"
        );
        assert_eq!(
            interval.check(59),
            Err(
                "must be a whole number of seconds between 60 and 31536000 (365 days); 59 is below the minimum of 60"
                    .to_owned()
            )
        );
        assert_eq!(interval.check(60), Ok(()));
        assert_eq!(
            Whole::of("refresh_lead_secs").map(|w| w.words()).as_deref(),
            Some("a whole number of seconds between 0 and 86400 (1 day)")
        );
        assert_eq!(
            Whole::of("status").map(|w| w.words()).as_deref(),
            Some("an HTTP status between 100 and 599")
        );
        assert!(Whole::of("endpoint").is_none());
    }

    #[test]
    fn serde_words_become_toml_words() {
        let cases = [
            (
                "syncs.s.interval_secs",
                "invalid type: integer `99999999999999999999` as i128, expected u64",
                "must be a whole number of seconds between 60 and 31536000 (365 days); 99999999999999999999 is above \
                 the maximum of 31536000",
            ),
            (
                "syncs.s.interval_secs",
                "invalid value: integer `-5`, expected u64",
                "must be a whole number of seconds between 60 and 31536000 (365 days); -5 is below the minimum of 60",
            ),
            (
                "service.refresh_concurrency",
                "invalid type: string \"8\", expected usize",
                "must be a whole number between 1 and 256; got the string \"8\" (write the number without quotes)",
            ),
            (
                "providers.p.dead_token[0].status",
                "invalid type: floating point `400.5`, expected u16",
                "must be an HTTP status between 100 and 599; got `400.5`, which is not whole",
            ),
            (
                "providers.p.unknown_number",
                "invalid value: integer `-1`, expected u64",
                "must be a whole number of 0 or more; -1 is below the minimum of 0",
            ),
            (
                "providers.p",
                "invalid type: integer `1`, expected struct ProviderEntry",
                "invalid type: integer `1`, expected a table",
            ),
            (
                "providers.p.pagination",
                "invalid type: integer `1`, expected internally tagged enum Pagination",
                "invalid type: integer `1`, expected a table",
            ),
            (
                "providers.p.scopes",
                "invalid type: map, expected a sequence",
                "invalid type: table, expected an array",
            ),
            (
                "providers.p.rate_limits[0]",
                "invalid length 0, expected struct RateLimitHeaders with 3 elements",
                "invalid type: array, expected a table",
            ),
            (
                "providers.p.preset",
                "wanted string or table",
                "invalid type, expected a string",
            ),
        ];
        for (field, serde, words) in cases {
            assert_eq!(in_words(field, serde), words, "{field}: {serde}");
        }
    }
}
