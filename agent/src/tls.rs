//! Mutual TLS for every gRPC connection, shared with the controller through
//! ferry-proto: each agent has its own certificate naming its node, serves
//! only callers the ferry CA signed, and checks which peer it reached.

pub use ferry_proto::tls::{AGENT_SERVER_NAME, Credentials, Identity, TlsError, TlsFiles};
