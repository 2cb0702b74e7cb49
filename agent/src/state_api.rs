//! Strategy StateApi: the application's own state endpoint instead of
//! CRIU. At each interval the agent reads the state with GET and stores,
//! encrypts and replicates the body like any archive; on failover the agent
//! holding it writes it into the replacement pod with PUT. The endpoint is
//! the pod's IP (from the API server) with the policy's port and path;
//! errors say what the application did: refused, too slow, an HTTP error,
//! a body over the limit.

use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ferry_proto::v1 as pb;

/// Where and how to reach one application's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub https: bool,
    pub address: IpAddr,
    pub port: u16,
    pub path: String,
    pub timeout: Duration,
    pub max_bytes: u64,
    pub content_type: String,
}

/// What went wrong with the application's endpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateApiError {
    #[error("stateApi: {0}")]
    Invalid(String),
    #[error("{method} {url}: {message}")]
    Unreachable {
        method: &'static str,
        url: String,
        message: String,
    },
    #[error("{method} {url}: no answer within {timeout:?} (stateApi.timeout)")]
    Timeout {
        method: &'static str,
        url: String,
        timeout: Duration,
    },
    #[error("{method} {url}: the application answered {status}: {body}")]
    Status {
        method: &'static str,
        url: String,
        status: u16,
        body: String,
    },
    #[error("GET {url}: the state is larger than the limit of {limit} bytes (stateApi.maxBytes)")]
    TooLarge { url: String, limit: u64 },
}

/// What one GET or PUT did, for the history.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Call {
    pub http_status: u16,
    pub elapsed: Duration,
    pub bytes: u64,
}

impl Call {
    pub fn to_proto(self) -> pb::StateApiCall {
        pb::StateApiCall {
            http_status: self.http_status.into(),
            millis: u64::try_from(self.elapsed.as_millis()).unwrap_or(u64::MAX),
            bytes: self.bytes,
        }
    }
}

impl Endpoint {
    /// From the request's settings and the pod's IP; every field checked.
    pub fn from_proto(source: &pb::StateApi, address: &str) -> Result<Self, StateApiError> {
        let invalid = |message: String| StateApiError::Invalid(message);
        let https = match source.scheme.to_ascii_lowercase().as_str() {
            "http" | "" => false,
            "https" => true,
            other => {
                return Err(invalid(format!(
                    "scheme {other:?} is neither http nor https"
                )));
            }
        };
        let port = u16::try_from(source.port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| invalid(format!("port {} is not 1-65535", source.port)))?;
        if !source.path.starts_with('/')
            || source.path.len() > 1024
            || source.path.chars().any(|c| !c.is_ascii_graphic())
        {
            return Err(invalid(format!(
                "path {:?} must start with / and be printable ASCII",
                source.path
            )));
        }
        let address: IpAddr = address.parse().map_err(|_| {
            invalid(format!(
                "the pod's address {address:?} is not an IP address"
            ))
        })?;
        let timeout = Duration::from_millis(source.timeout_millis.into());
        if !(Duration::from_millis(100)..=Duration::from_secs(600)).contains(&timeout) {
            return Err(invalid(format!(
                "timeout {timeout:?} is not within 100ms-10m"
            )));
        }
        if source.max_bytes == 0 {
            return Err(invalid("maxBytes is 0".into()));
        }
        let content_type = if source.content_type.is_empty() {
            "application/json".to_owned()
        } else {
            source.content_type.clone()
        };
        if content_type.chars().any(|c| c.is_ascii_control()) || content_type.len() > 256 {
            return Err(invalid(format!(
                "contentType {content_type:?} is not a media type"
            )));
        }
        Ok(Self {
            https,
            address,
            port,
            path: source.path.clone(),
            timeout,
            max_bytes: source.max_bytes,
            content_type,
        })
    }

    pub fn url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        match self.address {
            IpAddr::V4(ip) => format!("{scheme}://{ip}:{}{}", self.port, self.path),
            IpAddr::V6(ip) => format!("{scheme}://[{ip}]:{}{}", self.port, self.path),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url())
    }
}

/// The client for applications' endpoints. Their certificates are not
/// verified: they are reached at pod IPs, which no certificate names.
pub fn client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .pool_max_idle_per_host(0)
        .build()
}

fn failed(method: &'static str, endpoint: &Endpoint, err: &reqwest::Error) -> StateApiError {
    if err.is_timeout() {
        return StateApiError::Timeout {
            method,
            url: endpoint.url(),
            timeout: endpoint.timeout,
        };
    }
    let mut message = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        message = format!("{message}: {cause}");
        source = cause.source();
    }
    StateApiError::Unreachable {
        method,
        url: endpoint.url(),
        message,
    }
}

/// The start of an error body, for the message.
async fn body_head(response: reqwest::Response) -> String {
    let bytes = response.bytes().await.unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned();
    if text.trim().is_empty() {
        "(empty body)".into()
    } else {
        text.trim().to_owned()
    }
}

/// Reads the state: GET, at most `max_bytes` of body.
pub async fn read(
    client: &reqwest::Client,
    endpoint: &Endpoint,
) -> Result<(Vec<u8>, Call), StateApiError> {
    let started = Instant::now();
    let deadline = started + endpoint.timeout;
    let mut response = client
        .get(endpoint.url())
        .header(reqwest::header::ACCEPT, &endpoint.content_type)
        .timeout(endpoint.timeout)
        .send()
        .await
        .map_err(|e| failed("GET", endpoint, &e))?;
    let status = response.status();
    if !status.is_success() {
        return Err(StateApiError::Status {
            method: "GET",
            url: endpoint.url(),
            status: status.as_u16(),
            body: body_head(response).await,
        });
    }
    let too_large = || StateApiError::TooLarge {
        url: endpoint.url(),
        limit: endpoint.max_bytes,
    };
    if response
        .content_length()
        .is_some_and(|length| length > endpoint.max_bytes)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, response.chunk())
            .await
            .map_err(|_| StateApiError::Timeout {
                method: "GET",
                url: endpoint.url(),
                timeout: endpoint.timeout,
            })?
            .map_err(|e| failed("GET", endpoint, &e))?;
        let Some(chunk) = chunk else { break };
        if body.len() as u64 + chunk.len() as u64 > endpoint.max_bytes {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    let call = Call {
        http_status: status.as_u16(),
        elapsed: started.elapsed(),
        bytes: body.len() as u64,
    };
    Ok((body, call))
}

/// Writes the state into the application: PUT.
pub async fn write(
    client: &reqwest::Client,
    endpoint: &Endpoint,
    state: Vec<u8>,
) -> Result<Call, StateApiError> {
    let started = Instant::now();
    let bytes = state.len() as u64;
    let response = client
        .put(endpoint.url())
        .header(reqwest::header::CONTENT_TYPE, &endpoint.content_type)
        .timeout(endpoint.timeout)
        .body(state)
        .send()
        .await
        .map_err(|e| failed("PUT", endpoint, &e))?;
    let status = response.status();
    if !status.is_success() {
        return Err(StateApiError::Status {
            method: "PUT",
            url: endpoint.url(),
            status: status.as_u16(),
            body: body_head(response).await,
        });
    }
    Ok(Call {
        http_status: status.as_u16(),
        elapsed: started.elapsed(),
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> pb::StateApi {
        pb::StateApi {
            scheme: "http".into(),
            port: 8080,
            path: "/state".into(),
            timeout_millis: 2000,
            max_bytes: 1 << 20,
            address: String::new(),
            content_type: String::new(),
        }
    }

    #[test]
    fn endpoints_are_checked_and_named() {
        let endpoint = Endpoint::from_proto(&source(), "10.88.1.7").unwrap();
        assert_eq!(endpoint.url(), "http://10.88.1.7:8080/state");
        assert_eq!(endpoint.content_type, "application/json");
        let v6 = Endpoint::from_proto(&source(), "fd00::7").unwrap();
        assert_eq!(v6.url(), "http://[fd00::7]:8080/state");
        let bad = |change: fn(&mut pb::StateApi), address: &str, needle: &str| {
            let mut s = source();
            change(&mut s);
            let err = Endpoint::from_proto(&s, address).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        };
        bad(
            |s| s.scheme = "ftp".into(),
            "10.0.0.1",
            "neither http nor https",
        );
        bad(|s| s.port = 70000, "10.0.0.1", "not 1-65535");
        bad(|s| s.path = "state".into(), "10.0.0.1", "must start with /");
        bad(|s| s.path = "/a b".into(), "10.0.0.1", "printable");
        bad(|s| s.timeout_millis = 10, "10.0.0.1", "100ms-10m");
        bad(|s| s.max_bytes = 0, "10.0.0.1", "maxBytes");
        bad(|_| {}, "evil.example", "not an IP address");
    }
}
