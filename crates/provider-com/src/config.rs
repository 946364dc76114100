//! `%ProgramData%\shadowlun\provider.toml`: where the array is and how to authenticate.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use crate::dpapi::{self, DpapiError};
use crate::sddl::{self, SecurityError};

/// The provider's configuration file.
///
/// Written as `array_urls = ["https://gw1:8443", "https://gw2:8443"]`: the control API of each
/// of the array's gateways, in the order the provider tries them. Files written before arrays
/// had several gateways hold `array_url = "https://host:port"`; they are read as a list of
/// one (a comma-separated `array_url` as several), and the next `install --array` writes the
/// list.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "StoredConfig")]
pub struct Config {
    /// `https://host:port` of each gateway's control API, at least one.
    pub array_urls: Vec<String>,
    /// SHA-256 fingerprint of the array's certificate (pinned; no CA is trusted). Every
    /// gateway presents it.
    pub fingerprint: String,
    /// The bearer token, DPAPI-protected (machine scope), hex-encoded.
    pub token_dpapi: String,
}

/// The file as read: either form of the gateway list, or both (their URLs are joined).
#[derive(serde::Deserialize)]
struct StoredConfig {
    #[serde(default)]
    array_urls: Vec<String>,
    #[serde(default)]
    array_url: Option<String>,
    fingerprint: String,
    token_dpapi: String,
}

impl TryFrom<StoredConfig> for Config {
    type Error = String;

    fn try_from(s: StoredConfig) -> Result<Self, String> {
        let mut values = s.array_urls;
        values.extend(s.array_url);
        let array_urls = provider::https::split_urls(&values);
        if array_urls.is_empty() {
            return Err("no array URL: array_urls = [\"https://host:port\", ...]".into());
        }
        Ok(Config {
            array_urls,
            fingerprint: s.fingerprint,
            token_dpapi: s.token_dpapi,
        })
    }
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
    /// A configuration with `token` protected for this machine; `array_urls` as given on the
    /// command line (each value one URL or several separated by commas).
    pub fn new<S: AsRef<str>>(
        array_urls: &[S],
        token: &str,
        fingerprint: &str,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            array_urls: provider::https::split_urls(array_urls),
            fingerprint: fingerprint.to_string(),
            token_dpapi: hex(&dpapi::protect(token.as_bytes())?),
        })
    }

    /// The gateways' URLs as one line: `https://gw1:8443, https://gw2:8443`.
    pub fn urls_text(&self) -> String {
        self.array_urls.join(", ")
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
        let c = Config::new(&["https://array:8443/"], "s3cret-token", "ab:cd").unwrap();
        assert_eq!(c.array_urls, ["https://array:8443"]);
        assert!(!c.token_dpapi.contains(&hex(b"s3cret-token")));
        assert_eq!(c.token().unwrap(), "s3cret-token");
        let text = toml::to_string(&c).unwrap();
        assert!(!text.contains("s3cret"));
        assert_eq!(toml::from_str::<Config>(&text).unwrap(), c);
    }

    #[test]
    fn corrupt_token_is_a_typed_error() {
        let mut c = Config::new(&["https://a"], "t", "f").unwrap();
        c.token_dpapi = "zz".into();
        assert!(matches!(c.token(), Err(ConfigError::TokenEncoding)));
        c.token_dpapi = "00112233".into();
        assert!(matches!(c.token(), Err(ConfigError::Dpapi(_))));
    }

    #[test]
    fn several_gateways_are_stored_as_a_list_in_order() {
        let c = Config::new(
            &["https://gw2:8443,https://gw1:8443/", "https://gw3:8443"],
            "t",
            "ab:cd",
        )
        .unwrap();
        assert_eq!(
            c.array_urls,
            ["https://gw2:8443", "https://gw1:8443", "https://gw3:8443"]
        );
        assert_eq!(
            c.urls_text(),
            "https://gw2:8443, https://gw1:8443, https://gw3:8443"
        );
        let text = toml::to_string(&c).unwrap();
        assert!(
            text.contains(
                r#"array_urls = ["https://gw2:8443", "https://gw1:8443", "https://gw3:8443"]"#
            ),
            "{text}"
        );
        assert!(!text.contains("array_url ="), "{text}");
        assert_eq!(toml::from_str::<Config>(&text).unwrap(), c);
    }

    #[test]
    fn a_file_with_one_array_url_is_still_read() {
        // What `install` wrote before arrays had several gateways.
        let old = "array_url = \"https://array:8443\"\nfingerprint = \"ab:cd\"\n\
                   token_dpapi = \"0011\"\n";
        let c = toml::from_str::<Config>(old).unwrap();
        assert_eq!(c.array_urls, ["https://array:8443"]);
        assert_eq!(c.fingerprint, "ab:cd");
        assert_eq!(c.token_dpapi, "0011");
        // Written back, it is the list form.
        let again = toml::to_string(&c).unwrap();
        assert!(
            again.contains(r#"array_urls = ["https://array:8443"]"#),
            "{again}"
        );
        // A hand-edited single value with commas is several gateways; both keys are joined.
        let c = toml::from_str::<Config>(
            "array_url = \"https://a:1, https://b:2\"\narray_urls = [\"https://c:3\"]\n\
             fingerprint = \"f\"\ntoken_dpapi = \"\"\n",
        )
        .unwrap();
        assert_eq!(c.array_urls, ["https://c:3", "https://a:1", "https://b:2"]);
        // No URL at all is not a configuration.
        let e = toml::from_str::<Config>("fingerprint = \"f\"\ntoken_dpapi = \"\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no array URL"), "{e}");
    }
}
