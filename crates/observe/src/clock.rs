//! Wall-clock time as text, without a date library: what logs, webhooks
//! and the admin API print.

/// `YYYY-MM-DDTHH:MM:SS` (UTC) of a Unix time in seconds.
pub fn date_time(secs: u64) -> [u8; 19] {
    let (y, m, d) = centinela_config::units::civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    let mut out = *b"0000-00-00T00:00:00";
    let mut put = |at: usize, width: usize, mut v: u64| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, y as u64);
    put(5, 2, u64::from(m));
    put(8, 2, u64::from(d));
    put(11, 2, rem / 3600);
    put(14, 2, rem % 3600 / 60);
    put(17, 2, rem % 60);
    out
}

/// `2026-12-02T14:20:35.123Z` from Unix milliseconds.
pub fn rfc3339(ms: u64) -> String {
    let dt = date_time(ms / 1000);
    format!(
        "{}.{:03}Z",
        std::str::from_utf8(&dt).unwrap_or_default(),
        ms % 1000
    )
}
