//! `shadowlun-provider.exe` commands: the COM server (`-Embedding`), the service (`service`),
//! `install`, `uninstall`, `status`.
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use provider::HardwareProvider;
use provider::https::{Client, ClientConfig, ClientError, HttpsArray};
use provider::{ProviderConfig, ShadowlunProvider};
use vss::Hresult;

use crate::config::{Config, ConfigError};
use crate::eventlog::ApplicationLog;
use crate::ffi::CoreFactory;
use crate::ids::CLSID_PROVIDER;
use crate::install::{self, InstallArgs};
use crate::server::{self, Lifetime};
use crate::service;
use crate::veto::VetoLog;

/// How long the server stays up with no object and no lock before exiting (COM starts it
/// again on the next activation).
pub const IDLE_GRACE: Duration = Duration::from_secs(30);

/// Exit code of `install` when every step but the VSS registration succeeded.
pub const EXIT_VSS_REGISTRATION_FAILED: u8 = 3;

/// Exit code of a usage error (missing or contradictory arguments, unreadable token file).
pub const EXIT_USAGE: u8 = 2;

/// Exit code of `install` / `uninstall` when a step failed: the first failed step's own
/// code, so an installer's log names the step (configuration 10, COM class 11, service 12,
/// event source 13, VSS registration 14).
pub fn step_exit_code(step: &str) -> u8 {
    match step {
        "configuration" => 10,
        "COM class" => 11,
        "service" => 12,
        "event source" => 13,
        "VSS registration" => 14,
        _ => 1,
    }
}

const USAGE: &str = "\
usage: shadowlun-provider.exe <command>

  install [--array URL... --fingerprint SHA256 (--token TOKEN | --token-file PATH)]
          [--vss-optional] [--atomic]
                 register the provider (COM class, service, event source, VSS);
                 running it again upgrades in place; without the three settings the
                 existing configuration is kept; --vss-optional succeeds where VSS
                 refuses the registration (exit 3 otherwise); --atomic undoes every
                 step and restores the previous configuration when one fails.
                 An array served by several gateways: one URL per gateway, --array
                 repeated or the URLs separated by commas
                 (--array https://gw1:8443,https://gw2:8443); the provider calls the
                 gateway that answered last and moves on to the next when one cannot
                 be reached; every gateway presents the array's one certificate
  uninstall [--keep-config]
                 remove every registration (works from any partial state), and the
                 configuration unless --keep-config
  status [--json]
                 show the configuration, every registration, and whether each of the
                 array's gateways answers with the pinned certificate and accepts the
                 token
  service        run as the Windows service (started by the SCM)
  -Embedding     run as the COM local server (started by COM)
";

/// Builds the real provider core from the configuration: the HTTPS array client with the
/// pinned certificate, behind the provider state machine. Failures are reported to `veto`.
pub fn build_core(
    config: &Config,
    veto: Arc<VetoLog>,
) -> Result<Arc<dyn HardwareProvider>, String> {
    let token = config.token().map_err(|e| e.to_string())?;
    let array = HttpsArray::new(ClientConfig::with_urls(
        &config.array_urls,
        &token,
        &config.fingerprint,
    ))
    .map_err(|e| e.to_string())?;
    Ok(Arc::new(ShadowlunProvider::with_config(
        array,
        ProviderConfig::default(),
        veto,
    )))
}

/// What one gateway of the array said to `status`.
pub struct Probe {
    /// `/v1/health` over the pinned TLS connection: the array's version and target name.
    pub health: api::Health,
    /// An authenticated host call with the configured token (`POST /v1/lookup` of no LUN);
    /// on failure the failure class and the text.
    pub token: Result<(), ProbeFailure>,
}

/// A failure as `status` reports it: its class ([`failure_class`]) and its text.
pub type ProbeFailure = (&'static str, String);

/// What probing one gateway gave.
pub type ProbeResult = Result<Probe, ProbeFailure>;

/// The failure class of a client error, as `status` names it.
pub fn failure_class(e: &ClientError) -> &'static str {
    match e {
        ClientError::CertificateMismatch { .. } => "certificate-mismatch",
        ClientError::Transport(m) if m.to_lowercase().contains("certificate") => {
            "certificate-mismatch"
        }
        ClientError::Transport(_) | ClientError::Timeout(_) => "unreachable",
        ClientError::Problem(p)
            if matches!(
                p.code,
                api::ProblemCode::Unauthorized | api::ProblemCode::Forbidden
            ) =>
        {
            "token-refused"
        }
        _ => "error",
    }
}

/// `status`'s probe of every gateway, at once: each URL with what it said, in the
/// configuration's order.
pub fn probe_array(config: &Config) -> Vec<(String, ProbeResult)> {
    std::thread::scope(|s| {
        let probes: Vec<_> = config
            .array_urls
            .iter()
            .map(|url| (url.clone(), s.spawn(|| probe_gateway(config, url))))
            .collect();
        probes
            .into_iter()
            .map(|(url, p)| {
                let r = p
                    .join()
                    .unwrap_or_else(|_| Err(("error", "the probe failed".into())));
                (url, r)
            })
            .collect()
    })
}

/// One gateway's probe: its health endpoint over the pinned TLS connection, then one
/// authenticated call with the configured token; that gateway alone, no failover.
pub fn probe_gateway(config: &Config, url: &str) -> ProbeResult {
    let token = config
        .token()
        .map_err(|e| ("not-configured", e.to_string()))?;
    let mut cc = ClientConfig::new(url, &token, &config.fingerprint);
    cc.timeout = Duration::from_secs(5);
    cc.attempts = 1;
    let client = Client::new(cc).map_err(|e| (failure_class(&e), e.to_string()))?;
    let health = client
        .health()
        .map_err(|e| (failure_class(&e), e.to_string()))?;
    let token = client
        .post::<_, api::LookupResponse>(api::routes::LOOKUP, &api::LookupRequest { keys: vec![] })
        .map(|_| ())
        .map_err(|e| (failure_class(&e), e.to_string()));
    Ok(Probe { health, token })
}

/// One core per process, built on first activation and shared by every provider object, so
/// a set survives VSS releasing and re-creating the object.
fn core_factory(veto: Arc<VetoLog>) -> Arc<CoreFactory> {
    let core: Mutex<Option<Arc<dyn HardwareProvider>>> = Mutex::new(None);
    Arc::new(move || {
        let mut c = core.lock().expect("core lock");
        if let Some(c) = c.as_ref() {
            return Ok(c.clone());
        }
        let config = Config::load().map_err(|e: ConfigError| {
            tracing::error!("{e}");
            Hresult::E_UNEXPECTED
        })?;
        let built = build_core(&config, veto.clone()).map_err(|e| {
            tracing::error!("cannot build the provider: {e}");
            Hresult::E_UNEXPECTED
        })?;
        *c = Some(built.clone());
        Ok(built)
    })
}

fn run_server(lifetime: Arc<Lifetime>) -> Result<(), server::ServerError> {
    server::init_com_security()?;
    let veto = VetoLog::new(Arc::new(ApplicationLog));
    let r = server::serve(
        &CLSID_PROVIDER,
        core_factory(veto.clone()),
        veto,
        lifetime,
        IDLE_GRACE,
    );
    server::uninit_com();
    r
}

/// Server processes have no console: log to `%ProgramData%\shadowlun\provider.log`.
fn log_to_file() {
    let dir = crate::config::dir();
    let _ = std::fs::create_dir_all(&dir);
    if let Ok(f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("provider.log"))
    {
        let _ = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(Mutex::new(f))
            .try_init();
    }
}

fn log_to_stderr() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::WARN)
        .try_init();
}

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// Every value of a flag that may be repeated, in order (`--array A --array B`).
fn flags(args: &[String], name: &str) -> Vec<String> {
    args.windows(2)
        .filter(|w| w[0] == name)
        .map(|w| w[1].clone())
        .collect()
}

/// The gateways' URLs of `install --array` (repeated, or comma-separated), each checked;
/// `None` when the flag is absent.
pub fn array_urls(args: &[String]) -> Result<Option<Vec<String>>, String> {
    let values = flags(args, "--array");
    if values.is_empty() {
        return Ok(None);
    }
    let urls = provider::https::split_urls(&values);
    if urls.is_empty() {
        return Err("--array needs a URL: https://host:port".into());
    }
    for u in &urls {
        provider::https::check_url(u).map_err(|e| e.to_string())?;
    }
    Ok(Some(urls))
}

/// The Windows path of this executable, as COM and the SCM need it.
fn own_exe() -> Result<String, String> {
    let p = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let s = p.display().to_string();
    Ok(s.strip_prefix("\\\\?\\").unwrap_or(&s).to_string())
}

fn print_report(r: &install::Report) {
    print!("{r}");
}

/// The entry point of `shadowlun-provider.exe`.
pub fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cmd = args.first().map(String::as_str).unwrap_or("");
    match cmd {
        "-Embedding" | "/Embedding" | "-embedding" | "/embedding" => {
            log_to_file();
            tracing::info!(pid = std::process::id(), "started by COM (-Embedding)");
            match run_server(Lifetime::new()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        "service" => {
            log_to_file();
            tracing::info!(
                pid = std::process::id(),
                "started by the service control manager"
            );
            let r = service::run(Box::new(|lifetime| {
                if let Err(e) = run_server(lifetime) {
                    tracing::error!("{e}");
                }
            }));
            match r {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{e} (the `service` command is for the service control manager)");
                    ExitCode::FAILURE
                }
            }
        }
        "install" => {
            log_to_stderr();
            let token = match (flag(&args, "--token"), flag(&args, "--token-file")) {
                (Some(t), _) => Some(t),
                (None, Some(path)) => match std::fs::read_to_string(&path) {
                    Ok(t) if !t.trim().is_empty() => Some(t.trim().to_string()),
                    Ok(_) => {
                        eprintln!("the token file {path} is empty");
                        return ExitCode::from(EXIT_USAGE);
                    }
                    Err(e) => {
                        eprintln!("cannot read the token file {path}: {e}");
                        return ExitCode::from(EXIT_USAGE);
                    }
                },
                (None, None) => None,
            };
            let urls = match array_urls(&args) {
                Ok(u) => u,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(EXIT_USAGE);
                }
            };
            let config = match (urls, token, flag(&args, "--fingerprint")) {
                (None, None, None) => None,
                (Some(urls), Some(token), Some(fingerprint)) => {
                    if let Err(e) = provider::https::parse_fingerprint(&fingerprint) {
                        eprintln!("{e}");
                        return ExitCode::from(EXIT_USAGE);
                    }
                    Some((urls, token, fingerprint))
                }
                (_, _, None) => {
                    eprintln!(
                        "install needs --fingerprint: the SHA-256 fingerprint the array printed \
                         on its first start. The provider trusts that certificate and nothing \
                         else."
                    );
                    return ExitCode::from(EXIT_USAGE);
                }
                _ => {
                    eprint!(
                        "install needs --array, --fingerprint and --token (or --token-file) \
                         together, or none of them to keep the configuration\n\n{USAGE}"
                    );
                    return ExitCode::from(EXIT_USAGE);
                }
            };
            let exe = match own_exe() {
                Ok(e) => e,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            let atomic = args.iter().any(|a| a == "--atomic");
            let vss_optional = args.iter().any(|a| a == "--vss-optional");
            let previous = std::fs::read(crate::config::path()).ok();
            let r = install::install(&InstallArgs { config, exe });
            print_report(&r);
            let failed = r.failed();
            if atomic && !(failed.is_empty() || (vss_optional && failed == ["VSS registration"])) {
                eprintln!("install failed: undoing every step (--atomic)");
                print_report(&install::uninstall(true));
                let restored = match &previous {
                    Some(text) => crate::config::restore(text),
                    None => crate::config::Config::remove().map(|_| ()),
                };
                if let Err(e) = restored {
                    eprintln!("restoring the previous configuration failed: {e}");
                }
            }
            match failed.as_slice() {
                [] => ExitCode::SUCCESS,
                ["VSS registration"] if vss_optional => {
                    eprintln!("installed; VSS did not accept the registration (--vss-optional)");
                    ExitCode::SUCCESS
                }
                ["VSS registration"] => {
                    eprintln!(
                        "installed, but VSS did not accept the provider registration: this \
                         provider can only be registered on Windows Server with the VSS service"
                    );
                    ExitCode::from(EXIT_VSS_REGISTRATION_FAILED)
                }
                [first, ..] => ExitCode::from(step_exit_code(first)),
            }
        }
        "uninstall" => {
            log_to_stderr();
            let r = install::uninstall(args.iter().any(|a| a == "--keep-config"));
            print_report(&r);
            match r.failed().as_slice() {
                [] => ExitCode::SUCCESS,
                [first, ..] => ExitCode::from(step_exit_code(first)),
            }
        }
        "status" => {
            log_to_stderr();
            let st = crate::status::collect();
            if args.iter().any(|a| a == "--json") {
                match serde_json::to_string_pretty(&st) {
                    Ok(j) => println!("{j}"),
                    Err(e) => {
                        eprintln!("cannot encode the status: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print_report(&st.report());
            }
            if st.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        "-h" | "--help" | "help" => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        other => {
            eprint!("unknown command '{other}'\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn install_takes_array_repeated_or_comma_separated() {
        assert_eq!(
            array_urls(&args(&[
                "install",
                "--array",
                "https://gw1:8443,https://gw2:8443/",
                "--token",
                "t",
                "--array",
                "https://gw3:8443"
            ])),
            Ok(Some(vec![
                "https://gw1:8443".to_string(),
                "https://gw2:8443".into(),
                "https://gw3:8443".into()
            ]))
        );
        assert_eq!(array_urls(&args(&["install", "--token", "t"])), Ok(None));
        assert!(array_urls(&args(&["install", "--array", ","])).is_err());
        let e = array_urls(&args(&["install", "--array", "https://a:1,http://b:2"])).unwrap_err();
        assert!(e.contains("'http://b:2'"), "{e}");
    }
}
