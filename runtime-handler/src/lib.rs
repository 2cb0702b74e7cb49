//! ferry's runtime handler. A RuntimeClass whose handler runs runc through
//! this wrapper (containerd: the runc shim's `BinaryName`; CRI-O: the
//! runtime's `runtime_path`) restores a replacement container from the
//! checkpoint its node's agent prepared for it, instead of starting it
//! fresh: `create` becomes `runc restore --detach`, and the `start` that
//! follows finds it running. Everything else, and every container that
//! names no restore grant, goes to runc unchanged. No runtime's restore
//! API and no checkpoint image are involved.

pub mod args;
pub mod config;
pub mod diff;
pub mod grant;
pub mod handler;

pub use config::Config;

/// What went wrong, naming the object.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Refused(#[from] grant::Refusal),
    #[error("{0}")]
    Invalid(String),
}
