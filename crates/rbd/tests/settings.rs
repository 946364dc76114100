//! Settings refused before any connection: the error names the setting, never its value
//! (a value may be a secret). Needs only librados, not a cluster; skipped, saying so, where
//! librados is not installed.

use rbd::{Cluster, ClusterConfig, Error};

fn connect(settings: &[(&str, &str)]) -> Option<Error> {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("ceph.conf");
    // A monitor nobody listens on: the settings are refused before it is asked.
    std::fs::write(&conf, "[global]\nmon host = v2:127.0.0.1:9\n").unwrap();
    let r = Cluster::connect(&ClusterConfig {
        conf_path: Some(conf),
        timeout: std::time::Duration::from_secs(2),
        settings: settings
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..ClusterConfig::default()
    });
    match r {
        Err(Error::NotInstalled(why)) => {
            eprintln!("skipped: librados is not installed ({why})");
            None
        }
        Err(e) => Some(e),
        Ok(_) => panic!("connected with settings {settings:?}"),
    }
}

#[test]
fn an_unknown_setting_is_refused_by_name_without_its_value() {
    let Some(e) = connect(&[("no_such_setting_at_all", "value-sekrit")]) else {
        return;
    };
    let text = e.to_string();
    assert!(text.contains("setting no_such_setting_at_all"), "{text}");
    assert!(!text.contains("sekrit"), "{text}");
}

#[test]
fn a_value_c_cannot_carry_is_refused_without_showing_it() {
    let Some(e) = connect(&[("key", "AQBsekrit\0rest")]) else {
        return;
    };
    assert!(matches!(e, Error::Nul(_)), "{e}");
    let text = e.to_string();
    assert!(text.contains("the value of key"), "{text}");
    assert!(!text.contains("sekrit"), "{text}");
}
