//! Property-based fuzzing of the three parsers that read what others wrote:
//! the configuration file ([`config`]), a token endpoint's answer
//! ([`token_answer`]) and a data API page ([`pages`]). Inputs are structured
//! (valid documents, then mutated with the schema's own keys, wrong types,
//! edge numbers and hostile strings) as well as raw bytes.
//!
//! Each property runs 512 cases in `cargo test` (5-10 s for all of them in
//! a debug build on two cores); `PROPTEST_CASES=300000 cargo test --release
//! -p shared --lib fuzz` runs them long. A failure is shrunk and its seed saved under
//! `shared/proptest-regressions/`, replayed first on the next run; the
//! minimised input of every finding is also a plain unit test next to the fix.

mod config;
mod pages;
mod token_answer;

use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;

/// The proptest settings of one target: `default_cases` unless
/// `PROPTEST_CASES` says otherwise.
fn cases(default_cases: u32) -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = default_cases;
    }
    config
}

/// The longest error text any of the parsers may produce. Each caps what it
/// quotes; this is the backstop a 5 MiB input must not get past.
const MAX_ERROR_CHARS: usize = 2_000;

/// An error message a person can read in a log line: non-empty, one line,
/// bounded, and without a planted secret in either its `Display` or `Debug`.
fn assert_clear_error<E: std::fmt::Display + std::fmt::Debug>(
    error: &E,
    secrets: &[&str],
) -> Result<(), TestCaseError> {
    let shown = error.to_string();
    let debug = format!("{error:?}");
    prop_assert!(!shown.trim().is_empty(), "empty error: {debug}");
    prop_assert!(
        shown.chars().count() <= MAX_ERROR_CHARS,
        "error of {} chars: {}…",
        shown.chars().count(),
        shown.chars().take(200).collect::<String>()
    );
    prop_assert!(
        !shown.chars().any(breaks_a_line),
        "error spans lines: {:?}",
        shown.chars().take(400).collect::<String>()
    );
    for secret in secrets {
        prop_assert!(!shown.contains(secret), "error shows {secret}: {shown}");
        prop_assert!(!debug.contains(secret), "error's Debug shows {secret}: {debug}");
    }
    Ok(())
}

/// Characters that end a line in a terminal, a log viewer or a JSON log
/// consumer: ASCII and C1 controls, and the Unicode line and paragraph separators.
fn breaks_a_line(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
}

/// Strings that break parsers: empty, whitespace, controls, quotes and
/// escapes, line separators, right-to-left marks, non-BMP characters, long
/// runs, and anything at all.
fn hostile_string() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-z0-9_]{1,12}",
        "[ \t\r\n\u{a0}\u{2028}\u{3000}]{1,6}",
        "[\\x00-\\x1f\\x7f\u{85}]{1,6}",
        "[\"'`\\\\{}\\[\\]=.#%]{1,8}",
        "[\u{202e}\u{200b}\u{feff}é漢😀]{1,8}",
        (1usize..20_000).prop_map(|n| "a".repeat(n)),
        (1usize..2_000).prop_map(|n| "{x}".repeat(n)),
        (1usize..5_000).prop_map(|n| "a.".repeat(n)),
        any::<String>(),
    ]
}

/// Integers at the edges of every width a field may be read into.
fn edge_integer() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(0i64),
        Just(-1),
        Just(1),
        Just(30),
        Just(31),
        Just(i64::from(u16::MAX) + 1),
        Just(i64::from(u32::MAX)),
        Just(i64::MAX),
        Just(i64::MIN),
        any::<i64>(),
    ]
}

/// Raw input: arbitrary bytes, or a prefix of them cut mid-character.
fn raw_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        "[{}\\[\\]\":,=.a-z0-9 \n]{0,256}".prop_map(String::into_bytes),
    ]
}

/// Cuts `text` at byte `at` (modulo its length), on a character boundary.
fn truncate(text: &str, at: usize) -> &str {
    if text.is_empty() {
        return text;
    }
    let mut at = at % text.len();
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    &text[..at]
}
