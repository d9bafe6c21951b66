//! What the Redis-backed repositories send: shared by the single-node and Cluster repositories.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{shown, Error};
use crate::expire::Expiry;
use crate::tags::TagInvalidation;

/// Refuses, before anything is sent, a value larger than the repository accepts.
pub(crate) fn check_value_size(key: &str, size: usize, limit: usize) -> Result<(), Error> {
    if size > limit {
        return Err(Error::ValueTooLarge {
            key: shown(key),
            size,
            limit,
        });
    }
    Ok(())
}

/// Keys per `SCAN` batch in `delete_pattern`.
pub(crate) const SCAN_BATCH: usize = 1000;

/// `SET key value [EX s | PX ms] [NX]`.
pub(crate) fn set_command(
    key: &str,
    value: &[u8],
    expiry: Expiry,
    only_if_absent: bool,
) -> redis::Cmd {
    // Sized up front: no buffer grows while the arguments are written (one argument more for
    // `set_nx_get_command`'s `GET`).
    let mut cmd = redis::Cmd::with_capacity(7, key.len() + value.len() + 32);
    cmd.arg("SET").arg(key).arg(value);
    match expiry {
        Expiry::Seconds(s) => {
            cmd.arg("EX").arg(s);
        }
        Expiry::Milliseconds(ms) => {
            cmd.arg("PX").arg(ms);
        }
        Expiry::Never => {}
    }
    if only_if_absent {
        cmd.arg("NX");
    }
    cmd
}

/// `{name} key` (`GET`, `UNLINK`), in buffers sized up front (`redis::cmd` grows its data buffer
/// for the key: one more allocation and copy per call).
pub(crate) fn key_command(name: &'static str, key: &str) -> redis::Cmd {
    let mut cmd = redis::Cmd::with_capacity(2, name.len() + key.len());
    cmd.arg(name).arg(key);
    cmd
}

/// `{name} key…` (`MGET`, `UNLINK`), in buffers sized up front.
pub(crate) fn keys_command(name: &'static str, keys: &[&str]) -> redis::Cmd {
    let size = name.len() + keys.iter().map(|k| k.len()).sum::<usize>();
    let mut cmd = redis::Cmd::with_capacity(1 + keys.len(), size);
    cmd.arg(name).arg(keys);
    cmd
}

/// `SCAN cursor MATCH pattern COUNT 1000`.
pub(crate) fn scan_command(cursor: u64, pattern: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("SCAN");
    cmd.arg(cursor)
        .arg("MATCH")
        .arg(pattern)
        .arg("COUNT")
        .arg(SCAN_BATCH);
    cmd
}

// --- One loader run across processes (issue 16). ---

/// The compare-and-delete script releasing a lock: `DEL` only if the key still holds the
/// owner's token (`1` when removed, else `0`).
pub(crate) const DELETE_IF_EQUAL_SCRIPT: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

/// `EVAL` of [`DELETE_IF_EQUAL_SCRIPT`] on `key` with `expected`.
pub(crate) fn delete_if_equal_command(key: &str, expected: &[u8]) -> redis::Cmd {
    let mut cmd = redis::Cmd::with_capacity(
        5,
        DELETE_IF_EQUAL_SCRIPT.len() + key.len() + expected.len() + 8,
    );
    cmd.arg("EVAL")
        .arg(DELETE_IF_EQUAL_SCRIPT)
        .arg(1)
        .arg(key)
        .arg(expected);
    cmd
}

// --- Tags (issue 16): `set_nx` over an entry its tags hide. ---

/// The compare-and-set script of `set_nx` over a hidden tagged entry: `SET` (with `PX ARGV[3]`,
/// none when `0`) only if the key still holds exactly `ARGV[1]` (`1` when stored, else `0`).
pub(crate) const SET_IF_EQUAL_SCRIPT: &str =
    "if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end \
     if ARGV[3] == '0' then redis.call('SET', KEYS[1], ARGV[2]) \
     else redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end return 1";

/// `EVAL` of [`SET_IF_EQUAL_SCRIPT`] on `key`: `value` for `expiry` in place of `expected`.
pub(crate) fn set_if_equal_command(
    key: &str,
    expected: &[u8],
    value: &[u8],
    expiry: Expiry,
) -> redis::Cmd {
    let size = SET_IF_EQUAL_SCRIPT.len() + key.len() + expected.len() + value.len() + 32;
    let mut cmd = redis::Cmd::with_capacity(7, size);
    cmd.arg("EVAL")
        .arg(SET_IF_EQUAL_SCRIPT)
        .arg(1)
        .arg(key)
        .arg(expected)
        .arg(value)
        .arg(expiry_millis(expiry));
    cmd
}

/// `SET key value [EX s | PX ms] NX GET` (Redis 7.0+): stores only if the key holds nothing,
/// and answers the bytes it held (`nil` when it stored):
/// [`CacheRepository::set_nx_or_get`](crate::CacheRepository::set_nx_or_get) in one command.
pub(crate) fn set_nx_get_command(key: &str, value: &[u8], expiry: Expiry) -> redis::Cmd {
    let mut cmd = set_command(key, value, expiry, true);
    cmd.arg("GET");
    cmd
}

/// Whether a server takes [`set_nx_get_command`]: assumed until it refuses it, then
/// remembered, so that each later `set_nx_or_get` of the repository sends the two calls of the
/// trait's default at once (`repository::set_nx_then_get`).
#[derive(Debug, Default)]
pub(crate) struct NxGet {
    refused: AtomicBool,
}

impl NxGet {
    /// Whether the server refused `NX` with `GET` before.
    pub(crate) fn refused(&self) -> bool {
        self.refused.load(Ordering::Relaxed)
    }

    /// Whether `error`, the reply to [`set_nx_get_command`], is the server's refusal of `NX`
    /// with `GET`: `ERR syntax error`, what Redis before 7.0 answers (6.2 refuses the two
    /// options together, older servers know no `GET` option of `SET`). Remembered; the first
    /// refusal is logged (`INFO`), naming `server`.
    pub(crate) fn refuses(&self, error: &Error, server: &str) -> bool {
        let refusal = matches!(
            error,
            Error::Server { code: Some(code), message, .. }
                if code == "ERR" && message.contains("syntax error")
        );
        if refusal && !self.refused.swap(true, Ordering::Relaxed) {
            tracing::info!(
                target: "impcache",
                server,
                "the server refuses `SET .. NX GET` (Redis before 7.0): `set_nx` over a taken key reads it with a `GET` from now on, one more round trip"
            );
        }
        refusal
    }
}

/// `expiry` in milliseconds for a script's `PX`, `0` for none.
fn expiry_millis(expiry: Expiry) -> u64 {
    expiry
        .as_duration()
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

// --- Tags (issue 16). ---

/// An invalidation of a tag (`crate::tags::marked`, in Lua): `ARGV[1]` (`hard` or `soft`) at
/// `ARGV[2]`, each time of the state the later of the two, the soft time dropped once the hard
/// one covers it; atomic on the one key, so concurrent invalidations are never lost. Times are
/// compared as numbers (µs since the epoch are below 2^53, exact in Lua's doubles) and written
/// back as they came: Lua would print a large number in exponent form.
pub(crate) const MARK_TAG_SCRIPT: &str = "local old = redis.call('GET', KEYS[1]) or '' \
     local hard, soft = string.match(old, '^([^;]*);?(.*)$') \
     local function later(a, b) local x, y = tonumber(a), tonumber(b) \
       return x ~= nil and (y == nil or x > y) end \
     if ARGV[1] == 'hard' then if later(ARGV[2], hard) then hard = ARGV[2] end \
     elseif later(ARGV[2], soft) then soft = ARGV[2] end \
     if later(soft, hard) then hard = hard .. ';' .. soft end \
     redis.call('SET', KEYS[1], hard) return 1";

/// `EVAL` of [`ADD_MEMBER_SCRIPT`](crate::members::ADD_MEMBER_SCRIPT): `member` added to the
/// list at `key`, which then lives at least `expiry`.
pub(crate) fn add_member_command(key: &str, member: &str, expiry: Expiry) -> redis::Cmd {
    let script = crate::members::ADD_MEMBER_SCRIPT;
    let millis = expiry_millis(expiry);
    let mut cmd = redis::Cmd::with_capacity(7, script.len() + key.len() + member.len() + 32);
    cmd.arg("EVAL")
        .arg(script)
        .arg(1)
        .arg(key)
        .arg(member)
        .arg(millis)
        .arg(crate::members::MAX_MEMBERS);
    cmd
}

/// `EVAL` of [`MARK_TAG_SCRIPT`] on the state key `key`: an invalidation of `kind` at `at`.
pub(crate) fn mark_tag_command(key: &str, kind: TagInvalidation, at: &[u8]) -> redis::Cmd {
    let mut cmd = redis::Cmd::with_capacity(6, MARK_TAG_SCRIPT.len() + key.len() + at.len() + 12);
    cmd.arg("EVAL")
        .arg(MARK_TAG_SCRIPT)
        .arg(1)
        .arg(key)
        .arg(kind.as_str())
        .arg(at);
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repository::failure::{Failed, Waited};

    /// The error a reply of the server becomes, as the repositories report it.
    fn reported(reply: &[u8]) -> Option<Error> {
        let value = redis::parse_redis_value(reply).ok()?;
        let e = value.extract_error().err()?;
        let waited = Waited {
            waited: std::time::Duration::ZERO,
            deadline: std::time::Duration::from_secs(1),
            connect_timeout: None,
        };
        Some(Failed::classify(e, "set_nx", "k".to_owned(), waited).error)
    }

    /// A server before 7.0 answers `SET .. NX GET` with `ERR syntax error`: that reply, and no
    /// other, makes the repository fall back to `SET NX` then `GET`, and it is remembered.
    #[test]
    fn only_a_syntax_error_is_a_refusal_of_nx_with_get() -> Result<(), String> {
        let support = NxGet::default();
        assert!(!support.refused());
        let others: [&[u8]; 4] = [
            b"-OOM command not allowed when used memory > 'maxmemory'.\r\n",
            b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
            b"-ERR invalid expire time in 'set' command\r\n",
            b"-READONLY You can't write against a read only replica.\r\n",
        ];
        for reply in others {
            let error = reported(reply).ok_or("no error")?;
            assert!(!support.refuses(&error, "server"), "{error}");
        }
        let timeout = Error::Timeout {
            operation: "set_nx",
            key: "k".to_owned(),
            deadline: std::time::Duration::from_secs(1),
        };
        assert!(!support.refuses(&timeout, "server"));
        assert!(!support.refused());
        let refusal = reported(b"-ERR syntax error\r\n").ok_or("no error")?;
        assert!(support.refuses(&refusal, "server"), "{refusal}");
        assert!(support.refused());
        // Said again (a call already under way when the first came back): still a refusal.
        assert!(support.refuses(&refusal, "server"));
        Ok(())
    }

    #[test]
    fn set_nx_get_is_set_nx_with_get_last() {
        let cmd = set_nx_get_command("k", b"v", Expiry::Milliseconds(1500));
        let args: Vec<Vec<u8>> = cmd
            .args_iter()
            .filter_map(|arg| match arg {
                redis::Arg::Simple(bytes) => Some(bytes.to_vec()),
                _ => None,
            })
            .collect();
        let expected: Vec<&[u8]> = vec![b"SET", b"k", b"v", b"PX", b"1500", b"NX", b"GET"];
        assert_eq!(args, expected);
    }
}
