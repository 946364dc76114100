//! On Windows targets: compiles the event message table (`res/messages.mc`) with windmc and
//! links it into `shadowlun-provider.exe` as a resource (the event source's message file).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=res/messages.mc");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("windows") {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let windmc = if std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu")
        && std::env::var("HOST").is_ok_and(|h| !h.contains("windows"))
    {
        "x86_64-w64-mingw32-windmc"
    } else {
        "windmc"
    };
    let status = Command::new(windmc)
        .arg("-h")
        .arg(&out)
        .arg("-r")
        .arg(&out)
        .arg("res/messages.mc")
        .status()
        .unwrap_or_else(|e| panic!("cannot run {windmc} (mingw-w64 binutils): {e}"));
    assert!(status.success(), "{windmc} failed on res/messages.mc");
    embed_resource::compile(out.join("messages.rc"), embed_resource::NONE)
        .manifest_optional()
        .expect("messages.rc");
}
