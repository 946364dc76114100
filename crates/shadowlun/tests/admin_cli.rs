//! Administration with the real CLI against the real daemon, both as processes: LUNs named
//! by id or by name in every command, renamed without an outage, listed by number.

mod common;

use common::*;

const SQL01: &str = "iqn.1991-05.com.microsoft:sql01";

#[test]
fn luns_by_name_or_id_renamed_and_listed_by_number() {
    let pool = Pool::new("admin-names");
    let d = start(&pool.0);
    for i in 1..=10 {
        d.json(&["lun", "create", &format!("vol{i}"), "4MiB"]);
    }
    d.json(&["lun", "create", "sql-data", "8MiB"]);
    d.json(&["host", "add", "sql01", "--initiator", SQL01]);
    // By name wherever a LUN is named.
    let h = d.json(&["host", "map", "sql01", "sql-data"]);
    assert_eq!(h[0]["luns"][0]["lun"], "lun-11");
    let l = d.json(&["lun", "show", "sql-data"]);
    assert_eq!(l[0]["id"], "lun-11");
    assert_eq!(l[0]["mapped_to"][0]["host"], "sql01");

    // Renamed while mapped: same id, same identity, still mapped.
    let r = d.json(&["lun", "rename", "sql-data", "sql-data-2025"]);
    assert_eq!(r[0]["id"], "lun-11");
    assert_eq!(r[0]["serial"], l[0]["serial"]);
    assert_eq!(r[0]["mapped_to"], l[0]["mapped_to"]);
    let (code, err) = d.fails(&["lun", "show", "sql-data"]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("sql-data") && err.contains("lun list"),
        "{err}"
    );
    let (code, err) = d.fails(&["lun", "rename", "vol1", "vol2"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("lun-2") && err.contains("unique"), "{err}");
    // A name with a slash is a name the array does not know, not another route.
    let (code, _) = d.fails(&["lun", "show", "../hosts"]);
    assert_eq!(code, 3);
    d.text(&["host", "unmap", "sql01", "sql-data-2025"]);
    d.text(&["lun", "delete", "sql-data-2025"]);

    // lun-2 before lun-10, in the table as in JSON.
    let table = d.text(&["lun", "list"]);
    let ids: Vec<&str> = table
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let want: Vec<String> = (1..=10).map(|i| format!("lun-{i}")).collect();
    assert_eq!(ids, want, "{table}");
    let json = d.json(&["lun", "list"]);
    let ids: Vec<&str> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, want);
}
