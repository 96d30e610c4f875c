//! What a mistake in the configuration file looks like: where it is (file,
//! line, column, dotted field), what is wrong in words a person can act on,
//! and never more than a short prefix of what was written.

use std::fmt;
use std::ops::Range;

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::{FieldProblem, limits};

/// A configuration mistake, located.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: String,
    /// 1-based; 0 when the mistake has no place in the file (it could not
    /// be read, or something is missing from all of it).
    pub line: usize,
    pub column: usize,
    /// Dotted path of the offending field (`providers.exact.token_url`).
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every mistake found in one configuration text, in file order (those
/// without a place last). Never empty. `Display` gives one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(Vec<ConfigError>);

impl ConfigErrors {
    /// The errors sorted by place, or `None` when there are none.
    pub(crate) fn new(mut errors: Vec<ConfigError>) -> Option<ConfigErrors> {
        errors.sort_by_key(|e| (e.line == 0, e.line, e.column));
        errors.dedup();
        if errors.is_empty() {
            None
        } else {
            Some(ConfigErrors(errors))
        }
    }

    /// The first mistake in the file.
    pub fn first(&self) -> &ConfigError {
        // `new` never makes an empty list.
        &self.0[0]
    }

    pub fn as_slice(&self) -> &[ConfigError] {
        &self.0
    }

    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }

    pub fn into_vec(self) -> Vec<ConfigError> {
        self.0
    }

    /// The first error and how many follow, on one line, for a log line or
    /// a report that holds one line (`oauth-sync config check` lists all).
    pub fn in_one_line(&self) -> String {
        match self.0.len() {
            1 => self.first().to_string(),
            n => format!("{} (and {} more)", self.first(), n - 1),
        }
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(error: ConfigError) -> Self {
        ConfigErrors(vec![error])
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl IntoIterator for ConfigErrors {
    type Item = ConfigError;
    type IntoIter = std::vec::IntoIter<ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// The most characters of the user's input an error quotes.
pub const QUOTE_LIMIT: usize = 60;
/// The most characters an error message has: a backstop for input that is
/// not quoted, with room for serde's list of the fields a table may have.
const MESSAGE_LIMIT: usize = 1_200;

/// Shortens what an error quotes: every `…` or "…" longer than
/// [`QUOTE_LIMIT`] characters keeps its first [`QUOTE_LIMIT`] and ends in
/// `…`, and the whole text is cut at [`MESSAGE_LIMIT`], so a 5 MiB value is
/// never printed whole. An unclosed quote is cut the same way.
pub fn cut_quoted(text: &str) -> String {
    let escaped = one_line(text);
    let text = escaped.as_str();
    let mut out = String::with_capacity(text.len().min(MESSAGE_LIMIT + 8));
    let mut rest = text;
    while let Some(open) = rest.find(['`', '"']) {
        let quote = rest[open..].chars().next().unwrap_or('`');
        out.push_str(&rest[..=open]);
        let inside = &rest[open + 1..];
        let (quoted, after) = match inside.find(quote) {
            Some(close) => (&inside[..close], &inside[close..]),
            None => (inside, ""),
        };
        match quoted.char_indices().nth(QUOTE_LIMIT) {
            Some((cut, _)) => {
                out.push_str(&quoted[..cut]);
                out.push('…');
            }
            None => out.push_str(quoted),
        }
        match after.strip_prefix(quote) {
            Some(after) => {
                out.push(quote);
                rest = after;
            }
            None => rest = after,
        }
        if out.len() > MESSAGE_LIMIT * 4 {
            break;
        }
    }
    out.push_str(rest);
    match out.char_indices().nth(MESSAGE_LIMIT) {
        Some((cut, _)) => format!("{}…", &out[..cut]),
        None => out,
    }
}

/// Control characters and line separators as escapes (`\r`, `\u{2028}`): a
/// key or value may hold them, and an error stays one line of a log.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A dotted field path with each part cut like a quote (a key may be the
/// user's 5 MiB typo), and the whole path cut after [`FIELD_LIMIT`]
/// characters (a quoted key may hold thousands of dots).
fn cut_field(field: &str) -> String {
    let path = one_line(field)
        .split('.')
        .map(|part| match part.char_indices().nth(QUOTE_LIMIT) {
            Some((cut, _)) => format!("{}…", &part[..cut]),
            None => part.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(".");
    match path.char_indices().nth(FIELD_LIMIT) {
        Some((cut, _)) => format!("{}…", &path[..cut]),
        None => path,
    }
}

/// The most characters of a field path an error shows: the table and key
/// names a person needs, with room for a few quoted parts.
const FIELD_LIMIT: usize = 4 * QUOTE_LIMIT;

/// Keys that hold client credentials, wherever they are written: an error
/// about one never quotes its value.
const CREDENTIAL_KEYS: [&str; 2] = ["client_id", "client_secret"];

pub(super) const CREDENTIALS_NEVER_HERE: &str = "client credentials never go in the config file: store them in the \
                                                 Secrets Manager secret named by `credentials_secret`";

/// Turns byte spans into file:line:column, and serde's and the TOML
/// parser's mistakes into located errors in words.
pub(super) struct Locator<'a> {
    pub(super) text: &'a str,
    pub(super) file: &'a str,
}

impl<'a> Locator<'a> {
    /// The text as a TOML document. After a syntax error nothing more can
    /// be said (what follows may be read quite differently), so it is the
    /// only error.
    pub(super) fn document(&self) -> Result<DeTable<'a>, ConfigErrors> {
        match DeTable::parse(self.text) {
            Ok(document) => Ok(document.into_inner()),
            Err(e) if e.message() == "duplicate key" => Err(self.duplicate(e.span().unwrap_or_default()).into()),
            Err(e) => Err(self
                .error(e.span(), "", &format!("syntax error: {}", e.message()))
                .into()),
        }
    }

    /// One table of the document (`[providers.NAME]`) into its shape;
    /// `field` is its dotted path, which the error's field starts with.
    pub(super) fn deserialize<T: DeserializeOwned>(
        &self,
        field: &str,
        value: Spanned<DeValue<'_>>,
    ) -> Result<T, ConfigError> {
        // No key takes a date or a time, and serde would read one as a
        // table with a private key (accepted by a string map such as `params`).
        if let Some((path, span)) = first_datetime(&value, field) {
            return Err(self.error(
                Some(span),
                &path,
                "invalid type: a date or time, which no key takes (quote it to make it a string)",
            ));
        }
        serde_path_to_error::deserialize(ValueDeserializer::from(value)).map_err(|e| {
            // Spanned<T> adds a private path segment; the user never wrote it.
            let path = e.path().to_string().replace(".$__serde_spanned_private_value", "");
            let inner = e.into_inner();
            let field = match path.as_str() {
                "." => field.to_owned(),
                path => format!("{field}.{path}"),
            };
            self.error(inner.span(), &field, &limits::in_words(&field, inner.message()))
        })
    }

    pub(super) fn error(&self, span: Option<Range<usize>>, field: &str, message: &str) -> ConfigError {
        let (line, column) = match span {
            Some(span) => self.line_col(span.start),
            None => (0, 0),
        };
        // serde quotes the value it refused (`invalid type: string "…"`), and
        // a credential pasted in the wrong table (or inside an array or a
        // table under its key) must not reach the log.
        let names_a_credential = field.split(['.', '[']).any(|key| CREDENTIAL_KEYS.contains(&key));
        let message = if names_a_credential {
            CREDENTIALS_NEVER_HERE
        } else {
            message
        };
        ConfigError {
            file: self.file.to_owned(),
            line,
            column,
            field: cut_field(field),
            message: cut_quoted(message),
        }
    }

    /// An error found after parsing, about `key` inside the table at `table_span`:
    /// points at the line that sets the key, or at the table when it is not set there.
    pub(super) fn field_error(&self, table_span: Range<usize>, table: &str, key: &str, message: &str) -> ConfigError {
        let offset = self.key_offset(&table_span, key).unwrap_or(table_span.start);
        let (line, column) = self.line_col(offset);
        ConfigError {
            file: self.file.to_owned(),
            line,
            column,
            field: cut_field(&if key.is_empty() {
                table.to_owned()
            } else {
                format!("{table}.{key}")
            }),
            message: cut_quoted(message),
        }
    }

    /// The problems found in the table `table` whose header is at `span`,
    /// located; one per key (the first), since a second about the same key
    /// follows from the first.
    pub(super) fn problems(&self, span: &Range<usize>, table: &str, problems: Vec<FieldProblem>) -> Vec<ConfigError> {
        let mut seen = Vec::new();
        problems
            .into_iter()
            .filter(|(key, _)| {
                let first = !seen.contains(key);
                seen.push(key);
                first
            })
            .map(|(key, message)| self.field_error(span.clone(), table, key, &message))
            .collect()
    }

    /// An error about the file as a whole (`file: field: message`).
    pub(super) fn unplaced(&self, field: &str, message: &str) -> ConfigError {
        ConfigError {
            file: self.file.to_owned(),
            line: 0,
            column: 0,
            field: cut_field(field),
            message: cut_quoted(message),
        }
    }

    /// Where `key = ...` is set in the table whose header (or inline table)
    /// starts at `span`: the table's lines run until the next `[header]`.
    fn key_offset(&self, span: &Range<usize>, key: &str) -> Option<usize> {
        if key.is_empty() {
            return None;
        }
        let mut offset = span.start;
        for (index, line) in self.text.get(span.start..)?.split_inclusive('\n').enumerate() {
            let trimmed = line.trim_start();
            if index > 0 && trimmed.starts_with('[') {
                break;
            }
            if let Some(rest) = trimmed.strip_prefix(key)
                && rest.trim_start().starts_with('=')
            {
                return Some(offset + (line.len() - trimmed.len()));
            }
            offset += line.len();
        }
        None
    }

    fn line_col(&self, offset: usize) -> (usize, usize) {
        line_col(&self.text[..floor_char_boundary(self.text, offset)])
    }

    /// A table or key defined twice, at `span` (the second definition): the
    /// parser names neither the key nor the first definition, so both are
    /// read again from the text around it.
    fn duplicate(&self, span: Range<usize>) -> ConfigError {
        let text = self.text;
        let start = floor_char_boundary(text, span.start);
        let end = floor_char_boundary(text, span.end.max(start));
        let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
        let (second, _) = self.line_col(start);
        // The document up to the line of the second definition parses
        // (the first error is on that line) and holds the first one.
        let before = DeTable::parse(&text[..line_start]).ok().map(Spanned::into_inner);
        let path = duplicate_path(text, &text[line_start..end], before.as_ref(), line_start);
        let first = path
            .as_deref()
            .zip(before.as_ref())
            .and_then(|(path, before)| key_span(before, path))
            .map(|span| self.line_col(span.start).0);
        let (field, what) = match &path {
            Some(path) => (path.join("."), format!("`{}`", path.join("."))),
            None => (String::new(), format!("`{}`", &text[start..end])),
        };
        let message = match first {
            Some(first) if first != second => {
                format!("{what} is defined twice (lines {first} and {second}); define each table and key once")
            }
            _ => format!("{what} is defined twice; define each table and key once"),
        };
        ConfigError {
            message: cut_quoted(&message),
            ..self.error(Some(start..end), &field, "")
        }
    }
}

/// The dotted path (under `path`) and place of the first date or time in `value`.
fn first_datetime(value: &Spanned<DeValue<'_>>, path: &str) -> Option<(String, Range<usize>)> {
    let mut keys = Vec::new();
    let span = datetime_in(value, &mut keys)?;
    let mut path = path.to_owned();
    for key in keys.iter().rev() {
        path.push_str(key);
    }
    Some((path, span))
}

/// The place of the first date or time in `value`, with the path to it
/// pushed onto `keys` last part first (`.key`, `[0]`).
fn datetime_in(value: &Spanned<DeValue<'_>>, keys: &mut Vec<String>) -> Option<Range<usize>> {
    match value.get_ref() {
        DeValue::Datetime(_) => Some(value.span()),
        DeValue::Table(table) => table.iter().find_map(|(key, value)| {
            let span = datetime_in(value, keys)?;
            keys.push(format!(".{}", key.get_ref()));
            Some(span)
        }),
        DeValue::Array(array) => array.iter().enumerate().find_map(|(i, value)| {
            let span = datetime_in(value, keys)?;
            keys.push(format!("[{i}]"));
            Some(span)
        }),
        _ => None,
    }
}

/// The 1-based line and column just after `before`.
fn line_col(before: &str) -> (usize, usize) {
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn floor_char_boundary(text: &str, mut offset: usize) -> usize {
    offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

/// The full key path of a duplicate whose line, up to the end of the
/// duplicate key, is `line`: a `[header]` names it whole; a `key = …` line
/// is read under the last `[header]` of the document before it.
fn duplicate_path(text: &str, line: &str, before: Option<&DeTable<'_>>, line_start: usize) -> Option<Vec<String>> {
    let trimmed = line.trim_start();
    if trimmed.starts_with('[') {
        let closing = if trimmed.starts_with("[[") { "]]" } else { "]" };
        return only_path(&format!("{trimmed}{closing}"));
    }
    let key = only_path(&format!("{trimmed} = 0"))?;
    let mut found = Vec::new();
    if let Some(before) = before {
        headers(text, before, &mut Vec::new(), &mut found);
    }
    let mut path = found
        .into_iter()
        .filter(|(start, _)| *start < line_start)
        .max_by_key(|(start, _)| *start)
        .map(|(_, path)| path)
        .unwrap_or_default();
    path.extend(key);
    Some(path)
}

/// The key path of a document with one value (`[a.b]` or `a.b = 0`).
fn only_path(text: &str) -> Option<Vec<String>> {
    let mut table = DeTable::parse(text).ok()?.into_inner();
    let mut path = Vec::new();
    loop {
        let (key, value) = table.into_iter().next()?;
        path.push(key.get_ref().to_string());
        match value.into_inner() {
            DeValue::Table(inner) if !inner.is_empty() => table = inner,
            DeValue::Array(array) => match array.into_iter().last().map(Spanned::into_inner) {
                Some(DeValue::Table(inner)) if !inner.is_empty() => table = inner,
                _ => return Some(path),
            },
            _ => return Some(path),
        }
    }
}

/// Every `[header]` table of `text` in `table`: where its header starts,
/// and its path.
fn headers(text: &str, table: &DeTable<'_>, path: &mut Vec<String>, out: &mut Vec<(usize, Vec<String>)>) {
    // Deeper than any table the file means to have (and than a stack holds).
    if path.len() > 64 {
        return;
    }
    for (key, value) in table {
        path.push(key.get_ref().to_string());
        let tables: Vec<&Spanned<DeValue<'_>>> = match value.get_ref() {
            DeValue::Array(array) => array.iter().collect(),
            _ => vec![value],
        };
        for element in tables {
            if let DeValue::Table(inner) = element.get_ref() {
                // A table's span is its header's (`[a.b]`, `[[a]]`); an
                // inline table's starts at `{`, a dotted key's table elsewhere.
                let start = element.span().start;
                if text.as_bytes().get(start) == Some(&b'[') {
                    out.push((start, path.clone()));
                }
                headers(text, inner, path, out);
            }
        }
        path.pop();
    }
}

/// Where the last key of `path` is written in `table` (the first definition).
fn key_span(table: &DeTable<'_>, path: &[String]) -> Option<Range<usize>> {
    let (last, parents) = path.split_last()?;
    let mut table = table;
    for key in parents {
        let value = table.iter().find(|(k, _)| k.get_ref().as_ref() == key.as_str())?.1;
        table = match value.get_ref() {
            DeValue::Table(inner) => inner,
            DeValue::Array(array) => match array.iter().last().map(Spanned::get_ref) {
                Some(DeValue::Table(inner)) => inner,
                _ => return None,
            },
            _ => return None,
        };
    }
    table
        .iter()
        .find(|(k, _)| k.get_ref().as_ref() == last.as_str())
        .map(|(k, _)| k.span())
}

/// The configuration text of `bytes`, or where it stops being UTF-8.
pub(super) fn utf8(bytes: Vec<u8>, file: &str) -> Result<String, ConfigError> {
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let bytes = e.as_bytes();
        // The bytes before are valid: as text, they give the line and column.
        let (line, column) = line_col(std::str::from_utf8(&bytes[..at]).unwrap_or_default());
        let byte = bytes.get(at).copied().unwrap_or_default();
        ConfigError {
            file: file.to_owned(),
            line,
            column,
            field: String::new(),
            message: format!(
                "the file is not UTF-8: invalid byte 0x{byte:02X} at line {line}, column {column} (save it as UTF-8)"
            ),
        }
    })
}
