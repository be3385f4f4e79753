//! Timestamps as integer microseconds since the Unix epoch (UTC).
//!
//! Stored as `BIGINT` on both engines; rendered as RFC 3339 in the native API.

use std::fmt;

/// Microseconds since 1970-01-01T00:00:00Z.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub i64);

pub const MICROS_PER_SECOND: i64 = 1_000_000;

impl Timestamp {
    pub fn from_unix_seconds(seconds: i64) -> Option<Self> {
        seconds.checked_mul(MICROS_PER_SECOND).map(Timestamp)
    }

    pub fn micros(self) -> i64 {
        self.0
    }

    pub fn unix_seconds(self) -> i64 {
        self.0.div_euclid(MICROS_PER_SECOND)
    }

    pub fn checked_add_seconds(self, seconds: i64) -> Option<Self> {
        seconds
            .checked_mul(MICROS_PER_SECOND)
            .and_then(|d| self.0.checked_add(d))
            .map(Timestamp)
    }

    /// RFC 3339 in UTC with microsecond precision, e.g. `2026-11-22T02:18:31.000123Z`.
    pub fn to_rfc3339(self) -> String {
        self.to_string()
    }

    /// Parses an RFC 3339 date-time: `YYYY-MM-DDTHH:MM:SS[.fraction]` then `Z` or an offset
    /// `±HH:MM` (`T` and `Z` in either case; fraction digits past microseconds are dropped; no
    /// leap second).
    pub fn parse_rfc3339(s: &str) -> Option<Timestamp> {
        let b = s.as_bytes();
        if b.len() < 20
            || b[4] != b'-'
            || b[7] != b'-'
            || !matches!(b[10], b'T' | b't')
            || b[13] != b':'
            || b[16] != b':'
        {
            return None;
        }
        let num = |r: std::ops::Range<usize>| digits(s.get(r)?);
        let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
        let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
        if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 59 {
            return None;
        }
        let rest = s.get(19..)?;
        let (fraction, offset) = rest.split_at(rest.find(['Z', 'z', '+', '-'])?);
        let east = match offset {
            "Z" | "z" => 0,
            o if o.len() == 6 && matches!(o.as_bytes()[0], b'+' | b'-') && o.as_bytes()[3] == b':' => {
                let (oh, om) = (digits(&o[1..3])?, digits(&o[4..6])?);
                if oh > 23 || om > 59 {
                    return None;
                }
                let east = oh * 3600 + om * 60;
                if o.starts_with('-') {
                    -east
                } else {
                    east
                }
            }
            _ => return None,
        };
        // Any number of fraction digits; past the sixth (microseconds) they are dropped.
        let micros = match fraction.strip_prefix('.') {
            None if fraction.is_empty() => 0,
            Some(f) if !f.is_empty() && f.bytes().all(|c| c.is_ascii_digit()) => {
                let kept = &f[..f.len().min(6)];
                digits(kept)? * 10i64.pow(6 - u32::try_from(kept.len()).ok()?)
            }
            _ => return None,
        };
        let days = days_from_civil(y, mo, d);
        if civil_from_days(days) != (y, mo, d) {
            return None;
        }
        let seconds = days * 86_400 + h * 3600 + mi * 60 + sec - east;
        Some(Timestamp(seconds.checked_mul(MICROS_PER_SECOND)?.checked_add(micros)?))
    }
}

/// `text` as a number if it is ASCII digits only (`str::parse` would also take a sign).
fn digits(text: &str) -> Option<i64> {
    if text.is_empty() || !text.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// (year, month, day) to days since the epoch (the inverse of `civil_from_days`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.div_euclid(MICROS_PER_SECOND);
        let micros = self.0.rem_euclid(MICROS_PER_SECOND);
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
            sod / 3600,
            (sod / 60) % 60,
            sod % 60
        )
    }
}

/// Days since the epoch to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_epoch_and_known_dates() {
        assert_eq!(Timestamp(0).to_string(), "1970-01-01T00:00:00.000000Z");
        // 2026-11-22T02:18:31Z
        let t = Timestamp::from_unix_seconds(1_795_313_911).expect("fits");
        assert_eq!(t.to_string(), "2026-11-22T02:18:31.000000Z");
        assert_eq!(
            Timestamp(951_782_400_000_001).to_string(),
            "2000-02-29T00:00:00.000001Z"
        );
        assert_eq!(Timestamp(-1).to_string(), "1969-12-31T23:59:59.999999Z");
    }

    #[test]
    fn parses_what_it_formats() {
        for t in [0, 1_795_313_911_000_123, 951_782_400_000_001, -1] {
            assert_eq!(Timestamp::parse_rfc3339(&Timestamp(t).to_string()), Some(Timestamp(t)));
        }
        assert_eq!(
            Timestamp::parse_rfc3339("2026-11-22T02:18:31Z"),
            Timestamp::from_unix_seconds(1_795_313_911)
        );
        // An offset names the same instant in another zone; `T` and `Z` may be lower case.
        for same in [
            "2026-11-22T02:18:31Z",
            "2026-11-21T21:18:31-05:00",
            "2026-11-22T07:48:31+05:30",
            "2026-11-22t02:18:31z",
            "2026-11-22T02:18:31-00:00",
        ] {
            assert_eq!(
                Timestamp::parse_rfc3339(same),
                Timestamp::from_unix_seconds(1_795_313_911),
                "{same}"
            );
        }
        assert_eq!(
            Timestamp::parse_rfc3339("2026-11-22T02:18:31.123456789Z"),
            Timestamp::from_unix_seconds(1_795_313_911).map(|t| Timestamp(t.0 + 123_456))
        );
        assert_eq!(
            Timestamp::parse_rfc3339("2026-11-22T03:18:31.5+01:00"),
            Timestamp::from_unix_seconds(1_795_313_911).map(|t| Timestamp(t.0 + 500_000))
        );
        for bad in [
            "2026-11-22T02:18:31+0500",
            "2026-11-22T02:18:31+24:00",
            "2026-11-22T02:18:31+05:60",
            "2026-11-22T02:18:31.Z",
            "2026-11-22T02:18:31.+1Z",
            "+026-11-22T02:18:31Z",
            "2026-+1-22T02:18:31Z",
            "2026-11-22T02:18:31Z+01:00",
            "2026-11-22T02:18:31Z12:34",
            "2026-11-22T02:18:31z05:00",
            "2026-02-30T00:00:00Z",
            "2026-11-22T02:18:31",
            "2026-11-22 02:18:31Z",
            "x",
        ] {
            assert_eq!(Timestamp::parse_rfc3339(bad), None, "{bad}");
        }
    }
}
