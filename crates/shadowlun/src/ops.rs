//! `shadowlun status|session|audit`: what an administrator asks a running array every day.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use api::{ArrayStatus, AuditRecord, SessionRecord, routes};

use crate::admin::{AdminError, Connection, ErrorKind, SessionCmd, explain};
use crate::output::{self, size};

fn time(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

pub fn status(c: &Connection) -> anyhow::Result<()> {
    let api = c.client()?;
    let st: ArrayStatus = api.get(routes::ADMIN_STATUS).map_err(explain)?;
    if c.json {
        return output::json(&st);
    }
    let p = &st.pool;
    let rows = [
        ("health", format!("{:?}", st.health.state).to_lowercase()),
        ("backend", st.backend.clone()),
        (
            "array id",
            st.array_id.clone().unwrap_or_else(|| "-".into()),
        ),
        ("target", st.target.clone()),
        ("portals", st.portals.join(", ")),
        ("capacity", size(p.capacity_bytes)),
        ("used", size(p.used_bytes)),
        ("free", size(p.free_bytes)),
        ("reserved", size(p.reserved_bytes)),
        (
            "provisioned",
            format!(
                "{} ({:.2}x capacity)",
                size(p.provisioned_bytes),
                p.provisioned_ratio
            ),
        ),
        ("sessions", st.sessions.to_string()),
        ("sets in flight", st.sets_in_flight.to_string()),
        ("version", st.version.clone()),
    ];
    for (k, v) in rows {
        println!("{k:<15} {v}");
    }
    for r in &st.health.reasons {
        println!("  ! {r}");
    }
    Ok(())
}

pub fn session(c: &Connection, cmd: SessionCmd) -> anyhow::Result<()> {
    let api = c.client()?;
    match cmd {
        SessionCmd::List => {
            let v: Vec<SessionRecord> = api.get(routes::ADMIN_SESSIONS).map_err(explain)?;
            if c.json {
                return output::json(&v);
            }
            let rows: Vec<Vec<String>> = v
                .iter()
                .map(|s| {
                    vec![
                        s.initiator.clone(),
                        s.host.clone().unwrap_or_else(|| "-".into()),
                        s.peer.clone(),
                        s.portal.clone().unwrap_or_else(|| "-".into()),
                        s.luns
                            .iter()
                            .map(|m| format!("{}→{}", m.lun_number, m.lun))
                            .collect::<Vec<_>>()
                            .join(","),
                        if s.chap { "yes".into() } else { "no".into() },
                        time(s.connected_since),
                    ]
                })
                .collect();
            output::table(
                &[
                    "INITIATOR",
                    "HOST",
                    "FROM",
                    "PORTAL",
                    "LUNS",
                    "CHAP",
                    "SINCE",
                ],
                &rows,
            );
            Ok(())
        }
    }
}

/// `--since`: a duration ago or a point in time, as seconds since the epoch.
fn since(s: &str) -> Result<u64, String> {
    let at = if let Ok(d) = humantime::parse_duration(s) {
        SystemTime::now() - d
    } else if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        t
    } else {
        return Err(format!(
            "--since {s:?} is neither a duration (2h, 30min, 7days) nor a time \
             (2026-12-06T14:00:00Z or 2026-12-06 14:00:00, UTC)"
        ));
    };
    Ok(at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

pub fn audit(c: &Connection, since_arg: Option<&str>) -> anyhow::Result<()> {
    let from = match since_arg {
        Some(s) => since(s).map_err(|message| AdminError {
            kind: ErrorKind::Usage,
            message,
        })?,
        None => 0,
    };
    let api = c.client()?;
    let path = format!("{}?since={from}", routes::ADMIN_AUDIT);
    let v: Vec<AuditRecord> = api.get(&path).map_err(explain)?;
    if c.json {
        return output::json(&v);
    }
    let rows: Vec<Vec<String>> = v
        .iter()
        .map(|r| {
            let details = r
                .details
                .iter()
                .map(|(k, v)| match v {
                    serde_json::Value::String(s) => format!("{k}={s}"),
                    other => format!("{k}={other}"),
                })
                .collect::<Vec<_>>()
                .join(" ");
            vec![
                time(r.time),
                r.who.clone(),
                r.from.clone(),
                r.action.clone(),
                details,
                r.status.to_string(),
            ]
        })
        .collect();
    output::table(
        &["TIME", "WHO", "FROM", "ACTION", "DETAILS", "STATUS"],
        &rows,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_durations_and_times() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let two_h = since("2h").unwrap();
        assert!((now - 7200..=now - 7199).contains(&two_h));
        assert_eq!(since("2026-12-06T14:00:00Z").unwrap(), 1_796_565_600);
        assert_eq!(since("2026-12-06 14:00:00").unwrap(), 1_796_565_600);
        assert!(since("yesterday-ish").is_err());
    }
}
