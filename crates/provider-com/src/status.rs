//! `status`: the configuration, every registration `install` makes, and whether the array
//! answers as the one configured, as a table or as JSON (`status --json`).
//!
//! Every field is read back from where Windows keeps it (the registry, the service control
//! manager, the VSS coordinator, the array over the pinned connection); nothing is inferred
//! from what `install` meant to write. The token is never printed: only whether it decrypts
//! and whether the array accepts it.

use serde::Serialize;
use windows::Win32::Storage::Vss::{IVssAdmin, VSS_OBJECT_PROP, VSS_OBJECT_PROVIDER};
use windows::Win32::System::Com::CoTaskMemFree;

use crate::config::{self, Config};
use crate::ids::{self, APPID, CLSID_PROVIDER, EVENT_SOURCE, PROVIDER_ID, SERVICE_NAME, braced};
use crate::install::{self, Outcome, Report};
use crate::registry::{self, HKEY_LOCAL_MACHINE as HKLM};
use crate::service;

/// Everything `status --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// This executable's version.
    pub version: String,
    pub configuration: ConfigStatus,
    pub registrations: Registrations,
    pub array: ArrayStatus,
}

/// `%ProgramData%\shadowlun\provider.toml`.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigStatus {
    pub path: String,
    pub present: bool,
    /// The gateways' URLs as one line, `https://gw1:8443, https://gw2:8443` (with one
    /// gateway, its URL).
    pub array: Option<String>,
    /// The gateways' URLs, in the order the provider tries them.
    pub array_urls: Vec<String>,
    pub fingerprint: Option<String>,
    /// `"stored"` when the DPAPI-protected token decrypts on this machine; never the token.
    pub token: Option<String>,
    pub error: Option<String>,
}

/// The registrations `install` makes, each read back.
#[derive(Debug, Clone, Serialize)]
pub struct Registrations {
    pub com_class: ComStatus,
    pub service: ServiceStatus,
    pub event_source: EventSourceStatus,
    pub vss: VssStatus,
}

#[derive(Debug, Clone, Serialize)]
pub struct ComStatus {
    pub registered: bool,
    pub clsid: String,
    /// `LocalServer32`'s command line.
    pub local_server32: Option<String>,
    pub appid: Option<String>,
    /// The AppID's `LocalService`: the service COM starts.
    pub local_service: Option<String>,
    pub launch_permission: bool,
    pub access_permission: bool,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServiceStatus {
    pub registered: bool,
    pub name: String,
    /// `running`, `stopped`, `start-pending`, `stop-pending`, or `state N`.
    pub state: Option<String>,
    pub image_path: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EventSourceStatus {
    pub registered: bool,
    pub log: String,
    pub name: String,
    pub event_message_file: Option<String>,
    pub types_supported: Option<u32>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VssStatus {
    /// `None` when the coordinator could not be asked (no VSS service: Wine, or VSS stopped
    /// and disabled).
    pub registered: Option<bool>,
    pub provider_id: String,
    /// The version VSS has registered, which after an upgrade must be this exe's.
    pub version: Option<String>,
    pub error: Option<String>,
}

/// The array, asked over the pinned connection with the configured token: each gateway on
/// its own (`gateways`), and the array as the provider sees it (the other fields: the first
/// gateway that answered, the one the provider would call first).
#[derive(Debug, Clone, Serialize)]
pub struct ArrayStatus {
    /// The first gateway that answered, or the first configured when none did.
    pub url: Option<String>,
    /// At least one gateway completed the TLS handshake with the pinned certificate and
    /// answered `/v1/health`.
    pub reachable: bool,
    /// The array's identity as it reports it: software version and iSCSI target name.
    pub version: Option<String>,
    pub target: Option<String>,
    /// `accepted` when an authenticated host call succeeded with the configured token.
    pub token: Option<String>,
    /// The failure class, when something failed (the first gateway's that failed):
    /// `unreachable`, `certificate-mismatch`, `token-refused`, `not-configured`, `error`.
    pub failure: Option<String>,
    /// What failed; with several gateways, each failed one's URL and error.
    pub error: Option<String>,
    /// Every configured gateway, probed on its own, in the configuration's order.
    pub gateways: Vec<GatewayStatus>,
}

/// One gateway of the array, probed alone (no failover).
#[derive(Debug, Clone, Serialize)]
pub struct GatewayStatus {
    pub url: String,
    pub reachable: bool,
    pub version: Option<String>,
    pub target: Option<String>,
    /// `accepted` or `refused`, when the gateway was reached.
    pub token: Option<String>,
    /// As [`ArrayStatus::failure`].
    pub failure: Option<String>,
    pub error: Option<String>,
}

impl Status {
    /// Whether everything is in place and every gateway of the array answers and accepts
    /// this host (one gateway down is a failed status, though the provider still works).
    pub fn ok(&self) -> bool {
        let r = &self.registrations;
        self.configuration.present
            && self.configuration.error.is_none()
            && r.com_class.registered
            && r.service.registered
            && r.event_source.registered
            && r.vss.registered == Some(true)
            && self.array.reachable
            && self.array.token.as_deref() == Some("accepted")
            && !self.array.gateways.is_empty()
            && self
                .array
                .gateways
                .iter()
                .all(|g| g.reachable && g.token.as_deref() == Some("accepted"))
    }

    /// The same facts as a table, one line per piece.
    pub fn report(&self) -> Report {
        let mut r = Report::default();
        let c = &self.configuration;
        r.push(
            "configuration",
            match (&c.error, &c.array) {
                (Some(e), _) => Outcome::Failed(e.clone()),
                (None, Some(a)) => Outcome::Done(format!("array {a} ({})", c.path)),
                (None, None) => Outcome::Absent,
            },
        );
        let g = &self.registrations;
        r.push(
            "COM class",
            registered(
                g.com_class.registered,
                &g.com_class.error,
                format!(
                    "{} -> {}; AppID LocalService={}",
                    g.com_class.clsid,
                    g.com_class.local_server32.as_deref().unwrap_or("?"),
                    g.com_class.local_service.as_deref().unwrap_or("?")
                ),
            ),
        );
        r.push(
            "service",
            registered(
                g.service.registered,
                &g.service.error,
                format!(
                    "{} {}",
                    g.service.name,
                    g.service.state.as_deref().unwrap_or("?")
                ),
            ),
        );
        r.push(
            "event source",
            registered(
                g.event_source.registered,
                &g.event_source.error,
                format!(
                    "{}\\{} -> {}",
                    g.event_source.log,
                    g.event_source.name,
                    g.event_source.event_message_file.as_deref().unwrap_or("?")
                ),
            ),
        );
        r.push(
            "VSS registration",
            match (g.vss.registered, &g.vss.error) {
                (Some(true), _) => Outcome::Done(format!(
                    "{} version {}",
                    g.vss.provider_id,
                    g.vss.version.as_deref().unwrap_or("?")
                )),
                (Some(false), _) => Outcome::Absent,
                (None, e) => Outcome::Failed(e.clone().unwrap_or_default()),
            },
        );
        let a = &self.array;
        match a.gateways.as_slice() {
            // One gateway: one line, as before arrays had several.
            [] | [_] => r.push(
                "array",
                match (&a.error, a.reachable) {
                    (Some(e), _) if a.failure.as_deref() == Some("not-configured") => {
                        Outcome::Skipped(e.clone())
                    }
                    (Some(e), _) => Outcome::Failed(e.clone()),
                    (None, true) => Outcome::Done(format!(
                        "{} answers (version {}, target {}); token accepted",
                        a.url.as_deref().unwrap_or("?"),
                        a.version.as_deref().unwrap_or("?"),
                        a.target.as_deref().unwrap_or("?")
                    )),
                    (None, false) => Outcome::Failed("not reachable".into()),
                },
            ),
            several => {
                let up = several.iter().filter(|g| g.reachable).count();
                r.push(
                    "array",
                    if up == 0 {
                        Outcome::Failed(format!("none of its {} gateways answers", several.len()))
                    } else {
                        Outcome::Done(format!(
                            "{up} of {} gateways answer (version {}, target {})",
                            several.len(),
                            a.version.as_deref().unwrap_or("?"),
                            a.target.as_deref().unwrap_or("?")
                        ))
                    },
                );
                for g in several {
                    r.push(
                        "gateway",
                        match (&g.error, g.reachable) {
                            (Some(e), _) => Outcome::Failed(format!("{}: {e}", g.url)),
                            (None, true) => {
                                Outcome::Done(format!("{} answers; token accepted", g.url))
                            }
                            (None, false) => Outcome::Failed(format!("{}: not reachable", g.url)),
                        },
                    );
                }
            }
        }
        r
    }
}

fn registered(yes: bool, error: &Option<String>, text: String) -> Outcome {
    match (yes, error) {
        (_, Some(e)) => Outcome::Failed(e.clone()),
        (true, None) => Outcome::Done(text),
        (false, None) => Outcome::Absent,
    }
}

fn configuration() -> (ConfigStatus, Option<Config>) {
    let path = config::path().display().to_string();
    if !config::path().exists() {
        return (
            ConfigStatus {
                path,
                present: false,
                array: None,
                array_urls: Vec::new(),
                fingerprint: None,
                token: None,
                error: None,
            },
            None,
        );
    }
    match Config::load() {
        Ok(c) => {
            let (token, error) = match c.token() {
                Ok(_) => (Some("stored".to_string()), None),
                Err(e) => (None, Some(e.to_string())),
            };
            (
                ConfigStatus {
                    path,
                    present: true,
                    array: Some(c.urls_text()),
                    array_urls: c.array_urls.clone(),
                    fingerprint: Some(c.fingerprint.clone()),
                    token,
                    error,
                },
                Some(c),
            )
        }
        Err(e) => (
            ConfigStatus {
                path,
                present: true,
                array: None,
                array_urls: Vec::new(),
                fingerprint: None,
                token: None,
                error: Some(e.to_string()),
            },
            None,
        ),
    }
}

fn com_class() -> ComStatus {
    let clsid = install::clsid_key();
    let appid = install::appid_key();
    let mut errors = Vec::new();
    let mut read = |r: Result<Option<String>, registry::RegistryError>| {
        r.unwrap_or_else(|e| {
            errors.push(e.to_string());
            None
        })
    };
    let local_server32 = read(registry::get_string(
        HKLM,
        &format!("{clsid}\\LocalServer32"),
        "",
    ));
    let class_appid = read(registry::get_string(HKLM, &clsid, "AppID"));
    let local_service = read(registry::get_string(HKLM, &appid, "LocalService"));
    let mut flag = |name: &str| {
        registry::value_exists(HKLM, &appid, name).unwrap_or_else(|e| {
            errors.push(e.to_string());
            false
        })
    };
    let launch_permission = flag("LaunchPermission");
    let access_permission = flag("AccessPermission");
    ComStatus {
        registered: local_server32.is_some()
            && class_appid.as_deref() == Some(braced(&APPID).as_str())
            && local_service.as_deref() == Some(SERVICE_NAME),
        clsid: braced(&CLSID_PROVIDER),
        local_server32,
        appid: class_appid,
        local_service,
        launch_permission,
        access_permission,
        error: (!errors.is_empty()).then(|| errors.join("; ")),
    }
}

fn service_status() -> ServiceStatus {
    let (registered, state, error) = match service::state() {
        Ok(Some(s)) => (true, Some(service::state_name(s)), None),
        Ok(None) => (false, None, None),
        Err(e) => (false, None, Some(e.to_string())),
    };
    let image_path = registry::get_string_unexpanded(
        HKLM,
        &format!("SYSTEM\\CurrentControlSet\\Services\\{SERVICE_NAME}"),
        "ImagePath",
    )
    .ok()
    .flatten();
    ServiceStatus {
        registered,
        name: SERVICE_NAME.into(),
        state,
        image_path,
        error,
    }
}

fn event_source() -> EventSourceStatus {
    let key = install::event_source_key();
    let registered = registry::key_exists(HKLM, &key);
    let mut errors = Vec::new();
    let event_message_file = registry::get_string_unexpanded(HKLM, &key, "EventMessageFile")
        .unwrap_or_else(|e| {
            errors.push(e.to_string());
            None
        });
    let types_supported = registry::get_dword(HKLM, &key, "TypesSupported").unwrap_or_else(|e| {
        errors.push(e.to_string());
        None
    });
    EventSourceStatus {
        registered: registered && event_message_file.is_some(),
        log: "Application".into(),
        name: EVENT_SOURCE.into(),
        event_message_file,
        types_supported,
        error: (!errors.is_empty()).then(|| errors.join("; ")),
    }
}

/// Takes a CoTaskMem string VSS returned, and frees it.
fn take_string(p: *mut u16) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: a non-NULL, NUL-terminated string the coordinator allocated for us.
    let s = unsafe { windows_core::PCWSTR(p).to_string() }.ok();
    // SAFETY: allocated with the COM allocator (VSS_PROVIDER_PROP's strings are ours to free).
    unsafe { CoTaskMemFree(Some(p.cast_const().cast())) };
    s
}

/// Our entry in the coordinator's provider list: `Ok(Some(version))` when registered.
fn query_vss(admin: &IVssAdmin) -> Result<Option<String>, u32> {
    // SAFETY: a live IVssAdmin.
    let list = unsafe { admin.QueryProviders() }.map_err(|e| e.code().0 as u32)?;
    let mut found = None;
    // Bounded: a system has a handful of providers.
    for _ in 0..256 {
        let mut item = [VSS_OBJECT_PROP::default()];
        let mut fetched = 0u32;
        // SAFETY: room for one element; `fetched` receives how many were written.
        unsafe { list.Next(&mut item, &mut fetched) }.map_err(|e| e.code().0 as u32)?;
        if fetched == 0 {
            break;
        }
        if item[0].Type != VSS_OBJECT_PROVIDER {
            continue;
        }
        // SAFETY: Type says the union holds a provider's properties.
        let p = unsafe { item[0].Obj.Prov };
        let _name = take_string(p.m_pwszProviderName);
        let version = take_string(p.m_pwszProviderVersion);
        if p.m_ProviderId == PROVIDER_ID {
            found = Some(version.unwrap_or_default());
        }
    }
    Ok(found)
}

fn vss_status() -> VssStatus {
    let (registered, version, error) = match install::vss_admin().and_then(|a| query_vss(&a)) {
        Ok(Some(v)) => (Some(true), Some(v), None),
        Ok(None) => (Some(false), None, None),
        Err(c) => (None, None, Some(install::hresult_text(c))),
    };
    VssStatus {
        registered,
        provider_id: braced(&PROVIDER_ID),
        version,
        error,
    }
}

fn array_status(config: Option<&Config>) -> ArrayStatus {
    let mut a = ArrayStatus {
        url: config.and_then(|c| c.array_urls.first().cloned()),
        reachable: false,
        version: None,
        target: None,
        token: None,
        failure: None,
        error: None,
        gateways: Vec::new(),
    };
    let Some(config) = config else {
        a.failure = Some("not-configured".into());
        a.error = Some("no configuration".into());
        return a;
    };
    a.gateways = crate::cli::probe_array(config)
        .into_iter()
        .map(|(url, probe)| gateway_status(url, probe))
        .collect();
    summarize(&mut a);
    a
}

fn gateway_status(url: String, probe: crate::cli::ProbeResult) -> GatewayStatus {
    let mut g = GatewayStatus {
        url,
        reachable: false,
        version: None,
        target: None,
        token: None,
        failure: None,
        error: None,
    };
    match probe {
        Ok(p) => {
            g.reachable = true;
            g.version = Some(p.health.version);
            g.target = Some(p.health.target);
            match p.token {
                Ok(()) => g.token = Some("accepted".into()),
                Err((class, e)) => {
                    g.token = Some("refused".into());
                    g.failure = Some(class.into());
                    g.error = Some(e);
                }
            }
        }
        Err((class, e)) => {
            g.failure = Some(class.into());
            g.error = Some(e);
        }
    }
    g
}

/// The array as the provider sees it, from its gateways: the first that answered gives its
/// identity and the token's answer; the first that failed gives the failure class, and the
/// error names each that failed (with one gateway, its error as it is).
pub fn summarize(a: &mut ArrayStatus) {
    if let Some(g) = a.gateways.iter().find(|g| g.reachable) {
        a.url = Some(g.url.clone());
        a.reachable = true;
        a.version = g.version.clone();
        a.target = g.target.clone();
        a.token = g.token.clone();
    }
    let failed: Vec<&GatewayStatus> = a.gateways.iter().filter(|g| g.error.is_some()).collect();
    a.failure = failed.first().and_then(|g| g.failure.clone());
    a.error = match failed.as_slice() {
        [] => None,
        [g] if a.gateways.len() == 1 => g.error.clone(),
        several => Some(
            several
                .iter()
                .map(|g| match g.error.as_deref().unwrap_or("?") {
                    // The client's own errors name the URL already.
                    e if e.contains(&g.url) => e.to_string(),
                    e => format!("{}: {e}", g.url),
                })
                .collect::<Vec<_>>()
                .join("; "),
        ),
    };
}

/// Reads everything back. Initialises COM on the calling thread.
pub fn collect() -> Status {
    install::com_init();
    let (configuration, config) = configuration();
    Status {
        version: ids::VERSION.into(),
        registrations: Registrations {
            com_class: com_class(),
            service: service_status(),
            event_source: event_source(),
            vss: vss_status(),
        },
        array: array_status(config.as_ref()),
        configuration,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway(url: &str, answer: Result<bool, &str>) -> GatewayStatus {
        GatewayStatus {
            url: url.into(),
            reachable: answer.is_ok(),
            version: answer.ok().map(|_| "1.0".into()),
            target: answer.ok().map(|_| "iqn.t".into()),
            token: answer
                .ok()
                .map(|t| if t { "accepted" } else { "refused" }.into()),
            failure: match answer {
                Ok(true) => None,
                Ok(false) => Some("token-refused".into()),
                Err(_) => Some("unreachable".into()),
            },
            error: match answer {
                Ok(true) => None,
                Ok(false) => Some("refused".into()),
                Err(e) => Some(e.into()),
            },
        }
    }

    fn array(gateways: Vec<GatewayStatus>) -> ArrayStatus {
        let mut a = ArrayStatus {
            url: gateways.first().map(|g| g.url.clone()),
            reachable: false,
            version: None,
            target: None,
            token: None,
            failure: None,
            error: None,
            gateways,
        };
        summarize(&mut a);
        a
    }

    #[test]
    fn one_gateway_reads_as_before() {
        let a = array(vec![gateway("https://a:1", Err("connection refused"))]);
        assert!(!a.reachable);
        assert_eq!(a.url.as_deref(), Some("https://a:1"));
        assert_eq!(a.failure.as_deref(), Some("unreachable"));
        assert_eq!(a.error.as_deref(), Some("connection refused"));
        let a = array(vec![gateway("https://a:1", Ok(true))]);
        assert!(a.reachable);
        assert_eq!(a.token.as_deref(), Some("accepted"));
        assert_eq!((a.failure, a.error), (None, None));
    }

    #[test]
    fn several_gateways_the_first_that_answers_speaks_for_the_array() {
        let a = array(vec![
            gateway("https://dead:1", Err("connection refused")),
            gateway("https://b:2", Ok(true)),
            gateway("https://c:3", Err("timed out")),
        ]);
        assert!(a.reachable);
        assert_eq!(a.url.as_deref(), Some("https://b:2"));
        assert_eq!(a.version.as_deref(), Some("1.0"));
        assert_eq!(a.token.as_deref(), Some("accepted"));
        assert_eq!(a.failure.as_deref(), Some("unreachable"));
        assert_eq!(
            a.error.as_deref(),
            Some("https://dead:1: connection refused; https://c:3: timed out")
        );
        let text = {
            let st = Status {
                version: "v".into(),
                configuration: ConfigStatus {
                    path: "p".into(),
                    present: true,
                    array: Some("https://dead:1, https://b:2, https://c:3".into()),
                    array_urls: vec![],
                    fingerprint: None,
                    token: None,
                    error: None,
                },
                registrations: Registrations {
                    com_class: ComStatus {
                        registered: true,
                        clsid: "c".into(),
                        local_server32: None,
                        appid: None,
                        local_service: None,
                        launch_permission: true,
                        access_permission: true,
                        error: None,
                    },
                    service: ServiceStatus {
                        registered: true,
                        name: "s".into(),
                        state: None,
                        image_path: None,
                        error: None,
                    },
                    event_source: EventSourceStatus {
                        registered: true,
                        log: "l".into(),
                        name: "n".into(),
                        event_message_file: None,
                        types_supported: None,
                        error: None,
                    },
                    vss: VssStatus {
                        registered: Some(true),
                        provider_id: "p".into(),
                        version: None,
                        error: None,
                    },
                },
                array: a,
            };
            // One gateway down fails the status, though the array answers.
            assert!(!st.ok());
            st.report().to_string()
        };
        assert!(text.contains("1 of 3 gateways answer"), "{text}");
        for url in ["https://dead:1", "https://b:2", "https://c:3"] {
            assert!(text.contains(url), "{url}: {text}");
        }
    }

    #[test]
    fn no_gateway_answers() {
        let a = array(vec![
            gateway("https://a:1", Err("connection refused")),
            gateway("https://b:2", Err("certificate mismatch")),
        ]);
        assert!(!a.reachable);
        assert_eq!(a.url.as_deref(), Some("https://a:1"));
        assert_eq!(a.token, None);
        assert_eq!(
            a.error.as_deref(),
            Some("https://a:1: connection refused; https://b:2: certificate mismatch")
        );
        // An error that names its URL already is not prefixed with it again.
        let a = array(vec![
            gateway(
                "https://a:1",
                Err("cannot be reached: https://a:1: refused"),
            ),
            gateway("https://b:2", Err("timed out")),
        ]);
        assert_eq!(
            a.error.as_deref(),
            Some("cannot be reached: https://a:1: refused; https://b:2: timed out")
        );
    }
}
