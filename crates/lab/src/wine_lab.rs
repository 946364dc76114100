//! The Wine lab: the real array on loopback (as in [`RealLab`]) with, behind each emulated
//! host, the real Windows provider: `shadowlun-provider.exe` installed in a Wine prefix and
//! activated through COM (`CoCreateInstance`, `CLSCTX_LOCAL_SERVER`) by the relay
//! (`crates/provider-com/examples/relay.rs`), which carries the emulator's calls to it over
//! stdin and stdout ([`crate::relay`]).
//!
//! A call from a scenario thus crosses: the relay's line protocol, Wine's COM marshalling
//! (the widl proxy/stub registered in the prefix), the exe's vtables and CoTaskMem
//! conversions, the portable core, and the HTTPS control API of the array daemon.
//!
//! A prefix holds one installed provider, configured with one array URL and one host token,
//! so every host with a live provider needs a prefix of its own: prefixes come from a pool
//! and go back when the host's provider is dropped. Taking a prefix stops whatever Wine still
//! runs in it (`wineserver -k`; a provider process from the previous lab would still hold the
//! previous configuration), installs the provider for the host and starts the relay.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use provider::HardwareProvider;

use vss::VssId;
use vss_emulator::HostStorage;
use vss_emulator::conformance::{Lab, LabFactory};

use crate::real_lab::{RealLab, RealLabFactory};
use crate::relay::{RelayClient, SERVER_UNAVAILABLE};

/// How long `install` may take (it starts Wine's services in a stopped prefix).
const INSTALL_TIMEOUT: Duration = Duration::from_secs(180);
/// How long the relay may take to exit once its input is closed.
const EXIT_GRACE: Duration = Duration::from_secs(15);
/// The most of a relay's stderr kept for error messages.
const STDERR_KEEP: usize = 8 << 10;

/// Where the Windows side lives on this machine.
#[derive(Debug, Clone)]
pub struct WineSetup {
    /// Prepared prefixes (created by `wineboot`, with the proxy/stub for the VSS interfaces
    /// registered): as many as hosts with a live provider at once; two for the catalogue.
    pub prefixes: Vec<PathBuf>,
    /// `shadowlun-provider.exe`.
    pub provider_exe: PathBuf,
    /// The relay (`relay.exe`, built from provider-com's examples).
    pub relay_exe: PathBuf,
    /// Wine's loader for 64-bit programs.
    pub wine: PathBuf,
    pub wineserver: PathBuf,
}

impl WineSetup {
    /// Checks that everything named exists, with an error that says what to do.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.prefixes.is_empty() {
            bail!("no Wine prefix given: pass --wine-prefix DIR (twice for the whole catalogue)");
        }
        for p in &self.prefixes {
            if !p.join("system.reg").is_file() {
                bail!(
                    "{} is not a prepared Wine prefix (no system.reg): create it with \
                     `WINEPREFIX={} wine64 wineboot --init` and register the VSS proxy/stub \
                     (scripts/ci.d/40-windows.sh does both)",
                    p.display(),
                    p.display()
                );
            }
        }
        for (what, f) in [
            ("the provider exe", &self.provider_exe),
            ("the relay exe", &self.relay_exe),
        ] {
            if !f.is_file() {
                bail!(
                    "{what} {} does not exist: build it with \
                     `cargo build -p provider-com --target x86_64-pc-windows-gnu --bins --examples`",
                    f.display()
                );
            }
        }
        for (what, f) in [("wine64", &self.wine), ("wineserver", &self.wineserver)] {
            if which(f).is_none() {
                bail!(
                    "{what} ({}) not found: install Debian's wine64",
                    f.display()
                );
            }
        }
        Ok(())
    }

    fn command(&self, prefix: &Path, program: &Path) -> Command {
        let mut c = Command::new(program);
        c.env("WINEPREFIX", prefix);
        if std::env::var_os("WINEDEBUG").is_none() {
            c.env("WINEDEBUG", "-all");
        }
        c
    }

    /// Ends every Wine process of `prefix`.
    fn stop(&self, prefix: &Path) {
        let r = self
            .command(prefix, &self.wineserver)
            .arg("-k")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .and_then(|mut c| wait_for(&mut c, Duration::from_secs(60)));
        if let Err(e) = r {
            tracing::warn!("wineserver -k in {}: {e}", prefix.display());
        }
    }
}

fn which(p: &Path) -> Option<PathBuf> {
    if p.components().count() > 1 {
        return p.is_file().then(|| p.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(p))
            .find(|f| f.is_file())
    })
}

/// Waits for `child` at most `limit`, then kills it (by its own handle) and reaps it.
fn wait_for(child: &mut Child, limit: Duration) -> std::io::Result<ExitStatus> {
    let end = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait()? {
            return Ok(s);
        }
        if Instant::now() >= end {
            let _ = child.kill();
            child.wait()?;
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("still running after {} s; killed", limit.as_secs()),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Prefixes not in use.
#[derive(Debug)]
struct Pool(Mutex<Vec<PathBuf>>);

/// A prefix taken from the pool, given back on drop.
struct Slot {
    prefix: PathBuf,
    pool: Arc<Pool>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.pool
            .0
            .lock()
            .expect("wine lab lock")
            .push(self.prefix.clone());
    }
}

/// The relay process of one host; dropped after the relay's input has been closed.
struct RelayProcess {
    child: Child,
    stderr: Option<std::thread::JoinHandle<()>>,
    _slot: Slot,
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        match wait_for(&mut self.child, EXIT_GRACE) {
            Ok(s) if !s.success() => tracing::warn!("the relay exited with {s}"),
            Ok(_) => {}
            Err(e) => tracing::warn!("the relay: {e}"),
        }
        if let Some(t) = self.stderr.take() {
            let _ = t.join();
        }
    }
}

/// A fresh array per scenario; the prefixes are shared by every lab it builds.
pub struct WineLabFactory {
    setup: Arc<WineSetup>,
    pool: Arc<Pool>,
    arrays: RealLabFactory,
}

impl WineLabFactory {
    pub fn new(mut setup: WineSetup) -> anyhow::Result<Self> {
        setup.check()?;
        // Wine wants an absolute WINEPREFIX; the exes are named to it as Unix paths.
        for p in setup
            .prefixes
            .iter_mut()
            .chain([&mut setup.provider_exe, &mut setup.relay_exe])
        {
            *p = std::fs::canonicalize(&*p).with_context(|| format!("{}", p.display()))?;
        }
        let pool = Arc::new(Pool(Mutex::new(setup.prefixes.clone())));
        Ok(Self {
            setup: Arc::new(setup),
            pool,
            arrays: RealLabFactory::default(),
        })
    }
}

impl Drop for WineLabFactory {
    fn drop(&mut self) {
        for p in &self.setup.prefixes {
            self.setup.stop(p);
        }
    }
}

impl LabFactory for WineLabFactory {
    fn name(&self) -> String {
        "shadowlun-provider.exe under Wine, activated through COM (CLSCTX_LOCAL_SERVER) + \
         array daemon (embedded engine) + hosts over iSCSI"
            .into()
    }

    fn build(&self) -> Result<Box<dyn Lab>, String> {
        Ok(Box::new(WineLab {
            real: self.arrays.fresh()?,
            setup: self.setup.clone(),
            pool: self.pool.clone(),
            live: Mutex::new(HashMap::new()),
        }))
    }
}

/// One array; each host's provider is the exe in a prefix of its own.
pub struct WineLab {
    real: RealLab,
    setup: Arc<WineSetup>,
    pool: Arc<Pool>,
    /// initiator → its provider while anyone holds it.
    live: Mutex<HashMap<String, Weak<RelayClient>>>,
}

impl WineLab {
    fn start_provider(&self, initiator: &str) -> anyhow::Result<Arc<RelayClient>> {
        let prefix = self
            .pool
            .0
            .lock()
            .expect("wine lab lock")
            .pop()
            .with_context(|| {
                format!(
                    "no free Wine prefix for {initiator}: each host with a live provider \
                     needs one (--wine-prefix, {} given)",
                    self.setup.prefixes.len()
                )
            })?;
        let slot = Slot {
            prefix,
            pool: self.pool.clone(),
        };
        let prefix = slot.prefix.clone();
        let (_, token) = self.real.host(initiator).map_err(anyhow::Error::msg)?;
        self.setup.stop(&prefix);

        let started = Instant::now();
        let mut install = self
            .setup
            .command(&prefix, &self.setup.wine)
            .arg(&self.setup.provider_exe)
            .args(["install", "--array", &self.real.api_url, "--token", &token])
            .args(["--fingerprint", &self.real.fingerprint])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting wine64")?;
        let (out, err) = (drain(install.stdout.take()), drain(install.stderr.take()));
        let status = wait_for(&mut install, INSTALL_TIMEOUT).context("install")?;
        let text = format!("{}{}", join(out), join(err));
        // 3: every step but IVssAdmin::RegisterProvider, which Wine does not have.
        if !matches!(status.code(), Some(0) | Some(3)) {
            bail!(
                "installing the provider in {} failed ({status}):\n{text}",
                prefix.display()
            );
        }
        tracing::debug!(
            "installed for {initiator} in {} in {} ms",
            prefix.display(),
            started.elapsed().as_millis()
        );

        let mut relay = self
            .setup
            .command(&prefix, &self.setup.wine)
            .arg(&self.setup.relay_exe)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the relay")?;
        let (Some(input), Some(output), Some(err)) =
            (relay.stdout.take(), relay.stdin.take(), relay.stderr.take())
        else {
            bail!("the relay's standard handles are missing");
        };
        let said = Arc::new(Mutex::new(String::new()));
        let keep = said.clone();
        let stderr = std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                tracing::debug!("relay: {line}");
                let mut k = keep.lock().expect("wine lab lock");
                if k.len() < STDERR_KEEP {
                    k.push_str(&line);
                    k.push('\n');
                }
            }
        });
        let client = RelayClient::new(BufReader::new(input), output)?.with_guard(RelayProcess {
            child: relay,
            stderr: Some(stderr),
            _slot: slot,
        });
        // The first call proves the activation; the scenario's trace starts after it.
        match client.get_provider_capabilities() {
            Ok(_) => {}
            Err(code) => {
                // Dropping the client closes the relay's input and waits for it to exit.
                drop(client);
                let said = said.lock().expect("wine lab lock").clone();
                if code == SERVER_UNAVAILABLE {
                    bail!("the relay in {} ended: {said}", prefix.display());
                }
                bail!("the installed provider answered {code}: {said}");
            }
        }
        tracing::debug!(
            "provider for {initiator} ready in {} ms",
            started.elapsed().as_millis()
        );
        Ok(Arc::new(client))
    }
}

/// Reads a child's pipe to the end on a thread, so a chatty child never blocks on it.
fn drain<R: Read + Send + 'static>(r: Option<R>) -> Option<std::thread::JoinHandle<String>> {
    r.map(|mut r| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = r.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    })
}

fn join(h: Option<std::thread::JoinHandle<String>>) -> String {
    h.and_then(|h| h.join().ok()).unwrap_or_default()
}

impl Lab for WineLab {
    fn create_lun(&self, bytes: u64, initiator: &str) -> Result<(), String> {
        self.real.create_lun(bytes, initiator)
    }

    fn lun_count(&self) -> Result<usize, String> {
        self.real.lun_count()
    }

    fn storage(&self, initiator: &str) -> Result<Arc<dyn HostStorage>, String> {
        self.real.storage(initiator)
    }

    fn provider(&self, initiator: &str) -> Result<Arc<dyn HardwareProvider>, String> {
        let mut live = self.live.lock().expect("wine lab lock");
        if let Some(p) = live.get(initiator).and_then(Weak::upgrade) {
            return Ok(p);
        }
        let p = self
            .start_provider(initiator)
            .map_err(|e| format!("{e:#}"))?;
        live.insert(initiator.to_string(), Arc::downgrade(&p));
        Ok(p)
    }

    fn provider_id(&self) -> VssId {
        self.real.provider_id()
    }

    fn delete_lun(&self, naa: &[u8]) -> Result<(), String> {
        self.real.delete_lun(naa)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(dir: &Path) -> WineSetup {
        WineSetup {
            prefixes: vec![dir.join("prefix")],
            provider_exe: dir.join("shadowlun-provider.exe"),
            relay_exe: dir.join("relay.exe"),
            wine: "/bin/sh".into(),
            wineserver: "sh".into(),
        }
    }

    #[test]
    fn a_setup_that_is_not_ready_says_what_is_missing_and_how_to_fix_it() {
        let dir = std::env::temp_dir().join(format!("shadowlun-wine-check-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("prefix")).unwrap();
        let s = setup(&dir);
        let e = s.check().unwrap_err().to_string();
        assert!(
            e.contains("not a prepared Wine prefix") && e.contains("wineboot"),
            "{e}"
        );
        std::fs::write(dir.join("prefix/system.reg"), "").unwrap();
        let e = s.check().unwrap_err().to_string();
        assert!(
            e.contains("the provider exe") && e.contains("cargo build"),
            "{e}"
        );
        std::fs::write(dir.join("shadowlun-provider.exe"), "").unwrap();
        std::fs::write(dir.join("relay.exe"), "").unwrap();
        s.check().unwrap();
        let e = WineSetup {
            wineserver: "no-such-wineserver".into(),
            ..s.clone()
        }
        .check()
        .unwrap_err()
        .to_string();
        assert!(e.contains("wineserver") && e.contains("not found"), "{e}");
        let e = WineSetup {
            prefixes: vec![],
            ..s
        }
        .check()
        .unwrap_err()
        .to_string();
        assert!(e.contains("--wine-prefix"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_child_that_overstays_is_killed() {
        let mut c = Command::new("sleep").arg("30").spawn().unwrap();
        let t = Instant::now();
        let e = wait_for(&mut c, Duration::from_millis(200)).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert!(t.elapsed() < Duration::from_secs(5));
        let mut c = Command::new("true").spawn().unwrap();
        assert!(wait_for(&mut c, Duration::from_secs(10)).unwrap().success());
    }
}
