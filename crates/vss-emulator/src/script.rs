//! diskshadow-compatible scripts.
//!
//! [`parse`] turns a script into commands (every syntax error names its line and says what
//! was expected) and [`run_script`] runs them against an [`Environment`]: one host's
//! coordinator and a requester that lives as long as the environment, as in one diskshadow
//! session. The language is documented in `docs/vss-emulator.md`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;
use vss::{
    HardwareOptions, Hresult, RecoveryOptions, SnapshotContext, VolumeSnapshotAttributes as Attr,
    VssId,
};

use crate::bcd::Bcd;
use crate::coordinator::{BackupComponents, Coordinator, DeleteTarget, VssError};

/// A script failure, with the 1-based line it happened on.
#[derive(Debug, Error)]
#[error("line {line}: {kind}")]
pub struct ScriptError {
    pub line: usize,
    pub kind: ScriptErrorKind,
}

#[derive(Debug, Error)]
pub enum ScriptErrorKind {
    #[error("expected {expected}, found {found}")]
    Syntax { expected: String, found: String },
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    State(String),
    #[error("unknown variable %{0}%")]
    UnknownVariable(String),
    #[error(transparent)]
    Vss(#[from] VssError),
}

impl ScriptError {
    /// The HRESULT for failures that came from VSS.
    pub fn hresult(&self) -> Option<Hresult> {
        match &self.kind {
            ScriptErrorKind::Vss(e) => Some(e.code()),
            _ => None,
        }
    }
}

/// `set context`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContextKind {
    Persistent,
    Volatile,
}

/// `delete shadows` targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteWhat {
    All,
    Volume(String),
    Oldest(String),
    Set(String),
    Id(String),
}

/// One parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    SetContext {
        kind: ContextKind,
        no_writers: bool,
    },
    SetOption(Attr),
    SetMetadata(String),
    SetVerbose(bool),
    BeginBackup,
    EndBackup,
    AddVolume {
        volume: String,
        provider: Option<String>,
        alias: Option<String>,
    },
    Create,
    LoadMetadata(String),
    Import,
    Mask(String),
    Break {
        writable: bool,
        set: String,
    },
    DeleteShadows(DeleteWhat),
    AddShadow {
        id: String,
        destination: Option<String>,
    },
    Resync(RecoveryOptions),
    ListShadows,
    ListProviders,
}

fn syntax(line: usize, expected: &str, found: Option<&str>) -> ScriptError {
    ScriptError {
        line,
        kind: ScriptErrorKind::Syntax {
            expected: expected.to_string(),
            found: found.map_or_else(|| "end of line".to_string(), |f| format!("`{f}`")),
        },
    }
}

fn parse_line(line: usize, words: &[&str]) -> Result<Command, ScriptError> {
    let lower: Vec<String> = words.iter().map(|w| w.to_ascii_lowercase()).collect();
    let w = |i: usize| lower.get(i).map(String::as_str);
    let raw = |i: usize| words.get(i).copied();
    let end = |i: usize, c: Command| -> Result<Command, ScriptError> {
        match raw(i) {
            None => Ok(c),
            Some(x) => Err(syntax(line, "end of line", Some(x))),
        }
    };
    match w(0) {
        Some("set") => match w(1) {
            Some("context") => {
                let kind = match w(2) {
                    Some("persistent") => ContextKind::Persistent,
                    Some("volatile") => ContextKind::Volatile,
                    Some("clientaccessible") => {
                        return Err(ScriptError {
                            line,
                            kind: ScriptErrorKind::Unsupported(
                                "clientaccessible shadow copies are made by the system provider only"
                                    .into(),
                            ),
                        });
                    }
                    other => {
                        return Err(syntax(
                            line,
                            "`persistent`, `volatile` or `clientaccessible`",
                            other,
                        ));
                    }
                };
                match w(3) {
                    None => Ok(Command::SetContext {
                        kind,
                        no_writers: false,
                    }),
                    Some("nowriters") => end(
                        4,
                        Command::SetContext {
                            kind,
                            no_writers: true,
                        },
                    ),
                    Some(_) => Err(syntax(line, "`nowriters` or end of line", raw(3))),
                }
            }
            Some("option") => {
                let mut a = Attr::empty();
                if raw(2).is_none() {
                    return Err(syntax(line, "an option", None));
                }
                for (i, o) in lower.iter().enumerate().skip(2) {
                    a |= match o.as_str() {
                        "differential" => Attr::DIFFERENTIAL,
                        "plex" => Attr::PLEX,
                        "transportable" => Attr::TRANSPORTABLE,
                        "rollbackrecover" => Attr::ROLLBACK_RECOVERY | Attr::AUTORECOVER,
                        "txfrecover" => Attr::TXF_RECOVERY | Attr::AUTORECOVER,
                        "noautorecover" => Attr::NO_AUTORECOVERY,
                        _ => {
                            return Err(syntax(
                                line,
                                "`differential`, `plex`, `transportable`, `rollbackrecover`, `txfrecover` or `noautorecover`",
                                raw(i),
                            ));
                        }
                    };
                }
                if a.contains(Attr::DIFFERENTIAL | Attr::PLEX) {
                    return Err(ScriptError {
                        line,
                        kind: ScriptErrorKind::Unsupported(
                            "`differential` and `plex` exclude each other".into(),
                        ),
                    });
                }
                if a.contains(Attr::NO_AUTORECOVERY) && a.contains(Attr::AUTORECOVER) {
                    return Err(ScriptError {
                        line,
                        kind: ScriptErrorKind::Unsupported(
                            "`noautorecover` excludes `rollbackrecover` and `txfrecover`".into(),
                        ),
                    });
                }
                Ok(Command::SetOption(a))
            }
            Some("metadata") => match raw(2) {
                Some(f) => end(3, Command::SetMetadata(f.to_string())),
                None => Err(syntax(line, "a file name", None)),
            },
            Some("verbose") => match w(2) {
                Some("on") => end(3, Command::SetVerbose(true)),
                Some("off") => end(3, Command::SetVerbose(false)),
                _ => Err(syntax(line, "`on` or `off`", raw(2))),
            },
            _ => Err(syntax(
                line,
                "`context`, `option`, `metadata` or `verbose`",
                raw(1),
            )),
        },
        Some("begin") => match w(1) {
            Some("backup") => end(2, Command::BeginBackup),
            _ => Err(syntax(line, "`backup`", raw(1))),
        },
        Some("end") => match w(1) {
            Some("backup") => end(2, Command::EndBackup),
            _ => Err(syntax(line, "`backup`", raw(1))),
        },
        Some("add") => match w(1) {
            Some("volume") => {
                let Some(volume) = raw(2) else {
                    return Err(syntax(line, "a volume", None));
                };
                let mut provider = None;
                let mut alias = None;
                let mut i = 3;
                while let Some(k) = w(i) {
                    let v = raw(i + 1)
                        .ok_or_else(|| syntax(line, &format!("a value after `{k}`"), None))?;
                    match k {
                        "provider" if provider.is_none() => provider = Some(v.to_string()),
                        "alias" if alias.is_none() => alias = Some(v.to_string()),
                        _ => return Err(syntax(line, "`provider <id>` or `alias <name>`", raw(i))),
                    }
                    i += 2;
                }
                Ok(Command::AddVolume {
                    volume: volume.to_string(),
                    provider,
                    alias,
                })
            }
            Some("shadow") => {
                let Some(id) = raw(2) else {
                    return Err(syntax(line, "a shadow copy id or %alias%", None));
                };
                let destination = raw(3).map(str::to_string);
                end(
                    if destination.is_some() { 4 } else { 3 },
                    Command::AddShadow {
                        id: id.to_string(),
                        destination,
                    },
                )
            }
            _ => Err(syntax(line, "`volume` or `shadow`", raw(1))),
        },
        Some("create") => end(1, Command::Create),
        Some("load") => match (w(1), raw(2)) {
            (Some("metadata"), Some(f)) => end(3, Command::LoadMetadata(f.to_string())),
            (Some("metadata"), None) => Err(syntax(line, "a file name", None)),
            _ => Err(syntax(line, "`metadata`", raw(1))),
        },
        Some("import") => end(1, Command::Import),
        Some("mask") => match raw(1) {
            Some(s) => end(2, Command::Mask(s.to_string())),
            None => Err(syntax(line, "a shadow copy set id", None)),
        },
        Some("break") => {
            let (writable, i) = if w(1) == Some("writable") {
                (true, 2)
            } else {
                (false, 1)
            };
            match raw(i) {
                Some(s) => end(
                    i + 1,
                    Command::Break {
                        writable,
                        set: s.to_string(),
                    },
                ),
                None => Err(syntax(line, "a shadow copy set id", None)),
            }
        }
        Some("delete") => match w(1) {
            Some("shadows") => {
                let what = match (w(2), raw(3)) {
                    (Some("all"), _) => return end(3, Command::DeleteShadows(DeleteWhat::All)),
                    (Some("volume"), Some(v)) => DeleteWhat::Volume(v.to_string()),
                    (Some("oldest"), Some(v)) => DeleteWhat::Oldest(v.to_string()),
                    (Some("set"), Some(v)) => DeleteWhat::Set(v.to_string()),
                    (Some("id"), Some(v)) => DeleteWhat::Id(v.to_string()),
                    (Some("exposed"), _) => {
                        return Err(ScriptError {
                            line,
                            kind: ScriptErrorKind::Unsupported(
                                "exposing shadow copies is not modelled".into(),
                            ),
                        });
                    }
                    (Some(k @ ("volume" | "oldest" | "set" | "id")), None) => {
                        return Err(syntax(line, &format!("a value after `{k}`"), None));
                    }
                    _ => {
                        return Err(syntax(
                            line,
                            "`all`, `volume`, `oldest`, `set` or `id`",
                            raw(2),
                        ));
                    }
                };
                end(4, Command::DeleteShadows(what))
            }
            _ => Err(syntax(line, "`shadows`", raw(1))),
        },
        Some("resync") => {
            let mut o = RecoveryOptions::empty();
            for (i, x) in lower.iter().enumerate().skip(1) {
                o |= match x.as_str() {
                    "novolcheck" => RecoveryOptions::NO_VOLUME_CHECK,
                    "revert_originalsig" => RecoveryOptions::REVERT_IDENTITY_ALL,
                    _ => {
                        return Err(syntax(
                            line,
                            "`novolcheck`, `revert_originalsig` or end of line",
                            raw(i),
                        ));
                    }
                };
            }
            Ok(Command::Resync(o))
        }
        Some("list") => match w(1) {
            Some("shadows") => match w(2) {
                None | Some("all") => end(3, Command::ListShadows),
                _ => Err(syntax(line, "`all` or end of line", raw(2))),
            },
            Some("providers") => end(2, Command::ListProviders),
            _ => Err(syntax(line, "`shadows` or `providers`", raw(1))),
        },
        _ => Err(syntax(
            line,
            "a command (set, begin, end, add, create, load, import, mask, break, delete, resync, list)",
            raw(0),
        )),
    }
}

/// Parses a whole script: `(line number, command)` pairs. Blank lines and lines starting
/// with `#` are skipped.
pub fn parse(text: &str) -> Result<Vec<(usize, Command)>, ScriptError> {
    let mut out = Vec::new();
    for (i, l) in text.lines().enumerate() {
        let t = l.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let words: Vec<&str> = t.split_whitespace().collect();
        out.push((i + 1, parse_line(i + 1, &words)?));
    }
    Ok(out)
}

/// One diskshadow session on a host.
pub struct Environment {
    coordinator: Arc<Coordinator>,
    /// Relative metadata paths are resolved against this directory.
    pub base_dir: PathBuf,
    requester: Option<BackupComponents>,
    kind: ContextKind,
    no_writers: bool,
    options: Attr,
    metadata: Option<PathBuf>,
    verbose: bool,
    in_backup: bool,
    aliases: Vec<(String, VssId)>,
    vars: BTreeMap<String, String>,
    recovery_added: bool,
}

impl std::fmt::Debug for Environment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Environment")
            .field("base_dir", &self.base_dir)
            .field("vars", &self.vars)
            .finish_non_exhaustive()
    }
}

/// What a script run printed and did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    pub output: Vec<String>,
    /// Sets created by `create`, in order.
    pub created: Vec<VssId>,
    /// The result of each `import`.
    pub imports: Vec<Hresult>,
}

impl Environment {
    pub fn new(coordinator: Arc<Coordinator>, base_dir: impl Into<PathBuf>) -> Self {
        Self {
            coordinator,
            base_dir: base_dir.into(),
            requester: None,
            kind: ContextKind::Volatile,
            no_writers: false,
            options: Attr::empty(),
            metadata: None,
            verbose: false,
            in_backup: false,
            aliases: Vec::new(),
            vars: BTreeMap::new(),
            recovery_added: false,
        }
    }

    pub fn coordinator(&self) -> &Arc<Coordinator> {
        &self.coordinator
    }

    /// Environment variables set by the session (`VSS_SHADOW_SET`, aliases).
    pub fn vars(&self) -> &BTreeMap<String, String> {
        &self.vars
    }

    /// The requester of this session (created on first use).
    pub fn requester(&mut self) -> &mut BackupComponents {
        let c = &self.coordinator;
        self.requester.get_or_insert_with(|| c.backup_components())
    }

    fn context(&self) -> SnapshotContext {
        let mut c = match self.kind {
            ContextKind::Persistent => SnapshotContext::APP_ROLLBACK,
            ContextKind::Volatile => SnapshotContext::BACKUP,
        };
        if self.no_writers {
            c = c.with(Attr::NO_WRITERS);
        }
        c.with(self.options)
    }

    fn path(&self, f: &str) -> PathBuf {
        let p = Path::new(f);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    /// Expands `%name%` references.
    fn expand(&self, line: usize, s: &str) -> Result<String, ScriptError> {
        let mut out = String::new();
        let mut rest = s;
        while let Some(start) = rest.find('%') {
            out += &rest[..start];
            let after = &rest[start + 1..];
            let Some(end) = after.find('%') else {
                return Err(syntax(line, "a closing `%`", Some(s)));
            };
            let name = &after[..end];
            let v = self
                .vars
                .get(&name.to_ascii_lowercase())
                .ok_or_else(|| ScriptError {
                    line,
                    kind: ScriptErrorKind::UnknownVariable(name.to_string()),
                })?;
            out += v;
            rest = &after[end + 1..];
        }
        out += rest;
        Ok(out)
    }

    fn id(&self, line: usize, s: &str) -> Result<VssId, ScriptError> {
        let e = self.expand(line, s)?;
        uuid::Uuid::parse_str(e.trim_matches(['{', '}']))
            .map_err(|_| syntax(line, "a GUID", Some(&e)))
    }
}

fn state(line: usize, m: &str) -> ScriptError {
    ScriptError {
        line,
        kind: ScriptErrorKind::State(m.to_string()),
    }
}

fn vss(line: usize) -> impl Fn(VssError) -> ScriptError {
    move |e| ScriptError {
        line,
        kind: ScriptErrorKind::Vss(e),
    }
}

/// Parses and runs a script; stops at the first failing command.
pub fn run_script(text: &str, env: &mut Environment) -> Result<Report, ScriptError> {
    let commands = parse(text)?;
    let mut report = Report::default();
    for (line, cmd) in commands {
        run_command(line, cmd, env, &mut report)?;
    }
    Ok(report)
}

fn run_command(
    line: usize,
    cmd: Command,
    env: &mut Environment,
    report: &mut Report,
) -> Result<(), ScriptError> {
    let out = &mut report.output;
    match cmd {
        Command::SetContext { kind, no_writers } => {
            env.kind = kind;
            env.no_writers = no_writers;
        }
        Command::SetOption(a) => env.options = a,
        Command::SetMetadata(f) => env.metadata = Some(env.path(&env.expand(line, &f)?)),
        Command::SetVerbose(v) => env.verbose = v,
        Command::BeginBackup => {
            if env.in_backup {
                return Err(state(line, "a backup is already in progress"));
            }
            env.in_backup = true;
        }
        Command::EndBackup => {
            if !env.in_backup {
                return Err(state(line, "`end backup` without `begin backup`"));
            }
            env.in_backup = false;
        }
        Command::AddVolume {
            volume,
            provider,
            alias,
        } => {
            let provider = match provider {
                Some(p) => env.id(line, &p)?,
                None => VssId::nil(),
            };
            let ctx = env.context();
            let r = env.requester();
            if !r.has_pending_set() {
                r.set_context(ctx).map_err(vss(line))?;
                r.start_snapshot_set().map_err(vss(line))?;
            }
            let id = r
                .add_to_snapshot_set(&volume, provider)
                .map_err(vss(line))?;
            out.push(format!("Added {volume} to the set as {{{id}}}."));
            if let Some(a) = alias {
                env.aliases.push((a, id));
            }
        }
        Command::Create => {
            let r = env.requester();
            if !r.has_pending_set() {
                return Err(state(line, "`create` needs `add volume` first"));
            }
            let set = r.do_snapshot_set().map_err(vss(line))?;
            report.created.push(set);
            env.vars
                .insert("vss_shadow_set".into(), format!("{{{set}}}"));
            out.push(format!("Shadow copy set ID {{{set}}} created."));
            let aliases: Vec<(String, VssId)> = env.aliases.drain(..).collect();
            for (a, id) in &aliases {
                out.push(format!("-> %{a}% = {{{id}}}"));
                env.vars.insert(a.to_ascii_lowercase(), format!("{{{id}}}"));
            }
            if let Some(p) = env.metadata.clone() {
                let r = env.requester();
                let mut bcd = r.bcd(set).map_err(vss(line))?;
                bcd.aliases = aliases.into_iter().collect();
                bcd.save(&p).map_err(|e| vss(line)(e.into()))?;
                report
                    .output
                    .push(format!("The metadata was written to {}.", p.display()));
            }
        }
        Command::LoadMetadata(f) => {
            let p = env.path(&env.expand(line, &f)?);
            let bcd = Bcd::load(&p).map_err(|e| vss(line)(e.into()))?;
            let set = bcd.set.snapshot_set_id;
            for s in &bcd.set.snapshots {
                out.push(format!(
                    "-> shadow copy {{{}}} of {}",
                    s.snapshot_id, s.original_volume
                ));
            }
            env.vars
                .insert("vss_shadow_set".into(), format!("{{{set}}}"));
            for (a, id) in &bcd.aliases {
                out.push(format!("-> %{a}% = {{{id}}}"));
                env.vars.insert(a.to_ascii_lowercase(), format!("{{{id}}}"));
            }
            env.requester().load_bcd(bcd).map_err(vss(line))?;
            out.push(format!("Metadata of set {{{set}}} loaded."));
        }
        Command::Import => {
            let r = env.requester().import_snapshots().map_err(vss(line))?;
            report.imports.push(r);
            report.output.push(format!("Import: {r}."));
        }
        Command::Mask(s) => {
            let id = env.id(line, &s)?;
            env.requester()
                .break_snapshot_set_ex(id, HardwareOptions::BREAKEX_FLAG_MASK_LUNS)
                .map_err(vss(line))?;
            out.push(format!("Set {{{id}}} masked."));
        }
        Command::Break { writable, set } => {
            let id = env.id(line, &set)?;
            env.requester()
                .break_snapshot_set(id, writable)
                .map_err(vss(line))?;
            out.push(format!(
                "Set {{{id}}} broken{}.",
                if writable { ", volumes writable" } else { "" }
            ));
        }
        Command::DeleteShadows(what) => {
            let target = match what {
                DeleteWhat::All => DeleteTarget::All,
                DeleteWhat::Volume(v) => DeleteTarget::Volume(env.expand(line, &v)?),
                DeleteWhat::Oldest(v) => DeleteTarget::Oldest(env.expand(line, &v)?),
                DeleteWhat::Set(s) => DeleteTarget::Set(env.id(line, &s)?),
                DeleteWhat::Id(s) => DeleteTarget::Snapshot(env.id(line, &s)?),
            };
            let n = env
                .requester()
                .delete_snapshots(target)
                .map_err(vss(line))?;
            out.push(format!("{n} shadow copies deleted."));
        }
        Command::AddShadow { id, destination } => {
            let sid = env.id(line, &id)?;
            let dest = destination.map(|d| env.expand(line, &d)).transpose()?;
            env.requester()
                .add_snapshot_to_recovery_set(sid, dest)
                .map_err(vss(line))?;
            env.recovery_added = true;
            out.push(format!("Shadow copy {{{sid}}} added to the recovery set."));
        }
        Command::Resync(o) => {
            if !env.recovery_added {
                return Err(state(line, "`resync` needs `add shadow` first"));
            }
            env.requester().recover_set(o).map_err(vss(line))?;
            env.recovery_added = false;
            out.push("Resync finished.".into());
        }
        Command::ListShadows => {
            let q = env.coordinator.query();
            for p in &q {
                out.push(format!(
                    "* Shadow copy ID = {{{}}} set {{{}}} original {} shadow {} attributes 0x{:08X}",
                    p.snapshot_id,
                    p.snapshot_set_id,
                    p.original_volume,
                    p.snapshot_device.as_deref().unwrap_or("(not surfaced)"),
                    p.attributes
                ));
            }
            out.push(format!("Number of shadow copies listed: {}", q.len()));
        }
        Command::ListProviders => {
            for p in env.coordinator.providers() {
                out.push(format!(
                    "* ProviderID: {{{}}}\n\tType: [3] VSS_PROV_HARDWARE\n\tName: {}",
                    p.id, p.name
                ));
            }
        }
    }
    if env.verbose {
        let n = env.coordinator.trace().len();
        tracing::info!(line, trace_entries = n, "script command done");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_diskshadow_commands() {
        let s = "\
# full backup
set context persistent nowriters
set option transportable plex
set metadata  out.json
set verbose on
begin backup
add volume E: alias data
add volume G: provider {5eed0000-0000-4000-8000-000000000001}
create
end backup
load metadata out.json
import
mask %VSS_SHADOW_SET%
break writable %VSS_SHADOW_SET%
delete shadows oldest E:
delete shadows all
add shadow %data% F:
resync novolcheck revert_originalsig
list shadows all
list providers
";
        let c = parse(s).unwrap();
        assert_eq!(c.len(), 19);
        assert_eq!(
            c[0],
            (
                2,
                Command::SetContext {
                    kind: ContextKind::Persistent,
                    no_writers: true
                }
            )
        );
        assert_eq!(c[1].1, Command::SetOption(Attr::TRANSPORTABLE | Attr::PLEX));
        assert_eq!(
            c[5].1,
            Command::AddVolume {
                volume: "E:".into(),
                provider: None,
                alias: Some("data".into())
            }
        );
        assert_eq!(
            c[12].1,
            Command::Break {
                writable: true,
                set: "%VSS_SHADOW_SET%".into()
            }
        );
        assert_eq!(
            c[16].1,
            Command::Resync(
                RecoveryOptions::NO_VOLUME_CHECK | RecoveryOptions::REVERT_IDENTITY_ALL
            )
        );
    }

    #[test]
    fn errors_name_the_line_and_what_was_expected() {
        let e = parse("set context persistent\n\nset context forever\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert_eq!(
            e.to_string(),
            "line 3: expected `persistent`, `volatile` or `clientaccessible`, found `forever`"
        );
        let e = parse("add volume").unwrap_err();
        assert_eq!(
            e.to_string(),
            "line 1: expected a volume, found end of line"
        );
        let e = parse("delete shadows volume").unwrap_err();
        assert_eq!(
            e.to_string(),
            "line 1: expected a value after `volume`, found end of line"
        );
        let e = parse("set option differential plex").unwrap_err();
        assert!(e.to_string().contains("exclude each other"));
        let e = parse("create now").unwrap_err();
        assert_eq!(e.to_string(), "line 1: expected end of line, found `now`");
        let e = parse("frobnicate").unwrap_err();
        assert!(e.to_string().starts_with("line 1: expected a command"));
        let e = parse("add volume E: alias").unwrap_err();
        assert_eq!(
            e.to_string(),
            "line 1: expected a value after `alias`, found end of line"
        );
    }
}
