//! Tables for people, JSON for scripts: what every command's output shares.
//! Writing to stdout, table layout (cells cut at [`MAX_CELL`] characters,
//! padded by hand), and the cells that say a time or cut a text. Each
//! command's own rendering is next to the command, in its family's module.

use std::io::Write;
use std::time::Duration;

use shared::connection::now_ms;
use shared::when;

pub fn write_out(text: &str) -> anyhow::Result<()> {
    write_bytes(text.as_bytes())
}

pub fn write_bytes(bytes: &[u8]) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(bytes)?;
    stdout.flush()?;
    Ok(())
}

/// The most characters a table cell shows; `--json` has every value whole.
const MAX_CELL: usize = 200;

/// `text` in at most [`MAX_CELL`] characters, cut with `…`.
fn cut_cell(text: &str) -> String {
    if text.chars().count() <= MAX_CELL {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(MAX_CELL - 1).collect();
    cut.push('…');
    cut
}

/// `text` and spaces up to `width` characters. Padded by hand: a `{:<w$}`
/// width of 65,536 or more panics ("Formatting argument out of range").
pub fn pad(text: &str, width: usize) -> String {
    let mut padded = text.to_owned();
    padded.extend(std::iter::repeat_n(' ', width.saturating_sub(text.chars().count())));
    padded
}

/// Left-aligned columns, two spaces apart; long cells cut ([`MAX_CELL`]).
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|c| cut_cell(c)).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| pad(c, *w)).collect();
        padded.join("  ").trim_end().to_owned() + "\n"
    };
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    let mut out = line(&header);
    for row in &rows {
        out.push_str(&line(row));
    }
    out
}

/// Text cut to `max` characters, on one line.
pub fn shorten(text: &str, max: usize) -> String {
    let line: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if line.chars().count() <= max {
        return line;
    }
    let cut: String = line.chars().take(max.saturating_sub(1)).collect();
    format!("{cut}…")
}

/// "in 9 min 30 s", "3 min ago": how far an epoch-ms time is from now.
pub fn relative(ms: Option<i64>) -> String {
    ms.map_or_else(|| "-".to_owned(), |ms| when::relative(ms, now_ms()))
}

/// How long ago something happened ("just now" also for a time a little
/// ahead: another host's clock, not the future).
pub fn ago(ms: Option<i64>) -> String {
    ms.map_or_else(|| "-".to_owned(), |ms| when::ago(ms, now_ms()))
}

/// "1.2s", "3m 05s".
pub fn elapsed(duration: Duration) -> String {
    let secs = duration.as_secs();
    if secs < 60 {
        format!("{:.1}s", duration.as_secs_f64())
    } else {
        format!("{}m {:02}s", secs / 60, secs % 60)
    }
}
