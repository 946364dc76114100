//! A tiny in-memory SCSI handler for protocol tests: enough commands to exercise the
//! transport (INQUIRY, REPORT LUNS, READ CAPACITY 16, READ/WRITE 16, TEST UNIT READY,
//! SYNCHRONIZE CACHE), a per-initiator LUN map and one pending unit attention per nexus.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use iscsi::ScsiHandler;
use iscsi::pdu::{self, Bhs, Digests, Pdu, op};
use scsi::{Command, Nexus, Outcome, TaskManagement, TaskManagementResponse};

pub const BS: u32 = 512;

pub struct MemHandler {
    pub luns: Mutex<BTreeMap<String, Vec<u64>>>,
    pub data: Mutex<Vec<u8>>,
    pub ua: Mutex<HashSet<Nexus>>,
    pub tmfs: Mutex<Vec<TaskManagement>>,
    pub lost: Mutex<Vec<Nexus>>,
    pub delay_reads: Mutex<Option<Duration>>,
    pub executed: AtomicUsize,
    pub seen_tags: Mutex<HashMap<u32, usize>>,
    /// WRITE (16) is declared quick (runs on the connection's thread).
    pub quick_writes: AtomicBool,
    pub delay_sync: Mutex<Option<Duration>>,
    /// (opcode, name of the thread that executed it), in execution order.
    pub threads: Mutex<Vec<(u8, String)>>,
}

fn sense(key: u8, asc: u8, ascq: u8) -> Outcome {
    let mut s = vec![0u8; 18];
    s[0] = 0x70;
    s[2] = key;
    s[7] = 10;
    s[12] = asc;
    s[13] = ascq;
    Outcome {
        status: scsi::status::CHECK_CONDITION,
        sense: Some(s),
        data_in: vec![],
    }
}

fn good(data_in: Vec<u8>, alloc: usize) -> Outcome {
    let mut d = data_in;
    d.truncate(alloc);
    Outcome {
        status: 0,
        sense: None,
        data_in: d,
    }
}

impl MemHandler {
    pub fn new(blocks: usize) -> Self {
        MemHandler {
            luns: Mutex::new(BTreeMap::new()),
            data: Mutex::new(vec![0u8; blocks * BS as usize]),
            ua: Mutex::new(HashSet::new()),
            tmfs: Mutex::new(Vec::new()),
            lost: Mutex::new(Vec::new()),
            delay_reads: Mutex::new(None),
            executed: AtomicUsize::new(0),
            seen_tags: Mutex::new(HashMap::new()),
            quick_writes: AtomicBool::new(false),
            delay_sync: Mutex::new(None),
            threads: Mutex::new(Vec::new()),
        }
    }
    pub fn map(&self, initiator: &str, lun: u64) {
        self.luns
            .lock()
            .unwrap()
            .entry(initiator.into())
            .or_default()
            .push(lun);
    }
    pub fn raise_ua(&self, n: Nexus) {
        self.ua.lock().unwrap().insert(n);
    }
}

impl ScsiHandler for MemHandler {
    fn execute(&self, cmd: &Command<'_>) -> Outcome {
        self.executed.fetch_add(1, Ordering::SeqCst);
        self.threads.lock().unwrap().push((
            cmd.cdb[0],
            std::thread::current().name().unwrap_or("").to_string(),
        ));
        let lun = scsi::decode_lun(cmd.lun).unwrap_or(u64::MAX);
        let cdb = cmd.cdb;
        if cdb[0] != 0xa0 && cdb[0] != 0x12 && !self.luns_for(&cmd.nexus.initiator).contains(&lun) {
            return sense(0x05, 0x25, 0x00);
        }
        if cdb[0] != 0x12 && cdb[0] != 0xa0 && self.ua.lock().unwrap().remove(cmd.nexus) {
            return sense(0x06, 0x3f, 0x0e);
        }
        match cdb[0] {
            0x00 => good(vec![], 0),
            0x91 => {
                let delay = *self.delay_sync.lock().unwrap();
                if let Some(d) = delay {
                    std::thread::sleep(d);
                }
                good(vec![], 0)
            }
            0x12 => {
                let alloc = u16::from_be_bytes([cdb[3], cdb[4]]) as usize;
                if cdb[1] & 1 == 1 {
                    let mut d = vec![0, cdb[2], 0, 8];
                    d.extend_from_slice(b"SERIAL01");
                    return good(d, alloc);
                }
                let mut d = vec![0u8; 36];
                d[2] = 6;
                d[3] = 2;
                d[4] = 31;
                d[8..16].copy_from_slice(b"SHADOWLN");
                d[16..32].copy_from_slice(b"TEST LUN        ");
                good(d, alloc)
            }
            0xa0 => {
                let alloc = u32::from_be_bytes(cdb[6..10].try_into().unwrap()) as usize;
                let luns = self.luns_for(&cmd.nexus.initiator);
                let mut d = ((luns.len() * 8) as u32).to_be_bytes().to_vec();
                d.extend_from_slice(&[0; 4]);
                for l in luns {
                    d.extend_from_slice(&iscsi::initiator::encode_lun(l).to_be_bytes());
                }
                good(d, alloc)
            }
            0x9e => {
                let blocks = (self.data.lock().unwrap().len() / BS as usize) as u64;
                let mut d = (blocks - 1).to_be_bytes().to_vec();
                d.extend_from_slice(&BS.to_be_bytes());
                d.resize(32, 0);
                good(d, cdb[13] as usize)
            }
            0x88 | 0x8a => {
                let lba = u64::from_be_bytes(cdb[2..10].try_into().unwrap()) as usize;
                let n = u32::from_be_bytes(cdb[10..14].try_into().unwrap()) as usize;
                let (off, len) = (lba * BS as usize, n * BS as usize);
                let mut data = self.data.lock().unwrap();
                if off + len > data.len() {
                    return sense(0x05, 0x21, 0x00);
                }
                if cdb[0] == 0x88 {
                    let out = data[off..off + len].to_vec();
                    drop(data);
                    let delay = *self.delay_reads.lock().unwrap();
                    if let Some(d) = delay {
                        std::thread::sleep(d);
                    }
                    good(out, usize::MAX)
                } else {
                    if cmd.data_out.len() != len {
                        return sense(0x05, 0x24, 0x00);
                    }
                    data[off..off + len].copy_from_slice(cmd.data_out);
                    good(vec![], 0)
                }
            }
            _ => sense(0x05, 0x20, 0x00),
        }
    }

    fn task_management(
        &self,
        _nexus: &Nexus,
        _lun: u64,
        f: TaskManagement,
    ) -> TaskManagementResponse {
        self.tmfs.lock().unwrap().push(f);
        match f {
            TaskManagement::AbortTask { .. } => TaskManagementResponse::TaskDoesNotExist,
            _ => TaskManagementResponse::Complete,
        }
    }

    fn nexus_lost(&self, nexus: &Nexus) {
        self.lost.lock().unwrap().push(nexus.clone());
    }

    fn is_quick(&self, cmd: &Command<'_>) -> bool {
        cmd.cdb[0] == 0x8a && self.quick_writes.load(Ordering::SeqCst)
    }

    fn luns_for(&self, initiator: &str) -> Vec<u64> {
        self.luns
            .lock()
            .unwrap()
            .get(initiator)
            .cloned()
            .unwrap_or_default()
    }
}

/// Logs in to `target` with raw PDUs (no auth, straight to the full feature phase, CmdSN
/// 10, ISID type "random" with zeroes).
pub fn raw_login(addr: SocketAddr, target: &str, initiator: &str) -> TcpStream {
    let mut c = TcpStream::connect(addr).unwrap();
    let mut b = Bhs::new(op::LOGIN_REQ);
    b.set_immediate(true);
    b.set_flags(0x80 | 0x04 | 0x03); // T, CSG=1, NSG=3
    b.0[8] = 0x80;
    b.set_itt(1);
    b.set_u32(24, 10);
    let keys = format!("InitiatorName={initiator}\0TargetName={target}\0SessionType=Normal\0");
    c.write_all(&Pdu::with_data(b, keys.into_bytes()).encode(Digests::default()))
        .unwrap();
    let r = pdu::read_sync(&mut c, Digests::default(), 65536).unwrap();
    assert_eq!(r.bhs.opcode(), op::LOGIN_RESP);
    assert_eq!((r.bhs.0[36], r.bhs.0[37]), (0, 0));
    assert_eq!(r.bhs.flags() & 0x83, 0x83);
    c
}
