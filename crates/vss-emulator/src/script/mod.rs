//! diskshadow-compatible scripts.
//!
//! [`parse`] turns a script into commands (every syntax error names its line and says what
//! was expected; a script that does not parse runs nothing) and [`run_script_streaming`]
//! runs them against an [`Environment`], handing each output line to the caller as the
//! command that printed it runs, and stopping at the first failing command, as diskshadow
//! does. The environment is one host's coordinator and a requester that lives as long as the
//! environment, as in one diskshadow session. The language is documented in
//! `docs/vss-emulator.md`.

mod parse;
mod run;
mod show;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;
use vss::{Hresult, SnapshotContext, VolumeSnapshotAttributes as Attr, VssId};

use crate::coordinator::{BackupComponents, Coordinator, VssError};

pub use parse::{Command, ContextKind, DeleteWhat, ListWhat, WriterDetail, parse};

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
    #[error("exec {program}: {reason}")]
    Exec { program: String, reason: String },
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

    /// True for an error found while parsing (nothing of the script ran).
    pub fn is_syntax(&self) -> bool {
        matches!(
            self.kind,
            ScriptErrorKind::Syntax { .. } | ScriptErrorKind::Unsupported(_)
        )
    }
}

/// One diskshadow session on a host.
pub struct Environment {
    coordinator: Arc<Coordinator>,
    /// Relative metadata paths (and `exec`'s working directory) are resolved against this
    /// directory.
    pub base_dir: PathBuf,
    requester: Option<BackupComponents>,
    kind: ContextKind,
    no_writers: bool,
    options: Attr,
    metadata: Option<PathBuf>,
    verbose: bool,
    /// `set type`: what writers are told at PrepareForBackup.
    backup_type: crate::writer::BackupType,
    in_backup: bool,
    in_restore: bool,
    /// Volumes added to the set being built: (name as given, snapshot id).
    added: Vec<(String, VssId)>,
    aliases: Vec<(String, VssId)>,
    vars: BTreeMap<String, String>,
    recovery_added: bool,
    excluded_writers: Vec<String>,
    verified_writers: Vec<String>,
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
    /// The script ended with `exit` (lines after it did not run).
    pub exited: bool,
}

/// Where a command's output goes: the report, and the caller's sink as it is printed.
pub(crate) struct Out<'a> {
    report: &'a mut Report,
    sink: &'a mut dyn FnMut(&str),
}

impl Out<'_> {
    fn line(&mut self, s: impl Into<String>) {
        let s = s.into();
        (self.sink)(&s);
        self.report.output.push(s);
    }
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
            backup_type: crate::writer::BackupType::Full,
            in_backup: false,
            in_restore: false,
            added: Vec::new(),
            aliases: Vec::new(),
            vars: BTreeMap::new(),
            recovery_added: false,
            excluded_writers: Vec::new(),
            verified_writers: Vec::new(),
        }
    }

    pub fn coordinator(&self) -> &Arc<Coordinator> {
        &self.coordinator
    }

    /// Variables set by the session (`VSS_SHADOW_SET`, `VSS_SHADOW_n`, aliases), by their
    /// lower-case names.
    pub fn vars(&self) -> &BTreeMap<String, String> {
        &self.vars
    }

    /// The requester of this session (created on first use).
    pub fn requester(&mut self) -> &mut BackupComponents {
        let c = &self.coordinator;
        self.requester.get_or_insert_with(|| c.backup_components())
    }

    /// `reset`: the session's settings, the set being built, aliases and variables go; the
    /// requester is released (its auto-release shadow copies are deleted), as when
    /// diskshadow resets.
    fn reset(&mut self) -> Result<usize, VssError> {
        let released = match self.requester.take() {
            Some(mut r) => r.release()?,
            None => 0,
        };
        let coordinator = Arc::clone(&self.coordinator);
        let base = std::mem::take(&mut self.base_dir);
        *self = Environment::new(coordinator, base);
        Ok(released)
    }

    fn context(&self) -> SnapshotContext {
        let mut c = match self.kind {
            ContextKind::Persistent => SnapshotContext::APP_ROLLBACK,
            ContextKind::Volatile => SnapshotContext::BACKUP,
            ContextKind::ClientAccessible => return SnapshotContext::CLIENT_ACCESSIBLE,
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

    /// The value of `%name%`: the session's variables and aliases first, then the process
    /// environment (as typed, then in upper case).
    fn lookup(&self, name: &str) -> Option<String> {
        self.vars
            .get(&name.to_ascii_lowercase())
            .cloned()
            .or_else(|| std::env::var(name).ok())
            .or_else(|| std::env::var(name.to_ascii_uppercase()).ok())
    }

    /// Expands `%name%` references.
    fn expand(&self, line: usize, s: &str) -> Result<String, ScriptError> {
        let mut out = String::new();
        let mut rest = s;
        while let Some(start) = rest.find('%') {
            out += &rest[..start];
            let after = &rest[start + 1..];
            let Some(end) = after.find('%') else {
                return Err(parse::syntax(line, "a closing `%`", Some(s)));
            };
            let name = &after[..end];
            let v = self.lookup(name).ok_or_else(|| ScriptError {
                line,
                kind: ScriptErrorKind::UnknownVariable(name.to_string()),
            })?;
            out += &v;
            rest = &after[end + 1..];
        }
        out += rest;
        Ok(out)
    }

    fn id(&self, line: usize, s: &str) -> Result<VssId, ScriptError> {
        let e = self.expand(line, s)?;
        uuid::Uuid::parse_str(e.trim_matches(['{', '}']))
            .map_err(|_| parse::syntax(line, "a GUID", Some(&e)))
    }

    /// Sets a session variable (names are compared in any case).
    fn set_var(&mut self, name: &str, value: String) {
        self.vars.insert(name.to_ascii_lowercase(), value);
    }
}

/// Parses and runs a script; stops at the first failing command. The output is in the
/// report (and, on failure, lost: use [`run_script_streaming`] to see it as it comes).
pub fn run_script(text: &str, env: &mut Environment) -> Result<Report, ScriptError> {
    run_script_streaming(text, env, &mut |_| {})
}

/// Parses a script, then runs it, handing each output line to `sink` as it is printed.
/// A syntax error anywhere runs nothing; the first failing command stops the script (the
/// lines printed before it have reached `sink`); `exit` ends it early.
pub fn run_script_streaming(
    text: &str,
    env: &mut Environment,
    sink: &mut dyn FnMut(&str),
) -> Result<Report, ScriptError> {
    let commands = parse(text)?;
    run_commands(&commands, env, sink)
}

/// Runs already parsed commands (see [`run_script_streaming`]).
pub fn run_commands(
    commands: &[(usize, Command)],
    env: &mut Environment,
    sink: &mut dyn FnMut(&str),
) -> Result<Report, ScriptError> {
    let mut report = Report::default();
    let mut out = Out {
        report: &mut report,
        sink,
    };
    for (line, cmd) in commands {
        if !run::command(*line, cmd.clone(), env, &mut out)? {
            out.report.exited = true;
            break;
        }
    }
    Ok(report)
}
