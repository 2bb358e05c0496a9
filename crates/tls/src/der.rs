//! The validity dates of an X.509 certificate (RFC 5280 §4.1), read from
//! its DER without a general ASN.1 parser: only the path from the
//! certificate to `validity` is walked, and anything unexpected on it
//! gives `None`.

/// When a certificate starts and stops being valid, in Unix seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    pub not_before: i64,
    pub not_after: i64,
}

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const VERSION: u8 = 0xa0; // [0] EXPLICIT
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// `Certificate ::= SEQUENCE { tbsCertificate, … }`, `TBSCertificate ::=
/// SEQUENCE { [0] version OPTIONAL, serialNumber, signature, issuer,
/// validity, … }`, `Validity ::= SEQUENCE { notBefore Time, notAfter Time }`.
pub fn validity(cert: &[u8]) -> Option<Validity> {
    let (cert, _) = expect(cert, SEQUENCE)?;
    let (tbs, _) = expect(cert, SEQUENCE)?;
    let mut rest = tbs;
    if rest.first() == Some(&VERSION) {
        rest = tlv(rest)?.2;
    }
    let (_, rest) = expect(rest, INTEGER)?;
    let (_, rest) = expect(rest, SEQUENCE)?; // signature algorithm
    let (_, rest) = expect(rest, SEQUENCE)?; // issuer
    let (validity, _) = expect(rest, SEQUENCE)?;
    let (tag, before, rest) = tlv(validity)?;
    let not_before = time(tag, before)?;
    let (tag, after, _) = tlv(rest)?;
    let not_after = time(tag, after)?;
    Some(Validity {
        not_before,
        not_after,
    })
}

fn expect(b: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (t, content, rest) = tlv(b)?;
    (t == tag).then_some((content, rest))
}

/// One tag-length-value: (tag, content, what follows). Low tag numbers
/// and definite lengths only, as DER requires.
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, mut b) = b.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        let len = b[..n]
            .iter()
            .fold(0usize, |acc, &d| (acc << 8) | usize::from(d));
        b = &b[n..];
        len
    };
    (b.len() >= len).then(|| (tag, &b[..len], &b[len..]))
}

/// `UTCTime` (`YYMMDDHHMMSSZ`, years 1950–2049) or `GeneralizedTime`
/// (`YYYYMMDDHHMMSSZ`), as RFC 5280 §4.1.2.5 allows them.
fn time(tag: u8, s: &[u8]) -> Option<i64> {
    let digits = |r: std::ops::Range<usize>| -> Option<i64> {
        let d = s.get(r)?;
        d.iter().all(u8::is_ascii_digit).then(|| {
            d.iter()
                .fold(0i64, |acc, &c| acc * 10 + i64::from(c - b'0'))
        })
    };
    let (year, at) = match (tag, s.len()) {
        (UTC_TIME, 13) => {
            let yy = digits(0..2)?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, 2)
        }
        (GENERALIZED_TIME, 15) => (digits(0..4)?, 4),
        _ => return None,
    };
    if s.last() != Some(&b'Z') {
        return None;
    }
    let (month, day) = (digits(at..at + 2)?, digits(at + 2..at + 4)?);
    let (h, m, sec) = (
        digits(at + 4..at + 6)?,
        digits(at + 6..at + 8)?,
        digits(at + 8..at + 10)?,
    );
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + sec)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(before: (i32, u8, u8), after: (i32, u8, u8)) -> Vec<u8> {
        let mut p = rcgen::CertificateParams::new(vec!["a.test".into()]).unwrap();
        p.not_before = rcgen::date_time_ymd(before.0, before.1, before.2);
        p.not_after = rcgen::date_time_ymd(after.0, after.1, after.2);
        let key = rcgen::KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn the_dates_of_real_certificates() {
        // UTCTime on both sides.
        let v = validity(&cert((2026, 12, 2), (2027, 3, 1))).unwrap();
        assert_eq!(v.not_before, 1_796_169_600); // 2026-12-02T00:00:00Z
        assert_eq!(v.not_after, 1_803_859_200); // 2027-03-01T00:00:00Z
                                                // From 2050 on, GeneralizedTime; before 1950 too.
        let v = validity(&cert((1949, 12, 31), (2050, 1, 1))).unwrap();
        assert_eq!(v.not_before, -631_238_400);
        assert_eq!(v.not_after, 2_524_608_000);
    }

    #[test]
    fn anything_else_is_none() {
        let good = cert((2026, 1, 1), (2027, 1, 1));
        assert!(validity(&good).is_some());
        assert_eq!(validity(b""), None);
        assert_eq!(validity(b"\x30\x82\xff\xff"), None);
        for cut in [1, 10, 100, good.len() / 2] {
            assert_eq!(validity(&good[..cut]), None, "cut at {cut}");
        }
        assert_eq!(time(UTC_TIME, b"261302000000Z"), None); // month 13
        assert_eq!(time(UTC_TIME, b"2612020000000"), None); // no Z
        assert_eq!(time(GENERALIZED_TIME, b"261202000000Z"), None); // short
        assert_eq!(time(UTC_TIME, b"700101000000Z"), Some(0));
        assert_eq!(
            time(GENERALIZED_TIME, b"20000229235960Z"),
            Some(951_868_800)
        );
    }
}
