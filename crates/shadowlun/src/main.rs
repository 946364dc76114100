//! `shadowlun`: the one command of the project.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};

/// shadowlun: an open-source VSS hardware provider, the array behind it, and a VSS emulator.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the VSS status code table, or look one code up by name or value.
    Hresult {
        /// A name (VSS_E_PROVIDER_VETO) or a value (0x80042306).
        code: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Hresult { code } => hresult(code),
    }
}

fn hresult(code: Option<String>) -> anyhow::Result<()> {
    use vss::Hresult;
    let Some(code) = code else {
        for (_, h) in Hresult::ALL {
            println!("{h}");
        }
        return Ok(());
    };
    let parsed = Hresult::from_name(&code.to_ascii_uppercase()).or_else(|| {
        let hex = code.trim_start_matches("0x").trim_start_matches("0X");
        u32::from_str_radix(hex, 16).ok().map(Hresult)
    });
    match parsed {
        Some(h) => {
            println!("{h}");
            Ok(())
        }
        None => anyhow::bail!(
            "'{code}' is neither a known status name (like VSS_E_PROVIDER_VETO) nor a hex value (like 0x80042306)"
        ),
    }
}
