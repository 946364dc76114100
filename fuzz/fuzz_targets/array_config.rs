//! The array's configuration file (`/etc/shadowlun/array.toml`): any text is refused with an
//! error that names the file, or read into a configuration that passed validation; what was
//! read writes out as TOML that reads back as the same configuration. Seeds are the default
//! configuration with each storage engine, and every setting given:
//! `SHADOWLUN_FUZZ_SEEDS=<dir> cargo fuzz run array_config -- -runs=0`.
#![no_main]

use array::{BackendConfig, Config, ConfigError};
use libfuzzer_sys::fuzz_target;
use shadowlun_fuzz::{seed_dir, write_seed};

const ORIGIN: &str = "/etc/shadowlun/array.toml";

fn write_seeds() {
    let Some(dir) = seed_dir() else { return };
    for kind in BackendConfig::KINDS {
        let cfg = Config {
            backend: BackendConfig::with_defaults(kind).expect("a known kind"),
            ..Config::default()
        };
        let text = toml::to_string(&cfg).expect("a configuration writes as TOML");
        write_seed(&dir, &format!("default-{kind}"), text.as_bytes());
    }
    let full = r#"pool_dir = "/var/lib/shadowlun"
iscsi_portals = ["0.0.0.0:3260", "[::1]:3260"]
api_listen = "127.0.0.1:8443"
metrics_listen = "127.0.0.1:9464"
pool_warning_percent = 70
pool_critical_percent = 95
target_name = "iqn.2026-01.org.example:array-1"
iscsi_relative_port = 2
iscsi_portal_group_tag = 2
iscsi_require_chap = true
reaper_timeout_secs = 600
reaper_interval_secs = 30
max_luns_per_set = 64
max_lun_bytes = 1099511627776
tls_cert = "/etc/shadowlun/cert.pem"
tls_key = "/etc/shadowlun/key.pem"
tls_names = ["array.example", "10.0.0.5"]

[backend]
kind = "engine"
"#;
    write_seed(&dir, "every-setting", full.as_bytes());
    write_seed(&dir, "empty", b"");
}

fuzz_target!(init: write_seeds(), |input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    match Config::parse(text, ORIGIN) {
        Ok(cfg) => {
            assert!(cfg.iscsi_relative_port >= 1);
            assert!(cfg.pool_warning_percent >= 1);
            assert!(cfg.pool_warning_percent <= cfg.pool_critical_percent);
            assert!(cfg.pool_critical_percent <= 100);
            assert!(cfg.max_luns_per_set >= 1);
            let _ = (cfg.reaper_timeout(), cfg.journal_path(), cfg.cert_path());
            let written = toml::to_string(&cfg).expect("a configuration writes as TOML");
            let again = Config::parse(&written, ORIGIN)
                .unwrap_or_else(|e| panic!("{written}\nreads back: {e}"));
            assert_eq!(again, cfg, "a configuration round-trips through TOML");
        }
        Err(e @ ConfigError::Invalid { .. }) => {
            let shown = e.to_string();
            assert!(shown.contains(ORIGIN), "the error names the file: {shown}");
        }
        Err(e @ ConfigError::Read { .. }) => panic!("no file was read, yet: {e}"),
    }
});
