//! Mutual TLS for every gRPC connection: the agent serves only callers whose
//! client certificate the ferry CA signed, and presents its own certificate
//! when it calls a peer. Shared with the controller through ferry-proto.

pub use ferry_proto::tls::{AGENT_SERVER_NAME, MutualTls, TlsError, TlsFiles};
