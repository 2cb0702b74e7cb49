//! Where the real runc and the grants are: `ferry-runc.json` beside the
//! binary (the agent writes both when it installs the handler on its
//! node), or the file `FERRY_RUNC_CONFIG` names. The runtime starts the
//! wrapper with no arguments of ours, so it cannot come from flags.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Error;

pub const FILE_NAME: &str = "ferry-runc.json";
pub const ENV: &str = "FERRY_RUNC_CONFIG";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    /// The runc binary everything is handed to.
    pub runc: PathBuf,
    /// Where the node's agent prepares restore grants.
    pub grants: PathBuf,
}

impl Config {
    /// The configuration of the running binary.
    pub fn load() -> Result<Self, Error> {
        let path = match std::env::var_os(ENV) {
            Some(path) => PathBuf::from(path),
            None => std::env::current_exe()
                .map_err(|source| Error::Io {
                    what: "find the ferry-runc binary".into(),
                    source,
                })?
                .with_file_name(FILE_NAME),
        };
        Self::read(&path)
    }

    pub fn read(path: &Path) -> Result<Self, Error> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            what: format!("read ferry-runc's configuration {}", path.display()),
            source,
        })?;
        let config: Self = serde_json::from_slice(&bytes).map_err(|source| Error::Json {
            what: format!("ferry-runc's configuration {}", path.display()),
            source,
        })?;
        if !config.runc.is_absolute() || !config.grants.is_absolute() {
            return Err(Error::Invalid(format!(
                "ferry-runc's configuration {}: runc and grants must be absolute paths",
                path.display()
            )));
        }
        Ok(config)
    }
}
