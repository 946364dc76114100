//! Test scaffolding, never installed: carries provider calls from stdin to the installed
//! `shadowlun-provider.exe` through COM, and its answers back to stdout.
//!
//! It activates the provider with `CoCreateInstance(CLSID_PROVIDER, CLSCTX_LOCAL_SERVER)`, as
//! vssvc does, and answers the line protocol of `lab::relay` with calls on the COM
//! interfaces (marshalled across the process boundary by the widl proxy/stub registered in the
//! Wine prefix). Under Wine, this is how the emulator's conformance catalogue on Linux drives
//! the real exe: `shadowlun vss conformance --lab wine`.
//!
//! Diagnostics go to stderr; stdout carries answers only.

#[cfg(not(windows))]
fn main() {}

#[cfg(windows)]
fn main() -> std::process::ExitCode {
    use std::sync::Arc;

    use provider_com::ComClient;
    use provider_com::ids::CLSID_PROVIDER;
    use windows::Win32::System::Com::{COINIT_MULTITHREADED, CoInitializeEx, CoUninitialize};

    fn enter_mta() {
        // SAFETY: joins the calling thread to the multithreaded apartment; S_FALSE (already
        // joined) is fine.
        let _ = unsafe { CoInitializeEx(None, COINIT_MULTITHREADED) };
    }

    enter_mta();
    let client = match ComClient::create_local_server(&CLSID_PROVIDER) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            // Every call of the other side then fails as RPC_S_SERVER_UNAVAILABLE.
            eprintln!(
                "relay: cannot activate the provider: {e} (HRESULT {:#010x})",
                e.code().0
            );
            return std::process::ExitCode::from(2);
        }
    };
    let stdin = std::io::stdin();
    let r = lab::relay::serve(client, stdin.lock(), std::io::stdout(), enter_mta);
    // SAFETY: balances the CoInitializeEx of this thread; every interface was released when
    // `serve` returned and dropped the client.
    unsafe { CoUninitialize() };
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relay: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
