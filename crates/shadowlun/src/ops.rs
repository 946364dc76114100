//! `shadowlun status|session|audit|gateway`: what an administrator asks a running array
//! every day.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use api::{ArrayStatus, AuditRecord, GatewayRecord, SessionRecord, routes};
use provider::https::{Client, ClientError};
use serde::Serialize;

use crate::admin::{AdminError, Connection, ErrorKind, GatewayCmd, SessionCmd, explain};
use crate::output::{self, size};

fn time(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// One gateway of the array as `status` found it, asked on its own.
#[derive(Debug, Serialize)]
struct GatewayProbe {
    url: String,
    /// It answered the status call with the pinned certificate and accepted the token.
    answers: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// `status --json`: the array's status, the gateway that gave it, and every gateway probed.
#[derive(Serialize)]
struct StatusOut<'a> {
    #[serde(flatten)]
    status: &'a ArrayStatus,
    gateway: &'a str,
    gateways: Vec<GatewayProbe>,
}

/// Every URL of the connection asked for the array's status on its own (one attempt each,
/// at once, no failover), but `answered`, whose status call just succeeded.
fn probe_gateways(api: &Client, answered: &str) -> Vec<GatewayProbe> {
    std::thread::scope(|s| {
        let probes: Vec<_> = api
            .config()
            .urls
            .iter()
            .map(|url| {
                let handle = (url != answered).then(|| {
                    let mut cc = api.config().clone();
                    cc.urls = vec![url.clone()];
                    cc.attempts = 1;
                    cc.timeout = Duration::from_secs(5);
                    s.spawn(move || {
                        Client::new(cc)
                            .and_then(|one| one.get::<ArrayStatus>(routes::ADMIN_STATUS))
                            .map(|_| ())
                    })
                });
                (url.clone(), handle)
            })
            .collect();
        probes
            .into_iter()
            .map(|(url, handle)| {
                let outcome = match handle {
                    None => Ok(()),
                    Some(h) => h
                        .join()
                        .unwrap_or_else(|_| Err(ClientError::Transport("the probe failed".into()))),
                };
                GatewayProbe {
                    url,
                    answers: outcome.is_ok(),
                    error: outcome.err().map(|e| e.to_string()),
                }
            })
            .collect()
    })
}

pub fn status(c: &Connection) -> anyhow::Result<()> {
    let api = c.client()?;
    let st: ArrayStatus = api.get(routes::ADMIN_STATUS).map_err(explain)?;
    let gateway = api.current_url().to_string();
    let gateways = probe_gateways(&api, &gateway);
    if c.json {
        return output::json(&StatusOut {
            status: &st,
            gateway: &gateway,
            gateways,
        });
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
        // The gateway that answered (with several --array URLs, the first that could be
        // reached).
        ("gateway", gateway),
    ];
    for (k, v) in rows {
        println!("{k:<15} {v}");
    }
    if gateways.len() > 1 {
        let up = gateways.iter().filter(|g| g.answers).count();
        println!("{:<15} {up} of {} answer", "gateways", gateways.len());
    }
    for r in &st.health.reasons {
        println!("  ! {r}");
    }
    for g in gateways.iter().filter(|g| !g.answers) {
        println!(
            "  ! gateway {} does not answer: {}",
            g.url,
            g.error.as_deref().unwrap_or("?")
        );
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

pub fn gateway(c: &Connection, cmd: GatewayCmd) -> anyhow::Result<()> {
    let api = c.client()?;
    match cmd {
        GatewayCmd::List => {
            let v: Vec<GatewayRecord> = api.get(routes::ADMIN_GATEWAYS).map_err(explain)?;
            if c.json {
                return output::json(&v);
            }
            let opt = |v: Option<u16>| v.map_or("-".to_string(), |v| v.to_string());
            let rows: Vec<Vec<String>> = v
                .iter()
                .map(|g| {
                    vec![
                        g.name.clone(),
                        if g.serving { "serving" } else { "standby" }.into(),
                        opt(g.relative_port),
                        opt(g.portal_group_tag),
                        g.api.clone().unwrap_or_else(|| "-".into()),
                        if g.draining { "yes" } else { "no" }.into(),
                    ]
                })
                .collect();
            output::table(
                &["GATEWAY", "ROLE", "PORT GROUP", "TAG", "API", "DRAINING"],
                &rows,
            );
            Ok(())
        }
        GatewayCmd::Drain { gateway, force } => {
            let mut p = routes::fill(routes::ADMIN_GATEWAY_DRAIN, &[("gateway", &gateway)]);
            if force {
                p.push_str("?force=true");
            }
            let g: GatewayRecord = api.post(&p, &serde_json::Value::Null).map_err(explain)?;
            if c.json {
                return output::json(&g);
            }
            if g.serving {
                println!(
                    "gateway {} is handing the array over and stopping; a standby takes office \
                     (shadowlun gateway list)",
                    g.name
                );
            } else {
                println!("gateway {} stops standing by and exits", g.name);
            }
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
