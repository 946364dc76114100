//! `shadowlun lun|host|snapshot|set`: administration of a running array over its control API.

use anyhow::{Context, bail};
use api::{
    CreateHost, CreateLun, CreatedHost, HostRecord, LunRecord, MapLun, ReapReport, ReapRequest,
    SetRecord, TakeSet, UpdateHost, UpdateLun, routes,
};
use clap::{Args, Subcommand};
use provider::https::{Client, ClientConfig, ClientError};

use crate::output::{self, parse_size, size};

/// How to reach the array's control API as administrator.
#[derive(Args, Debug, Clone)]
pub struct Connection {
    /// Control API URL of the array. An array served by several gateways has one URL per
    /// gateway: repeat --array, or separate the URLs with commas (also in SHADOWLUN_ARRAY).
    /// A command tries them in order, moving on to the next URL when a gateway cannot be
    /// reached, and stays with the first that answers.
    #[arg(
        long,
        env = "SHADOWLUN_ARRAY",
        default_value = "https://127.0.0.1:8443",
        value_delimiter = ',',
        value_name = "URL",
        global = true
    )]
    pub array: Vec<String>,
    /// File holding the admin token (created by the array in its pool directory).
    #[arg(long, env = "SHADOWLUN_TOKEN_FILE", global = true)]
    pub token_file: Option<std::path::PathBuf>,
    /// SHA-256 fingerprint of the array's certificate (printed when the array starts).
    #[arg(long, env = "SHADOWLUN_FINGERPRINT", global = true)]
    pub fingerprint: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

impl Connection {
    pub fn client(&self) -> anyhow::Result<Client> {
        let token_file = self.token_file.as_ref().context(
            "no admin token: pass --token-file (the array writes admin.token into its pool directory) or set SHADOWLUN_TOKEN_FILE",
        )?;
        let token = std::fs::read_to_string(token_file).with_context(|| {
            format!("cannot read the admin token from {}", token_file.display())
        })?;
        let fingerprint = self.fingerprint.as_deref().context(
            "no certificate fingerprint: pass --fingerprint (printed when the array starts) or set SHADOWLUN_FINGERPRINT",
        )?;
        Ok(Client::new(ClientConfig::with_urls(
            &self.array,
            token.trim(),
            fingerprint,
        ))?)
    }
}

/// Why an administration command failed, in the admin's words, with its exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct AdminError {
    pub kind: ErrorKind,
    pub message: String,
}

/// The documented exit codes of `shadowlun`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// 1: anything else (the array failed internally, an answer could not be read).
    Failed,
    /// 2: the command line or its values are wrong (clap uses 2 for its own usage errors).
    Usage,
    /// 3: what the command names does not exist.
    NotFound,
    /// 4: the array refused because something is in the way (a guard rail, a name taken).
    Conflict,
    /// 5: the array refused the caller or the request (authentication, limits, no space).
    Refused,
    /// 6: the array cannot be reached, or did not answer in time.
    Unreachable,
    /// 7: the array's certificate does not match the pinned fingerprint.
    CertificateMismatch,
}

impl ErrorKind {
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorKind::Failed => 1,
            ErrorKind::Usage => 2,
            ErrorKind::NotFound => 3,
            ErrorKind::Conflict => 4,
            ErrorKind::Refused => 5,
            ErrorKind::Unreachable => 6,
            ErrorKind::CertificateMismatch => 7,
        }
    }
}

/// A wrong value on the command line.
fn usage(message: String) -> anyhow::Error {
    AdminError {
        kind: ErrorKind::Usage,
        message,
    }
    .into()
}

/// Turns a client error into a message that says what to do.
pub fn explain(e: ClientError) -> anyhow::Error {
    use api::ProblemCode as P;
    let (kind, message) = match e {
        ClientError::Problem(p) => {
            let kind = match p.code {
                P::NotFound => ErrorKind::NotFound,
                P::Conflict => ErrorKind::Conflict,
                P::Unauthorized | P::Forbidden | P::NoSpace | P::LimitReached => ErrorKind::Refused,
                P::BadRequest => ErrorKind::Usage,
                _ => ErrorKind::Failed,
            };
            // The array words these for any API client; the CLI's admin knows files and
            // flags, not headers and routes.
            let detail = match p.code {
                P::Unauthorized => "the array does not accept the admin token: pass \
                                    --token-file with the admin.token file from the array's \
                                    pool directory (or set SHADOWLUN_TOKEN_FILE)"
                    .to_string(),
                P::Forbidden => "the token in --token-file is a host's API token, not the \
                                 array's admin token (admin.token in its pool directory)"
                    .to_string(),
                _ => p.detail,
            };
            (kind, detail)
        }
        ClientError::CertificateMismatch { pinned, presented } => (
            ErrorKind::CertificateMismatch,
            format!(
                "the array's certificate does not match the pinned fingerprint: pinned \
                 {pinned}, the array presented {presented}. If the array's certificate was \
                 replaced on purpose, pin the new fingerprint (--fingerprint or \
                 SHADOWLUN_FINGERPRINT); otherwise something else answers at this address"
            ),
        ),
        ClientError::Transport(m) => (
            ErrorKind::Unreachable,
            format!(
                "the array cannot be reached ({m}); check --array (one URL per gateway) and \
                 that `shadowlun array serve` is running"
            ),
        ),
        ClientError::Timeout(d) => (
            ErrorKind::Unreachable,
            format!("the array did not answer within {d:?}"),
        ),
        e @ (ClientError::BadFingerprint(_) | ClientError::BadUrl(_)) => {
            (ErrorKind::Usage, e.to_string())
        }
        other => (ErrorKind::Failed, other.to_string()),
    };
    AdminError { kind, message }.into()
}

/// A fresh idempotency key for one invocation's creating request: the CLI retries that
/// request after a timeout or a reset connection with the same key, and the array answers
/// the retry as it answered the first (a host's one-time token included).
fn idempotency_key() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut key = String::from("cli-");
    for i in 0..2u64 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(i);
        h.write_u32(std::process::id());
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        key.push_str(&format!("{:016x}", h.finish()));
    }
    key
}

/// Fills a route's placeholders, each value percent-encoded as one path segment (so a
/// mistyped name with a `/` or `?` in it is a name the array does not know, not another route).
fn path(route: &str, params: &[(&str, &str)]) -> String {
    let enc: Vec<(&str, String)> = params
        .iter()
        .map(|(k, v)| {
            let mut e = String::new();
            for b in v.bytes() {
                if b.is_ascii_alphanumeric() || b"-._~@".contains(&b) {
                    e.push(b as char);
                } else {
                    e.push_str(&format!("%{b:02X}"));
                }
            }
            (*k, e)
        })
        .collect();
    let refs: Vec<(&str, &str)> = enc.iter().map(|(k, v)| (*k, v.as_str())).collect();
    routes::fill(route, &refs)
}

/// Every command that names a LUN takes its id (`lun-7`) or its name (`sql-data`).
#[derive(Subcommand, Debug)]
pub enum LunCmd {
    /// List LUNs (originals and snapshot LUNs), by number.
    List,
    /// Create a thin LUN, e.g. `shadowlun lun create sql-data 100GiB`.
    Create { name: String, size: String },
    /// Show one LUN, by id or name: `shadowlun lun show sql-data`.
    Show { lun: String },
    /// Grow a LUN (hosts keep it mapped and hear that its capacity changed).
    Resize { lun: String, size: String },
    /// Rename a LUN: `shadowlun lun rename sql-data sql-data-old`. Its id, its SCSI identity
    /// and its mappings stay as they are; hosts see no change.
    Rename { lun: String, new_name: String },
    /// Delete a LUN (refused while snapshot LUNs depend on it or it is mapped).
    Delete { lun: String },
}

#[derive(Subcommand, Debug)]
pub enum HostCmd {
    /// List hosts and their LUN mappings.
    List,
    /// Add a host; prints its API token once (give it to `shadowlun-provider.exe install`).
    Add {
        name: String,
        /// iSCSI initiator name of the host (repeat for several).
        #[arg(long = "initiator", required = true)]
        initiators: Vec<String>,
        /// File holding the CHAP secret the host's initiators must log in with (12-16
        /// characters; `-` reads it from standard input). Never on the command line, where
        /// other users and the shell history would see it.
        #[arg(long, value_name = "FILE")]
        chap_secret_file: Option<std::path::PathBuf>,
        /// A host whose snapshot LUNs this host may import (a backup host names the production
        /// hosts it backs up); repeat for several.
        #[arg(long = "import-from")]
        import_from: Vec<String>,
    },
    /// Remove a host. Refused while LUNs are mapped to it, unless --force. The grants that
    /// let other hosts import its snapshots go with it.
    Remove {
        name: String,
        /// Unmap its LUNs and remove it anyway: its initiators lose them at once.
        #[arg(long)]
        force: bool,
    },
    /// Map a LUN to a host.
    Map {
        host: String,
        lun: String,
        /// LUN number the host sees (lowest free if omitted).
        #[arg(long)]
        lun_number: Option<u64>,
        /// The LUN is mapped to another host already and both are meant to use it (a
        /// cluster). Two hosts writing one LUN without a cluster corrupt it.
        #[arg(long)]
        shared: bool,
    },
    /// Unmap a LUN from a host.
    Unmap { host: String, lun: String },
    /// Show one host: its initiators, CHAP, LUNs and import grants.
    Show { name: String },
    /// Give a host a new API token, printed once; the old one is refused at once. Its LUNs
    /// stay mapped; give the new token to the host's provider (`shadowlun-provider.exe
    /// install --token ...`).
    RotateToken { name: String },
    /// Add, remove or replace a host's initiators without unmapping anything: `--remove OLD
    /// --add NEW` replaces one in a single change. A removed initiator's iSCSI sessions end
    /// and it cannot log in again; an added one can log in at once and sees the host's LUNs.
    Initiators {
        name: String,
        /// Initiator name to add (repeat for several).
        #[arg(long = "add", value_name = "IQN")]
        add: Vec<String>,
        /// Initiator name to remove (repeat for several).
        #[arg(long = "remove", value_name = "IQN")]
        remove: Vec<String>,
    },
    /// Set or clear a host's CHAP secret; its initiators use it from their next login (open
    /// sessions stay).
    Chap {
        name: String,
        /// File holding the new secret (12-16 characters; `-`: standard input).
        #[arg(
            long,
            value_name = "FILE",
            conflicts_with = "clear",
            required_unless_present = "clear"
        )]
        secret_file: Option<std::path::PathBuf>,
        /// Log in without CHAP from now on.
        #[arg(long)]
        clear: bool,
    },
}

/// Reads a secret from a file, or from standard input for `-`: the first line, without its
/// line ending. Checked here as the array checks it, so a typo costs no round trip.
fn read_secret(path: &std::path::Path) -> anyhow::Result<String> {
    let text = if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_line(&mut s)
            .context("cannot read the CHAP secret from standard input")?;
        s
    } else {
        std::fs::read_to_string(path).map_err(|e| {
            usage(format!(
                "cannot read the CHAP secret from {}: {e}",
                path.display()
            ))
        })?
    };
    let secret = text.lines().next().unwrap_or("").to_string();
    if !(12..=16).contains(&secret.len()) || !secret.is_ascii() {
        return Err(usage(format!(
            "the CHAP secret in {} must be 12 to 16 ASCII characters on its first line (the \
             Microsoft initiator's rule); it is {} characters long",
            if path.as_os_str() == "-" {
                "standard input".to_string()
            } else {
                path.display().to_string()
            },
            secret.chars().count()
        )));
    }
    Ok(secret)
}

/// Prints a host's one-time token after its record.
fn print_token(c: &Connection, h: &CreatedHost) -> anyhow::Result<()> {
    if c.json {
        return output::json(h);
    }
    print_hosts(c, std::slice::from_ref(&h.host))?;
    println!(
        "\nAPI token for this host (shown once, store it safely):\n{}",
        h.token
    );
    Ok(())
}

#[derive(Subcommand, Debug)]
pub enum SnapshotCmd {
    /// List snapshot LUNs.
    List,
    /// Delete a snapshot LUN (what VSS's OnLunEmpty does; for LUNs VSS no longer tracks).
    Delete { lun: String },
    /// Copy a snapshot LUN back onto its source (the destination grows to the snapshot's
    /// size; a larger one is refused) and show progress until it ends, e.g. `shadowlun
    /// snapshot resync lun-4 lun-1`. The destination's contents are replaced: a destination
    /// mapped to a host, or that is not the snapshot's source, needs --force.
    Resync {
        snapshot: String,
        destination: String,
        /// Resync onto a LUN mapped to a host (take its volumes offline there first) or onto
        /// a LUN that is not the snapshot's source.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum SessionCmd {
    /// List open iSCSI sessions: initiator, host, peer address, portal, LUNs, CHAP or not,
    /// connected since.
    List,
}

#[derive(Subcommand, Debug)]
pub enum GatewayCmd {
    /// List the array's live gateways: which one serves (in office), each one's target port
    /// group (its relative target port) and portal group tag, the serving one's API, which
    /// are draining. Only arrays on Ceph with `[gateway]` have several.
    List,
    /// Drain a gateway before maintenance or removal: the serving gateway hands the array
    /// over cleanly (initiators asked to log out, commands in flight finished, office
    /// resigned; a standby takes office within a second and hosts with MPIO carry on), a
    /// standby stops standing by; then its process exits with status 0. Start it again to
    /// bring it back as a standby. Refused when no other live gateway would be left to serve.
    Drain {
        /// The gateway's name (its `[gateway] name`).
        gateway: String,
        /// Drain even the last gateway: the array's LUNs are served by nobody until a
        /// gateway starts again.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum SetCmd {
    /// Take a snapshot set of LUNs now, without VSS: the target holds the LUNs' writes while
    /// the array snapshots them, so every snapshot LUN holds exactly the writes acknowledged
    /// before that instant (a crash-consistent copy across the LUNs, as after a power cut;
    /// applications are not asked to flush: use VSS for application-consistent copies).
    /// Hosts see I/O pause for the commit, normally well under a second. The set belongs to
    /// the administrator (host `admin` in `set list`); map its snapshot LUNs to a host with
    /// `host map`, copy one back with `snapshot resync`, remove it with `set delete`.
    /// Example: `shadowlun set create sql-data sql-log`.
    Create {
        /// LUNs (ids or names), each once.
        #[arg(required = true)]
        luns: Vec<String>,
    },
    /// List snapshot sets of every host.
    List {
        /// Only transportable sets, with whether a host imported them and their age: the
        /// ones nobody imported are the array's to delete (`set delete`, or the retention
        /// `transportable_retention_secs`).
        #[arg(long)]
        transportable: bool,
    },
    /// Delete a complete set: every snapshot LUN of it, then the set. Refused while a LUN of
    /// it is mapped to a host (imported and in use there) unless --force.
    Delete {
        set: String,
        /// Delete LUNs mapped to a host as well (that host loses the shadow copies).
        #[arg(long)]
        force: bool,
    },
    /// Abort a set that is not complete (one left prepared by a backup that went away):
    /// its snapshot LUNs are deleted now instead of by the reaper.
    Abort { set: String },
    /// Remove sets prepared but never committed, and leftovers of aborted sets.
    Reap {
        /// Only show what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
}

fn lun_rows(luns: &[LunRecord]) -> Vec<Vec<String>> {
    luns.iter()
        .map(|l| {
            vec![
                l.id.clone(),
                l.name.clone(),
                size(l.size_bytes),
                size(l.allocated_bytes),
                l.serial.clone(),
                l.snapshot_of
                    .as_ref()
                    .map_or("-".into(), |o| format!("{} (set {})", o.source, o.set_id)),
                l.mapped_to
                    .iter()
                    .map(|m| format!("{}:{}", m.host, m.lun_number))
                    .collect::<Vec<_>>()
                    .join(","),
                copy_kind(l),
                if l.volume_missing {
                    "volume missing".into()
                } else {
                    "ok".into()
                },
            ]
        })
        .collect()
}

/// How a snapshot LUN holds its data: `differential`, `plex` (independent) or `plex 40%`.
fn copy_kind(l: &LunRecord) -> String {
    match (&l.snapshot_of, &l.plex) {
        (None, _) => "-".into(),
        (Some(_), None) => "differential".into(),
        (Some(_), Some(p)) if p.independent => "plex".into(),
        (Some(_), Some(p)) => format!("plex {}%", p.progress),
    }
}

const LUN_HEADER: [&str; 9] = [
    "ID",
    "NAME",
    "SIZE",
    "ALLOCATED",
    "SERIAL",
    "SNAPSHOT OF",
    "MAPPED",
    "COPY",
    "STATE",
];

fn print_luns(c: &Connection, luns: &[LunRecord]) -> anyhow::Result<()> {
    if c.json {
        output::json(&luns)
    } else {
        output::table(&LUN_HEADER, &lun_rows(luns));
        Ok(())
    }
}

fn print_hosts(c: &Connection, hosts: &[HostRecord]) -> anyhow::Result<()> {
    if c.json {
        return output::json(&hosts);
    }
    let rows: Vec<Vec<String>> = hosts
        .iter()
        .map(|h| {
            vec![
                h.name.clone(),
                h.initiators.join(","),
                if h.chap { "yes".into() } else { "no".into() },
                h.luns
                    .iter()
                    .map(|m| format!("{}→{}", m.lun_number, m.lun))
                    .collect::<Vec<_>>()
                    .join(","),
                h.import_from.join(","),
            ]
        })
        .collect();
    output::table(
        &["HOST", "INITIATORS", "CHAP", "LUNS", "IMPORTS FROM"],
        &rows,
    );
    Ok(())
}

pub fn lun(c: &Connection, cmd: LunCmd) -> anyhow::Result<()> {
    let api = c.client()?;
    match cmd {
        LunCmd::List => print_luns(
            c,
            &api.get::<Vec<LunRecord>>(routes::ADMIN_LUNS)
                .map_err(explain)?,
        ),
        LunCmd::Create { name, size } => {
            let size_bytes = parse_size(&size).map_err(usage)?;
            let l: LunRecord = api
                .post_keyed(
                    routes::ADMIN_LUNS,
                    Some(&CreateLun { name, size_bytes }),
                    &idempotency_key(),
                )
                .map_err(explain)?;
            print_luns(c, &[l])
        }
        LunCmd::Show { lun } => {
            let l: LunRecord = api
                .get(&path(routes::ADMIN_LUN, &[("lun", &lun)]))
                .map_err(explain)?;
            print_luns(c, &[l])
        }
        LunCmd::Resize { lun, size } => {
            let size_bytes = parse_size(&size).map_err(usage)?;
            let l: LunRecord = api
                .patch(
                    &path(routes::ADMIN_LUN, &[("lun", &lun)]),
                    &UpdateLun {
                        size_bytes: Some(size_bytes),
                        name: None,
                    },
                )
                .map_err(explain)?;
            print_luns(c, &[l])
        }
        LunCmd::Rename { lun, new_name } => {
            let l: LunRecord = api
                .patch(
                    &path(routes::ADMIN_LUN, &[("lun", &lun)]),
                    &UpdateLun {
                        size_bytes: None,
                        name: Some(new_name),
                    },
                )
                .map_err(explain)?;
            print_luns(c, &[l])
        }
        LunCmd::Delete { lun } => {
            api.delete(&path(routes::ADMIN_LUN, &[("lun", &lun)]))
                .map_err(explain)?;
            println!("deleted LUN {lun}");
            Ok(())
        }
    }
}

pub fn host(c: &Connection, cmd: HostCmd) -> anyhow::Result<()> {
    let api = c.client()?;
    match cmd {
        HostCmd::List => print_hosts(
            c,
            &api.get::<Vec<HostRecord>>(routes::ADMIN_HOSTS)
                .map_err(explain)?,
        ),
        HostCmd::Add {
            name,
            initiators,
            chap_secret_file,
            import_from,
        } => {
            let chap_secret = chap_secret_file.as_deref().map(read_secret).transpose()?;
            let h: CreatedHost = api
                .post_keyed(
                    routes::ADMIN_HOSTS,
                    Some(&CreateHost {
                        name,
                        initiators,
                        chap_secret,
                        import_from,
                    }),
                    &idempotency_key(),
                )
                .map_err(explain)?;
            print_token(c, &h)
        }
        HostCmd::Show { name } => {
            let h: HostRecord = api
                .get(&path(routes::ADMIN_HOST, &[("host", &name)]))
                .map_err(explain)?;
            print_hosts(c, &[h])
        }
        HostCmd::RotateToken { name } => {
            let h: CreatedHost = api
                .post_keyed::<(), _>(
                    &path(routes::ADMIN_HOST_TOKEN, &[("host", &name)]),
                    None,
                    &idempotency_key(),
                )
                .map_err(explain)?;
            print_token(c, &h)
        }
        HostCmd::Initiators { name, add, remove } => {
            if add.is_empty() && remove.is_empty() {
                return Err(usage(
                    "say which initiators to --add or --remove (both, to replace one)".into(),
                ));
            }
            let h: HostRecord = api
                .patch(
                    &path(routes::ADMIN_HOST, &[("host", &name)]),
                    &UpdateHost {
                        add_initiators: add,
                        remove_initiators: remove,
                        ..UpdateHost::default()
                    },
                )
                .map_err(explain)?;
            print_hosts(c, &[h])
        }
        HostCmd::Chap {
            name,
            secret_file,
            clear,
        } => {
            let chap_secret = secret_file.as_deref().map(read_secret).transpose()?;
            let h: HostRecord = api
                .patch(
                    &path(routes::ADMIN_HOST, &[("host", &name)]),
                    &UpdateHost {
                        chap_secret,
                        clear_chap: clear,
                        ..UpdateHost::default()
                    },
                )
                .map_err(explain)?;
            print_hosts(c, &[h])
        }
        HostCmd::Remove { name, force } => {
            let mut p = path(routes::ADMIN_HOST, &[("host", &name)]);
            if force {
                p.push_str("?force=true");
            }
            api.delete(&p).map_err(explain)?;
            println!("removed host {name}");
            Ok(())
        }
        HostCmd::Map {
            host,
            lun,
            lun_number,
            shared,
        } => {
            let h: HostRecord = api
                .post_keyed(
                    &path(routes::ADMIN_MAP, &[("host", &host)]),
                    Some(&MapLun {
                        lun,
                        lun_number,
                        shared,
                    }),
                    &idempotency_key(),
                )
                .map_err(explain)?;
            print_hosts(c, &[h])
        }
        HostCmd::Unmap { host, lun } => {
            api.delete(&path(
                routes::ADMIN_UNMAP,
                &[("host", &host), ("lun", &lun)],
            ))
            .map_err(explain)?;
            println!("unmapped LUN {lun} from host {host}");
            Ok(())
        }
    }
}

pub fn snapshot(c: &Connection, cmd: SnapshotCmd) -> anyhow::Result<()> {
    let api = c.client()?;
    match cmd {
        SnapshotCmd::List => print_luns(
            c,
            &api.get::<Vec<LunRecord>>(routes::ADMIN_SNAPSHOTS)
                .map_err(explain)?,
        ),
        SnapshotCmd::Resync {
            snapshot,
            destination,
            force,
        } => {
            let req = api::ResyncRequest {
                pairs: vec![api::ResyncPair {
                    snapshot,
                    destination,
                }],
                force,
            };
            let r: api::ResyncResponse = api
                .post_keyed(routes::ADMIN_RESYNC, Some(&req), &idempotency_key())
                .map_err(explain)?;
            let job_path = path(routes::ADMIN_RESYNC_JOB, &[("job", &r.job)]);
            loop {
                let st: api::JobStatus = api.get(&job_path).map_err(explain)?;
                if !c.json {
                    eprint!("\rresync {}: {:>3}%", r.job, st.progress);
                }
                match st.state {
                    api::JobState::Running => {
                        std::thread::sleep(std::time::Duration::from_millis(200))
                    }
                    api::JobState::Finished => {
                        if c.json {
                            return output::json(&st);
                        }
                        eprintln!();
                        println!("resync {} finished", r.job);
                        return Ok(());
                    }
                    api::JobState::Cancelled => bail!("resync {} was cancelled", r.job),
                    api::JobState::Failed { reason, .. } => {
                        bail!("resync {} failed: {reason}", r.job)
                    }
                }
            }
        }
        SnapshotCmd::Delete { lun } => {
            api.delete(&path(routes::ADMIN_SNAPSHOT, &[("lun", &lun)]))
                .map_err(explain)?;
            println!("deleted snapshot LUN {lun}");
            Ok(())
        }
    }
}

/// How `set list` names a set's owner: the host, or `admin` for a set the array took by
/// itself (`set create`; the API spells that owner `*admin*`).
fn set_owner(host: &str) -> String {
    if host == "*admin*" {
        "admin".into()
    } else {
        host.into()
    }
}

fn print_sets(sets: &[SetRecord]) {
    let rows: Vec<Vec<String>> = sets
        .iter()
        .map(|s| {
            vec![
                s.set_id.to_string(),
                set_owner(&s.host),
                format!("{:?}", s.state).to_lowercase(),
                s.context.to_string(),
                if s.reserved_bytes > 0 {
                    size(s.reserved_bytes)
                } else {
                    "-".into()
                },
                s.snapshots
                    .iter()
                    .map(|m| {
                        let gone = if m.deleted { " (deleted)" } else { "" };
                        format!("{}→{}{gone}", m.source, m.lun)
                    })
                    .collect::<Vec<_>>()
                    .join(","),
            ]
        })
        .collect();
    output::table(
        &["SET", "HOST", "STATE", "CONTEXT", "RESERVED", "SNAPSHOTS"],
        &rows,
    );
}

/// Transportable sets: whether imported, and how old.
fn print_transportable(sets: &[SetRecord]) -> anyhow::Result<()> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let rows: Vec<Vec<String>> = sets
        .iter()
        .map(|s| {
            let live = s.snapshots.iter().filter(|m| !m.deleted).count();
            vec![
                s.set_id.to_string(),
                set_owner(&s.host),
                format!("{:?}", s.state).to_lowercase(),
                if s.imported_at.is_some() { "yes" } else { "no" }.into(),
                human_age(now.saturating_sub(s.created_at)),
                format!("{live} of {}", s.snapshots.len()),
            ]
        })
        .collect();
    output::table(&["SET", "HOST", "STATE", "IMPORTED", "AGE", "LUNS"], &rows);
    Ok(())
}

/// `45s`, `12min`, `5h`, `3days`.
fn human_age(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}min", s / 60),
        s if s < 86400 => format!("{}h", s / 3600),
        s => format!("{}days", s / 86400),
    }
}

pub fn set(c: &Connection, cmd: SetCmd) -> anyhow::Result<()> {
    let api = c.client()?;
    match cmd {
        SetCmd::List { transportable } => {
            let mut sets: Vec<SetRecord> = api.get(routes::ADMIN_SETS).map_err(explain)?;
            if transportable {
                sets.retain(|s| {
                    s.context
                        .contains(vss::VolumeSnapshotAttributes::TRANSPORTABLE)
                });
            }
            if c.json {
                return output::json(&sets);
            }
            if transportable {
                return print_transportable(&sets);
            }
            print_sets(&sets);
            Ok(())
        }
        SetCmd::Create { luns } => {
            let s: SetRecord = api
                .post_keyed(
                    routes::ADMIN_SETS,
                    Some(&TakeSet { luns }),
                    &idempotency_key(),
                )
                .map_err(explain)?;
            if c.json {
                return output::json(&s);
            }
            print_sets(std::slice::from_ref(&s));
            Ok(())
        }
        SetCmd::Delete { set, force } => {
            let mut p = path(routes::ADMIN_SET, &[("set", &set)]);
            if force {
                p.push_str("?force=true");
            }
            api.delete(&p).map_err(explain)?;
            println!("deleted set {set} and its snapshot LUNs");
            Ok(())
        }
        SetCmd::Abort { set } => {
            api.post_empty::<()>(
                &path(routes::ADMIN_SET_ABORT, &[("set", &set)]),
                None,
                api.config().timeout,
            )
            .map_err(explain)?;
            println!("aborted set {set}");
            Ok(())
        }
        SetCmd::Reap { dry_run } => {
            let r: ReapReport = api
                .post(routes::ADMIN_REAP, &ReapRequest { dry_run })
                .map_err(explain)?;
            if c.json {
                return output::json(&r);
            }
            let verb = if r.dry_run { "would remove" } else { "removed" };
            println!(
                "{verb} {} set(s) and {} snapshot LUN(s)",
                r.sets.len(),
                r.luns.len()
            );
            for s in &r.sets {
                println!("  set {s}");
            }
            for l in &r.luns {
                println!("  LUN {l}");
            }
            Ok(())
        }
    }
}
