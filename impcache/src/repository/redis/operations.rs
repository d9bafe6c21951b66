//! The single node's operations, each one command or pipeline sent under the call policy, and the
//! policy's hooks for the single node.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::{FromRedisValue, RedisError};

use super::RedisCacheRepository;
use crate::error::{shown, shown_many, Result};
use crate::expire::Expiry;
use crate::progress::{DeleteProgress, Sweep};
use crate::repository::call::{self, Attempt, Call, Limits, Opened, Target, Unanswered};
use crate::repository::commands::{
    add_member_command, check_value_size, delete_if_equal_command, key_command, keys_command,
    mark_tag_command, scan_command, set_command, set_if_equal_command, set_nx_get_command,
};
use crate::repository::failure::{unless_unsent, Failed, Failure};
use crate::repository::{
    BoxFuture, CacheRepository, SetNxOrGet, TagInvalidation, TaggedRead, WithTtl,
};

impl RedisCacheRepository {
    /// Sends one command or pipeline under the call policy ([`call::call`]): the deadline and
    /// the breaker, and the hooks of [`Target`] below.
    async fn query<T: FromRedisValue>(
        &self,
        operation: &'static str,
        subject: &(dyn Fn() -> String + Sync),
        request: Request<'_>,
    ) -> Result<T, Failed> {
        let call = Call {
            idempotent: matches!(
                request,
                Request::Read(_)
                    | Request::ReadPipe(_)
                    | Request::Replay(_)
                    | Request::ReplayPipe(_)
            ),
            ..Call::new(operation, subject)
        };
        let until = tokio::time::Instant::now() + self.inner.deadline;
        call::call(self, call, Some(until), |mut connection| async move {
            match request {
                Request::Read(cmd) | Request::Cmd(cmd) => cmd.query_async(&mut connection).await,
                Request::Pipe(pipe) | Request::ReadPipe(pipe) => {
                    pipe.query_async(&mut connection).await
                }
                Request::Replay(cmd) => cmd
                    .query_async(&mut connection)
                    .await
                    .map_err(unless_unsent),
                Request::ReplayPipe(pipe) => pipe
                    .query_async(&mut connection)
                    .await
                    .map_err(unless_unsent),
            }
        })
        .await
    }

    fn check_size(&self, key: &str, value: &Bytes) -> Result<(), Failed> {
        check_value_size(key, value.len(), self.inner.max_value_bytes).map_err(Failed::invalid)
    }
}

/// What [`RedisCacheRepository::query`] sends.
#[derive(Clone, Copy)]
enum Request<'a> {
    /// A read: safe to send twice.
    Read(&'a redis::Cmd),
    Cmd(&'a redis::Cmd),
    Pipe(&'a redis::Pipeline),
    /// A pipeline of reads: safe to send twice.
    ReadPipe(&'a redis::Pipeline),
    /// A write that leaves the same state when applied twice (`SET`, `UNLINK`, a tag's
    /// invalidation, which keeps the later time): sent once more on a fresh connection when its
    /// connection was found closed before it was sent (an idle connection the server closed:
    /// `timeout`), not when it was dropped with the write in flight ([`unless_unsent`]).
    Replay(&'a redis::Cmd),
    /// A pipeline of such writes.
    ReplayPipe(&'a redis::Pipeline),
}

/// The single node's hooks of the call policy: a connection that failed (refused, reset, a
/// protocol error, a refused login) or timed out [`RESET_AFTER_TIMEOUTS`](super::RESET_AFTER_TIMEOUTS) times in
/// a row is dropped, and the next operation opens a fresh one. A request is sent once more, within the same deadline,
/// when the connection turned out to be dropped and the request is a read (an idle connection
/// closed by the server, a `CLIENT KILL`), and whatever it is when the connection's driver ended
/// (or is ending) with another runtime; a second attempt runs on a connection of the call's
/// own runtime. A write in flight when the driver ended may have been applied: sent twice, a
/// `SET`, `set_many` or `UNLINK` leaves what one would (an `UNLINK` may count 0 removed), but a
/// `set_nx` (or a compare-and-set) answers `false` for its own write: accepted, as the rare
/// price of not failing every call in flight when a runtime ends (a `#[cached]` store is not
/// hurt; a lock then looks taken until its lifetime ends).
impl Target for RedisCacheRepository {
    type Handle = MultiplexedConnection;
    type Error = RedisError;

    fn limits(&self) -> Limits<'_> {
        Limits {
            breaker: &self.inner.breaker,
            deadline: self.inner.deadline,
            connect_timeout: Some(self.inner.connect_timeout),
        }
    }

    /// A second attempt runs on a connection of the call's own runtime: the first one's
    /// connection may have died with another runtime, and so may its replacement, made by yet
    /// another runtime meanwhile (parallel tests end about together: found by a probe).
    async fn open(
        &self,
        _call: &Call<'_>,
        again: bool,
    ) -> redis::RedisResult<Opened<MultiplexedConnection>> {
        self.connection(again).await
    }

    fn retry(&self, attempt: &Attempt<'_>, call: &Call<'_>) -> bool {
        if attempt.retried {
            false
        } else if attempt.driver_gone
            || (call.idempotent && attempt.failure.kind == Failure::Dropped)
        {
            // Whether or not another call replaced the connection already: each call in flight
            // when a runtime ended gets its second attempt (found by a probe: only the first to
            // fail had one, and the others' writes failed).
            self.reset_connection(attempt.generation);
            true
        } else {
            false
        }
    }

    fn succeeded(&self) {
        self.answered();
        self.inner.refused_login.clear();
    }

    fn answered(&self) {
        // Read before writing: a store on every call would bounce the cache line between cores
        // on the hot path.
        if self.inner.consecutive_timeouts.load(Ordering::Relaxed) != 0 {
            self.inner.consecutive_timeouts.store(0, Ordering::Relaxed);
        }
    }

    fn failed(&self, generation: Option<u64>, failure: Failure) {
        let Some(generation) = generation else { return };
        match failure {
            Failure::Timeout => self.note_timeout(generation),
            // Redis closes the connection after a protocol error (a value beyond its
            // `proto-max-bulk-len`): don't let the next call find it dead. A refused login
            // leaves a connection that never logged in: the next call logs in afresh.
            Failure::GaveUp
            | Failure::Refused
            | Failure::Dropped
            | Failure::Broken
            | Failure::Protocol => self.reset_connection(generation),
            // A login refused by a command (`NOAUTH`: the DSN gives no password and the server
            // now wants one) rather than at the connection's `AUTH`: counted as a refused
            // login, so that the next connections wait as after refused `AUTH`s.
            Failure::Auth => {
                self.inner.refused_login.refused_by_command();
                self.reset_connection(generation);
            }
            _ => {}
        }
    }

    /// A request its caller abandoned counts as a timeout of its connection once its deadline
    /// has passed with no answer since: a half-open connection is replaced even when every
    /// caller gives up before the deadline.
    fn unanswered(&self) -> Option<&Unanswered> {
        Some(&self.inner.unanswered)
    }
}

/// The operations as plain `async fn`s: the trait boxes them, and [`Cache`](crate::Cache)
/// awaits them directly (no allocation for the boxed future).
impl RedisCacheRepository {
    pub(crate) async fn set_direct(
        &self,
        key: &str,
        value: Bytes,
        expiry: Expiry,
    ) -> Result<(), Failed> {
        self.check_size(key, &value)?;
        let cmd = set_command(key, &value, expiry, false);
        self.query("set", &|| shown(key), Request::Replay(&cmd))
            .await
    }

    pub(crate) async fn set_nx_direct(
        &self,
        key: &str,
        value: Bytes,
        expiry: Expiry,
    ) -> Result<bool, Failed> {
        self.check_size(key, &value)?;
        let cmd = set_command(key, &value, expiry, true);
        let reply: redis::Value = self
            .query("set_nx", &|| shown(key), Request::Cmd(&cmd))
            .await?;
        Ok(!matches!(reply, redis::Value::Nil))
    }

    /// [`CacheRepository::set_nx_or_get`]: one `SET .. NX GET`; on a server that refuses it
    /// (before Redis 7.0: remembered, see `NxGet`), `SET .. NX` then, when the key was taken, a
    /// `GET`, both named `set_nx`.
    pub(crate) async fn set_nx_or_get_direct(
        &self,
        key: &str,
        value: Bytes,
        expiry: Expiry,
    ) -> Result<SetNxOrGet, Failed> {
        self.check_size(key, &value)?;
        let subject = || shown(key);
        let nx_get = &self.inner.nx_get;
        if !nx_get.refused() {
            let cmd = set_nx_get_command(key, &value, expiry);
            match self.query("set_nx", &subject, Request::Cmd(&cmd)).await {
                Ok(None) => return Ok(SetNxOrGet::Stored),
                Ok(found) => return Ok(SetNxOrGet::Taken(found)),
                Err(failed) if nx_get.refuses(&failed.error, &self.inner.shown_dsn) => {}
                Err(failed) => return Err(failed),
            }
        }
        // The trait's two calls (`repository::set_nx_then_get`), here as direct calls: a
        // Sentinel repository reads their failures' kinds (a `READONLY` primary).
        if self.set_nx_direct(key, value, expiry).await? {
            return Ok(SetNxOrGet::Stored);
        }
        let cmd = key_command("GET", key);
        let found = self.query("set_nx", &subject, Request::Read(&cmd)).await?;
        Ok(SetNxOrGet::Taken(found))
    }

    pub(crate) async fn set_many_direct(
        &self,
        entries: &[(&str, Bytes)],
        expiry: Expiry,
    ) -> Result<(), Failed> {
        if entries.is_empty() {
            return Ok(());
        }
        // Sized up front, and no command `ignore()`d: redis-rs keeps ignored indices in a
        // hash set (a hash per command, and another per reply); the `OK`s are dropped as a
        // whole instead. Error replies still fail the call.
        let mut pipe = redis::Pipeline::with_capacity(entries.len());
        for (key, value) in entries {
            self.check_size(key, value)?;
            pipe.add_command(set_command(key, value, expiry, false));
        }
        let keys = || {
            let keys: Vec<&str> = entries.iter().map(|(k, _)| *k).collect();
            shown_many(&keys)
        };
        self.query("set_many", &keys, Request::ReplayPipe(&pipe))
            .await
    }

    pub(crate) async fn get_direct(&self, key: &str) -> Result<Option<Bytes>, Failed> {
        let cmd = key_command("GET", key);
        self.query("get", &|| shown(key), Request::Read(&cmd)).await
    }

    /// `GET` and `PTTL` of `key`, pipelined: one round trip.
    pub(crate) async fn get_with_ttl_direct(&self, key: &str) -> Result<Option<WithTtl>, Failed> {
        let mut pipe = redis::Pipeline::with_capacity(2);
        pipe.add_command(key_command("GET", key))
            .add_command(key_command("PTTL", key));
        let (value, pttl): (Option<Bytes>, i64) = self
            .query("get", &|| shown(key), Request::ReadPipe(&pipe))
            .await?;
        Ok(value.map(|value| WithTtl::from_pttl(value, pttl)))
    }

    /// `GET` [+ `PTTL`] of `key` and `MGET` of `tag_keys`, pipelined: one round trip.
    pub(crate) async fn get_with_tags_direct(
        &self,
        key: &str,
        tag_keys: &[&str],
        with_ttl: bool,
    ) -> Result<TaggedRead, Failed> {
        if !with_ttl {
            // One `MGET` of the entry and its tag keys: one command, one reply to parse (a
            // pipeline costs the client ~10 % more instructions per read).
            let mut keys = Vec::with_capacity(1 + tag_keys.len());
            keys.push(key);
            keys.extend_from_slice(tag_keys);
            let cmd = keys_command("MGET", &keys);
            let mut found: Vec<Option<Bytes>> = self
                .query("get", &|| shown(key), Request::Read(&cmd))
                .await?;
            let states = found.split_off(1.min(found.len()));
            let value = found.pop().flatten();
            return Ok((value.map(|value| WithTtl::new(value, None)), states));
        }
        // With the TTL: `GET` + `PTTL` + `MGET` of the tag keys, pipelined.
        let mut pipe = redis::Pipeline::with_capacity(3);
        pipe.add_command(key_command("GET", key))
            .add_command(key_command("PTTL", key));
        if tag_keys.is_empty() {
            let (value, pttl): (Option<Bytes>, i64) = self
                .query("get", &|| shown(key), Request::ReadPipe(&pipe))
                .await?;
            return Ok((value.map(|v| WithTtl::from_pttl(v, pttl)), Vec::new()));
        }
        pipe.add_command(keys_command("MGET", tag_keys));
        let (value, pttl, states): (Option<Bytes>, i64, Vec<Option<Bytes>>) = self
            .query("get", &|| shown(key), Request::ReadPipe(&pipe))
            .await?;
        Ok((value.map(|v| WithTtl::from_pttl(v, pttl)), states))
    }

    pub(crate) async fn get_many_direct(
        &self,
        keys: &[&str],
    ) -> Result<Vec<Option<Bytes>>, Failed> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let cmd = keys_command("MGET", keys);
        self.query("get_many", &|| shown_many(keys), Request::Read(&cmd))
            .await
    }

    /// `MGET` of `keys` pipelined with each key's `PTTL`: one round trip, for a near cache, which
    /// keeps what it reads no longer than the key lives.
    pub(crate) async fn get_many_with_ttl_direct(
        &self,
        keys: &[&str],
    ) -> Result<Vec<Option<WithTtl>>, Failed> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::Pipeline::with_capacity(1 + keys.len());
        pipe.add_command(keys_command("MGET", keys));
        for key in keys {
            pipe.add_command(key_command("PTTL", key));
        }
        let ManyWithTtl(found) = self
            .query("get_many", &|| shown_many(keys), Request::ReadPipe(&pipe))
            .await?;
        Ok(found)
    }

    pub(crate) async fn delete_direct(&self, key: &str) -> Result<u64, Failed> {
        let cmd = key_command("UNLINK", key);
        self.query("delete", &|| shown(key), Request::Replay(&cmd))
            .await
    }

    pub(crate) async fn delete_many_direct(&self, keys: &[&str]) -> Result<u64, Failed> {
        if keys.is_empty() {
            return Ok(0);
        }
        let cmd = keys_command("UNLINK", keys);
        self.query("delete_many", &|| shown_many(keys), Request::Replay(&cmd))
            .await
    }

    /// Compare-and-delete ([`CacheRepository::delete_if_equal`]): one `EVAL`.
    pub(crate) async fn delete_if_equal_direct(
        &self,
        key: &str,
        expected: &[u8],
    ) -> Result<bool, Failed> {
        let cmd = delete_if_equal_command(key, expected);
        let removed: u64 = self
            .query("delete", &|| shown(key), Request::Cmd(&cmd))
            .await?;
        Ok(removed > 0)
    }

    /// Compare-and-set ([`CacheRepository::set_if_equal`]): one `EVAL`.
    pub(crate) async fn set_if_equal_direct(
        &self,
        key: &str,
        expected: &[u8],
        value: Bytes,
        expiry: Expiry,
    ) -> Result<bool, Failed> {
        self.check_size(key, &value)?;
        let cmd = set_if_equal_command(key, expected, &value, expiry);
        let stored: u64 = self
            .query("set_nx", &|| shown(key), Request::Cmd(&cmd))
            .await?;
        Ok(stored > 0)
    }

    /// Tags' invalidations ([`CacheRepository::mark_tag`] of each of `keys`): one `EVAL` each,
    /// pipelined (one round trip).
    pub(crate) async fn mark_tags_direct(
        &self,
        keys: &[&str],
        kind: TagInvalidation,
        at: &[u8],
    ) -> Result<(), Failed> {
        let mut pipe = redis::Pipeline::with_capacity(keys.len());
        for key in keys {
            pipe.add_command(mark_tag_command(key, kind, at));
        }
        self.query("set", &|| shown_many(keys), Request::ReplayPipe(&pipe))
            .await
    }

    /// A member added to a list ([`CacheRepository::add_member`]): one `EVAL`.
    pub(crate) async fn add_member_direct(
        &self,
        key: &str,
        member: &str,
        expiry: Expiry,
    ) -> Result<(), Failed> {
        let cmd = add_member_command(key, member, expiry);
        let _: u64 = self
            .query("set", &|| shown(key), Request::Cmd(&cmd))
            .await?;
        Ok(())
    }

    /// `SCAN MATCH` in batches of 1,000 and `UNLINK` of each batch; the `UNLINK` of one batch
    /// travels in the same round trip as the `SCAN` for the next. The deadline applies to each
    /// round trip, not to the whole sweep. Each batch is counted in `sweep`; the total removed
    /// is the sweep's (every attempt of a Sentinel call adds to one sweep), and a failure after
    /// keys were removed is [`Error::Interrupted`](crate::Error::Interrupted).
    pub(crate) async fn delete_pattern_direct(
        &self,
        pattern: &str,
        sweep: &Sweep<'_>,
    ) -> Result<u64, Failed> {
        self.sweep(pattern, sweep).await.map_err(|failed| Failed {
            error: sweep.interrupted(failed.error),
            ..failed
        })
    }

    async fn sweep(&self, pattern: &str, sweep: &Sweep<'_>) -> Result<u64, Failed> {
        let subject = || shown(pattern);
        let (mut cursor, mut keys): (u64, Vec<Vec<u8>>) = self
            .query(
                "delete_pattern",
                &subject,
                Request::Read(&scan_command(0, pattern)),
            )
            .await?;
        loop {
            match (cursor, keys.is_empty()) {
                (0, true) => return Ok(sweep.removed()),
                (0, false) => {
                    let mut unlink = redis::cmd("UNLINK");
                    unlink.arg(&keys);
                    let n: u64 = self
                        .query("delete_pattern", &subject, Request::Cmd(&unlink))
                        .await?;
                    sweep.batch(keys.len(), n);
                    return Ok(sweep.removed());
                }
                (_, true) => {
                    (cursor, keys) = self
                        .query(
                            "delete_pattern",
                            &subject,
                            Request::Read(&scan_command(cursor, pattern)),
                        )
                        .await?;
                }
                (_, false) => {
                    let mut pipe = redis::pipe();
                    pipe.cmd("UNLINK").arg(&keys);
                    pipe.add_command(scan_command(cursor, pattern));
                    let (n, (next, next_keys)): (u64, (u64, Vec<Vec<u8>>)) = self
                        .query("delete_pattern", &subject, Request::Pipe(&pipe))
                        .await?;
                    sweep.batch(keys.len(), n);
                    (cursor, keys) = (next, next_keys);
                }
            }
        }
    }
}

impl CacheRepository for RedisCacheRepository {
    fn set<'a>(&'a self, key: &'a str, value: Bytes, expiry: Expiry) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.set_direct(key, value, expiry)
                .await
                .map_err(Failed::into_error)
        })
    }

    fn set_nx<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        expiry: Expiry,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            self.set_nx_direct(key, value, expiry)
                .await
                .map_err(Failed::into_error)
        })
    }

    fn set_nx_or_get<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        expiry: Expiry,
    ) -> BoxFuture<'a, Result<SetNxOrGet>> {
        Box::pin(async move {
            self.set_nx_or_get_direct(key, value, expiry)
                .await
                .map_err(Failed::into_error)
        })
    }

    fn set_many<'a>(
        &'a self,
        entries: &'a [(&'a str, Bytes)],
        expiry: Expiry,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.set_many_direct(entries, expiry)
                .await
                .map_err(Failed::into_error)
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>>> {
        Box::pin(async move { self.get_direct(key).await.map_err(Failed::into_error) })
    }

    fn get_many<'a>(&'a self, keys: &'a [&'a str]) -> BoxFuture<'a, Result<Vec<Option<Bytes>>>> {
        Box::pin(async move { self.get_many_direct(keys).await.map_err(Failed::into_error) })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move { self.delete_direct(key).await.map_err(Failed::into_error) })
    }

    fn delete_many<'a>(&'a self, keys: &'a [&'a str]) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            self.delete_many_direct(keys)
                .await
                .map_err(Failed::into_error)
        })
    }

    fn delete_pattern<'a>(&'a self, pattern: &'a str) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            self.delete_pattern_direct(pattern, &Sweep::new(&mut |_| {}))
                .await
                .map_err(Failed::into_error)
        })
    }

    fn delete_pattern_with_progress<'a>(
        &'a self,
        pattern: &'a str,
        progress: &'a mut (dyn FnMut(DeleteProgress) + Send),
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            self.delete_pattern_direct(pattern, &Sweep::new(progress))
                .await
                .map_err(Failed::into_error)
        })
    }

    fn get_with_ttl<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<WithTtl>>> {
        Box::pin(async move {
            self.get_with_ttl_direct(key)
                .await
                .map_err(Failed::into_error)
        })
    }

    fn delete_if_equal<'a>(&'a self, key: &'a str, expected: Bytes) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            self.delete_if_equal_direct(key, &expected)
                .await
                .map_err(Failed::into_error)
        })
    }

    fn set_if_equal<'a>(
        &'a self,
        key: &'a str,
        expected: Bytes,
        value: Bytes,
        expiry: Expiry,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            self.set_if_equal_direct(key, &expected, value, expiry)
                .await
                .map_err(Failed::into_error)
        })
    }

    fn mark_tag<'a>(
        &'a self,
        key: &'a str,
        kind: TagInvalidation,
        at: Bytes,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.mark_tags_direct(&[key], kind, &at)
                .await
                .map_err(Failed::into_error)
        })
    }

    fn add_member<'a>(
        &'a self,
        key: &'a str,
        member: &'a str,
        expiry: Expiry,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.add_member_direct(key, member, expiry)
                .await
                .map_err(Failed::into_error)
        })
    }

    fn get_with_tags<'a>(
        &'a self,
        key: &'a str,
        tag_keys: &'a [&'a str],
        with_ttl: bool,
    ) -> BoxFuture<'a, Result<TaggedRead>> {
        Box::pin(async move {
            self.get_with_tags_direct(key, tag_keys, with_ttl)
                .await
                .map_err(Failed::into_error)
        })
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}

/// The replies of an `MGET` of n keys pipelined with their n `PTTL`s.
struct ManyWithTtl(Vec<Option<WithTtl>>);

impl FromRedisValue for ManyWithTtl {
    fn from_redis_value(value: redis::Value) -> Result<Self, redis::ParsingError> {
        let mut replies = Vec::<redis::Value>::from_redis_value(value)?.into_iter();
        let values = match replies.next() {
            Some(values) => Vec::<Option<Bytes>>::from_redis_value(values)?,
            None => return Err("an empty reply to MGET + PTTL".to_owned().into()),
        };
        if replies.len() != values.len() {
            return Err(format!(
                "{} PTTL replies to an MGET of {} keys",
                replies.len(),
                values.len()
            )
            .into());
        }
        values
            .into_iter()
            .zip(replies)
            .map(|(value, pttl)| {
                let pttl = i64::from_redis_value(pttl)?;
                Ok(value.map(|value| WithTtl::from_pttl(value, pttl)))
            })
            .collect::<Result<_, redis::ParsingError>>()
            .map(ManyWithTtl)
    }
}
