//! The administrator's verbs: LUNs, hosts, mappings, and every set on the array.

use std::collections::BTreeMap;

use api::{
    CreateHost, CreateLun, CreatedHost, HostLun, HostRecord, LunRecord, MapLun, SetMember,
    SetRecord, SetState, UpdateLun,
};
use storage::{BackendError, LOGICAL_BLOCK_SIZE};

use super::auth::{new_token, token_hash};
use super::rows::{Db, HostRow, LunRow, LunState, Record, is_lun_id, lun_id};
use super::{Array, MAX_LUN_NUMBER};
use crate::error::ArrayError;

pub(super) fn valid_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// An iSCSI name as RFC 7143 §4.2.7 defines it, at most 223 bytes: `iqn.` + a year and
/// month (`yyyy-mm`) + `.` + a reversed domain name, then optionally `:` and any string;
/// `eui.` + 16 hex digits; `naa.` + 16 or 32 hex digits.
pub fn valid_iqn(s: &str) -> bool {
    iscsi_name_problem(s).is_none()
}

/// What is wrong with `s` as an iSCSI name, in an administrator's words; None if nothing.
pub fn iscsi_name_problem(s: &str) -> Option<String> {
    let hex = |t: &str, lens: &[usize]| {
        lens.contains(&t.len()) && t.bytes().all(|b| b.is_ascii_hexdigit())
    };
    if s.len() > 223 {
        return Some("is longer than 223 bytes".into());
    }
    if let Some(t) = s.strip_prefix("eui.") {
        return (!hex(t, &[16])).then(|| "needs 16 hex digits after eui.".into());
    }
    if let Some(t) = s.strip_prefix("naa.") {
        return (!hex(t, &[16, 32])).then(|| "needs 16 or 32 hex digits after naa.".into());
    }
    let Some(t) = s.strip_prefix("iqn.") else {
        return Some("does not start with iqn., eui. or naa.".into());
    };
    let ok_chars = |t: &str| {
        t.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b".-:".contains(&b))
    };
    if !ok_chars(t) {
        return Some(
            "may hold only lower-case letters, digits, '.', '-' and ':' (iSCSI names are \
             lower case)"
                .into(),
        );
    }
    let (date, rest) = (t.get(..7), t.get(7..));
    let good_date = date.is_some_and(|d| {
        let b = d.as_bytes();
        b[..4].iter().all(u8::is_ascii_digit)
            && b[4] == b'-'
            && b[5..].iter().all(u8::is_ascii_digit)
            && (1..=12).contains(&d[5..].parse::<u8>().unwrap_or(0))
    });
    if !good_date {
        return Some(
            "needs the year and month the naming authority got its domain \
             (yyyy-mm), as in iqn.1991-05.com.microsoft:host"
                .into(),
        );
    }
    let domain = rest
        .and_then(|r| r.strip_prefix('.'))
        .map(|r| r.split(':').next().unwrap_or(""))
        .unwrap_or("");
    if domain.is_empty()
        || domain
            .split('.')
            .any(|l| l.is_empty() || l.starts_with('-'))
    {
        return Some(
            "needs a reversed domain name after the date, as in \
             iqn.1991-05.com.microsoft:host"
                .into(),
        );
    }
    None
}

/// Checks a host's initiator names: each a valid iSCSI name, none twice.
pub(super) fn check_initiators(initiators: &[String]) -> Result<(), ArrayError> {
    for (i, name) in initiators.iter().enumerate() {
        if let Some(why) = iscsi_name_problem(name) {
            return Err(ArrayError::BadRequest(format!(
                "Initiator name {name:?} {why}."
            )));
        }
        if initiators[..i].contains(name) {
            return Err(ArrayError::BadRequest(format!(
                "Initiator name {name} is listed twice."
            )));
        }
    }
    Ok(())
}

impl Array {
    fn lun_record(&self, db: &Db, row: &LunRow) -> LunRecord {
        let ident = row.identity();
        let volume = self.0.backend.volume(&row.id);
        LunRecord {
            id: row.id.clone(),
            name: row.name.clone(),
            size_bytes: row.size_bytes,
            serial: ident.serial.clone(),
            naa: hex::encode(&ident.designators[0].value),
            snapshot_of: row.snapshot_of.clone(),
            mapped_to: db.mappings_of(&row.id),
            allocated_bytes: volume.as_ref().map_or(0, |v| v.allocated_bytes),
            plex: self.plex_status(row),
            volume_missing: matches!(volume, Err(BackendError::NoVolume(_))),
        }
    }

    fn check_size(&self, size: u64) -> Result<(), ArrayError> {
        let unit = self
            .0
            .backend
            .size_granularity()
            .max(LOGICAL_BLOCK_SIZE as u64);
        let max = self.0.policy.max_lun_bytes;
        let human = api::human_size;
        if size == 0 {
            return Err(ArrayError::BadRequest(
                "A LUN cannot be empty; give a size such as 10GiB.".into(),
            ));
        }
        if size > max {
            return Err(ArrayError::BadRequest(format!(
                "{} is larger than this array's largest LUN, {}; give a smaller size (or \
                 raise max_lun_bytes in the array's configuration).",
                human(size),
                human(max)
            )));
        }
        if size % unit != 0 {
            return Err(ArrayError::BadRequest(format!(
                "{} is not a whole number of {} units; give a multiple of {}, such as {}.",
                human(size),
                human(unit),
                human(unit),
                human(size.div_ceil(unit) * unit)
            )));
        }
        Ok(())
    }

    /// Checks a new name for a LUN: well formed, not of the form of a LUN id (names and ids
    /// both name LUNs, so `lun-7` must always mean LUN 7), and not taken by another LUN.
    fn check_lun_name(db: &Db, name: &str, this: Option<&str>) -> Result<(), ArrayError> {
        if !valid_name(name) {
            return Err(ArrayError::BadRequest(format!(
                "LUN name {name:?} must be 1-64 characters of A-Z a-z 0-9 . _ -."
            )));
        }
        if is_lun_id(name) && Some(name) != this {
            return Err(ArrayError::BadRequest(format!(
                "{name} has the form of a LUN id (lun-N), which names LUN number N; pick a \
                 name of another form."
            )));
        }
        if let Some(other) = db
            .luns
            .values()
            .find(|l| l.name == name && Some(l.id.as_str()) != this)
        {
            return Err(ArrayError::Conflict(format!(
                "LUN {} is named {name} already; pick another name (names are unique).",
                other.id
            )));
        }
        Ok(())
    }

    /// Creates an original LUN: a new number (never reused), its volume, then its row.
    /// Names are unique; the size is a non-zero multiple of the engine's granularity.
    pub fn create_lun(&self, req: &CreateLun) -> Result<LunRecord, ArrayError> {
        self.check_size(req.size_bytes)?;
        let mut inner = self.lock();
        Self::check_lun_name(&inner.db, &req.name, None)?;
        let n = inner.db.next_number + 1;
        self.check_number(n)?;
        let id = lun_id(n);
        self.0.backend.create_volume(&id, req.size_bytes)?;
        let row = LunRow {
            id: id.clone(),
            number: n,
            name: req.name.clone(),
            size_bytes: req.size_bytes,
            snapshot_of: None,
            owner: None,
            state: LunState::Online,
            created_at: self.now(),
            array_id: self.0.policy.array_id,
            plex: None,
        };
        let next_job = inner.db.next_job;
        if let Err(e) = Self::write(
            &mut inner,
            vec![
                Record::Counters {
                    next_number: n,
                    next_job,
                },
                Record::Lun(row.clone()),
            ],
        ) {
            let _ = self.0.backend.delete_volume(&id);
            return Err(e);
        }
        tracing::info!(lun = %id, name = %req.name, size = req.size_bytes, "LUN created");
        Ok(self.lun_record(&inner.db, &row))
    }

    /// The LUN an administrator names, by id (`lun-7`) or by name (`sql-data`); a reserved
    /// snapshot LUN is not found.
    pub(super) fn get_row<'a>(db: &'a Db, lun: &str) -> Result<&'a LunRow, ArrayError> {
        db.resolve(lun).ok_or_else(|| {
            ArrayError::NotFound(format!(
                "There is no LUN {lun} (by id or by name); `shadowlun lun list` lists them."
            ))
        })
    }

    /// Every LUN (or only snapshot LUNs), reserved snapshot LUNs excluded, by number.
    pub fn list_luns(&self, snapshots_only: bool) -> Vec<LunRecord> {
        let inner = self.lock();
        let mut rows: Vec<&LunRow> = inner
            .db
            .luns
            .values()
            .filter(|l| l.state != LunState::Prepared)
            .filter(|l| !snapshots_only || l.snapshot_of.is_some())
            .collect();
        rows.sort_by_key(|l| l.number);
        rows.into_iter()
            .map(|l| self.lun_record(&inner.db, l))
            .collect()
    }

    /// One LUN, by id or name; a reserved snapshot LUN is 404.
    pub fn get_lun(&self, lun: &str) -> Result<LunRecord, ArrayError> {
        let inner = self.lock();
        let row = Self::get_row(&inner.db, lun)?;
        Ok(self.lun_record(&inner.db, row))
    }

    /// Grows a LUN (LUNs never shrink); initiators hear that its capacity changed.
    pub fn resize_lun(&self, lun: &str, size: u64) -> Result<LunRecord, ArrayError> {
        self.update_lun(
            lun,
            &UpdateLun {
                size_bytes: Some(size),
                name: None,
            },
        )
    }

    /// Grows a LUN, renames it, or both, as one change. Neither touches its identity, its
    /// number or its mappings: hosts keep their sessions and see the same disk (a grown one
    /// hears CAPACITY DATA HAS CHANGED).
    pub fn update_lun(&self, lun: &str, req: &UpdateLun) -> Result<LunRecord, ArrayError> {
        if req.size_bytes.is_none() && req.name.is_none() {
            return Err(ArrayError::BadRequest(
                "Say what to change: a new size, a new name, or both.".into(),
            ));
        }
        if let Some(size) = req.size_bytes {
            self.check_size(size)?;
        }
        let mut inner = self.lock();
        let mut row = Self::get_row(&inner.db, lun)?.clone();
        let id = row.id.clone();
        if let Some(name) = &req.name {
            Self::check_lun_name(&inner.db, name, Some(&id))?;
        }
        let grow = match req.size_bytes {
            Some(size) if size < row.size_bytes => {
                return Err(ArrayError::BadRequest(format!(
                    "LUN {id} is {} and LUNs only grow; give a size larger than that.",
                    api::human_size(row.size_bytes)
                )));
            }
            Some(size) => (size != row.size_bytes).then_some(size),
            None => None,
        };
        let rename = req.name.clone().filter(|n| *n != row.name);
        if grow.is_none() && rename.is_none() {
            return Ok(self.lun_record(&inner.db, &row));
        }
        if let Some(size) = grow {
            self.0.backend.resize_volume(&id, size)?;
            row.size_bytes = size;
        }
        let old_name = row.name.clone();
        if let Some(name) = &rename {
            row.name = name.clone();
        }
        Self::write(&mut inner, vec![Record::Lun(row.clone())])?;
        if let Some(size) = grow {
            self.0.exporter.resized(&id);
            tracing::info!(lun = %id, size, "LUN grown");
        }
        if let Some(name) = rename {
            tracing::info!(lun = %id, from = %old_name, to = %name, "LUN renamed");
        }
        Ok(self.lun_record(&inner.db, &row))
    }

    /// Deletes an original LUN with no snapshot LUNs and no mapping (409 otherwise).
    pub fn delete_lun(&self, lun: &str) -> Result<(), ArrayError> {
        let mut inner = self.lock();
        let row = Self::get_row(&inner.db, lun)?.clone();
        let lun = row.id.as_str();
        let deps = inner.db.dependants(lun);
        let copying: Vec<String> = deps
            .iter()
            .filter_map(|d| {
                let st = self.plex_status(&inner.db.luns[d])?;
                Some(format!("{d} ({}%)", st.progress))
            })
            .collect();
        if !copying.is_empty() && copying.len() == deps.len() {
            return Err(ArrayError::Conflict(format!(
                "LUN {lun} is being copied into plex snapshot LUN(s) {}; delete it once they \
                 are independent (shadowlun snapshot list shows the progress).",
                copying.join(", ")
            )));
        }
        if !deps.is_empty() {
            return Err(ArrayError::Conflict(format!(
                "LUN {lun} has {} snapshot LUN(s): {}; delete them first (shadowlun snapshot \
                 delete LUN), then delete LUN {lun}.",
                deps.len(),
                deps.join(", ")
            )));
        }
        if row.snapshot_of.is_some() {
            return Err(ArrayError::Conflict(format!(
                "LUN {lun} is a snapshot LUN; delete it with `shadowlun snapshot delete {lun}`."
            )));
        }
        let maps = inner.db.mappings_of(lun);
        if !maps.is_empty() {
            let hosts: Vec<&str> = maps.iter().map(|m| m.host.as_str()).collect();
            return Err(ArrayError::Conflict(format!(
                "LUN {lun} is mapped to host(s) {}; unmap it from each first (shadowlun host \
                 unmap HOST {lun}).",
                hosts.join(", ")
            )));
        }
        match self.0.backend.delete_volume(lun) {
            Ok(()) | Err(BackendError::NoVolume(_)) => {}
            Err(e) => return Err(e.into()),
        }
        Self::write(&mut inner, vec![Record::LunGone { id: lun.into() }])?;
        tracing::info!(lun, "LUN deleted");
        Ok(())
    }

    /// Deletes a snapshot LUN with no snapshot LUNs taken of it, mapped or not.
    pub fn delete_snapshot(&self, lun: &str) -> Result<(), ArrayError> {
        let mut inner = self.lock();
        let row = Self::get_row(&inner.db, lun)?;
        let lun = row.id.clone();
        if row.snapshot_of.is_none() {
            return Err(ArrayError::Conflict(format!(
                "LUN {lun} is an original LUN, not a snapshot LUN; delete it with `shadowlun \
                 lun delete {lun}`."
            )));
        }
        let deps = inner.db.dependants(&lun);
        if !deps.is_empty() {
            return Err(ArrayError::Conflict(format!(
                "Snapshot LUN(s) {} were taken of LUN {lun}; delete them first.",
                deps.join(", ")
            )));
        }
        self.remove_snapshot_lun(&mut inner, &lun)?;
        tracing::info!(lun, "snapshot LUN deleted by admin");
        Ok(())
    }

    pub(super) fn host_record(h: &HostRow) -> HostRecord {
        HostRecord {
            name: h.name.clone(),
            initiators: h.initiators.clone(),
            chap: h.chap_secret.is_some(),
            import_from: h.import_from.clone(),
            luns: h
                .luns
                .iter()
                .map(|(n, l)| HostLun {
                    lun: l.clone(),
                    lun_number: *n,
                })
                .collect(),
        }
    }

    /// Creates a host with its initiators (each belongs to one host), optional CHAP secret
    /// and import grants; answers its API token, which only its hash is kept of.
    pub fn create_host(&self, req: &CreateHost) -> Result<CreatedHost, ArrayError> {
        if !valid_name(&req.name) {
            return Err(ArrayError::BadRequest(format!(
                "Host name {:?} must be 1-64 characters of A-Z a-z 0-9 . _ -.",
                req.name
            )));
        }
        if req.initiators.is_empty() {
            return Err(ArrayError::BadRequest(
                "A host needs at least one initiator name.".into(),
            ));
        }
        check_initiators(&req.initiators)?;
        if let Some(bad) = req
            .import_from
            .iter()
            .find(|h| !valid_name(h) || **h == req.name)
        {
            return Err(ArrayError::BadRequest(format!(
                "A host cannot import from {bad:?}: that is not another host's name."
            )));
        }
        if let Some(s) = &req.chap_secret {
            super::host_changes::check_chap_secret(s)?;
        }
        let mut inner = self.lock();
        if let Some(missing) = req
            .import_from
            .iter()
            .find(|h| !inner.db.hosts.contains_key(*h))
        {
            return Err(ArrayError::NotFound(format!(
                "Host {missing}, named to import from, does not exist; add it first (shadowlun \
                 host add {missing} ...)."
            )));
        }
        if inner.db.hosts.contains_key(&req.name) {
            return Err(ArrayError::Conflict(format!(
                "Host {} exists; delete it first or pick another name.",
                req.name
            )));
        }
        for h in inner.db.hosts.values() {
            if let Some(i) = h.initiators.iter().find(|i| req.initiators.contains(i)) {
                return Err(ArrayError::Conflict(format!(
                    "Initiator {i} belongs to host {}; an initiator has one host.",
                    h.name
                )));
            }
        }
        let token = new_token()?;
        let row = HostRow {
            name: req.name.clone(),
            initiators: req.initiators.clone(),
            chap_secret: req.chap_secret.clone(),
            token_sha256: token_hash(&token),
            luns: BTreeMap::new(),
            import_from: req.import_from.clone(),
        };
        Self::write(&mut inner, vec![Record::Host(row.clone())])?;
        for i in &row.initiators {
            self.0.exporter.set_chap(i, row.chap_secret.as_deref());
        }
        tracing::info!(host = %row.name, "host created");
        Ok(CreatedHost {
            host: Self::host_record(&row),
            token,
        })
    }

    /// Every host, names in natural order (`node-2` before `node-10`).
    pub fn list_hosts(&self) -> Vec<HostRecord> {
        let mut v: Vec<HostRecord> = self
            .lock()
            .db
            .hosts
            .values()
            .map(Self::host_record)
            .collect();
        v.sort_by(|a, b| api::natural_cmp(&a.name, &b.name));
        v
    }

    pub(super) fn host_row(db: &Db, name: &str) -> Result<HostRow, ArrayError> {
        db.hosts
            .get(name)
            .cloned()
            .ok_or_else(|| ArrayError::NotFound(format!("Host {name} does not exist.")))
    }

    /// One host.
    pub fn get_host(&self, name: &str) -> Result<HostRecord, ArrayError> {
        Ok(Self::host_record(&Self::host_row(&self.lock().db, name)?))
    }

    /// Deletes a host: its initiators may not log in any more (their sessions end) and the
    /// grants that name it
    /// go from the other hosts (a later host of the same name inherits nothing). A host with
    /// LUNs mapped is refused unless `force`, which unmaps them.
    pub fn delete_host(&self, name: &str, force: bool) -> Result<(), ArrayError> {
        let mut inner = self.lock();
        let h = Self::host_row(&inner.db, name)?;
        if !h.luns.is_empty() && !force {
            let luns: Vec<&str> = h.luns.values().map(String::as_str).collect();
            return Err(ArrayError::Conflict(format!(
                "Host {name} has LUN(s) {} mapped; unmap them first, or remove it with --force \
                 (its initiators lose those LUNs at once).",
                luns.join(", ")
            )));
        }
        let mut records = vec![Record::HostGone {
            name: name.to_string(),
        }];
        for other in inner.db.hosts.values() {
            if other.import_from.iter().any(|g| g == name) {
                let mut o = other.clone();
                o.import_from.retain(|g| g != name);
                records.push(Record::Host(o));
            }
        }
        Self::write(&mut inner, records)?;
        for n in h.luns.keys() {
            self.unexport(&h.initiators, *n);
        }
        for i in &h.initiators {
            self.0.exporter.forget_initiator(i);
        }
        tracing::info!(host = name, "host deleted");
        Ok(())
    }

    /// Maps a LUN to a host at the given or lowest free number; mapping it again at the same
    /// number is a no-op, at another 409.
    pub fn map_lun(&self, host: &str, req: &MapLun) -> Result<HostRecord, ArrayError> {
        let mut inner = self.lock();
        let mut h = Self::host_row(&inner.db, host)?;
        let req = &MapLun {
            lun: Self::get_row(&inner.db, &req.lun)?.id.clone(),
            ..req.clone()
        };
        if let Some(n) = req.lun_number {
            if n >= MAX_LUN_NUMBER {
                return Err(ArrayError::BadRequest(format!(
                    "LUN number {n} is out of range: hosts see LUN numbers 0 to {}; pick one \
                     in that range or leave it out for the lowest free one.",
                    MAX_LUN_NUMBER - 1
                )));
            }
        }
        if let Some((n, _)) = h.luns.iter().find(|(_, l)| **l == req.lun) {
            if req.lun_number.is_none_or(|want| want == *n) {
                return Ok(Self::host_record(&h));
            }
            return Err(ArrayError::Conflict(format!(
                "LUN {} is mapped to host {host} as number {n}; unmap it first.",
                req.lun
            )));
        }
        let others: Vec<String> = inner
            .db
            .mappings_of(&req.lun)
            .into_iter()
            .map(|m| m.host)
            .filter(|o| o != host)
            .collect();
        if !others.is_empty() && !req.shared {
            return Err(ArrayError::Conflict(format!(
                "LUN {} is mapped to host(s) {} already; two hosts writing one LUN corrupt it \
                 unless they run a cluster. Map it with --shared if they do.",
                req.lun,
                others.join(", ")
            )));
        }
        let n = match req.lun_number {
            Some(n) if h.luns.contains_key(&n) => {
                return Err(ArrayError::Conflict(format!(
                    "Host {host} already has LUN number {n}; pick a free number."
                )));
            }
            Some(n) => n,
            None => (0u64..MAX_LUN_NUMBER)
                .find(|n| !h.luns.contains_key(n))
                .ok_or_else(|| {
                    ArrayError::LimitReached(format!("Host {host} has no free LUN number."))
                })?,
        };
        h.luns.insert(n, req.lun.clone());
        let mut records = vec![Record::Host(h.clone())];
        let row = &inner.db.luns[&req.lun];
        if row.snapshot_of.is_some() && row.state != LunState::Exposed {
            let mut r = row.clone();
            r.state = LunState::Exposed;
            records.push(Record::Lun(r));
        }
        Self::write(&mut inner, records)?;
        self.export(&inner.db, &h.initiators, n, &req.lun);
        tracing::info!(host, lun = %req.lun, number = n, "LUN mapped");
        Ok(Self::host_record(&h))
    }

    /// Unmaps a LUN from a host (404 if it is not mapped there).
    pub fn unmap_lun(&self, host: &str, lun: &str) -> Result<(), ArrayError> {
        let mut inner = self.lock();
        let mut h = Self::host_row(&inner.db, host)?;
        let lun = Self::get_row(&inner.db, lun)?.id.clone();
        let lun = lun.as_str();
        let nums: Vec<u64> = h
            .luns
            .iter()
            .filter(|(_, l)| l.as_str() == lun)
            .map(|(n, _)| *n)
            .collect();
        if nums.is_empty() {
            return Err(ArrayError::NotFound(format!(
                "LUN {lun} is not mapped to host {host}."
            )));
        }
        for n in &nums {
            h.luns.remove(n);
        }
        Self::write(&mut inner, vec![Record::Host(h.clone())])?;
        for n in nums {
            self.unexport(&h.initiators, n);
        }
        tracing::info!(host, lun, "LUN unmapped");
        Ok(())
    }

    /// Every snapshot set of every host, oldest first.
    pub fn admin_sets(&self) -> Vec<SetRecord> {
        let inner = self.lock();
        let mut v: Vec<SetRecord> = inner
            .db
            .sets
            .values()
            .map(|s| SetRecord {
                set_id: s.set_id,
                host: s.host.clone(),
                state: s.state,
                context: s.context,
                snapshots: s
                    .members
                    .iter()
                    .map(|m| SetMember {
                        snapshot_id: m.snapshot_id,
                        source: m.source.clone(),
                        lun: m.lun.clone(),
                        deleted: !inner.db.luns.contains_key(&m.lun),
                    })
                    .collect(),
                created_at: s.created_at,
                updated_at: s.updated_at,
                imported_at: s.imported_at,
                reserved_bytes: match s.state {
                    SetState::Prepared => s.reserved_bytes.unwrap_or(0),
                    _ => 0,
                },
            })
            .collect();
        v.sort_by_key(|s| (s.created_at, s.set_id));
        v
    }
}
