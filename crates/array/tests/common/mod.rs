//! Shared helpers: a daemon on 127.0.0.1:0 in a temp pool, and pinned clients.
#![allow(dead_code)]

use std::net::SocketAddr;

use array::client::{Client, Response};
use array::{Config, RunningArray};

pub struct TestArray {
    pub rt: tokio::runtime::Runtime,
    pub running: Option<RunningArray>,
    pub dir: tempfile::TempDir,
    pub admin_token: String,
}

pub fn config(dir: &std::path::Path) -> Config {
    Config {
        pool_dir: dir.to_path_buf(),
        api_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        iscsi_portals: vec![],
        ..Config::default()
    }
}

impl TestArray {
    /// The SCSI identity of LUN `lun` (`lun-<n>`): the array's id and the LUN's number.
    pub fn identity(&self, lun: &str) -> vss::identity::LunIdentity {
        let n: u64 = lun.trim_start_matches("lun-").parse().unwrap();
        vss::identity::LunIdentity::new(self.running().array.array_id(), n)
    }

    pub fn start() -> Self {
        Self::start_with(|_| {})
    }

    pub fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), tweak)
    }

    /// Stops the daemon; its pool directory is handed back.
    pub fn stop(mut self) -> tempfile::TempDir {
        if let Some(r) = self.running.take() {
            self.rt.block_on(r.shutdown()).unwrap();
        }
        // TestArray implements Drop, so its pool directory is taken out by swapping.
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    pub fn start_in(dir: tempfile::TempDir, tweak: impl FnOnce(&mut Config)) -> Self {
        let mut cfg = config(dir.path());
        tweak(&mut cfg);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let running = rt.block_on(array::start(cfg)).unwrap();
        let admin_token = std::fs::read_to_string(&running.admin_token_path)
            .unwrap()
            .trim()
            .to_string();
        Self {
            rt,
            running: Some(running),
            dir,
            admin_token,
        }
    }

    pub fn running(&self) -> &RunningArray {
        self.running.as_ref().unwrap()
    }

    pub fn client(&self, token: Option<&str>) -> Client {
        Client::new(self.running().api_addr, &self.running().fingerprint, token).unwrap()
    }

    pub fn admin(&self) -> Client {
        self.client(Some(&self.admin_token))
    }
}

impl Drop for TestArray {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            self.rt.block_on(r.shutdown()).unwrap();
        }
    }
}

pub fn problem(r: &Response) -> api::Problem {
    assert_eq!(
        r.content_type.as_deref(),
        Some("application/problem+json"),
        "status {} body {}",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
    let p: api::Problem = r.json().unwrap();
    assert_eq!(p.status, r.status);
    assert!(!p.detail.is_empty());
    p
}

pub fn expect_status(r: &Response, status: u16) {
    assert_eq!(
        r.status,
        status,
        "body: {}",
        String::from_utf8_lossy(&r.body)
    );
}

/// Creates a 1 MiB LUN named `name`; returns its id.
pub fn create_lun(admin: &mut Client, name: &str) -> String {
    let r = admin
        .post(
            api::routes::ADMIN_LUNS,
            &api::CreateLun {
                name: name.into(),
                size_bytes: 1 << 20,
            },
        )
        .unwrap();
    expect_status(&r, 201);
    r.json::<api::LunRecord>().unwrap().id
}

/// Creates a LUN, a host with one initiator, maps it; returns (lun id, host token).
pub fn lun_for_host(admin: &mut Client, lun: &str, host: &str, iqn: &str) -> (String, String) {
    let id = create_lun(admin, lun);
    let r = admin
        .post(
            api::routes::ADMIN_HOSTS,
            &api::CreateHost {
                name: host.into(),
                initiators: vec![iqn.into()],
                chap_secret: None,
                import_from: vec![],
            },
        )
        .unwrap();
    expect_status(&r, 201);
    let created: api::CreatedHost = r.json().unwrap();
    let r = admin
        .post(
            &api::routes::fill(api::routes::ADMIN_MAP, &[("host", host)]),
            &api::MapLun {
                lun: id.clone(),
                lun_number: None,
                shared: false,
            },
        )
        .unwrap();
    expect_status(&r, 200);
    (id, created.token)
}

pub fn set_path(route: &str, set: uuid::Uuid) -> String {
    api::routes::fill(route, &[("set", &set.to_string())])
}
