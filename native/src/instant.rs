//! RFC 3339 date-times as nanoseconds since the epoch: the fast path of
//! `schemas.timestamps.parse_instant`.
//!
//! Gives an instant only for text it is sure of; for anything else it gives
//! `None` and the Python reference parser (`parse_rfc3339`) decides, and words
//! the refusal. tests/contract/test_events.py holds the two to each other.

pub const FIRST_YEAR: i64 = 1678;
pub const LAST_YEAR: i64 = 2261;

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub fn parse(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let digit = |i: usize| -> Option<i64> {
        let c = *b.get(i)?;
        c.is_ascii_digit().then(|| i64::from(c - b'0'))
    };
    let two = |i: usize| -> Option<i64> { Some(digit(i)? * 10 + digit(i + 1)?) };
    let at = |i: usize, c: u8| b.get(i) == Some(&c);
    let year = two(0)? * 100 + two(2)?;
    if !(at(4, b'-') && at(7, b'-') && (at(10, b'T') || at(10, b't')) && at(13, b':') && at(16, b':')) {
        return None;
    }
    let (month, day) = (two(5)?, two(8)?);
    let (hour, minute, second) = (two(11)?, two(14)?, two(17)?);
    let mut i = 19;
    let mut fraction = 0;
    if at(i, b'.') {
        i += 1;
        let start = i;
        while let Some(d) = digit(i) {
            if i - start < 9 {
                fraction = fraction * 10 + d;
            }
            i += 1;
        }
        if i == start {
            return None;
        }
        for _ in (i - start)..9 {
            fraction *= 10;
        }
    }
    let offset = match b.get(i)? {
        b'Z' | b'z' => {
            i += 1;
            0
        }
        sign @ (b'+' | b'-') => {
            let (oh, om) = (two(i + 1)?, two(i + 4)?);
            if !at(i + 3, b':') || oh > 23 || om > 59 {
                return None;
            }
            i += 6;
            let offset = oh * 3600 + om * 60;
            if *sign == b'+' {
                offset
            } else {
                -offset
            }
        }
        _ => return None,
    };
    let in_range = (FIRST_YEAR..=LAST_YEAR).contains(&year)
        && (1..=12).contains(&month)
        && day >= 1
        && day <= days_in_month(year, month)
        && hour <= 23
        && minute <= 59
        && second <= 59;
    if i != b.len() || !in_range {
        return None;
    }
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset;
    Some(seconds * 1_000_000_000 + fraction)
}
