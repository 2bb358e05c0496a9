//! Protecting data: PostgreSQL, SQLite and file backups into chunk
//! repositories on a directory or S3 ([`store`], [`repo`]: content-defined
//! chunks named by BLAKE3, zstd, age, crash-safe writes, verify, locks,
//! prune), WAL archived ([`wal`]) or streamed ([`stream`]), restores to a
//! point in time, retention ([`retention`]), restore tests that replay in
//! a throwaway server ([`restore_test`], [`throwaway`]), and the schedules
//! inside `centinela run` ([`scheduler`]). The binary calls [`ops`].
#![forbid(unsafe_code)]

pub mod delta;
pub mod files;
pub mod ops;
pub mod postgres;
pub mod progress;
pub mod repo;
pub mod restore_test;
pub mod retention;
pub mod scheduler;
pub mod sqlite;
pub mod store;
pub mod stream;
pub mod throwaway;
pub mod wal;

pub use scheduler::Scheduler;

/// `2026-12-02T18:30:00Z` of Unix seconds.
pub fn rfc3339(t: u64) -> String {
    let (y, m, d) = centinela_config::units::civil_from_days((t / 86_400) as i64);
    let r = t % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        r / 3600,
        r % 3600 / 60,
        r % 60
    )
}

/// Unix seconds of an RFC 3339 time (`2026-12-01T10:00:00Z`; fractions
/// and `+01:00` offsets allowed).
pub fn parse_rfc3339(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not an RFC 3339 time such as 2026-12-01T10:00:00Z");
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<i64, String> {
        s.get(r)
            .filter(|x| x.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|x| x.parse().ok())
            .ok_or_else(bad)
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return Err(bad());
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        o if o.len() == 6 && (o.starts_with('+') || o.starts_with('-')) && &o[3..4] == ":" => {
            let oh: i64 = o[1..3].parse().map_err(|_| bad())?;
            let om: i64 = o[4..6].parse().map_err(|_| bad())?;
            let sign = if o.starts_with('-') { -1 } else { 1 };
            sign * (oh * 3600 + om * 60)
        }
        _ => return Err(bad()),
    };
    let days = centinela_config::units::days_from_civil(y, mo as u32, d as u32);
    u64::try_from(days * 86_400 + h * 3600 + mi * 60 + se - offset).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_both_ways() {
        assert_eq!(parse_rfc3339("2026-12-02T00:00:00Z"), Ok(1_796_169_600));
        assert_eq!(
            parse_rfc3339("2026-12-02T01:30:00.250+01:30"),
            Ok(1_796_169_600)
        );
        assert_eq!(
            parse_rfc3339("2026-12-01T19:00:00-05:00"),
            Ok(1_796_169_600)
        );
        assert_eq!(rfc3339(1_796_169_600), "2026-12-02T00:00:00Z");
        for bad in [
            "2026-12-02",
            "2026-13-02T00:00:00Z",
            "2026-12-02T00:00:00",
            "yesterday",
        ] {
            assert!(
                parse_rfc3339(bad).unwrap_err().contains("RFC 3339"),
                "{bad}"
            );
        }
    }
}
