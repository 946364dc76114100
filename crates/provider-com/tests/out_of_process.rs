//! Across the process boundary under Wine: activation with CoCreateInstance(CLSCTX_LOCAL_SERVER),
//! every call marshalled by the widl proxy/stub (tools/wine), arguments verified on the far
//! side; then the real `shadowlun-provider.exe` installed, activated and uninstalled.
//!
//! A libtest-less test (`harness = false`): started by COM with `-Embedding`, this executable
//! is the server (the provider object over a checking double, through the same
//! `server::serve` the real exe uses).
#![cfg_attr(not(windows), allow(unused))]

#[cfg(windows)]
mod common;

#[cfg(not(windows))]
fn main() {}

#[cfg(windows)]
fn main() {
    windows_main::main()
}

#[cfg(windows)]
mod windows_main {
    use std::process::Command;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::common::{FarSide, sample_devices, sample_luns, sample_targets, tagged};
    use provider::{HardwareProvider, UnloadAnswer};
    use provider_com::ids::{CLSID_PROVIDER, braced};
    use provider_com::registry::{self, HKEY_LOCAL_MACHINE};
    use provider_com::server::{self, Lifetime};
    use provider_com::{ComClient, EventLogWriter, VetoEntry, VetoLog};
    use vss::{HardwareOptions, Hresult, LunInfo, SnapshotContext};
    use windows::Win32::System::Com::{COINIT_MULTITHREADED, CoInitializeEx};
    use windows_core::GUID;

    /// The class id of this test server (not the provider's).
    const CLSID_TEST: GUID = GUID::from_u128(0x1d0a54c1_8e5b_4f43_9a57_3c1f0e6b2d77);

    struct Stderr;
    impl EventLogWriter for Stderr {
        fn write(&self, e: &VetoEntry) {
            eprintln!("event log: {}", e.message());
        }
    }

    fn serve() {
        server::init_com_security().expect("COM security");
        let core: Arc<dyn HardwareProvider> = Arc::new(FarSide::default());
        server::serve(
            &CLSID_TEST,
            Arc::new(move || Ok(core.clone())),
            VetoLog::new(Arc::new(Stderr)),
            Lifetime::new(),
            Duration::from_secs(3),
        )
        .expect("serve");
        server::uninit_com();
    }

    fn windows_path(p: &str) -> String {
        if p.starts_with('/') {
            format!("Z:{}", p.replace('/', "\\"))
        } else {
            p.strip_prefix("\\\\?\\").unwrap_or(p).to_string()
        }
    }

    fn register_self() {
        let exe = std::env::current_exe().unwrap().display().to_string();
        let key = format!(
            "SOFTWARE\\Classes\\CLSID\\{}\\LocalServer32",
            braced(&CLSID_TEST)
        );
        registry::set_string(
            HKEY_LOCAL_MACHINE,
            &key,
            "",
            &format!("\"{}\"", windows_path(&exe)),
        )
        .unwrap();
    }

    fn unregister_self() {
        let key = format!("SOFTWARE\\Classes\\CLSID\\{}", braced(&CLSID_TEST));
        registry::delete_tree(HKEY_LOCAL_MACHINE, &key).unwrap();
    }

    fn run(name: &str, f: impl FnOnce()) {
        let t = Instant::now();
        f();
        println!("test {name} ... ok ({} ms)", t.elapsed().as_millis());
    }

    fn full_sequence_crosses_the_process_boundary_intact() {
        let t = Instant::now();
        let c =
            ComClient::create_local_server(&CLSID_TEST).expect("CoCreateInstance(LOCAL_SERVER)");
        println!("  activation took {} ms", t.elapsed().as_millis());
        let n = 3;
        let dev = sample_devices(n);
        let set = uuid::Uuid::from_u128(0x5e7);
        let ctx = SnapshotContext::from_i32(0x1_0000);
        c.on_load().unwrap();
        let mut l = sample_luns(n);
        assert!(c.are_luns_supported(ctx, &dev, &mut l).unwrap());
        for (i, x) in l.iter().enumerate() {
            // The device names travelled there (checked on the far side: [string] VSS_PWSZ,
            // every character) and the rewritten [in,out] serial travelled back.
            assert_eq!(
                x.serial_number.as_deref(),
                Some(tagged(&format!("SN{i:04}")).as_str())
            );
            assert_eq!(x.interconnects, sample_luns(n)[i].interconnects);
        }
        let mut l = sample_luns(n);
        c.begin_prepare_snapshot(set, uuid::Uuid::from_u128(1), ctx, &dev, &mut l)
            .unwrap();
        c.end_prepare_snapshots(set).unwrap();
        c.pre_commit_snapshots(set).unwrap();
        c.commit_snapshots(set).unwrap();
        c.post_commit_snapshots(set, n as i32).unwrap();
        let mut dst = vec![LunInfo::default(); n];
        c.get_target_luns(&dev, &sample_luns(n), &mut dst).unwrap();
        assert_eq!(dst, sample_targets(n));
        c.pre_final_commit_snapshots(set).unwrap();
        c.post_final_commit_snapshots(set).unwrap();
        c.locate_luns(&dst).unwrap();
        let mut found = sample_targets(1)[0].clone();
        assert!(c.fill_in_lun_info("\\\\?\\disk#snap", &mut found).unwrap());
        assert_eq!(found.serial_number.as_deref(), Some("SNAP-SN0000"));
        c.on_lun_state_change(
            &sample_targets(n),
            &sample_luns(n),
            HardwareOptions::ONLUNSTATECHANGE_DO_MASK_LUNS,
        )
        .unwrap();
        let op = c.resync_luns(&sample_targets(n), &sample_luns(n)).unwrap();
        assert_eq!(
            op.query_status().unwrap(),
            (Hresult::VSS_S_ASYNC_PENDING, 40)
        );
        assert_eq!(op.cancel().unwrap(), Hresult::S_OK);
        assert_eq!(
            op.query_status().unwrap(),
            (Hresult::VSS_S_ASYNC_CANCELLED, 100)
        );
        drop(op);
        c.on_lun_empty("\\\\?\\disk#snap", &sample_targets(1)[0])
            .unwrap();
        // A veto crosses as its HRESULT.
        assert_eq!(
            c.commit_snapshots(uuid::Uuid::from_u128(0xbad)),
            Err(Hresult::VSS_E_PROVIDER_VETO)
        );
        // 64 LUNs in one call (a full set).
        let mut big = sample_luns(64);
        assert!(
            c.are_luns_supported(ctx, &sample_devices(64), &mut big)
                .unwrap()
        );
        assert_eq!(
            big[63].serial_number.as_deref(),
            Some(tagged("SN0063").as_str())
        );
        // Every argument-checked call above passed its far-side check.
        assert_eq!(c.get_provider_capabilities().unwrap(), 9);
        assert_eq!(c.on_unload(false).unwrap(), UnloadAnswer::Ready);
    }

    fn real_exe() -> String {
        windows_path(env!("CARGO_BIN_EXE_shadowlun-provider"))
    }

    fn exe(args: &[&str]) -> (i32, String) {
        let out = Command::new(real_exe())
            .args(args)
            .output()
            .expect("spawn shadowlun-provider.exe");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        (out.status.code().unwrap_or(-1), text)
    }

    fn installed_exe_is_activated_and_uninstalled() {
        let fp = "ab".repeat(32);
        let (code, out) = exe(&[
            "install",
            "--array",
            "https://127.0.0.1:9",
            "--token",
            "t0ken",
            "--fingerprint",
            &fp,
        ]);
        print!("{out}");
        assert_eq!(
            code, 3,
            "every step but the VSS registration succeeds under Wine"
        );
        assert!(
            out.contains("VSS registration   FAILED   HRESULT 0x80040154"),
            "{out}"
        );
        for step in ["configuration", "COM class", "service", "event source"] {
            assert!(
                out.lines()
                    .any(|l| l.starts_with(step) && l.contains(" done ")),
                "{step}: {out}"
            );
        }
        status_reads_every_registration_back(&fp);

        // Upgrade in place: a second install leaves the same state.
        let (code2, out2) = exe(&[
            "install",
            "--array",
            "https://127.0.0.1:9",
            "--token",
            "t0ken",
            "--fingerprint",
            &fp,
        ]);
        assert_eq!(code2, 3);
        assert!(out2.contains("ShadowlunProvider Updated"), "{out2}");

        let t = Instant::now();
        let c = ComClient::create_local_server(&CLSID_PROVIDER)
            .expect("activate the installed provider");
        println!(
            "  activation of the installed exe took {} ms",
            t.elapsed().as_millis()
        );
        c.on_load().unwrap();
        // COM honoured the AppID's LocalService: the server runs as the service.
        let log =
            std::fs::read_to_string(provider_com::config::dir().join("provider.log")).unwrap();
        let last_start = log
            .lines()
            .rev()
            .find(|l| l.contains("started by"))
            .unwrap();
        assert!(
            last_start.contains("service control manager"),
            "{last_start}"
        );
        // The real core answers: LUNs of another vendor are not ours (no array round trip).
        let mut other = vec![LunInfo {
            vendor_id: Some("OTHERVND".into()),
            ..sample_luns(1)[0].clone()
        }];
        assert!(
            !c.are_luns_supported(SnapshotContext::from_i32(0), &sample_devices(1), &mut other)
                .unwrap()
        );
        assert_eq!(other[0].vendor_id.as_deref(), Some("OTHERVND"));
        assert_eq!(c.on_unload(false).unwrap(), UnloadAnswer::Ready);
        drop(c);

        let (code, out) = exe(&["uninstall"]);
        print!("{out}");
        assert_eq!(code, 0);
        let (code, out) = exe(&["uninstall"]);
        assert_eq!(code, 0, "uninstall of nothing succeeds: {out}");
        for step in ["event source", "service", "COM class", "configuration"] {
            assert!(
                out.lines()
                    .any(|l| l.starts_with(step) && l.contains(" absent")),
                "{step}: {out}"
            );
        }
    }

    fn status_json() -> (i32, serde_json::Value) {
        let (code, out) = exe(&["status", "--json"]);
        let v = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        (code, v)
    }

    /// `status --json` after `install`: every registration read back from the registry and
    /// the SCM, the VSS coordinator's absence reported with its HRESULT, the array probed.
    fn status_reads_every_registration_back(fp: &str) {
        let (code, s) = status_json();
        println!("{s:#}");
        assert_eq!(code, 1, "not everything is in place under Wine: {s}");
        let c = &s["configuration"];
        assert_eq!(c["present"], true);
        assert_eq!(c["array"], "https://127.0.0.1:9");
        assert_eq!(c["fingerprint"], fp);
        assert_eq!(c["token"], "stored");
        assert!(!s.to_string().contains("t0ken"), "the token leaked: {s}");
        let r = &s["registrations"];
        let com = &r["com_class"];
        assert_eq!(com["registered"], true, "{com}");
        assert_eq!(com["clsid"], braced(&CLSID_PROVIDER));
        let server = com["local_server32"].as_str().unwrap();
        assert!(
            server.to_lowercase().contains(&real_exe().to_lowercase()),
            "{server}"
        );
        assert_eq!(com["local_service"], "ShadowlunProvider");
        assert_eq!(com["launch_permission"], true);
        assert_eq!(com["access_permission"], true);
        let svc = &r["service"];
        assert_eq!(svc["registered"], true, "{svc}");
        assert!(
            svc["image_path"].as_str().unwrap().ends_with("\" service"),
            "{svc}"
        );
        let ev = &r["event_source"];
        assert_eq!(ev["registered"], true, "{ev}");
        assert_eq!(ev["name"], "shadowlun");
        assert_eq!(ev["types_supported"], 7);
        let message_file = ev["event_message_file"].as_str().unwrap();
        assert_eq!(
            message_file.to_lowercase(),
            real_exe().to_lowercase(),
            "{ev}"
        );
        event_texts_come_from_the_message_file(message_file);
        let vss = &r["vss"];
        assert_eq!(vss["registered"], serde_json::Value::Null, "{vss}");
        assert!(
            vss["error"].as_str().unwrap().contains("0x80040154"),
            "{vss}"
        );
        let a = &s["array"];
        assert_eq!(a["reachable"], false, "{a}");
        assert_eq!(a["failure"], "unreachable", "{a}");

        // Against the real array daemon the CI stage starts: reachable, its identity, and
        // the token checked by an authenticated call (a host token accepted, the admin
        // token refused for a provider).
        let (Ok(url), Ok(afp), Ok(admin_token)) = (
            std::env::var("SHADOWLUN_TEST_ARRAY"),
            std::env::var("SHADOWLUN_TEST_FINGERPRINT"),
            std::env::var("SHADOWLUN_TEST_ADMIN_TOKEN"),
        ) else {
            println!("  (no SHADOWLUN_TEST_ARRAY: the reachable-array half is skipped)");
            return;
        };
        let admin = provider::https::Client::new(provider::https::ClientConfig::new(
            &url,
            &admin_token,
            &afp,
        ))
        .unwrap();
        let health = admin.health().unwrap();
        let tag = format!("status-{}", std::process::id());
        let host: api::CreatedHost = admin
            .post(
                api::routes::ADMIN_HOSTS,
                &api::CreateHost {
                    name: tag.clone(),
                    initiators: vec![format!("iqn.1991-05.com.microsoft:{tag}")],
                    chap_secret: None,
                    import_from: vec![],
                },
            )
            .unwrap();
        for (token, expect) in [(host.token.as_str(), "accepted"), (&admin_token, "refused")] {
            let (code, _) = exe(&[
                "install",
                "--array",
                &url,
                "--token",
                token,
                "--fingerprint",
                &afp,
            ]);
            assert_eq!(code, 3);
            let (_, s) = status_json();
            let a = &s["array"];
            assert_eq!(a["reachable"], true, "{a}");
            assert_eq!(a["target"], health.target.as_str(), "{a}");
            assert_eq!(a["version"], health.version.as_str(), "{a}");
            assert_eq!(a["token"], expect, "{a}");
            if expect == "refused" {
                assert_eq!(a["failure"], "token-refused", "{a}");
            }
        }
        // A pinned fingerprint that is not the array's: the handshake is refused.
        let wrong = if afp.starts_with("00") { "11" } else { "00" }.to_string() + &afp[2..];
        let (code, _) = exe(&[
            "install",
            "--array",
            &url,
            "--token",
            &host.token,
            "--fingerprint",
            &wrong,
        ]);
        assert_eq!(code, 3);
        let (_, s) = status_json();
        assert_eq!(s["array"]["reachable"], false, "{s}");
        assert_eq!(s["array"]["failure"], "certificate-mismatch", "{s}");

        several_gateways_are_stored_and_each_probed(&url, &afp, &host.token);
    }

    /// `install --array` with several gateways (a dead one first), repeated and
    /// comma-separated: the file keeps the list, `status` probes each; a file written with one
    /// `array_url` is still read.
    fn several_gateways_are_stored_and_each_probed(url: &str, fp: &str, token: &str) {
        let dead = "https://127.0.0.1:9";
        let (code, out) = exe(&[
            "install",
            "--array",
            &format!("{dead}/, {url}"),
            "--array",
            url,
            "--token",
            token,
            "--fingerprint",
            fp,
        ]);
        assert_eq!(code, 3, "{out}");
        let file = std::fs::read_to_string(provider_com::config::path()).unwrap();
        assert!(
            file.contains(&format!(r#"array_urls = ["{dead}", "{url}"]"#)),
            "{file}"
        );
        let (code, s) = status_json();
        assert_eq!(code, 1, "{s}");
        let c = &s["configuration"];
        assert_eq!(c["array_urls"], serde_json::json!([dead, url]), "{c}");
        assert_eq!(c["array"], format!("{dead}, {url}"), "{c}");
        let a = &s["array"];
        // The array answers through the second gateway, as the provider would reach it.
        assert_eq!(a["reachable"], true, "{a}");
        assert_eq!(a["url"], url, "{a}");
        assert_eq!(a["token"], "accepted", "{a}");
        assert_eq!(a["failure"], "unreachable", "{a}");
        let error = a["error"].as_str().unwrap();
        assert!(error.contains(dead) && !error.contains(url), "{a}");
        assert_eq!(error.matches(dead).count(), 1, "the URL is named once: {a}");
        let g = a["gateways"].as_array().unwrap();
        assert_eq!(g.len(), 2, "{a}");
        assert_eq!(
            (&g[0]["url"], &g[0]["reachable"], &g[0]["failure"]),
            (
                &serde_json::json!(dead),
                &serde_json::json!(false),
                &serde_json::json!("unreachable")
            ),
            "{a}"
        );
        assert_eq!(
            (&g[1]["url"], &g[1]["reachable"], &g[1]["token"]),
            (
                &serde_json::json!(url),
                &serde_json::json!(true),
                &serde_json::json!("accepted")
            ),
            "{a}"
        );
        let (_, table) = exe(&["status"]);
        assert!(table.contains("1 of 2 gateways answer"), "{table}");
        assert!(
            table
                .lines()
                .any(|l| l.starts_with("gateway") && l.contains(dead)),
            "{table}"
        );

        // A URL that is not https is refused before anything is written.
        let (code, out) = exe(&[
            "install",
            "--array",
            &format!("{url},http://127.0.0.1:9"),
            "--token",
            token,
            "--fingerprint",
            fp,
        ]);
        assert_eq!(code, 2, "{out}");
        assert_eq!(
            std::fs::read_to_string(provider_com::config::path()).unwrap(),
            file
        );

        // The file an older version wrote: one `array_url`. Read as a list of one, probed,
        // and kept as it is by an install without settings.
        let blob = file.lines().find(|l| l.starts_with("token_dpapi")).unwrap();
        let old = format!("array_url = \"{url}\"\nfingerprint = \"{fp}\"\n{blob}\n");
        provider_com::config::restore(old.as_bytes()).unwrap();
        let (_, s) = status_json();
        assert_eq!(
            s["configuration"]["array_urls"],
            serde_json::json!([url]),
            "{s}"
        );
        assert_eq!(s["configuration"]["token"], "stored", "{s}");
        let a = &s["array"];
        assert_eq!(a["reachable"], true, "{a}");
        assert_eq!(a["token"], "accepted", "{a}");
        assert_eq!(a["error"], serde_json::Value::Null, "{a}");
        assert_eq!(a["gateways"].as_array().unwrap().len(), 1, "{a}");
        let (code, out) = exe(&["install"]);
        assert_eq!(code, 3, "{out}");
        assert!(out.contains(&format!("kept (array {url})")), "{out}");
    }

    /// The message table's texts as written in `res/messages.mc`, by event id.
    fn mc_texts() -> Vec<(u32, String)> {
        let mc = include_str!("../res/messages.mc").replace("\r\n", "\n");
        let mut out = Vec::new();
        let mut id = None;
        let mut lines = mc.lines();
        while let Some(l) = lines.next() {
            if let Some(n) = l.strip_prefix("MessageId=") {
                id = Some(n.trim().parse::<u32>().unwrap());
            }
            if l.starts_with("Language=") {
                let mut text = Vec::new();
                for t in lines.by_ref() {
                    if t == "." {
                        break;
                    }
                    text.push(t);
                }
                out.push((id.take().unwrap(), text.join("\n")));
            }
        }
        out
    }

    /// What Event Viewer does with an event: load the source's EventMessageFile as a data
    /// file and format the event id with its inserts (FormatMessageW).
    fn event_texts_come_from_the_message_file(message_file: &str) {
        use windows::Win32::Foundation::FreeLibrary;
        use windows::Win32::System::Diagnostics::Debug::{
            FORMAT_MESSAGE_ARGUMENT_ARRAY, FORMAT_MESSAGE_FROM_HMODULE, FormatMessageW,
        };
        use windows::Win32::System::LibraryLoader::{
            LOAD_LIBRARY_AS_DATAFILE, LOAD_LIBRARY_AS_IMAGE_RESOURCE, LoadLibraryExW,
        };
        use windows_core::HSTRING;

        let texts = mc_texts();
        let ids: Vec<u32> = texts.iter().map(|t| t.0).collect();
        assert_eq!(ids, provider_com::eventlog::EVENT_IDS.to_vec());
        // SAFETY: a path to a PE file, loaded as data only.
        let module = unsafe {
            LoadLibraryExW(
                &HSTRING::from(message_file),
                None,
                LOAD_LIBRARY_AS_DATAFILE | LOAD_LIBRARY_AS_IMAGE_RESOURCE,
            )
        }
        .expect("load the message file");
        let inserts = [
            "CommitSnapshots",
            "HRESULT 0x80042306 VSS_E_PROVIDER_VETO",
            "the array cannot be reached: connection refused",
        ];
        let wide: Vec<HSTRING> = inserts.iter().map(|s| HSTRING::from(*s)).collect();
        let args: Vec<usize> = wide.iter().map(|s| s.as_ptr() as usize).collect();
        for (id, text) in texts {
            let mut buf = vec![0u16; 8192];
            // SAFETY: a loaded module; `args` holds 3 string pointers that outlive the call;
            // buf is writable for its length.
            let n = unsafe {
                FormatMessageW(
                    FORMAT_MESSAGE_FROM_HMODULE | FORMAT_MESSAGE_ARGUMENT_ARRAY,
                    Some(module.0 as *const _),
                    id,
                    0x409,
                    windows_core::PWSTR(buf.as_mut_ptr()),
                    buf.len() as u32,
                    Some(args.as_ptr() as *const _),
                )
            };
            assert!(n > 0, "event {id} has no text in {message_file}");
            let got = String::from_utf16_lossy(&buf[..n as usize]);
            let want = text
                .replace("%r", "\r")
                .replace("%1", inserts[0])
                .replace("%2", inserts[1])
                .replace("%3", inserts[2]);
            assert_eq!(got.trim_end(), want.trim_end(), "event {id}");
        }
        // SAFETY: loaded above.
        let _ = unsafe { FreeLibrary(module) };
    }

    pub fn main() {
        let args: Vec<String> = std::env::args().collect();
        if args
            .iter()
            .any(|a| a.eq_ignore_ascii_case("-Embedding") || a.eq_ignore_ascii_case("/Embedding"))
        {
            serve();
            return;
        }
        // SAFETY: plain COM initialisation of the main thread.
        let _ = unsafe { CoInitializeEx(None, COINIT_MULTITHREADED) };
        register_self();
        run(
            "full_sequence_crosses_the_process_boundary_intact",
            full_sequence_crosses_the_process_boundary_intact,
        );
        unregister_self();
        run(
            "installed_exe_is_activated_and_uninstalled",
            installed_exe_is_activated_and_uninstalled,
        );
        println!("test result: ok. 2 passed");
    }
}
