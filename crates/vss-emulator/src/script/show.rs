//! What the listing commands print, in diskshadow's layout: `list shadows`,
//! `list providers`, `list writers`, `set` and `add` alone.

use vss::{VolumeSnapshotAttributes as Attr, VssId};

use crate::writer::BackupType;

use super::parse::WriterDetail;
use super::{Environment, Out, ScriptError, ScriptErrorKind};

/// `set` alone.
pub(super) fn settings(env: &Environment, out: &mut Out<'_>) {
    let ctx = env.context();
    out.line(format!(
        "-> context: {}{} ({ctx}, 0x{:X})",
        env.kind.word(),
        if env.no_writers { " nowriters" } else { "" },
        ctx.0
    ));
    let mut opts = Vec::new();
    for (bit, word) in [
        (Attr::DIFFERENTIAL, "differential"),
        (Attr::PLEX, "plex"),
        (Attr::TRANSPORTABLE, "transportable"),
        (Attr::ROLLBACK_RECOVERY, "rollbackrecover"),
        (Attr::TXF_RECOVERY, "txfrecover"),
        (Attr::NO_AUTORECOVERY, "noautorecover"),
    ] {
        if env.options.contains(bit) {
            opts.push(word);
        }
    }
    out.line(format!(
        "-> option: {}",
        if opts.is_empty() {
            "(none)".to_string()
        } else {
            opts.join(" ")
        }
    ));
    out.line(format!(
        "-> metadata: {}",
        env.metadata
            .as_ref()
            .map_or_else(|| "(none)".to_string(), |p| p.display().to_string())
    ));
    out.line(format!(
        "-> verbose: {}",
        if env.verbose { "on" } else { "off" }
    ));
    out.line(format!("-> type: {}", backup_type_word(env.backup_type)));
}

/// `full` or `copy`, as `set type` takes it.
pub(super) fn backup_type_word(t: BackupType) -> &'static str {
    match t {
        BackupType::Full => "full",
        BackupType::Copy => "copy",
    }
}

/// `add` alone: the volumes of the set being built, then the aliases.
pub(super) fn added(env: &Environment, out: &mut Out<'_>) {
    for (i, (v, id)) in env.added.iter().enumerate() {
        out.line(format!("{}: {v} {{{id}}}", i + 1));
    }
    out.line(format!("{} volumes in the set.", env.added.len()));
    for (a, id) in &env.aliases {
        out.line(format!("Alias {a} = {{{id}}}"));
    }
}

/// `m/d/yyyy h:mm:ss AM|PM` (UTC), as diskshadow prints creation times.
fn creation_time(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let (h, min, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let (h12, ampm) = match h {
        0 => (12, "AM"),
        1..=11 => (h, "AM"),
        12 => (12, "PM"),
        _ => (h - 12, "PM"),
    };
    format!("{m}/{d}/{y} {h12}:{min:02}:{s:02} {ampm}")
}

/// diskshadow's attribute words.
fn attribute_words(a: u32) -> String {
    let a = Attr::from_bits_retain(a);
    let mut w = Vec::new();
    for (bit, word) in [
        (Attr::NO_AUTO_RELEASE, "No_Auto_Release"),
        (Attr::PERSISTENT, "Persistent"),
        (Attr::NO_WRITERS, "No_Writers"),
        (Attr::CLIENT_ACCESSIBLE, "Client_accessible"),
        (Attr::HARDWARE_ASSISTED, "Hardware"),
        (Attr::TRANSPORTABLE, "Transportable"),
        (Attr::DIFFERENTIAL, "Differential"),
        (Attr::PLEX, "Plex"),
        (Attr::IMPORTED, "Imported"),
        (Attr::EXPOSED_LOCALLY, "Exposed_locally"),
        (Attr::AUTORECOVER, "Auto_recovered"),
    ] {
        if a.contains(bit) {
            w.push(word);
        }
    }
    if !a.contains(Attr::NO_AUTO_RELEASE) {
        w.insert(0, "Auto_Release");
    }
    w.join(" ")
}

/// The name the session gave a shadow copy or set (`%VSS_SHADOW_1%`, an alias), if any.
fn var_for(env: &Environment, id: VssId, set: bool) -> Option<String> {
    let want = format!("{{{id}}}");
    env.vars
        .iter()
        .filter(|(k, v)| **v == want && (k.as_str() == "vss_shadow_set") == set)
        .map(|(k, _)| format!("%{}%", k.to_ascii_uppercase()))
        .next()
}

/// `list shadows [all | set <id> | id <id>]`, in diskshadow's block layout.
pub(super) fn shadows(env: &Environment, filter: Option<(bool, VssId)>, out: &mut Out<'_>) {
    let host = env.coordinator.host();
    out.line("Querying all shadow copies on the computer ...");
    let q: Vec<_> = env
        .coordinator
        .query()
        .into_iter()
        .filter(|p| match filter {
            None => true,
            Some((true, id)) => p.snapshot_set_id == id,
            Some((false, id)) => p.snapshot_id == id,
        })
        .collect();
    for p in &q {
        out.line("");
        let tag = |v: Option<String>| v.map(|v| format!("\t\t{v}")).unwrap_or_default();
        out.line(format!(
            "\t* Shadow copy ID = {{{}}}{}",
            p.snapshot_id,
            tag(var_for(env, p.snapshot_id, false))
        ));
        out.line(format!(
            "\t\t- Shadow copy set: {{{}}}{}",
            p.snapshot_set_id,
            tag(var_for(env, p.snapshot_set_id, true))
        ));
        out.line(format!(
            "\t\t- Original count of shadow copies = {}",
            p.snapshots_count
        ));
        let original = match host.volume(&p.original_volume) {
            Ok(v) if v.name == p.original_volume => {
                format!("{} [{}\\]", v.guid_path(), p.original_volume)
            }
            _ => format!("{}\\", p.original_volume),
        };
        out.line(format!("\t\t- Original volume name: {original}"));
        out.line(format!("\t\t- Creation time: {}", creation_time(p.created)));
        out.line(format!(
            "\t\t- Shadow copy device name: {}",
            p.snapshot_device.as_deref().unwrap_or("(not surfaced)")
        ));
        out.line(format!(
            "\t\t- Originating machine: {}",
            p.originating_machine
        ));
        out.line(format!("\t\t- Service machine: {}", host.name()));
        match &p.exposed_name {
            Some(n) => out.line(format!("\t\t- Exposed locally as: {n}")),
            None => out.line("\t\t- Not exposed"),
        }
        out.line(format!("\t\t- Provider ID: {{{}}}", p.provider_id));
        out.line(format!(
            "\t\t- Attributes:  {}",
            attribute_words(p.attributes)
        ));
    }
    out.line("");
    out.line(format!("Number of shadow copies listed: {}", q.len()));
}

/// `list providers`.
pub(super) fn providers(env: &Environment, out: &mut Out<'_>) {
    out.line("Listing shadow copy providers ...");
    let ps = env.coordinator.providers();
    for p in &ps {
        out.line("");
        out.line(format!("\t* ProviderID: {{{}}}", p.id));
        out.line("\t\tType: [3] VSS_PROV_HARDWARE");
        out.line(format!("\t\tName: {}", p.name));
        out.line(format!("\t\tVersion: {}", p.version));
    }
    out.line("");
    out.line(format!("Number of providers registered: {}", ps.len()));
}

/// `list writers [metadata | detailed | status]`.
pub(super) fn writers(env: &Environment, detail: WriterDetail, out: &mut Out<'_>) {
    let ws = env.coordinator.writer_info();
    out.line("Listing writer status ...");
    for w in &ws {
        out.line("");
        out.line(format!("\t* WRITER \"{}\"", w.name));
        out.line(format!("\t\t- Writer ID   = {{{}}}", w.id));
        out.line(format!("\t\t- Writer instance ID = {{{}}}", w.instance_id));
        if detail != WriterDetail::Brief {
            out.line(format!("\t\t- State: {}", w.state));
            out.line(format!(
                "\t\t- Last error: {}",
                w.last_error.as_deref().unwrap_or("No error")
            ));
            if let Some(b) = &w.last_backup {
                out.line(format!("\t\t- Last backup complete: {b}"));
            }
        }
        if matches!(detail, WriterDetail::Metadata | WriterDetail::Detailed) {
            for c in &w.components {
                out.line(format!("\t\t+ Component \"{}\"", c.name));
                if detail == WriterDetail::Detailed {
                    for f in &c.files {
                        out.line(format!("\t\t\t- File: {f}"));
                    }
                }
                out.line(format!(
                    "\t\t\t- Volumes affected by this component: {}",
                    c.volumes.join(" ")
                ));
            }
        }
    }
    out.line("");
    out.line(format!("Number of writers listed: {}", ws.len()));
}

/// A `writer verify|exclude` argument must name a writer on this host (by name or id).
pub(super) fn known_writer(env: &Environment, line: usize, w: &str) -> Result<(), ScriptError> {
    let ws = env.coordinator.writer_info();
    let id = uuid::Uuid::parse_str(w.trim_matches(['{', '}'])).ok();
    if ws
        .iter()
        .any(|x| x.name.eq_ignore_ascii_case(w) || Some(x.id) == id)
    {
        return Ok(());
    }
    Err(ScriptError {
        line,
        kind: ScriptErrorKind::Vss(crate::coordinator::VssError::Refused {
            code: vss::Hresult::VSS_E_OBJECT_NOT_FOUND,
            reason: format!("no writer {w} on this host"),
        }),
    })
}
