//! Logging on stderr: a level (`--log-level` or `SHADOWLUN_LOG`), a format (`--log-format`
//! or `SHADOWLUN_LOG_FORMAT`), and colour only when stderr is a terminal.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One human line per event.
    Text,
    /// One JSON object per event: `timestamp`, `level`, `target`, `fields` (with `message`)
    /// and the enclosing `spans` (an API request's peer address, for instance).
    Json,
}

/// Installs the process's log subscriber. `level` is what the admin asked for (`None`: the
/// command's default).
pub fn init(level: Option<&str>, default: &str, format: Format) -> Result<(), String> {
    let spec = level.unwrap_or(default);
    let bad = |why: String| {
        format!(
            "'{spec}' is not a log level ({why}); write off, error, warn, info, debug or \
             trace, or a filter such as info,iscsi=debug"
        )
    };
    // A lone word is a level; anything else (`info,iscsi=debug`) is a filter.
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    if !spec.contains(['=', ',']) && !LEVELS.contains(&spec.to_ascii_lowercase().as_str()) {
        return Err(bad("unknown level".into()));
    }
    let filter = EnvFilter::builder()
        .parse(spec)
        .map_err(|e| bad(e.to_string()))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        Format::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        Format::Json => builder
            .json()
            .with_current_span(false)
            .with_span_list(true)
            .try_init(),
    }
    .map_err(|e| format!("cannot start logging: {e}"))
}
