//! Keys and errors as the logs show them: a key (and an error's message, which names its key) only
//! when the cache records keys ([`CacheBuilder::record_keys`]); keys can be personal data.
//!
//! [`CacheBuilder::record_keys`]: crate::CacheBuilder::record_keys

use std::error::Error as _;
use std::fmt;

use super::metrics::error_kind;
use crate::cache::Cache;
use crate::error::{excerpt, Error};
use crate::json::without_data;

/// An error in a log event: its message when keys are recorded, else its kind and its cause
/// (a backend's message names no key).
#[derive(Debug, Clone, Copy)]
pub(crate) struct LoggedError<'a> {
    error: &'a Error,
    record_keys: bool,
}

impl fmt::Display for LoggedError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.record_keys {
            return self.error.fmt(f);
        }
        if let Error::Interrupted { source, removed } = self.error {
            // The failure it wraps names the pattern: shown the same way.
            let source = LoggedError {
                error: source,
                record_keys: false,
            };
            return write!(f, "{source} ({removed} keys removed before the failure)");
        }
        f.write_str(error_kind(self.error))?;
        if let Error::Server {
            code: Some(code), ..
        } = self.error
        {
            // The server's error code names no key, and tells `READONLY` from `OOM` or `BUSY`
            // (they all read `server`: a probe).
            return write!(f, ": {code}");
        }
        if let Error::Decode { source, .. } = self.error {
            // The values serde_json quotes are stored data, as keys are; the names the type
            // expects are kept, and say what changed.
            return write!(f, ": {}", without_data(&source.to_string()));
        }
        match self.error.source() {
            Some(source) => write!(f, ": {source}"),
            None => Ok(()),
        }
    }
}

impl Cache {
    /// `key` for a log event's `key` field: `None` (no field) unless the cache records keys, and
    /// then its [`excerpt`] (a key the cache refuses may be of any length: a 1 MiB one was
    /// logged whole, found by a probe).
    pub(crate) fn logged_key(&self, key: &str) -> Option<String> {
        self.shared.record_keys.then(|| excerpt(key).into_owned())
    }

    /// `error` for a log event (see [`LoggedError`]).
    pub(crate) fn logged_error<'a>(&self, error: &'a Error) -> LoggedError<'a> {
        LoggedError {
            error,
            record_keys: self.shared.record_keys,
        }
    }
}

// Unit tests: an `assert!` here is the test failing; none of it is compiled into the library.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_keys_an_error_shows_its_kind_and_cause_not_its_key() {
        let inner = Error::Unavailable {
            operation: "delete_pattern",
            key: "cache:1:http:alice@example.com:*".to_owned(),
            source: "Connection refused".into(),
        };
        let interrupted = Error::Interrupted {
            removed: 3,
            source: Box::new(inner),
        };
        let hidden = LoggedError {
            error: &interrupted,
            record_keys: false,
        }
        .to_string();
        assert_eq!(
            hidden,
            "unavailable: Connection refused (3 keys removed before the failure)"
        );
        let shown = LoggedError {
            error: &interrupted,
            record_keys: true,
        }
        .to_string();
        assert!(shown.contains("alice@example.com"), "{shown}");
    }

    #[test]
    fn without_keys_a_server_error_shows_its_code() {
        let error = Error::Server {
            operation: "set",
            key: "cache:1:alice@example.com".to_owned(),
            code: Some("READONLY".to_owned()),
            message: "READONLY You can't write against a read only replica.".to_owned(),
        };
        let logged = LoggedError {
            error: &error,
            record_keys: false,
        };
        assert_eq!(logged.to_string(), "server: READONLY");
    }

    #[test]
    fn without_keys_a_decode_error_shows_no_stored_value() {
        let error =
            crate::json::decode::<u64>(|| "cache:1:profile".to_owned(), br#""alice""#).unwrap_err();
        let logged = |record_keys| LoggedError {
            error: &error,
            record_keys,
        };
        assert_eq!(
            logged(false).to_string(),
            r#"decode: invalid type: string "…", expected u64 at line 1 column 7"#
        );
        assert!(logged(true).to_string().contains("alice"), "{error}");
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)] // only decoded
        struct Profile {
            name: String,
        }
        let error = crate::json::decode::<Profile>(|| "k".to_owned(), b"{}").unwrap_err();
        let logged = LoggedError {
            error: &error,
            record_keys: false,
        };
        assert_eq!(
            logged.to_string(),
            "decode: missing field `name` at line 1 column 2"
        );
    }
}
