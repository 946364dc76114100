//! `shadowlun-provider.exe`: the VSS hardware provider's COM server and its installer.
//!
//! On platforms other than Windows this binary only explains that it is Windows-only.

#[cfg(windows)]
fn main() -> std::process::ExitCode {
    provider_com::cli::main()
}

#[cfg(not(windows))]
fn main() -> std::process::ExitCode {
    eprintln!("shadowlun-provider runs on Windows only");
    std::process::ExitCode::FAILURE
}
