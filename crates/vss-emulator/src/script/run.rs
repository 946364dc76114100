//! What each command does.

use std::process::Stdio;

use vss::{HardwareOptions, VssId};

use super::parse::{Command, ContextKind, DeleteWhat, ListWhat};
use super::{Environment, Out, ScriptError, ScriptErrorKind, show};
use crate::bcd::Bcd;
use crate::coordinator::{DeleteTarget, VssError};

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

/// Runs one command; `Ok(false)` ends the script (`exit`).
pub(super) fn command(
    line: usize,
    cmd: Command,
    env: &mut Environment,
    out: &mut Out<'_>,
) -> Result<bool, ScriptError> {
    match cmd {
        Command::SetContext { kind, no_writers } => {
            env.kind = kind;
            env.no_writers = no_writers;
        }
        Command::SetOption(a) => env.options = a,
        Command::SetMetadata(f) => env.metadata = Some(env.path(&env.expand(line, &f)?)),
        Command::SetVerbose(v) => env.verbose = v,
        Command::SetType(t) => {
            env.backup_type = t;
            env.requester().set_backup_type(t);
        }
        Command::SetShow => show::settings(env, out),
        Command::BeginBackup => {
            if env.in_backup || env.in_restore {
                return Err(state(line, "a backup or restore is already in progress"));
            }
            env.in_backup = true;
        }
        Command::EndBackup => {
            if !env.in_backup {
                return Err(state(line, "`end backup` without `begin backup`"));
            }
            env.in_backup = false;
            let n = env.requester().backup_complete().map_err(vss(line))?;
            if n > 0 {
                out.line(format!(
                    "BackupComplete sent to {n} writers ({} backup).",
                    show::backup_type_word(env.backup_type)
                ));
            }
        }
        Command::BeginRestore => {
            if env.in_backup || env.in_restore {
                return Err(state(line, "a backup or restore is already in progress"));
            }
            env.in_restore = true;
            env.requester().begin_restore();
        }
        Command::EndRestore => {
            if !env.in_restore {
                return Err(state(line, "`end restore` without `begin restore`"));
            }
            env.in_restore = false;
            env.requester().end_restore();
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
            let volume = env.expand(line, &volume)?;
            let ctx = env.context();
            let (excluded, verified) = (env.excluded_writers.clone(), env.verified_writers.clone());
            let r = env.requester();
            if !r.has_pending_set() {
                r.set_context(ctx).map_err(vss(line))?;
                r.set_writer_rules(excluded, verified);
                r.start_snapshot_set().map_err(vss(line))?;
            }
            let id = r
                .add_to_snapshot_set(&volume, provider)
                .map_err(vss(line))?;
            out.line(format!("Added {volume} to the set as {{{id}}}."));
            env.added.push((volume, id));
            if let Some(a) = alias {
                env.aliases.push((a, id));
            }
        }
        Command::AddAlias { name, value } => {
            let v = env.expand(line, &value)?;
            out.line(format!("Alias {name} set to {v}."));
            env.set_var(&name, v);
        }
        Command::AddShow => show::added(env, out),
        Command::Create => {
            let r = env.requester();
            if !r.has_pending_set() {
                return Err(state(line, "`create` needs `add volume` first"));
            }
            let set = r.do_snapshot_set().map_err(vss(line))?;
            out.report.created.push(set);
            let added: Vec<(String, VssId)> = env.added.drain(..).collect();
            for (i, (_, id)) in added.iter().enumerate() {
                let name = format!("VSS_SHADOW_{}", i + 1);
                out.line(format!(
                    "Alias {name} for shadow ID {{{id}}} set as environment variable."
                ));
                env.set_var(&name, format!("{{{id}}}"));
            }
            out.line(format!(
                "Alias VSS_SHADOW_SET for shadow set ID {{{set}}} set as environment variable."
            ));
            env.set_var("VSS_SHADOW_SET", format!("{{{set}}}"));
            let aliases: Vec<(String, VssId)> = env.aliases.drain(..).collect();
            for (a, id) in &aliases {
                out.line(format!(
                    "Alias {a} for shadow ID {{{id}}} set as environment variable."
                ));
                env.set_var(a, format!("{{{id}}}"));
            }
            out.line(format!("Shadow copy set ID {{{set}}} created."));
            if let Some(p) = env.metadata.clone() {
                let r = env.requester();
                let mut bcd = r.bcd(set).map_err(vss(line))?;
                bcd.aliases = aliases.into_iter().collect();
                bcd.save(&p).map_err(|e| vss(line)(e.into()))?;
                out.line(format!("The metadata was written to {}.", p.display()));
            }
        }
        Command::LoadMetadata(f) => {
            let p = env.path(&env.expand(line, &f)?);
            let bcd = Bcd::load(&p).map_err(|e| vss(line)(e.into()))?;
            let set = bcd.set.snapshot_set_id;
            for (i, s) in bcd.set.snapshots.iter().enumerate() {
                out.line(format!(
                    "-> shadow copy {{{}}} of {}",
                    s.snapshot_id, s.original_volume
                ));
                env.set_var(
                    &format!("VSS_SHADOW_{}", i + 1),
                    format!("{{{}}}", s.snapshot_id),
                );
            }
            env.set_var("VSS_SHADOW_SET", format!("{{{set}}}"));
            for (a, id) in &bcd.aliases {
                out.line(format!("-> %{a}% = {{{id}}}"));
                env.set_var(a, format!("{{{id}}}"));
            }
            env.requester().load_bcd(bcd).map_err(vss(line))?;
            out.line(format!("Metadata of set {{{set}}} loaded."));
        }
        Command::Import => {
            let r = env.requester().import_snapshots().map_err(vss(line))?;
            out.report.imports.push(r);
            out.line(format!("Import: {r}."));
        }
        Command::Mask(s) => {
            let id = env.id(line, &s)?;
            env.requester()
                .break_snapshot_set_ex(id, HardwareOptions::BREAKEX_FLAG_MASK_LUNS)
                .map_err(vss(line))?;
            out.line(format!("Set {{{id}}} masked."));
        }
        Command::Break { writable, set } => {
            let id = env.id(line, &set)?;
            env.requester()
                .break_snapshot_set(id, writable)
                .map_err(vss(line))?;
            out.line(format!(
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
                DeleteWhat::Exposed(at) => DeleteTarget::Exposed(env.expand(line, &at)?),
            };
            let n = env
                .requester()
                .delete_snapshots(target)
                .map_err(vss(line))?;
            out.line(format!("{n} shadow copies deleted."));
        }
        Command::AddShadow { id, destination } => {
            let sid = env.id(line, &id)?;
            let dest = destination.map(|d| env.expand(line, &d)).transpose()?;
            env.requester()
                .add_snapshot_to_recovery_set(sid, dest)
                .map_err(vss(line))?;
            env.recovery_added = true;
            out.line(format!("Shadow copy {{{sid}}} added to the recovery set."));
        }
        Command::Resync(o) => {
            if !env.recovery_added {
                return Err(state(line, "`resync` needs `add shadow` first"));
            }
            env.requester().recover_set(o).map_err(vss(line))?;
            env.recovery_added = false;
            out.line("Resync finished.");
        }
        Command::Revert(id) => {
            let id = env.id(line, &id)?;
            env.requester().revert_to_snapshot(id).map_err(vss(line))?;
            out.line(format!("Shadow copy {{{id}}} reverted."));
        }
        Command::Expose { id, at } => {
            let id = env.id(line, &id)?;
            let at = env.expand(line, &at)?;
            let name = env
                .requester()
                .expose_snapshot(id, &at)
                .map_err(vss(line))?;
            out.line(format!(
                "-> The shadow copy was successfully exposed as {name}."
            ));
        }
        Command::Unexpose(at) => {
            let at = env.expand(line, &at)?;
            let id = env.requester().unexpose_snapshot(&at).map_err(vss(line))?;
            out.line(format!(
                "Shadow copy {{{id}}} is no longer exposed at {at}."
            ));
        }
        Command::Exec(words) => exec(line, &words, env, out)?,
        Command::Reset => {
            let n = env.reset().map_err(vss(line))?;
            out.line(format!("Reset: {n} auto-release shadow copies deleted."));
        }
        Command::Exit => return Ok(false),
        Command::ListShadows(what) => {
            let filter = match what {
                ListWhat::All => None,
                ListWhat::Set(s) => Some((true, env.id(line, &s)?)),
                ListWhat::Id(s) => Some((false, env.id(line, &s)?)),
            };
            show::shadows(env, filter, out);
        }
        Command::ListProviders => show::providers(env, out),
        Command::ListWriters(detail) => show::writers(env, detail, out),
        Command::WriterVerify(w) => {
            let w = env.expand(line, &w)?;
            show::known_writer(env, line, &w)?;
            out.line(format!("Writer \"{w}\" will be verified."));
            env.verified_writers.push(w);
        }
        Command::WriterExclude(w) => {
            let w = env.expand(line, &w)?;
            show::known_writer(env, line, &w)?;
            out.line(format!("Writer \"{w}\" will be excluded."));
            env.excluded_writers.push(w);
        }
    }
    if env.verbose {
        let n = env.coordinator.trace().len();
        tracing::info!(line, trace_entries = n, "script command done");
    }
    Ok(true)
}

/// `exec`: a Linux program with the session's variables (upper case: `VSS_SHADOW_SET`,
/// `VSS_SHADOW_1`, aliases) in its environment, in the session's directory. Its output is
/// the script's; a non-zero exit stops the script, as in diskshadow.
fn exec(
    line: usize,
    words: &[String],
    env: &Environment,
    out: &mut Out<'_>,
) -> Result<(), ScriptError> {
    let words: Vec<String> = words
        .iter()
        .map(|w| env.expand(line, w))
        .collect::<Result<_, _>>()?;
    let program = words[0].clone();
    let fail = |reason: String| ScriptError {
        line,
        kind: ScriptErrorKind::Exec {
            program: program.clone(),
            reason,
        },
    };
    // A bare name is looked up on PATH; a path is relative to the session's directory.
    let mut cmd = if program.contains('/') {
        std::process::Command::new(env.path(&program))
    } else {
        std::process::Command::new(&program)
    };
    cmd.args(&words[1..])
        .current_dir(&env.base_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in &env.vars {
        cmd.env(k.to_ascii_uppercase(), v);
    }
    let o = cmd.output().map_err(|e| fail(e.to_string()))?;
    for l in String::from_utf8_lossy(&o.stdout).lines() {
        out.line(l);
    }
    for l in String::from_utf8_lossy(&o.stderr).lines() {
        out.line(l);
    }
    if !o.status.success() {
        return Err(fail(format!("{}", o.status)));
    }
    Ok(())
}

impl ContextKind {
    pub(super) fn word(self) -> &'static str {
        match self {
            ContextKind::Persistent => "persistent",
            ContextKind::Volatile => "volatile",
            ContextKind::ClientAccessible => "clientaccessible",
        }
    }
}
