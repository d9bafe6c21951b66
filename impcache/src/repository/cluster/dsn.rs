//! The checks of the cluster node addresses, and the scrubbing of their passwords from messages.

use crate::error::{Error, Result};
use crate::repository::redis::redact_dsn;

/// Checks one node address: `redis://` or `rediss://` (feature `tls`), with a host.
pub(super) fn check_node(node: &str) -> Result<redis::ConnectionInfo> {
    let invalid = |reason: String| Error::InvalidDsn {
        dsn: redact_dsn(node),
        reason,
    };
    if node.trim().is_empty() {
        return Err(invalid("the node address is empty".to_owned()));
    }
    let url = url::Url::parse(node).map_err(|e| {
        invalid(format!(
            "not a URL ({e}); expected redis://host:port for each cluster node"
        ))
    })?;
    match url.scheme() {
        "redis" | "valkey" => {}
        "rediss" | "valkeys" if cfg!(feature = "tls") => {}
        "rediss" | "valkeys" => {
            return Err(invalid(format!(
                "`{}://` needs the `tls` feature of impcache",
                url.scheme()
            )))
        }
        "unix" | "redis+unix" => {
            return Err(invalid(
                "cluster nodes are reached over TCP; expected redis://host:port".to_owned(),
            ))
        }
        other => {
            return Err(invalid(format!(
                "unsupported scheme `{other}`; expected redis or rediss"
            )))
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("the host is missing".to_owned()));
    }
    let db = url.path().trim_start_matches('/');
    if !db.is_empty() && db != "0" {
        return Err(invalid(format!(
            "a cluster has only database 0, not `{db}`"
        )));
    }
    redis::IntoConnectionInfo::into_connection_info(node)
        .map_err(|e| invalid(scrub_all(&e.to_string(), &[node.to_owned()])))
}

/// Removes every node's password from a message, in case a library echoed it.
pub(super) fn scrub_all(message: &str, nodes: &[String]) -> String {
    let mut message = message.to_owned();
    for node in nodes {
        if let Ok(url) = url::Url::parse(node) {
            if let Some(password) = url.password().filter(|p| !p.is_empty()) {
                message = message.replace(password, "***");
            }
        }
    }
    message
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::RedisClusterCacheRepository;
    use crate::error::Error;

    #[test]
    fn node_addresses_are_checked() {
        for bad in [
            "",
            "http://h:1",
            "unix:///tmp/s.sock",
            "redis://h:1/3",
            "redis://",
        ] {
            let err = RedisClusterCacheRepository::new([bad]).unwrap_err();
            assert!(matches!(err, Error::InvalidDsn { .. }), "{bad}: {err}");
        }
        assert!(RedisClusterCacheRepository::new(Vec::<String>::new()).is_err());
        let err = RedisClusterCacheRepository::new(["redis://:s3cret@h:1/9"]).unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
        assert!(RedisClusterCacheRepository::new(["redis://h:1", "redis://h:2/0"]).is_ok());
    }
}
