//! Text shown to people or written to logs: what must not reach them as it came.

use url::form_urlencoded::byte_serialize;

/// The most characters of a provider's text an [`excerpt`] keeps.
pub const MAX_EXCERPT: usize = 300;

/// A short, single-line piece of provider text with every secret we sent
/// removed, as sent and form-encoded, before it is cut to length (so no cut
/// can leave half a secret behind). Invisible format characters (bidi
/// overrides, zero-width ones) are dropped too: the text is shown to people
/// and written to logs, and must read there as it is.
pub fn excerpt(text: &str, sent: &[&str]) -> String {
    // U+2028 and U+2029 are not controls, but end a line in log viewers too.
    let mut text: String = text
        .chars()
        .filter(|c| !c.is_control() && !matches!(c, '\u{2028}' | '\u{2029}') && !is_invisible_format(*c))
        .collect();
    for secret in sent.iter().filter(|s| s.len() >= 4) {
        let encoded: String = byte_serialize(secret.as_bytes()).collect();
        text = text.replace(secret, "[redacted]").replace(&encoded, "[redacted]");
    }
    text.chars().take(MAX_EXCERPT).collect()
}

/// Unicode format characters (general category Cf) that change how text
/// around them reads without being seen: bidirectional overrides, embeddings
/// and isolates (`Acme \u{202e}gnp.exe` reads "Acme exe.png"), zero-width
/// spaces and joiners, the byte-order mark, the soft hyphen, invisible
/// operators, interlinear annotation marks and tag characters.
pub fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{061C}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{E0001}'
            | '\u{E0020}'..='\u{E007F}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_text_loses_invisible_formatting_before_anyone_reads_it() {
        let shown = excerpt("Access for \u{202e}gnp.exe\u{202c} denied\u{200b}", &[]);
        assert_eq!(shown, "Access for gnp.exe denied");
    }

    #[test]
    fn bidi_overrides_and_zero_width_characters_are_found_and_letters_are_not() {
        for c in [
            '\u{202E}',
            '\u{200B}',
            '\u{200D}',
            '\u{2066}',
            '\u{2069}',
            '\u{FEFF}',
            '\u{E0041}',
        ] {
            assert!(is_invisible_format(c), "{:04X}", c as u32);
        }
        for c in ['a', 'é', 'ß', '中', '🙂', ' ', '\u{00A0}', '-'] {
            assert!(!is_invisible_format(c), "{:04X}", c as u32);
        }
    }
}
