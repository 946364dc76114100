//! `%ProgramData%\shadowlun\provider.toml`: where the array is and how to authenticate.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use crate::dpapi::{self, DpapiError};
use crate::sddl::{self, SecurityError};

/// The provider's configuration file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Config {
    /// `https://host:port` of the array's control API.
    pub array_url: String,
    /// SHA-256 fingerprint of the array's certificate (pinned; no CA is trusted).
    pub fingerprint: String,
    /// The bearer token, DPAPI-protected (machine scope), hex-encoded.
    pub token_dpapi: String,
}

/// Why the configuration could not be read, written or used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source} (run `shadowlun-provider.exe install` first)")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a valid provider configuration: {message}")]
    Parse { path: String, message: String },
    #[error("the stored token is not valid hex")]
    TokenEncoding,
    #[error("the stored token is not UTF-8")]
    TokenText,
    #[error(transparent)]
    Dpapi(#[from] DpapiError),
    #[error("cannot restrict access to the configuration file: {0}")]
    Acl(#[from] SecurityError),
}

/// `%ProgramData%\shadowlun`.
pub fn dir() -> PathBuf {
    crate::folders::program_data().join("shadowlun")
}

/// `%ProgramData%\shadowlun\provider.toml`.
pub fn path() -> PathBuf {
    dir().join("provider.toml")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Config {
    /// A configuration with `token` protected for this machine.
    pub fn new(array_url: &str, token: &str, fingerprint: &str) -> Result<Self, ConfigError> {
        Ok(Self {
            array_url: array_url.trim_end_matches('/').to_string(),
            fingerprint: fingerprint.to_string(),
            token_dpapi: hex(&dpapi::protect(token.as_bytes())?),
        })
    }

    /// The clear-text token.
    pub fn token(&self) -> Result<String, ConfigError> {
        let blob = unhex(&self.token_dpapi).ok_or(ConfigError::TokenEncoding)?;
        String::from_utf8(dpapi::unprotect(&blob)?).map_err(|_| ConfigError::TokenText)
    }

    pub fn load() -> Result<Self, ConfigError> {
        let p = path();
        let text = std::fs::read_to_string(&p).map_err(|source| ConfigError::Read {
            path: p.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: p.display().to_string(),
            message: e.to_string(),
        })
    }

    /// Writes the file, readable by SYSTEM and Administrators only.
    pub fn save(&self) -> Result<PathBuf, ConfigError> {
        let p = path();
        let err = |source| ConfigError::Write {
            path: p.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir()).map_err(err)?;
        let text = toml::to_string(self).map_err(|e| ConfigError::Parse {
            path: p.display().to_string(),
            message: e.to_string(),
        })?;
        std::fs::write(&p, text).map_err(err)?;
        sddl::restrict_file(&p, sddl::CONFIG_FILE_SDDL)?;
        Ok(p)
    }

    /// Removes the file; `Ok(false)` if it did not exist.
    pub fn remove() -> Result<bool, ConfigError> {
        let p = path();
        match std::fs::remove_file(&p) {
            Ok(()) => {
                let _ = std::fs::remove_dir(dir());
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(ConfigError::Write {
                path: p.display().to_string(),
                source,
            }),
        }
    }
}

/// Puts back a configuration file's previous bytes (an install that failed), with the
/// file's restricted ACL.
pub fn restore(text: &[u8]) -> Result<(), ConfigError> {
    let p = path();
    let err = |source| ConfigError::Write {
        path: p.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dir()).map_err(err)?;
    std::fs::write(&p, text).map_err(err)?;
    sddl::restrict_file(&p, sddl::CONFIG_FILE_SDDL)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trips_through_dpapi_and_is_not_stored_in_clear() {
        let c = Config::new("https://array:8443/", "s3cret-token", "ab:cd").unwrap();
        assert_eq!(c.array_url, "https://array:8443");
        assert!(!c.token_dpapi.contains(&hex(b"s3cret-token")));
        assert_eq!(c.token().unwrap(), "s3cret-token");
        let text = toml::to_string(&c).unwrap();
        assert!(!text.contains("s3cret"));
        assert_eq!(toml::from_str::<Config>(&text).unwrap(), c);
    }

    #[test]
    fn corrupt_token_is_a_typed_error() {
        let mut c = Config::new("https://a", "t", "f").unwrap();
        c.token_dpapi = "zz".into();
        assert!(matches!(c.token(), Err(ConfigError::TokenEncoding)));
        c.token_dpapi = "00112233".into();
        assert!(matches!(c.token(), Err(ConfigError::Dpapi(_))));
    }
}
