//! Text shown to people or written to logs: what must not reach them as it came.

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
