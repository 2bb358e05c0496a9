//! Retention with grandfather-father-son semantics, as restic's `forget`
//! has them: the `last` N snapshots, and for each of the last N days
//! (weeks, months) that have a snapshot, the newest snapshot of that day
//! (ISO week, month). A snapshot kept by any rule is kept; the reasons are
//! told.

pub use centinela_config::backup::Keep;
use centinela_config::units::civil_from_days;

/// A snapshot's id and when it was taken (Unix seconds, UTC).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snap {
    pub id: String,
    pub time: u64,
}

/// What the policy decided for one snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub id: String,
    pub time: u64,
    /// Why it is kept (`last`, `daily`, `weekly`, `monthly`); empty: it
    /// goes.
    pub reasons: Vec<&'static str>,
}

impl Decision {
    pub fn kept(&self) -> bool {
        !self.reasons.is_empty()
    }
}

/// Every snapshot, newest first, with the rules that keep it. With every
/// count at 0 nothing is kept: the caller refuses such a policy.
pub fn apply(keep: Keep, snaps: &[Snap]) -> Vec<Decision> {
    let mut sorted: Vec<&Snap> = snaps.iter().collect();
    // Newest first; ties by id, so that the answer never depends on order.
    sorted.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| b.id.cmp(&a.id)));
    let mut out: Vec<Decision> = sorted
        .iter()
        .map(|s| Decision {
            id: s.id.clone(),
            time: s.time,
            reasons: Vec::new(),
        })
        .collect();
    for (i, d) in out.iter_mut().enumerate() {
        if i < keep.last as usize {
            d.reasons.push("last");
        }
    }
    let rules: [(&'static str, u32, Bucket); 3] = [
        ("daily", keep.daily, day_bucket),
        ("weekly", keep.weekly, week_bucket),
        ("monthly", keep.monthly, month_bucket),
    ];
    for (name, count, bucket) in rules {
        let mut left = count;
        let mut last_bucket = None;
        for d in out.iter_mut() {
            if left == 0 {
                break;
            }
            let b = bucket(d.time);
            if last_bucket != Some(b) {
                last_bucket = Some(b);
                d.reasons.push(name);
                left -= 1;
            }
        }
    }
    out
}

/// The calendar period a time falls in, as a number.
type Bucket = fn(u64) -> i64;

fn day_bucket(t: u64) -> i64 {
    (t / 86_400) as i64
}

/// The ISO 8601 week: weeks start on Monday, and a week belongs to the
/// year of its Thursday. Numbered here by its Monday's day number.
fn week_bucket(t: u64) -> i64 {
    let day = (t / 86_400) as i64;
    // 1970-01-01 was a Thursday: Monday is 0 after this shift.
    let weekday_from_monday = (day + 3).rem_euclid(7);
    day - weekday_from_monday
}

fn month_bucket(t: u64) -> i64 {
    let (y, m, _) = civil_from_days((t / 86_400) as i64);
    y * 12 + i64::from(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;
    /// 2026-12-02T00:00:00Z, a Wednesday.
    const T0: u64 = 1_796_169_600;

    fn snaps(times: &[u64]) -> Vec<Snap> {
        times
            .iter()
            .enumerate()
            .map(|(i, t)| Snap {
                id: format!("s{i:03}"),
                time: *t,
            })
            .collect()
    }

    fn kept(keep: Keep, s: &[Snap]) -> Vec<(String, Vec<&'static str>)> {
        apply(keep, s)
            .into_iter()
            .filter(|d| d.kept())
            .map(|d| (d.id, d.reasons))
            .collect()
    }

    #[test]
    fn last_and_daily_keep_the_newest_of_each_day() {
        // Three snapshots a day for five days, at 01:00, 09:00 and 17:00.
        let times: Vec<u64> = (0..5)
            .flat_map(|d| [1, 9, 17].map(|h| T0 + d * DAY + h * 3600))
            .collect();
        let s = snaps(&times);
        let got = kept(
            Keep {
                last: 2,
                daily: 3,
                ..Keep::default()
            },
            &s,
        );
        assert_eq!(
            got,
            [
                ("s014".to_string(), vec!["last", "daily"]),
                ("s013".to_string(), vec!["last"]),
                ("s011".to_string(), vec!["daily"]),
                ("s008".to_string(), vec!["daily"]),
            ]
        );
    }

    #[test]
    fn weeks_are_iso_weeks_and_months_calendar_months() {
        // One snapshot a day at noon from Saturday 2026-11-28 to Tuesday
        // 2027-01-05.
        let start = T0 - 4 * DAY + 12 * 3600;
        let times: Vec<u64> = (0..39).map(|d| start + d * DAY).collect();
        let s = snaps(&times);
        let weekly = kept(
            Keep {
                weekly: 3,
                ..Keep::default()
            },
            &s,
        );
        // The newest of each ISO week: Tue 2027-01-05 (week 1 of 2027),
        // Sun 2027-01-03 (week 53 of 2026), Sun 2026-12-27.
        let day_of = |id: &str| {
            let t = s.iter().find(|x| x.id == id).unwrap().time;
            civil_from_days((t / DAY) as i64)
        };
        let days: Vec<_> = weekly.iter().map(|(id, _)| day_of(id)).collect();
        assert_eq!(days, [(2027, 1, 5), (2027, 1, 3), (2026, 12, 27)]);
        let monthly = kept(
            Keep {
                monthly: 5,
                ..Keep::default()
            },
            &s,
        );
        let days: Vec<_> = monthly.iter().map(|(id, _)| day_of(id)).collect();
        // Only three months have snapshots.
        assert_eq!(days, [(2027, 1, 5), (2026, 12, 31), (2026, 11, 30)]);
    }

    #[test]
    fn the_answer_does_not_depend_on_the_order_given() {
        let mut times: Vec<u64> = (0..200).map(|i| T0 + i * 7919 * 13).collect();
        let keep = Keep {
            last: 3,
            daily: 7,
            weekly: 4,
            monthly: 12,
        };
        let a = apply(keep, &snaps(&times));
        times.reverse();
        let mut b = apply(keep, &snaps(&times));
        // Same times, other ids: compare by time.
        let key = |d: &Decision| (d.time, d.reasons.clone());
        let mut a: Vec<_> = a.iter().map(key).collect();
        let mut b2: Vec<_> = b.iter_mut().map(|d| key(d)).collect();
        a.sort();
        b2.sort();
        assert_eq!(a, b2);
        // Nothing is kept without a rule, and the newest is always kept.
        assert!(apply(Keep::default(), &snaps(&times))
            .iter()
            .all(|d| !d.kept()));
        assert!(apply(keep, &snaps(&times))[0].kept());
    }
}
