//! The example diskshadow scripts of `examples/vss/`, run from their files on two hosts of a
//! SAN whose LUNs are real files, with the BCD passed between the hosts as a file.

use std::path::PathBuf;

use lab::memory_array::MemoryArray;
use lab::reference::MemoryLab;
use lab::san::MemorySan;
use lab::shadowlun_lab::ShadowlunLab;
use vss::Hresult;
use vss_emulator::conformance::{Ctx, Lab};
use vss_emulator::coordinator::Config;
use vss_emulator::script::{Environment, run_script, run_script_streaming};

fn example(name: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/vss")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn examples_run_end_to_end(lab: Box<dyn Lab>) {
    let dir = tempfile::tempdir().unwrap();
    let ctx = Ctx::new(lab);
    let a = ctx
        .rig(
            "iqn.2026-01.org.shadowlun.test:host-a",
            Config::default(),
            vec![],
        )
        .unwrap();
    let b = ctx
        .bare_rig(
            "iqn.2026-01.org.shadowlun.test:host-b",
            Config::default(),
            vec![],
        )
        .unwrap();
    let originals = ctx.lab().lun_count().unwrap();
    a.host.write_volume("E:", 0, &[0xA1; 512]).unwrap();

    let mut env_a = Environment::new(a.coord.clone(), dir.path());
    let r = run_script(&example("transportable-backup.dsh"), &mut env_a).unwrap();
    assert_eq!(r.created.len(), 1);
    let set = r.created[0];
    let bcd = vss_emulator::bcd::Bcd::load(&dir.path().join("backup.json")).unwrap();
    assert_eq!(bcd.set.snapshot_set_id, set);
    assert_eq!(bcd.set.luns.len(), 3, "E: on one LUN, G: on two");
    assert_eq!(bcd.aliases.len(), 2);
    // A transportable set is not stored on the creating host: it lives in its BCD.
    assert!(
        r.output
            .iter()
            .any(|l| l == "Number of shadow copies listed: 0"),
        "{:?}",
        r.output
    );
    // After the snapshot, the source changes.
    a.host.write_volume("E:", 0, &[0xB2; 512]).unwrap();

    let mut env_b = Environment::new(b.coord.clone(), dir.path());
    let r = run_script(&example("import-and-break.dsh"), &mut env_b).unwrap();
    assert_eq!(r.imports, vec![Hresult::S_OK]);
    // Broken writable: ordinary volumes on host B holding the point-in-time data.
    let vols = b.host.volumes();
    assert_eq!(vols.len(), 2);
    assert!(vols.iter().all(|v| !v.read_only));
    let e_copy = vols.iter().find(|v| v.extents.len() == 1).unwrap();
    assert_eq!(
        b.host.read_volume(&e_copy.name, 0, 512).unwrap(),
        vec![0xA1; 512]
    );
    assert!(
        b.coord.query().is_empty(),
        "a broken set is no longer tracked"
    );

    let mut env_r = Environment::new(a.coord.clone(), dir.path());
    run_script(&example("resync.dsh"), &mut env_r).unwrap();
    assert_eq!(a.host.read_volume("E:", 0, 512).unwrap(), vec![0xA1; 512]);

    let before = ctx.lab().lun_count().unwrap();
    let mut env_d = Environment::new(a.coord.clone(), dir.path());
    let r = run_script(&example("persistent-delete.dsh"), &mut env_d).unwrap();
    assert!(
        r.output.iter().any(|l| l == "1 shadow copies deleted."),
        "{:?}",
        r.output
    );
    assert_eq!(
        ctx.lab().lun_count().unwrap(),
        before,
        "snapshot LUN reclaimed"
    );
    assert!(before > originals);

    let mut env_p = Environment::new(a.coord.clone(), dir.path());
    let r = run_script(&example("plex.dsh"), &mut env_p).unwrap();
    assert_eq!(r.created.len(), 1);
    let attrs = r
        .output
        .iter()
        .find(|l| l.contains("- Attributes:"))
        .unwrap_or_else(|| panic!("{:?}", r.output));
    assert!(attrs.contains("Plex"), "{attrs}");
    assert!(
        r.output
            .iter()
            .any(|l| l == "Number of shadow copies listed: 0"),
        "{:?}",
        r.output
    );
    assert_eq!(ctx.lab().lun_count().unwrap(), before, "plex LUN reclaimed");
}

#[test]
fn example_scripts_run_on_file_backed_luns_with_the_reference_provider() {
    let dir = tempfile::tempdir().unwrap();
    let san = MemorySan::in_dir(dir.path().join("luns")).unwrap();
    examples_run_end_to_end(Box::new(MemoryLab { san: san.clone() }));
    let files = std::fs::read_dir(dir.path().join("luns")).unwrap().count();
    assert_eq!(files, san.luns().len(), "one file per LUN");
}

#[test]
fn example_scripts_run_with_the_shadowlun_provider() {
    examples_run_end_to_end(Box::new(ShadowlunLab {
        array: MemoryArray::new(),
    }));
}

#[test]
fn a_failing_command_reports_its_line_and_hresult() {
    let ctx = Ctx::new(Box::new(MemoryLab {
        san: MemorySan::new(),
    }));
    let a = ctx
        .rig(
            "iqn.2026-01.org.shadowlun.test:a",
            Config::default(),
            vec![],
        )
        .unwrap();
    let mut env = Environment::new(a.coord.clone(), std::env::temp_dir());
    let e = run_script("begin backup\nadd volume Q:\n", &mut env).unwrap_err();
    assert_eq!(e.line, 2);
    assert_eq!(e.hresult(), Some(Hresult::VSS_E_OBJECT_NOT_FOUND));
    let e = run_script("break %nothing%\n", &mut env).unwrap_err();
    assert_eq!(e.to_string(), "line 1: unknown variable %nothing%");
}

#[test]
fn volume_names_variables_exec_and_exit_as_diskshadow_has_them() {
    let ctx = Ctx::new(Box::new(ShadowlunLab {
        array: MemoryArray::new(),
    }));
    let a = ctx
        .rig(
            "iqn.2026-01.org.shadowlun.test:a",
            Config::default(),
            vec![],
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let base = ctx.lab().lun_count().unwrap();
    let mut env = Environment::new(a.coord.clone(), dir.path());
    let mut printed = Vec::new();
    let r = run_script_streaming(&example("names-and-variables.dsh"), &mut env, &mut |l| {
        printed.push(l.to_string())
    })
    .unwrap();
    assert_eq!(printed, r.output, "every line reaches the sink");
    assert!(r.exited, "`exit` ends the script");
    let q = a.coord.query();
    // e:\ and the mount point were taken; VSS_SHADOW_2 (G:) was deleted by id via a variable.
    assert_eq!(q.len(), 1, "{:?}", r.output);
    assert_eq!(q[0].original_volume, "E:");
    let shadow1 = env.vars()["vss_shadow_1"].clone();
    assert_eq!(format!("{{{}}}", q[0].snapshot_id), shadow1);
    // exec saw the script's variables in its environment.
    assert!(
        r.output.contains(&format!("VSS_SHADOW_1={shadow1}")),
        "{:?}",
        r.output
    );
    assert!(
        r.output
            .contains(&format!("VSS_SHADOW_SET={}", env.vars()["vss_shadow_set"]))
    );
    // diskshadow's block layout.
    assert!(
        r.output
            .iter()
            .any(|l| l == &format!("\t* Shadow copy ID = {shadow1}\t\t%VSS_SHADOW_1%")),
        "{:?}",
        r.output
    );
    let original = format!(
        "\t\t- Original volume name: {} [E:\\]",
        a.host.volume("E:").unwrap().guid_path()
    );
    assert!(r.output.contains(&original), "{:?}", r.output);
    assert!(
        r.output
            .iter()
            .any(|l| l == "Number of providers registered: 1")
    );
    assert!(!r.output.iter().any(|l| l == "after exit"));
    let run = run_script("delete shadows all\n", &mut env).unwrap();
    assert_eq!(run.output, vec!["1 shadow copies deleted."]);
    assert_eq!(ctx.lab().lun_count().unwrap(), base);
}

#[test]
fn output_comes_as_commands_run_and_a_failure_stops_the_script() {
    let ctx = Ctx::new(Box::new(MemoryLab {
        san: MemorySan::new(),
    }));
    let a = ctx
        .rig(
            "iqn.2026-01.org.shadowlun.test:a",
            Config::default(),
            vec![],
        )
        .unwrap();
    let base = ctx.lab().lun_count().unwrap();
    let mut env = Environment::new(a.coord.clone(), std::env::temp_dir());
    // A syntax error on line 4: nothing runs, not even line 2's create.
    let e = run_script(
        "set context persistent nowriters\nadd volume E:\ncreate\nlist shadowz\n",
        &mut env,
    )
    .unwrap_err();
    assert_eq!(e.line, 4);
    assert!(e.is_syntax());
    assert_eq!(
        ctx.lab().lun_count().unwrap(),
        base,
        "a script that does not parse ran"
    );
    // The set is created and its id printed before line 4 fails; line 5 never runs.
    let mut printed = Vec::new();
    let e = run_script_streaming(
        "set context persistent nowriters\nadd volume E:\ncreate\nrevert %VSS_SHADOW_1%\ndelete shadows all\n",
        &mut env,
        &mut |l| printed.push(l.to_string()),
    )
    .unwrap_err();
    assert_eq!(e.line, 4);
    assert_eq!(e.hresult(), Some(Hresult::E_NOTIMPL));
    assert!(
        printed
            .iter()
            .any(|l| l.starts_with("Shadow copy set ID {")),
        "{printed:?}"
    );
    assert_eq!(a.coord.query().len(), 1, "line 5 ran after the failure");
    // clientaccessible is the system provider's: the first add volume fails with the VSS code.
    let mut env = Environment::new(a.coord.clone(), std::env::temp_dir());
    let e = run_script("set context clientaccessible\nadd volume E:\n", &mut env).unwrap_err();
    assert_eq!(
        (e.line, e.hresult()),
        (2, Some(Hresult::VSS_E_VOLUME_NOT_SUPPORTED))
    );
}
