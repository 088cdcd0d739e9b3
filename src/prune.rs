//! The retention policy of `prune` (restic's meaning of the keep flags), as a pure function.
use std::collections::HashSet;

use crate::records::BackupType;
use chrono::{DateTime, Datelike, Duration, Utc};
use serde::Serialize;

#[derive(Debug, Clone)]
pub struct Candidate {
    pub id: i64,
    pub created: DateTime<Utc>,
    pub backup_type: BackupType,
    /// Its last `verify` passed.
    pub verified_ok: bool,
    /// Its last restore test passed.
    pub restore_tested: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub keep_last: Option<usize>,
    pub keep_daily: Option<usize>,
    pub keep_weekly: Option<usize>,
    pub keep_monthly: Option<usize>,
    /// Also prune `pre-rollback` backups younger than a day.
    pub prune_recent_safety: bool,
}

impl Policy {
    pub fn is_empty(&self) -> bool {
        self.keep_last.is_none()
            && self.keep_daily.is_none()
            && self.keep_weekly.is_none()
            && self.keep_monthly.is_none()
    }
}

/// The name of a backup's day, week or month.
type Bucket = fn(&DateTime<Utc>) -> String;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Decision {
    pub id: i64,
    pub keep: bool,
    /// Why it is kept (every rule that keeps it), or why it goes.
    pub reasons: Vec<String>,
}

/// Decides each candidate, newest first. Buckets (days, ISO weeks, months) are in UTC. As in
/// restic, `--keep-daily N` keeps the newest backup of each of the last N days that have one.
/// The keep rules apply per backup type: `--keep-last 1` keeps the newest manual backup and
/// the newest safety backup, so safety backups never push manual ones out.
pub fn decide(cands: &[Candidate], policy: &Policy, now: DateTime<Utc>) -> Vec<Decision> {
    let mut sorted: Vec<&Candidate> = cands.iter().collect();
    sorted.sort_by(|a, b| b.created.cmp(&a.created).then(b.id.cmp(&a.id)));
    let mut decisions: Vec<Decision> = sorted
        .iter()
        .map(|c| Decision {
            id: c.id,
            keep: false,
            reasons: Vec::new(),
        })
        .collect();
    for t in [
        BackupType::Manual,
        BackupType::PreUpgrade,
        BackupType::PreRollback,
    ] {
        let of_type: Vec<usize> = (0..sorted.len())
            .filter(|i| sorted[*i].backup_type == t)
            .collect();
        keep_rules(&sorted, &mut decisions, &of_type, policy, t.as_str());
    }
    if let Some(i) = sorted.iter().position(|c| c.verified_ok) {
        decisions[i].reasons.push("newest verified backup".into());
    }
    if let Some(i) = sorted.iter().position(|c| c.restore_tested) {
        decisions[i]
            .reasons
            .push("newest backup whose restore test passed".into());
    }
    if !policy.prune_recent_safety {
        for (c, d) in sorted.iter().zip(decisions.iter_mut()) {
            if c.backup_type == BackupType::PreRollback && now - c.created < Duration::days(1) {
                d.reasons.push("safety backup younger than a day".into());
            }
        }
    }
    for d in decisions.iter_mut() {
        d.keep = !d.reasons.is_empty();
        if !d.keep {
            d.reasons.push("outside the policy".into());
        }
    }
    decisions
}

/// The keep rules over the candidates `idx` (of one backup type, newest first).
fn keep_rules(
    sorted: &[&Candidate],
    decisions: &mut [Decision],
    idx: &[usize],
    policy: &Policy,
    kind: &str,
) {
    if let Some(n) = policy.keep_last {
        for &i in idx.iter().take(n) {
            decisions[i].reasons.push(format!("last {n} {kind}"));
        }
    }
    let rules: [(Option<usize>, &str, Bucket); 3] = [
        (policy.keep_daily, "daily", |t| {
            t.format("%Y-%m-%d").to_string()
        }),
        (policy.keep_weekly, "weekly", |t| {
            format!("{}-W{:02}", t.iso_week().year(), t.iso_week().week())
        }),
        (policy.keep_monthly, "monthly", |t| {
            t.format("%Y-%m").to_string()
        }),
    ];
    for (limit, name, bucket) in rules {
        let Some(n) = limit else { continue };
        let mut seen = HashSet::new();
        for &i in idx {
            if seen.len() >= n {
                break;
            }
            let b = bucket(&sorted[i].created);
            if seen.insert(b.clone()) {
                decisions[i].reasons.push(format!("{name} {b}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, m: u32, d: u32, h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, h, 0, 0).unwrap()
    }

    /// Two backups a day (06:00 and 18:00) from 2026-01-01 to 2026-03-31, ids ascending.
    fn months() -> Vec<Candidate> {
        let mut v = Vec::new();
        let mut t = at(2026, 1, 1, 6);
        let mut id = 1;
        while t < at(2026, 4, 1, 0) {
            for h in [0, 12] {
                v.push(Candidate {
                    id,
                    created: t + Duration::hours(h),
                    backup_type: BackupType::Manual,
                    verified_ok: false,
                    restore_tested: false,
                });
                id += 1;
            }
            t += Duration::days(1);
        }
        v
    }

    fn kept(d: &[Decision]) -> Vec<i64> {
        d.iter().filter(|d| d.keep).map(|d| d.id).collect()
    }

    #[test]
    fn keep_last_keeps_the_newest_n() {
        let c = months();
        let d = decide(
            &c,
            &Policy {
                keep_last: Some(3),
                ..Default::default()
            },
            at(2026, 4, 1, 0),
        );
        let newest = c.last().unwrap().id;
        assert_eq!(kept(&d), [newest, newest - 1, newest - 2]);
    }

    #[test]
    fn daily_keeps_the_newest_of_each_of_the_last_n_days() {
        let c = months();
        let d = decide(
            &c,
            &Policy {
                keep_daily: Some(2),
                ..Default::default()
            },
            at(2026, 4, 1, 0),
        );
        let newest = c.last().unwrap().id; // 2026-03-31 18:00
        assert_eq!(
            kept(&d),
            [newest, newest - 2],
            "the 18:00 backups of Mar 31 and Mar 30"
        );
    }

    #[test]
    fn weekly_and_monthly_use_iso_weeks_and_months() {
        let c = months();
        let p = Policy {
            keep_monthly: Some(3),
            ..Default::default()
        };
        let d = decide(&c, &p, at(2026, 4, 1, 0));
        let by_id = |id: i64| c.iter().find(|x| x.id == id).unwrap().created;
        let days: Vec<String> = kept(&d)
            .iter()
            .map(|id| by_id(*id).format("%m-%d %H").to_string())
            .collect();
        assert_eq!(days, ["03-31 18", "02-28 18", "01-31 18"]);
        let w = decide(
            &c,
            &Policy {
                keep_weekly: Some(2),
                ..Default::default()
            },
            at(2026, 4, 1, 0),
        );
        let days: Vec<String> = kept(&w)
            .iter()
            .map(|id| by_id(*id).format("%m-%d").to_string())
            .collect();
        assert_eq!(days, ["03-31", "03-29"], "Tue of W14, then Sun ending W13");
    }

    #[test]
    fn rules_combine_and_each_reason_is_given() {
        let c = months();
        let p = Policy {
            keep_last: Some(1),
            keep_daily: Some(1),
            ..Default::default()
        };
        let d = decide(&c, &p, at(2026, 4, 1, 0));
        assert_eq!(d[0].reasons, ["last 1 manual", "daily 2026-03-31"]);
        assert_eq!(d[1].reasons, ["outside the policy"]);
        assert_eq!(kept(&d).len(), 1);
    }

    #[test]
    fn the_newest_verified_and_fresh_safety_backups_are_protected() {
        let mut c = months();
        c[10].verified_ok = true;
        c[20].verified_ok = true;
        c[5].restore_tested = true;
        c[15].restore_tested = true;
        let now = at(2026, 4, 1, 0);
        c.push(Candidate {
            id: 999,
            created: now - Duration::hours(2),
            backup_type: BackupType::PreRollback,
            verified_ok: false,
            restore_tested: false,
        });
        let d = decide(
            &c,
            &Policy {
                keep_last: Some(1),
                ..Default::default()
            },
            now,
        );
        let newest_manual = c[c.len() - 2].id;
        // Per type: the newest safety backup and the newest manual one are both the last 1.
        assert_eq!(kept(&d), [999, newest_manual, 21, 16]);
        let dm = d.iter().find(|d| d.id == newest_manual).unwrap();
        assert_eq!(dm.reasons, ["last 1 manual"]);
        let d21 = d.iter().find(|d| d.id == 21).unwrap();
        assert_eq!(d21.reasons, ["newest verified backup"]);
        let d16 = d.iter().find(|d| d.id == 16).unwrap();
        assert_eq!(d16.reasons, ["newest backup whose restore test passed"]);
        let d999 = d.iter().find(|d| d.id == 999).unwrap();
        assert_eq!(
            d999.reasons,
            ["last 1 pre-rollback", "safety backup younger than a day"]
        );
        let p = Policy {
            keep_last: Some(1),
            prune_recent_safety: true,
            ..Default::default()
        };
        assert_eq!(
            kept(&decide(&c, &p, now)),
            [999, newest_manual, 21, 16],
            "kept as the last one of its type anyway"
        );
        let p0 = Policy {
            keep_daily: Some(1),
            prune_recent_safety: true,
            ..Default::default()
        };
        assert!(kept(&decide(&c, &p0, now)).contains(&999));
        assert!(
            kept(&decide(&c, &p0, now)).contains(&newest_manual),
            "the daily rule keeps the newest manual backup of its day too"
        );
    }
}
