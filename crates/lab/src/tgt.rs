//! A `tgtd` process (Debian's userspace iSCSI target) started for tests and benchmarks: a
//! referee for the initiator and the baseline of the target benchmark. Killed with SIGKILL
//! on drop, since tgtd ignores SIGTERM. It serves a file, or an RBD image through its rbd
//! backing store (the baseline of the rbd benchmark).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// tgtd could not be started or configured.
#[derive(Debug, thiserror::Error)]
#[error("tgt: {0}")]
pub struct TgtError(pub String);

/// A `tgtd` process serving one file to any initiator (LUN 1 through the page cache, LUN 2
/// with direct I/O), or one RBD image (LUN 1).
#[derive(Debug)]
pub struct Tgt {
    child: Child,
    control: u32,
    pub addr: SocketAddr,
    pub target: String,
}

/// Where Debian's `tgt-rbd` puts tgt's rbd backing store.
pub const RBD_BACKING_STORE: &str = "/usr/lib/tgt/backing-store/bs_rbd.so";

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Tgt {
    /// Starts tgtd on a free loopback port and exports `backing` as LUNs 1 (page cache) and
    /// 2 (direct I/O) of `target`.
    pub fn start(backing: &Path, target: &str, serial: &str) -> Result<Tgt, TgtError> {
        let mut t = Tgt::spawn(target, None)?;
        let path = backing.to_string_lossy().to_string();
        // LUN 1: the file through the page cache (tgt's rdwr backing store); LUN 2: the same
        // file with O_DIRECT.
        for (lun, flags) in [("1", None), ("2", Some("direct"))] {
            let mut args = vec![
                "--op",
                "new",
                "--mode",
                "logicalunit",
                "--tid",
                "1",
                "--lun",
                lun,
                "-b",
                &path,
            ];
            if let Some(f) = flags {
                args.extend(["--bsoflags", f]);
            }
            t.adm(&args)?;
        }
        t.finish(serial)?;
        Ok(t)
    }

    /// Starts tgtd on a free loopback port and exports RBD image `spec` (`pool/image`) of the
    /// cluster `ceph_conf` describes as LUN 1 of `target`, through tgt's rbd backing store
    /// (Debian's `tgt-rbd`: librbd inside tgtd).
    pub fn start_rbd(
        spec: &str,
        ceph_conf: &Path,
        target: &str,
        serial: &str,
    ) -> Result<Tgt, TgtError> {
        if !Path::new(RBD_BACKING_STORE).exists() {
            return Err(TgtError(format!(
                "tgt's rbd backing store is not installed ({RBD_BACKING_STORE} is missing; \
                 Debian's tgt-rbd has it)"
            )));
        }
        // bs_rbd reads CEPH_CONF when tgtd starts and `conf=` of --bsopts for each LUN.
        let mut t = Tgt::spawn(target, Some(ceph_conf))?;
        let conf = format!("conf={}", ceph_conf.display());
        t.adm(&[
            "--op",
            "new",
            "--mode",
            "logicalunit",
            "--tid",
            "1",
            "--lun",
            "1",
            "--bstype",
            "rbd",
            "--backing-store",
            spec,
            "--bsopts",
            &conf,
        ])?;
        t.finish(serial)?;
        Ok(t)
    }

    /// Starts tgtd (with `CEPH_CONF` set when given) and makes target 1.
    fn spawn(target: &str, ceph_conf: Option<&Path>) -> Result<Tgt, TgtError> {
        let port = free_port().map_err(|e| TgtError(e.to_string()))?;
        let control = 1000 + std::process::id() % 20000 + u32::from(port % 1000);
        let mut cmd = Command::new("tgtd");
        cmd.args([
            "-f",
            "-C",
            &control.to_string(),
            "--iscsi",
            &format!("portal=127.0.0.1:{port}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        if let Some(conf) = ceph_conf {
            cmd.env("CEPH_CONF", conf);
        }
        let child = cmd
            .spawn()
            .map_err(|e| TgtError(format!("cannot start tgtd: {e}")))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut t = Tgt {
            child,
            control,
            addr,
            target: target.to_string(),
        };
        let start = Instant::now();
        while TcpStream::connect(addr).is_err() {
            if start.elapsed() > Duration::from_secs(10) {
                return Err(TgtError("tgtd did not start listening".into()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        t.adm(&[
            "--op", "new", "--mode", "target", "--tid", "1", "-T", target,
        ])?;
        Ok(t)
    }

    /// Names LUN 1 and lets any initiator in.
    fn finish(&mut self, serial: &str) -> Result<(), TgtError> {
        self.adm(&[
            "--op",
            "update",
            "--mode",
            "logicalunit",
            "--tid",
            "1",
            "--lun",
            "1",
            "--params",
            &format!("vendor_id=TGTBENCH,product_id=tgt-lun,scsi_sn={serial},scsi_id=60000000000000000000000000000001"),
        ])?;
        self.adm(&[
            "--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL",
        ])
    }

    /// The tgtd process's id (for its CPU time in `/proc`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn adm(&mut self, args: &[&str]) -> Result<(), TgtError> {
        let out = Command::new("tgtadm")
            .args(["-C", &self.control.to_string(), "--lld", "iscsi"])
            .args(args)
            .output()
            .map_err(|e| TgtError(format!("tgtadm: {e}")))?;
        if !out.status.success() {
            return Err(TgtError(format!(
                "tgtadm {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }
}

impl Drop for Tgt {
    fn drop(&mut self) {
        // tgtd ignores SIGTERM; this is the process we started.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
