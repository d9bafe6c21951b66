//! The error type of every cache operation.

use std::borrow::Cow;
use std::time::Duration;

/// A `Result` whose error is [`enum@Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A boxed error from a repository's backend (the `redis` crate, or a user's own backend).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in a cache operation.
///
/// Every message names the key (or tag, pattern, or DSN) involved and what was wrong with it. Long
/// keys are shortened in messages, and their control characters escaped (`\n`); passwords never
/// appear.
///
/// Errors fall into two groups:
/// - **bad input** ([`InvalidDsn`](Error::InvalidDsn), [`InvalidKey`](Error::InvalidKey),
///   [`InvalidTag`](Error::InvalidTag), [`InvalidExpire`](Error::InvalidExpire),
///   [`InvalidPattern`](Error::InvalidPattern),
///   [`Encode`](Error::Encode), [`ValueTooLarge`](Error::ValueTooLarge)): nothing was sent or changed;
/// - **backend failures** ([`Error::is_backend_failure`]): the cache could not answer. Code that
///   treats the cache as an optimisation (the `#[cached]` macro, the HTTP layer) falls back to the
///   origin on these.
///
/// [`Decode`](Error::Decode) is neither: the server answered, but what it holds is not the requested type.
/// Nor is [`Loader`](Error::Loader): the cache answered, but the caller's loader gave no value.
///
/// A `delete_pattern` sweep that fails after removing keys returns
/// [`Interrupted`](Error::Interrupted), which wraps the failure and says how many keys were
/// removed ([`Error::removed_before_failure`]); it is in the group of the failure it wraps.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The connection string, or a setting of the repository built on it (a zero deadline, for
    /// instance), could not be used; nothing was connected.
    #[error("invalid DSN `{dsn}`: {reason}")]
    InvalidDsn {
        /// The DSN, with any password replaced by `***`.
        dsn: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A key was rejected before anything was sent (too long, for instance).
    #[error("invalid key `{key}`: {reason}")]
    InvalidKey {
        /// The key (shortened when long).
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A tag was rejected before anything was sent: empty, or longer than the cache's key limit
    /// (a tag's state is a key of its own).
    #[error("invalid tag `{tag}`: {reason}")]
    InvalidTag {
        /// The tag (shortened when long).
        tag: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An expiry of zero, a negative one, or one beyond what Redis accepts.
    #[error("invalid expire for key `{key}`: {reason}")]
    InvalidExpire {
        /// The key the expiry was given for.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A `delete_pattern` pattern that is not a valid Redis glob (an unclosed `[`, for instance).
    #[error("invalid pattern `{pattern}`: {reason}")]
    InvalidPattern {
        /// The pattern as given by the caller.
        pattern: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The value could not be written as JSON: a map key JSON cannot write as a string (`()`,
    /// `None`, a tuple, a struct, a sequence; string, integer, `bool`, `char` and finite float
    /// keys are accepted, and written as strings: `{1: 1}` is stored as `{"1":1}`), a NaN or
    /// infinite float, an integer beyond 64 bits, a value nested more than 255 levels deep, a
    /// value whose JSON could be taken for a tagged entry's (`{"__impcache_tagged__":...`), or a
    /// failing `Serialize` impl. Nothing was stored.
    #[error("cannot store key `{key}`: the value cannot be encoded as JSON: {reason}")]
    Encode {
        /// The key the value was meant for.
        key: String,
        /// Why encoding failed.
        reason: String,
    },
    /// The stored bytes are not JSON of the requested type (written by another program, or the type
    /// changed since it was cached).
    #[error("cannot decode the value stored at key `{key}`: {source}")]
    Decode {
        /// The full key (prefix and version included).
        key: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// The encoded value is larger than the repository accepts. Nothing was stored.
    #[error("value for key `{key}` is too large: {size} bytes, the limit is {limit} bytes")]
    ValueTooLarge {
        /// The key the value was meant for.
        key: String,
        /// The encoded size.
        size: usize,
        /// The repository's limit.
        limit: usize,
    },
    /// The backend could not be reached or dropped the connection.
    #[error("cache backend unavailable during {operation} of `{key}`: {source}")]
    Unavailable {
        /// The operation (`get`, `set`, ...).
        operation: &'static str,
        /// The key or pattern.
        key: String,
        /// The underlying error.
        #[source]
        source: BoxError,
    },
    /// The operation did not finish within the repository's deadline. A write that timed out may
    /// still be applied by the server later (the message says so for writes).
    #[error("{operation} of `{key}` timed out after {deadline:?}{}", write_caveat(.operation))]
    Timeout {
        /// The operation (`get`, `set`, ...).
        operation: &'static str,
        /// The key or pattern.
        key: String,
        /// The deadline that passed.
        deadline: Duration,
    },
    /// The circuit breaker is open after repeated failures: the operation was not attempted. The
    /// message names what the last failure that opened it ended in.
    #[error(
        "{operation} of `{key}` not attempted: the circuit breaker is open after repeated backend \
         failures{}",
        .last_failure.as_ref().map(|last| format!("; the last: {last}")).unwrap_or_default()
    )]
    CircuitOpen {
        /// The operation (`get`, `set`, ...).
        operation: &'static str,
        /// The key or pattern.
        key: String,
        /// What the last failure that opened the breaker ended in, without the key it was about
        /// (`Connection refused (os error 111)`, `timed out after 500ms`), when known.
        last_failure: Option<String>,
    },
    /// The server answered with an error (for example `OOM` when `maxmemory` is reached under
    /// `noeviction`), or refused the DSN's user name and password when the connection logged in
    /// (a wrong password, an unknown or disabled ACL user): the message then says
    /// `authentication failed` (or is the server's `WRONGPASS ...` under RESP3); or, through
    /// Sentinel, a server given as a Sentinel is not one. Not an outage: the circuit breaker
    /// stays closed.
    #[error("server refused {operation} of `{key}`: {message}")]
    Server {
        /// The operation (`get`, `set`, ...).
        operation: &'static str,
        /// The key or pattern.
        key: String,
        /// The error code, such as `OOM`, when the server sent one. `None` for a refused login
        /// over RESP2 (the default): the `redis` crate does not keep the server's reply to `AUTH`
        /// (`WRONGPASS` under RESP3).
        code: Option<String>,
        /// The server's message.
        message: String,
    },
    /// A [`delete_pattern`](crate::Cache::delete_pattern) sweep failed (the server killed or
    /// frozen, the breaker opened, ...) after it had removed `removed` keys: the keys of the
    /// batches done stay removed, the rest are still there. Running the sweep again finishes
    /// the work.
    ///
    /// `removed` counts the removals the server confirmed: the `UNLINK` of a round trip that
    /// timed out may still have been applied. A sweep that fails before removing anything
    /// returns the failure itself, not this.
    #[error("{source} ({removed} keys removed before the failure)")]
    Interrupted {
        /// The keys removed before the failure.
        removed: u64,
        /// The failure (never itself `Interrupted`).
        #[source]
        source: Box<Error>,
    },
    /// The loader of [`Cache::get_or_set`](crate::Cache::get_or_set) (or `try_get_or_set`) gave
    /// no value and no stale value could be served: it passed its
    /// [`hard_timeout`](crate::Freshness::hard_timeout) (or was not run, the hard timeout being
    /// zero), panicked, or its runtime shut down; or the call waited for another caller's load
    /// of the key, which failed (its loader was then not run).
    #[error("the loader of `{key}` gave no value: {reason}")]
    Loader {
        /// The key.
        key: String,
        /// What happened (`timed out after 2s (hard timeout)`, `panicked`, `not run: another
        /// caller's load of the key failed: {its error}`).
        reason: String,
    },
}

impl Error {
    /// `true` when the cache backend failed to answer (unavailable, timed out, breaker open, or
    /// refused by the server): the cases a fail-open caller treats as a miss.
    pub fn is_backend_failure(&self) -> bool {
        if let Self::Interrupted { source, .. } = self {
            return source.is_backend_failure();
        }
        matches!(
            self,
            Self::Unavailable { .. }
                | Self::Timeout { .. }
                | Self::CircuitOpen { .. }
                | Self::Server { .. }
        )
    }

    /// `true` for errors that say the connection or server is unhealthy (they count towards the
    /// circuit breaker); a server's error reply is not one of them.
    pub fn is_outage(&self) -> bool {
        if let Self::Interrupted { source, .. } = self {
            return source.is_outage();
        }
        matches!(
            self,
            Self::Unavailable { .. } | Self::Timeout { .. } | Self::CircuitOpen { .. }
        )
    }

    /// `true` for the server's refusal of a key that holds another kind of value (`WRONGTYPE`:
    /// a list, a hash, ... where the cache reads and writes strings).
    pub(crate) fn is_wrong_type(&self) -> bool {
        matches!(self, Self::Server { code: Some(code), .. } if code == "WRONGTYPE")
    }

    /// The key, tag, pattern or DSN the error is about.
    pub fn subject(&self) -> &str {
        match self {
            Self::InvalidDsn { dsn, .. } => dsn,
            Self::InvalidPattern { pattern, .. } => pattern,
            Self::InvalidTag { tag, .. } => tag,
            Self::InvalidKey { key, .. }
            | Self::InvalidExpire { key, .. }
            | Self::Encode { key, .. }
            | Self::Decode { key, .. }
            | Self::ValueTooLarge { key, .. }
            | Self::Unavailable { key, .. }
            | Self::Timeout { key, .. }
            | Self::CircuitOpen { key, .. }
            | Self::Server { key, .. }
            | Self::Loader { key, .. } => key,
            Self::Interrupted { source, .. } => source.subject(),
        }
    }

    /// The same failure told as `operation` of the subject `subject` makes of the one it names:
    /// for a caller's operation the backend ran as another (a tag's invalidation, run as a
    /// write of its state key). Errors without an operation are returned as they are.
    pub(crate) fn relabeled(
        self,
        operation: &'static str,
        subject: impl FnOnce(&str) -> String,
    ) -> Error {
        match self {
            Self::Unavailable { key, source, .. } => Self::Unavailable {
                operation,
                key: subject(&key),
                source,
            },
            Self::Timeout { key, deadline, .. } => Self::Timeout {
                operation,
                key: subject(&key),
                deadline,
            },
            Self::CircuitOpen {
                key, last_failure, ..
            } => Self::CircuitOpen {
                operation,
                key: subject(&key),
                last_failure,
            },
            Self::Server {
                key, code, message, ..
            } => Self::Server {
                operation,
                key: subject(&key),
                code,
                message,
            },
            other => other,
        }
    }

    /// How many keys a `delete_pattern` sweep removed before it failed: `Some` for
    /// [`Interrupted`](Error::Interrupted), `None` for every other error (a `delete_pattern`
    /// that fails with another error removed nothing).
    ///
    /// ```
    /// # async fn purge(cache: impcache::Cache) {
    /// match cache.delete_pattern("session:*").await {
    ///     Ok(removed) => println!("{removed} sessions removed"),
    ///     Err(e) => println!(
    ///         "{} sessions removed, then: {e}",
    ///         e.removed_before_failure().unwrap_or(0)
    ///     ),
    /// }
    /// # }
    /// ```
    pub fn removed_before_failure(&self) -> Option<u64> {
        match self {
            Self::Interrupted { removed, .. } => Some(*removed),
            _ => None,
        }
    }

    /// This failure of a purge that removed `earlier` keys before the step that failed (for
    /// `impcache-tower`'s purges of several steps, through `__private`): [`Interrupted`](Error::Interrupted)
    /// with the total (this error's own count of an interrupted sweep added), or this error as
    /// it is when nothing was removed.
    pub(crate) fn after_removing(self, earlier: u64) -> Error {
        match self {
            Self::Interrupted { removed, source } => Self::Interrupted {
                removed: removed.saturating_add(earlier),
                source,
            },
            error if earlier == 0 => error,
            error => Self::Interrupted {
                removed: earlier,
                source: Box::new(error),
            },
        }
    }
}

/// For a fallible loader whose error is a message
/// ([`try_get_or_set`](crate::Cache::try_get_or_set) needs `E: From<Error>`): the error's text.
impl From<Error> for String {
    fn from(error: Error) -> String {
        error.to_string()
    }
}

/// For a fallible loader whose error is an I/O error
/// ([`try_get_or_set`](crate::Cache::try_get_or_set) needs `E: From<Error>`): the cache's error
/// wrapped as [`std::io::ErrorKind::Other`], its source kept.
impl From<Error> for std::io::Error {
    fn from(error: Error) -> std::io::Error {
        std::io::Error::other(error)
    }
}

/// Longest key shown in an error message; longer keys are cut, with their size.
const SHOWN_KEY_CHARS: usize = 200;

/// A key as it appears in error messages: its [`excerpt`], [`escaped`].
pub(crate) fn shown(key: &str) -> String {
    escaped(&excerpt(key))
}

/// A key shortened when long (its first [`SHOWN_KEY_CHARS`] characters and its length), so that
/// a 1 MiB key does not make a 1 MiB log line or error message.
pub(crate) fn excerpt(key: &str) -> Cow<'_, str> {
    match key.char_indices().nth(SHOWN_KEY_CHARS) {
        None => Cow::Borrowed(key),
        Some((cut, _)) => Cow::Owned(format!("{}… ({} bytes)", &key[..cut], key.len())),
    }
}

/// `text` with its unprintable characters escaped as Rust writes them (`\n`, `\u{1b}`,
/// `\u{202e}`), so that it cannot forge log lines, terminal escapes or reordered text: control
/// characters, and those `str::escape_debug` escapes (format characters such as the bidi
/// overrides, the line and paragraph separators U+2028/9, unassigned code points). Other
/// characters, combining marks included, are shown as they are.
pub(crate) fn escaped(text: &str) -> String {
    let mut shown = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() || unprintable(c) {
            shown.extend(c.escape_debug());
        } else {
            shown.push(c);
        }
    }
    shown
}

/// Whether std's tables call `c` unprintable. They are not public: `str::escape_debug` escapes
/// such a character wherever it is, but a combining mark only first in the string, and ASCII
/// quotes and backslashes always, so `c` is asked about after a letter, and ASCII is left out.
fn unprintable(c: char) -> bool {
    // Error messages only: the allocation does not matter.
    !c.is_ascii() && format!("a{c}").escape_debug().nth(1) == Some('\\')
}

/// The keys of a multi-key operation as they appear in error messages.
pub(crate) fn shown_many<K: AsRef<str>>(keys: &[K]) -> String {
    match keys {
        [] => String::new(),
        [one] => shown(one.as_ref()),
        [first, rest @ ..] => format!("{} and {} more", shown(first.as_ref()), rest.len()),
    }
}

/// What a [`Timeout`](Error::Timeout) of `operation` adds: a write may still land, a read cannot.
fn write_caveat(operation: &str) -> &'static str {
    if operation.starts_with("get") {
        ""
    } else {
        " (a write may still be applied later)"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only a write that timed out may still land: a read's message does not say so.
    #[test]
    fn a_read_that_timed_out_says_nothing_of_writes() {
        let timeout = |operation| Error::Timeout {
            operation,
            key: "k".to_owned(),
            deadline: Duration::from_millis(5),
        };
        assert_eq!(timeout("get").to_string(), "get of `k` timed out after 5ms");
        assert_eq!(
            timeout("get_many").to_string(),
            "get_many of `k` timed out after 5ms"
        );
        assert_eq!(
            timeout("set").to_string(),
            "set of `k` timed out after 5ms (a write may still be applied later)"
        );
    }
}
