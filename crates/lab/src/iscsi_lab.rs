//! A lab whose hosts reach their disks over real iSCSI on 127.0.0.1: shadowlun's iSCSI target
//! serving `scsi` logical units with shadowlun identities, masked per initiator, and hosts using
//! [`IscsiStorage`]. The reference provider drives it through [`SanBackend`]. It stands in for
//! the array daemon until that can be started in-process.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use iscsi::{AuthPolicy, TargetConfig, TargetServer};
use provider::HardwareProvider;
use scsi::{LogicalUnit, LuIdentity, MemDevice};
use vss::VssId;
use vss::identity::LunIdentity;

use crate::reference::{REFERENCE_PROVIDER_ID, ReferenceProvider, SanBackend};
use crate::san::LunNumber;
use vss_emulator::conformance::{Lab, LabFactory};
use vss_emulator::iscsi_storage::IscsiStorage;
use vss_emulator::storage::HostStorage;

/// The target name the lab serves.
pub const TARGET: &str = "iqn.2026-01.org.shadowlun:iscsi-lab";
const BLOCK: u32 = 512;

struct Unit {
    lu: Arc<LogicalUnit>,
    identity: LunIdentity,
    blocks: u64,
    origin: Option<LunNumber>,
    visible_to: BTreeSet<String>,
}

/// LUNs on a `scsi::Target` served by an iSCSI target on an ephemeral loopback port.
pub struct TargetSan {
    target: Arc<scsi::Target>,
    server: Mutex<Option<TargetServer>>,
    addr: SocketAddr,
    state: Mutex<(LunNumber, BTreeMap<LunNumber, Unit>)>,
}

impl std::fmt::Debug for TargetSan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TargetSan({})", self.addr)
    }
}

fn lu_identity(id: &LunIdentity) -> LuIdentity {
    LuIdentity {
        vendor: id.vendor.clone(),
        product: id.product.clone(),
        revision: id.revision.clone(),
        serial: id.serial.clone(),
        designators: id.designators.clone(),
    }
}

impl TargetSan {
    /// Starts the target on 127.0.0.1 with an ephemeral port.
    pub fn start() -> Result<Arc<Self>, String> {
        let server = TargetServer::spawn(TargetConfig {
            portals: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
            ..TargetConfig::default()
        })
        .map_err(|e| e.to_string())?;
        let target = Arc::new(scsi::Target::new(TARGET));
        server
            .add_target(TARGET, None, target.clone(), AuthPolicy::None)
            .map_err(|e| e.to_string())?;
        let addr = *server.local_addrs().first().ok_or("target has no portal")?;
        Ok(Arc::new(Self {
            target,
            server: Mutex::new(Some(server)),
            addr,
            state: Mutex::new((1, BTreeMap::new())),
        }))
    }

    pub fn portal(&self) -> SocketAddr {
        self.addr
    }

    fn lock(&self) -> MutexGuard<'_, (LunNumber, BTreeMap<LunNumber, Unit>)> {
        self.state.lock().expect("iscsi lab lock")
    }

    fn add(
        &self,
        st: &mut (LunNumber, BTreeMap<LunNumber, Unit>),
        blocks: u64,
        origin: Option<LunNumber>,
    ) -> Result<LunNumber, String> {
        let n = st.0;
        if n > scsi::MAX_LUN {
            return Err("out of LUN numbers".into());
        }
        st.0 += 1;
        let identity = LunIdentity::for_number(n);
        let lu = Arc::new(LogicalUnit::new(
            Arc::new(MemDevice::new(BLOCK, blocks)),
            lu_identity(&identity),
        ));
        st.1.insert(
            n,
            Unit {
                lu,
                identity,
                blocks,
                origin,
                visible_to: BTreeSet::new(),
            },
        );
        Ok(n)
    }

    /// Creates a LUN mapped to `initiator` under its own number.
    pub fn create_lun(&self, bytes: u64, initiator: &str) -> Result<LunNumber, String> {
        let mut st = self.lock();
        let n = self.add(&mut st, bytes / BLOCK as u64, None)?;
        drop(st);
        self.unmask(n, initiator)?;
        Ok(n)
    }

    pub fn lun_count(&self) -> usize {
        self.lock().1.len()
    }

    /// Stops the target.
    pub fn shutdown(&self) {
        if let Some(s) = self.server.lock().expect("iscsi lab lock").take() {
            s.shutdown();
        }
    }
}

impl Drop for TargetSan {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn copy(from: &LogicalUnit, to: &LogicalUnit, blocks: u64) -> Result<(), String> {
    let chunk = 256u64;
    let mut buf = vec![0u8; (chunk * BLOCK as u64) as usize];
    let mut b = 0;
    while b < blocks {
        let n = chunk.min(blocks - b);
        let len = (n * BLOCK as u64) as usize;
        let off = b * BLOCK as u64;
        from.device()
            .read_at(off, &mut buf[..len])
            .map_err(|e| e.to_string())?;
        to.device()
            .write_at(off, &buf[..len], false)
            .map_err(|e| e.to_string())?;
        b += n;
    }
    Ok(())
}

impl SanBackend for TargetSan {
    fn find_by_naa(&self, naa: &[u8]) -> Option<LunNumber> {
        self.lock()
            .1
            .iter()
            .find(|(_, u)| u.identity.designators.first().map(|d| d.value.as_slice()) == Some(naa))
            .map(|(n, _)| *n)
    }

    fn identity(&self, lun: LunNumber) -> Option<LunIdentity> {
        self.lock().1.get(&lun).map(|u| u.identity.clone())
    }

    fn snapshot_luns(&self, sources: &[LunNumber]) -> Result<Vec<LunNumber>, String> {
        let mut st = self.lock();
        let mut out = Vec::new();
        for s in sources {
            let (src, blocks) = {
                let u = st.1.get(s).ok_or_else(|| format!("no LUN {s}"))?;
                (u.lu.clone(), u.blocks)
            };
            let n = self.add(&mut st, blocks, Some(*s))?;
            copy(&src, &st.1[&n].lu, blocks)?;
            out.push(n);
        }
        Ok(out)
    }

    fn copy_lun(&self, from: LunNumber, to: LunNumber) -> Result<(), String> {
        let st = self.lock();
        let f = st.1.get(&from).ok_or_else(|| format!("no LUN {from}"))?;
        let t = st.1.get(&to).ok_or_else(|| format!("no LUN {to}"))?;
        if t.blocks < f.blocks {
            return Err(format!("LUN {to} is smaller than LUN {from}"));
        }
        copy(&f.lu, &t.lu, f.blocks)
    }

    fn delete_lun(&self, lun: LunNumber) -> Result<(), String> {
        let u = self
            .lock()
            .1
            .remove(&lun)
            .ok_or_else(|| format!("no LUN {lun}"))?;
        for i in &u.visible_to {
            self.target.unmap(i, lun);
        }
        Ok(())
    }

    fn mask(&self, lun: LunNumber, initiator: &str) -> Result<(), String> {
        let mut st = self.lock();
        let u = st.1.get_mut(&lun).ok_or_else(|| format!("no LUN {lun}"))?;
        if u.visible_to.remove(initiator) {
            self.target.unmap(initiator, lun);
        }
        Ok(())
    }

    fn unmask(&self, lun: LunNumber, initiator: &str) -> Result<(), String> {
        let mut st = self.lock();
        let u = st.1.get_mut(&lun).ok_or_else(|| format!("no LUN {lun}"))?;
        if u.visible_to.insert(initiator.to_string()) {
            self.target.map(initiator, lun, u.lu.clone());
        }
        Ok(())
    }

    fn is_snapshot(&self, lun: LunNumber) -> bool {
        self.lock().1.get(&lun).is_some_and(|u| u.origin.is_some())
    }
}

/// The iSCSI lab: hosts over [`IscsiStorage`], the reference provider over [`TargetSan`].
#[derive(Debug)]
pub struct IscsiLab {
    pub san: Arc<TargetSan>,
}

impl Lab for IscsiLab {
    fn create_lun(&self, bytes: u64, initiator: &str) -> Result<(), String> {
        self.san.create_lun(bytes, initiator).map(|_| ())
    }

    fn lun_count(&self) -> Result<usize, String> {
        Ok(self.san.lun_count())
    }

    fn storage(&self, initiator: &str) -> Result<Arc<dyn HostStorage>, String> {
        Ok(IscsiStorage::new(self.san.portal(), TARGET, initiator))
    }

    fn provider(&self, initiator: &str) -> Result<Arc<dyn HardwareProvider>, String> {
        Ok(ReferenceProvider::new(self.san.clone(), initiator))
    }

    fn provider_id(&self) -> VssId {
        REFERENCE_PROVIDER_ID
    }

    fn delete_lun(&self, naa: &[u8]) -> Result<(), String> {
        let n = self
            .san
            .find_by_naa(naa)
            .ok_or_else(|| format!("no LUN with NAA {}", hex::encode(naa)))?;
        self.san.delete_lun(n)
    }
}

/// A fresh target on a new ephemeral port per scenario.
#[derive(Debug, Default)]
pub struct IscsiLabFactory;

impl LabFactory for IscsiLabFactory {
    fn name(&self) -> String {
        "iSCSI target on 127.0.0.1 + reference provider".into()
    }

    fn build(&self) -> Result<Box<dyn Lab>, String> {
        Ok(Box::new(IscsiLab {
            san: TargetSan::start()?,
        }))
    }
}
