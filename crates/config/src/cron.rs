//! Cron expressions for schedules (`[backup.NAME] schedule`): the five
//! fields of crontab(5), `minute hour day-of-month month day-of-week`,
//! evaluated in UTC. Each field takes `*`, numbers, ranges `a-b`, steps
//! `*/n` and `a-b/n`, and lists `x,y`; months and weekdays also take their
//! English three-letter names, and weekday 7 is Sunday like 0. As in Vixie
//! cron, when both day fields are restricted a day matching either one
//! fires.

use crate::units::civil_from_days;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cron {
    minutes: u64,
    hours: u32,
    /// Bit d for day d (1..=31).
    days: u32,
    /// Bit m for month m (1..=12).
    months: u16,
    /// Bit w for weekday w (0 = Sunday).
    weekdays: u8,
    days_restricted: bool,
    weekdays_restricted: bool,
    text: String,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

impl Cron {
    pub fn parse(text: &str) -> Result<Cron, String> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!(
                "{text:?} is not a cron expression: expected 5 fields (minute hour day-of-month month day-of-week), found {}",
                fields.len()
            ));
        }
        let minutes = field(fields[0], "minute", 0, 59, &[])?;
        let hours = field(fields[1], "hour", 0, 23, &[])?;
        let days = field(fields[2], "day of month", 1, 31, &[])?;
        let months = field(fields[3], "month", 1, 12, &MONTHS)?;
        let mut weekdays = field(fields[4], "day of week", 0, 7, &WEEKDAYS)?;
        if weekdays & (1 << 7) != 0 {
            weekdays = (weekdays | 1) & 0x7f;
        }
        Ok(Cron {
            minutes,
            hours: hours as u32,
            days: days as u32,
            months: months as u16,
            weekdays: weekdays as u8,
            days_restricted: !fields[2].starts_with('*'),
            weekdays_restricted: !fields[4].starts_with('*'),
            text: text.to_string(),
        })
    }

    /// The first time it fires strictly after `after` (Unix seconds, UTC),
    /// at the start of its minute. `None` when it never does (e.g. 30 Feb)
    /// within the next eight years.
    pub fn next_after(&self, after: u64) -> Option<u64> {
        let start_min = after / 60 + 1;
        let first_day = start_min / 1440;
        for day in first_day..first_day + 8 * 366 {
            if !self.day_matches(day) {
                continue;
            }
            let from = if day == first_day {
                start_min % 1440
            } else {
                0
            };
            for m in from..1440 {
                let (h, mi) = (m / 60, m % 60);
                if self.hours & (1 << h) != 0 && self.minutes & (1 << mi) != 0 {
                    return Some(day * 86_400 + m * 60);
                }
            }
        }
        None
    }

    /// The last time it fired at or before `at` (Unix seconds, UTC),
    /// looking back at most a year.
    pub fn last_at_or_before(&self, at: u64) -> Option<u64> {
        let last_min = at / 60;
        let last_day = last_min / 1440;
        for day in (last_day.saturating_sub(366)..=last_day).rev() {
            if !self.day_matches(day) {
                continue;
            }
            let to = if day == last_day {
                last_min % 1440
            } else {
                1439
            };
            for m in (0..=to).rev() {
                let (h, mi) = (m / 60, m % 60);
                if self.hours & (1 << h) != 0 && self.minutes & (1 << mi) != 0 {
                    return Some(day * 86_400 + m * 60);
                }
            }
        }
        None
    }

    fn day_matches(&self, day: u64) -> bool {
        let (_, m, d) = civil_from_days(day as i64);
        if self.months & (1 << m) == 0 {
            return false;
        }
        // 1970-01-01 was a Thursday.
        let weekday = (day + 4) % 7;
        let by_day = self.days & (1 << d) != 0;
        let by_weekday = self.weekdays & (1 << weekday) != 0;
        match (self.days_restricted, self.weekdays_restricted) {
            (true, true) => by_day || by_weekday,
            _ => by_day && by_weekday,
        }
    }
}

impl std::fmt::Display for Cron {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// One field as a bit set over `lo..=hi`.
fn field(text: &str, what: &str, lo: u32, hi: u32, names: &[&str]) -> Result<u64, String> {
    let value = |s: &str| -> Result<u32, String> {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            // Months count from 1, weekdays from 0.
            return Ok(i as u32 + lo);
        }
        let v: u32 = s
            .parse()
            .map_err(|_| format!("{s:?} is not a valid {what}"))?;
        if v < lo || v > hi {
            return Err(format!("{what} {v} is out of range {lo}-{hi}"));
        }
        Ok(v)
    };
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s
                    .parse()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("{s:?} is not a valid step in the {what} field"))?;
                (r, step)
            }
            None => (part, 1),
        };
        let (from, to) = match range {
            "*" => (lo, hi),
            r => match r.split_once('-') {
                Some((a, b)) => (value(a)?, value(b)?),
                None if step > 1 => (value(r)?, hi),
                None => {
                    let v = value(r)?;
                    (v, v)
                }
            },
        };
        if from > to {
            return Err(format!("{what} range {range:?} runs backwards"));
        }
        let mut v = from;
        while v <= to {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;
    /// 2026-12-02T00:00:00Z, a Wednesday.
    const T0: u64 = 1_796_169_600;

    #[test]
    fn next_times() {
        let daily3 = Cron::parse("0 3 * * *").unwrap();
        assert_eq!(daily3.next_after(T0), Some(T0 + 3 * 3600));
        assert_eq!(daily3.next_after(T0 + 3 * 3600), Some(T0 + DAY + 3 * 3600));
        // Sunday 05:00: 2026-12-06.
        let weekly = Cron::parse("0 5 * * 0").unwrap();
        assert_eq!(weekly.next_after(T0), Some(T0 + 4 * DAY + 5 * 3600));
        assert_eq!(
            Cron::parse("0 5 * * sun").unwrap().next_after(T0),
            weekly.next_after(T0)
        );
        assert_eq!(
            Cron::parse("0 5 * * 7").unwrap().next_after(T0),
            weekly.next_after(T0)
        );
        // Every 15 minutes.
        let q = Cron::parse("*/15 * * * *").unwrap();
        assert_eq!(q.next_after(T0 + 1), Some(T0 + 900));
        assert_eq!(q.next_after(T0 + 900), Some(T0 + 1800));
        // The first of the month, and either field when both are set.
        let first = Cron::parse("30 2 1 * *").unwrap();
        assert_eq!(first.next_after(T0), Some(1_798_770_600)); // 2027-01-01T02:30Z
        let either = Cron::parse("0 0 1 * fri").unwrap();
        assert_eq!(either.next_after(T0), Some(T0 + 2 * DAY)); // Friday 4th
                                                               // 29 February: the next leap year.
        let leap = Cron::parse("0 0 29 feb *").unwrap();
        assert_eq!(leap.next_after(T0), Some(1_835_395_200)); // 2028-02-29
        assert_eq!(Cron::parse("0 0 30 2 *").unwrap().next_after(T0), None);
        // Lists and ranges.
        let work = Cron::parse("0 9-17/4 * * mon-fri").unwrap();
        assert_eq!(work.next_after(T0), Some(T0 + 9 * 3600));
        assert_eq!(work.next_after(T0 + 9 * 3600), Some(T0 + 13 * 3600));
        assert_eq!(work.next_after(T0 + 17 * 3600), Some(T0 + DAY + 9 * 3600));
        assert_eq!(daily3.to_string(), "0 3 * * *");
    }

    #[test]
    fn bad_expressions_say_what_is_wrong() {
        for (text, want) in [
            ("0 3 * *", "expected 5 fields"),
            ("60 * * * *", "minute 60 is out of range 0-59"),
            ("0 24 * * *", "hour 24 is out of range"),
            ("0 0 0 * *", "day of month 0 is out of range"),
            ("0 0 * 13 *", "month 13"),
            ("0 0 * * 8", "day of week 8"),
            ("*/0 * * * *", "not a valid step"),
            ("0 5-3 * * *", "runs backwards"),
            ("x * * * *", "\"x\" is not a valid minute"),
            ("0 0 * foo *", "not a valid month"),
        ] {
            let e = Cron::parse(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
