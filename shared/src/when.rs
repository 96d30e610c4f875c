//! Times and durations as people read them, for messages and the CLI:
//! "14:03:12 UTC", "9 min 30 s", "at 14:03:12 UTC, in 9 min 30 s".
//!
//! Every time here is epoch milliseconds in UTC (what DynamoDB items hold);
//! `now` is passed in so that messages are testable. And the one conversion
//! between those times and the monotonic clock's `Instant`s that deadlines
//! and timers use.

use std::time::{Duration, Instant};

/// The time from `now` to `at` (epoch ms): zero when `at` is past.
pub fn until(at: i64, now: i64) -> Duration {
    Duration::from_millis(u64::try_from(at.saturating_sub(now)).unwrap_or(0))
}

/// The `Instant` of epoch time `at` (this moment when `at` is past), `now`
/// being this moment's epoch time.
pub fn instant_of(at: i64, now: i64) -> Instant {
    Instant::now() + until(at, now)
}

/// The epoch time of `at` (this moment's when `at` is past), `now` being
/// this moment's epoch time.
pub fn epoch_of(at: Instant, now: i64) -> i64 {
    let ahead = at.saturating_duration_since(Instant::now()).as_millis();
    now.saturating_add(i64::try_from(ahead).unwrap_or(i64::MAX))
}

/// "2026-12-01 14:03:12 UTC".
pub fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    format!("{year:04}-{month:02}-{day:02} {} UTC", time_of_day(secs))
}

/// "2026-12-01T14:03:12Z": RFC 3339, for machines (the API's answers).
pub fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    format!("{year:04}-{month:02}-{day:02}T{}Z", time_of_day(secs))
}

/// "14:03:12 UTC" when `ms` falls on the same UTC day as `now`, else with
/// the date ("2026-12-02 14:03:12 UTC").
pub fn clock(ms: i64, now: i64) -> String {
    let secs = ms.div_euclid(1000);
    if secs.div_euclid(86_400) == now.div_euclid(1000).div_euclid(86_400) {
        format!("{} UTC", time_of_day(secs))
    } else {
        utc(ms)
    }
}

/// "45 s", "9 min 30 s", "2 h 5 min", "3 d 4 h": the two largest units.
pub fn duration(secs: u64) -> String {
    let two = |big: u64, big_unit: &str, small: u64, small_unit: &str| {
        if small == 0 {
            format!("{big} {big_unit}")
        } else {
            format!("{big} {big_unit} {small} {small_unit}")
        }
    };
    match secs {
        s if s < 60 => format!("{s} s"),
        s if s < 3_600 => two(s / 60, "min", s % 60, "s"),
        s if s < 86_400 => two(s / 3_600, "h", s % 3_600 / 60, "min"),
        s => two(s / 86_400, "d", s % 86_400 / 3_600, "h"),
    }
}

/// "in 9 min 30 s" for a time ahead, "3 min ago" for one passed, "now"
/// within a second.
pub fn relative(ms: i64, now: i64) -> String {
    let delta = ms - now;
    if delta.abs() < 1_000 {
        return "now".to_owned();
    }
    let text = duration(delta.unsigned_abs() / 1_000);
    if delta > 0 {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

/// How long ago something happened: "just now" within a second, and also
/// for a time slightly ahead, which is another host's clock, not the future.
pub fn ago(ms: i64, now: i64) -> String {
    if ms > now - 1_000 {
        return "just now".to_owned();
    }
    relative(ms, now)
}

/// "at 14:03:12 UTC, in 9 min 30 s" (or "…, 3 min ago").
pub fn moment(ms: i64, now: i64) -> String {
    format!("at {}, {}", clock(ms, now), relative(ms, now))
}

fn time_of_day(secs: i64) -> String {
    let s = secs.rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", s / 3_600, s % 3_600 / 60, s % 60)
}

/// The proleptic Gregorian (year, month, day) of a day count from
/// 1970-01-01 (Howard Hinnant's `civil_from_days`).
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Days from 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`, the inverse of [`civil_from_days`]).
pub fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// An RFC 3339 / ISO 8601 date-time with a `Z` or `±hh:mm` offset and any
/// fraction of a second, as nanoseconds since 1970-01-01 UTC; `None` for
/// anything else (a date without time, no offset, out-of-range fields).
/// `2026-01-02T01:00:00+01:00` and `2026-01-02T00:00:00.000Z` are the same instant.
pub fn parse_rfc3339(text: &str) -> Option<i128> {
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = text.get(range)?;
        (!part.is_empty() && part.bytes().all(|c| c.is_ascii_digit()))
            .then(|| part.parse().ok())
            .flatten()
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut rest = 19;
    let mut nanos: i128 = 0;
    if b.get(rest) == Some(&b'.') {
        let start = rest + 1;
        let end = start + b[start..].iter().take_while(|c| c.is_ascii_digit()).count();
        if end == start {
            return None;
        }
        for (i, c) in b[start..end].iter().take(9).enumerate() {
            nanos += i128::from(c - b'0') * 10i128.pow(8 - u32::try_from(i).ok()?);
        }
        rest = end;
    }
    let offset_secs = match &text[rest..] {
        "Z" | "z" => 0,
        tz if tz.len() == 6 && matches!(tz.as_bytes()[0], b'+' | b'-') && tz.as_bytes()[3] == b':' => {
            let (h, m) = (digits(rest + 1..rest + 3)?, digits(rest + 4..rest + 6)?);
            if h > 23 || m > 59 {
                return None;
            }
            let secs = h * 3600 + m * 60;
            if tz.starts_with('-') { -secs } else { secs }
        }
        _ => return None,
    };
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    Some(i128::from(secs) * 1_000_000_000 + nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_written_as_rfc3339_read_back() {
        for ms in [0, 951_782_400_000, 1_796_551_891_000, 1_796_551_891_999] {
            let text = rfc3339(ms);
            assert_eq!(
                parse_rfc3339(&text),
                Some(i128::from(ms / 1000) * 1_000_000_000),
                "{text}"
            );
        }
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn rfc3339_times_become_instants() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2026-01-02T01:00:00+01:00"),
            parse_rfc3339("2026-01-02T00:00:00.000Z")
        );
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00.5Z"), Some(500_000_000));
        assert_eq!(parse_rfc3339("1969-12-31T23:00:00-01:00"), Some(0));
        assert_eq!(parse_rfc3339("2000-02-29T00:00:00Z"), Some(951_782_400 * 1_000_000_000));
        for bad in [
            "2026-01-02",
            "2026-01-02T00:00:00",
            "2026-13-02T00:00:00Z",
            "x026-01-02T00:00:00Z",
            "2026-01-02T00:00:00.Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
        for days in [-800_000, -1, 0, 1, 20_000, 2_000_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn dates_match_the_calendar() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_796_133_286_766), "2026-12-01 13:54:46 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(4_107_542_399_000), "2100-02-28 23:59:59 UTC");
        assert_eq!(utc(-1_000), "1969-12-31 23:59:59 UTC");
    }

    #[test]
    fn the_date_is_left_out_on_the_same_day() {
        let now = 1_796_133_286_766;
        assert_eq!(clock(now + 570_000, now), "14:04:16 UTC");
        assert_eq!(clock(now + 86_400_000, now), "2026-12-02 13:54:46 UTC");
        assert_eq!(moment(now + 570_000, now), "at 14:04:16 UTC, in 9 min 30 s");
        assert_eq!(moment(now - 180_000, now), "at 13:51:46 UTC, 3 min ago");
    }

    #[test]
    fn durations_use_the_two_largest_units() {
        assert_eq!(duration(0), "0 s");
        assert_eq!(duration(59), "59 s");
        assert_eq!(duration(60), "1 min");
        assert_eq!(duration(570), "9 min 30 s");
        assert_eq!(duration(3_600), "1 h");
        assert_eq!(duration(7_500), "2 h 5 min");
        assert_eq!(duration(277_200), "3 d 5 h");
    }

    #[test]
    fn past_events_never_read_as_future() {
        let now = 1_000_000;
        assert_eq!(ago(now + 1_500, now), "just now");
        assert_eq!(ago(now - 500, now), "just now");
        assert_eq!(ago(now - 2_000, now), "2 s ago");
        assert_eq!(relative(now + 2_000, now), "in 2 s");
        assert_eq!(relative(now, now), "now");
    }
}
