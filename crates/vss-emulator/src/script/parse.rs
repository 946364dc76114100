//! The diskshadow grammar: one command per line, the whole script parsed before anything runs.

use vss::{RecoveryOptions, VolumeSnapshotAttributes as Attr};

use super::{ScriptError, ScriptErrorKind};
use crate::writer::BackupType;

/// `set context`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContextKind {
    Persistent,
    Volatile,
    /// Accepted as diskshadow accepts it; only the system provider makes such copies, so
    /// the first `add volume` fails with `VSS_E_VOLUME_NOT_SUPPORTED`.
    ClientAccessible,
}

/// `delete shadows` targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteWhat {
    All,
    Volume(String),
    Oldest(String),
    Set(String),
    Id(String),
    /// A drive letter or mount point a shadow copy is exposed at.
    Exposed(String),
}

/// `list shadows` filters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListWhat {
    All,
    Set(String),
    Id(String),
}

/// How much `list writers` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriterDetail {
    Brief,
    Metadata,
    Detailed,
    Status,
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
    /// `set type {full|copy}` (shadowlun's addition: diskshadow's backups are full): the
    /// backup type writers are told; a full backup lets them truncate their logs.
    SetType(BackupType),
    /// `set` alone: the current settings.
    SetShow,
    BeginBackup,
    EndBackup,
    BeginRestore,
    EndRestore,
    AddVolume {
        volume: String,
        provider: Option<String>,
        alias: Option<String>,
    },
    /// `add alias <name> <value>`.
    AddAlias {
        name: String,
        value: String,
    },
    /// `add` alone: the volumes of the set being built and the aliases.
    AddShow,
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
    /// `revert <shadow id>`: hardware shadow copies cannot be reverted (`E_NOTIMPL`).
    Revert(String),
    /// `expose <shadow id> <drive letter or mount point>`.
    Expose {
        id: String,
        at: String,
    },
    /// `unexpose <drive letter or mount point>`.
    Unexpose(String),
    /// `exec <program> [args…]`: runs a Linux program with the script's variables in its
    /// environment; a non-zero exit stops the script.
    Exec(Vec<String>),
    Reset,
    Exit,
    ListShadows(ListWhat),
    ListProviders,
    ListWriters(WriterDetail),
    WriterVerify(String),
    WriterExclude(String),
}

pub(super) fn syntax(line: usize, expected: &str, found: Option<&str>) -> ScriptError {
    ScriptError {
        line,
        kind: ScriptErrorKind::Syntax {
            expected: expected.to_string(),
            found: found.map_or_else(|| "end of line".to_string(), |f| format!("`{f}`")),
        },
    }
}

fn unsupported(line: usize, m: &str) -> ScriptError {
    ScriptError {
        line,
        kind: ScriptErrorKind::Unsupported(m.to_string()),
    }
}

fn parse_set(line: usize, words: &[&str], lower: &[String]) -> Result<Command, ScriptError> {
    let w = |i: usize| lower.get(i).map(String::as_str);
    let raw = |i: usize| words.get(i).copied();
    let end = |i: usize, c: Command| -> Result<Command, ScriptError> {
        match raw(i) {
            None => Ok(c),
            Some(x) => Err(syntax(line, "end of line", Some(x))),
        }
    };
    match w(1) {
        None => Ok(Command::SetShow),
        Some("context") => {
            let kind = match w(2) {
                Some("persistent") => ContextKind::Persistent,
                Some("volatile") => ContextKind::Volatile,
                Some("clientaccessible") => ContextKind::ClientAccessible,
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
                Some("nowriters") if kind != ContextKind::ClientAccessible => end(
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
                return Err(unsupported(
                    line,
                    "`differential` and `plex` exclude each other",
                ));
            }
            if a.contains(Attr::NO_AUTORECOVERY) && a.contains(Attr::AUTORECOVER) {
                return Err(unsupported(
                    line,
                    "`noautorecover` excludes `rollbackrecover` and `txfrecover`",
                ));
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
        Some("type") => match w(2) {
            Some("full") => end(3, Command::SetType(BackupType::Full)),
            Some("copy") => end(3, Command::SetType(BackupType::Copy)),
            _ => Err(syntax(line, "`full` or `copy`", raw(2))),
        },
        _ => Err(syntax(
            line,
            "`context`, `option`, `type`, `metadata`, `verbose` or end of line",
            raw(1),
        )),
    }
}

fn parse_add(line: usize, words: &[&str], lower: &[String]) -> Result<Command, ScriptError> {
    let w = |i: usize| lower.get(i).map(String::as_str);
    let raw = |i: usize| words.get(i).copied();
    let end = |i: usize, c: Command| -> Result<Command, ScriptError> {
        match raw(i) {
            None => Ok(c),
            Some(x) => Err(syntax(line, "end of line", Some(x))),
        }
    };
    match w(1) {
        None => Ok(Command::AddShow),
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
        Some("alias") => match (raw(2), raw(3)) {
            (Some(n), Some(v)) => end(
                4,
                Command::AddAlias {
                    name: n.to_string(),
                    value: v.to_string(),
                },
            ),
            (Some(_), None) => Err(syntax(line, "a value for the alias", None)),
            (None, _) => Err(syntax(line, "an alias name", None)),
        },
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
        _ => Err(syntax(
            line,
            "`volume`, `alias`, `shadow` or end of line",
            raw(1),
        )),
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
    let one = |i: usize, what: &str, f: fn(String) -> Command| match raw(i) {
        Some(v) => end(i + 1, f(v.to_string())),
        None => Err(syntax(line, what, None)),
    };
    match w(0) {
        Some("set") => parse_set(line, words, &lower),
        Some("add") => parse_add(line, words, &lower),
        Some("begin") => match w(1) {
            Some("backup") => end(2, Command::BeginBackup),
            Some("restore") => end(2, Command::BeginRestore),
            _ => Err(syntax(line, "`backup` or `restore`", raw(1))),
        },
        Some("end") => match w(1) {
            Some("backup") => end(2, Command::EndBackup),
            Some("restore") => end(2, Command::EndRestore),
            _ => Err(syntax(line, "`backup` or `restore`", raw(1))),
        },
        Some("create") => end(1, Command::Create),
        Some("load") => match (w(1), raw(2)) {
            (Some("metadata"), Some(f)) => end(3, Command::LoadMetadata(f.to_string())),
            (Some("metadata"), None) => Err(syntax(line, "a file name", None)),
            _ => Err(syntax(line, "`metadata`", raw(1))),
        },
        Some("import") => end(1, Command::Import),
        Some("mask") => one(1, "a shadow copy set id", Command::Mask),
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
                    (Some("exposed"), Some(v)) => DeleteWhat::Exposed(v.to_string()),
                    (Some(k @ ("volume" | "oldest" | "set" | "id" | "exposed")), None) => {
                        return Err(syntax(line, &format!("a value after `{k}`"), None));
                    }
                    _ => {
                        return Err(syntax(
                            line,
                            "`all`, `volume`, `oldest`, `set`, `id` or `exposed`",
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
        Some("revert") => one(1, "a shadow copy id", Command::Revert),
        Some("expose") => match (raw(1), raw(2)) {
            (Some(id), Some(at)) => end(
                3,
                Command::Expose {
                    id: id.to_string(),
                    at: at.to_string(),
                },
            ),
            (Some(_), None) => Err(syntax(line, "a drive letter or mount point", None)),
            (None, _) => Err(syntax(line, "a shadow copy id", None)),
        },
        Some("unexpose") => one(1, "a drive letter or mount point", Command::Unexpose),
        Some("exec") => {
            if words.len() < 2 {
                return Err(syntax(line, "a program", None));
            }
            Ok(Command::Exec(
                words[1..].iter().map(|s| s.to_string()).collect(),
            ))
        }
        Some("reset") => end(1, Command::Reset),
        Some("exit") => end(1, Command::Exit),
        Some("writer") => match w(1) {
            Some("verify") => one(2, "a writer name or id", Command::WriterVerify),
            Some("exclude") => one(2, "a writer name or id", Command::WriterExclude),
            _ => Err(syntax(line, "`verify` or `exclude`", raw(1))),
        },
        Some("list") => match w(1) {
            Some("shadows") => match (w(2), raw(3)) {
                (None | Some("all"), _) => end(3, Command::ListShadows(ListWhat::All)),
                (Some("set"), Some(v)) => end(4, Command::ListShadows(ListWhat::Set(v.into()))),
                (Some("id"), Some(v)) => end(4, Command::ListShadows(ListWhat::Id(v.into()))),
                (Some(k @ ("set" | "id")), None) => {
                    Err(syntax(line, &format!("a value after `{k}`"), None))
                }
                _ => Err(syntax(line, "`all`, `set`, `id` or end of line", raw(2))),
            },
            Some("providers") => end(2, Command::ListProviders),
            Some("writers") => {
                let d = match w(2) {
                    None => WriterDetail::Brief,
                    Some("metadata") => WriterDetail::Metadata,
                    Some("detailed") => WriterDetail::Detailed,
                    Some("status") => WriterDetail::Status,
                    _ => {
                        return Err(syntax(
                            line,
                            "`metadata`, `detailed`, `status` or end of line",
                            raw(2),
                        ));
                    }
                };
                end(3, Command::ListWriters(d))
            }
            _ => Err(syntax(line, "`shadows`, `providers` or `writers`", raw(1))),
        },
        _ => Err(syntax(
            line,
            "a command (set, begin, end, add, create, load, import, mask, break, delete, resync, revert, expose, unexpose, exec, reset, exit, writer, list)",
            raw(0),
        )),
    }
}

/// Parses a whole script: `(line number, command)` pairs. Blank lines and lines starting
/// with `#` (or diskshadow's `REM`) are skipped. The first syntax error, with its line, is
/// the result: nothing of a script that does not parse runs.
pub fn parse(text: &str) -> Result<Vec<(usize, Command)>, ScriptError> {
    let mut out = Vec::new();
    for (i, l) in text.lines().enumerate() {
        let t = l.trim();
        let rem = t.get(..3).is_some_and(|p| p.eq_ignore_ascii_case("rem"))
            && t.get(3..)
                .is_some_and(|r| r.chars().next().is_none_or(char::is_whitespace));
        if t.is_empty() || t.starts_with('#') || rem {
            continue;
        }
        let words: Vec<&str> = t.split_whitespace().collect();
        out.push((i + 1, parse_line(i + 1, &words)?));
    }
    Ok(out)
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
        assert_eq!(
            parse("SET TYPE Copy").unwrap()[0].1,
            Command::SetType(BackupType::Copy)
        );
        let e = parse("set type incremental").unwrap_err();
        assert_eq!(
            e.to_string(),
            "line 1: expected `full` or `copy`, found `incremental`"
        );
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
