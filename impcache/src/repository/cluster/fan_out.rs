//! Multi-key commands across nodes: the keys grouped per primary of the slot map, one pipeline
//! per node sent in parallel, further rounds while a slot migrates, the rest through the cluster
//! client's routing; a failed node fails its own part only.

use std::collections::HashMap;
use std::fmt;
use std::time::Instant;

use bytes::Bytes;
use redis::{RedisError, ServerErrorKind};
use tokio::task::JoinSet;

use super::node::is_redirection;
use super::topology::{key_slot, SlotMap};
use super::{RedisClusterCacheRepository, NODE_EVENTS};
use crate::error::{shown_many, Error, Result};
use crate::expire::Expiry;
use crate::repository::call::require_runtime;
use crate::repository::commands::set_command;
use crate::repository::failure::{classify, Failed};
use crate::repository::WithTtl;

/// The script of [`RedisClusterCacheRepository::get_many_with_ttl_per_node`]: per key
/// `{value, pttl}`, or `{}` when it holds no string (missing, or another type, which `MGET` reads
/// as nil too: `redis.pcall` keeps a `WRONGTYPE` from failing the slot). `{}` rather than Lua's
/// `false`, which RESP3 sends as a boolean, not a nil ([`MaybeWithTtl`] reads either).
const GET_MANY_WITH_TTL_SCRIPT: &str = "local r = {} for i, k in ipairs(KEYS) do \
local v = redis.pcall('GET', k) \
if type(v) == 'string' then r[i] = {v, redis.call('PTTL', k)} else r[i] = {} end \
end return r";

/// One key's part of [`GET_MANY_WITH_TTL_SCRIPT`]'s reply: `{value, pttl}`, or nothing (`{}`,
/// nil, `false`).
struct MaybeWithTtl(Option<WithTtl>);

impl redis::FromRedisValue for MaybeWithTtl {
    fn from_redis_value(value: redis::Value) -> std::result::Result<Self, redis::ParsingError> {
        match value {
            redis::Value::Nil | redis::Value::Boolean(false) => Ok(MaybeWithTtl(None)),
            redis::Value::Array(parts) if parts.is_empty() => Ok(MaybeWithTtl(None)),
            found => {
                let (value, pttl): (Bytes, i64) = redis::from_redis_value(found)?;
                Ok(MaybeWithTtl(Some(WithTtl::from_pttl(value, pttl))))
            }
        }
    }
}

/// Rounds of per-node pipelines for one multi-key call: the first, then while a slot migrates
/// one with the `TRYAGAIN` commands split per key, and one after `ASK` on the importing node.
const MIGRATION_ROUNDS: usize = 4;

/// One command of a per-node pipeline: the indices (in the caller's keys) it covers, and whether
/// `ASKING` goes in front of it (it follows an `ASK` redirection).
struct Unit {
    indices: Vec<usize>,
    asking: bool,
}

/// What [`RedisClusterCacheRepository::send_per_node`] got back.
pub(super) struct PerNode {
    /// Each command's reply, with the indices (in the caller's keys) it covers.
    pub(super) replies: Vec<(Vec<usize>, redis::Value)>,
    /// Indices to send through the cluster client's routing, ascending.
    pub(super) fallback: Vec<usize>,
    /// The nodes whose part failed.
    pub(super) failures: Vec<NodeFailure>,
}

/// A node whose part of a multi-key operation failed, and how (the error names its keys).
#[derive(Debug)]
pub(super) struct NodeFailure {
    pub(super) node: String,
    pub(super) error: Error,
}

/// The source of the [`Error::Unavailable`] of a multi-key operation whose part on one or more
/// nodes failed (the parts on the other nodes were done): names each node and what happened.
#[derive(Debug)]
struct NodeFailures(Vec<NodeFailure>);

impl fmt::Display for NodeFailures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, failure) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "cluster node {}: {}", failure.node, failure.error)?;
        }
        Ok(())
    }
}

impl std::error::Error for NodeFailures {}

/// `Ok` if every node's part of a multi-key operation succeeded, else [`Error::Unavailable`]
/// naming the nodes that failed.
pub(super) fn check_nodes(
    operation: &'static str,
    subject: &dyn Fn() -> String,
    failures: Vec<NodeFailure>,
) -> Result<()> {
    if failures.is_empty() {
        return Ok(());
    }
    Err(Error::Unavailable {
        operation,
        key: subject(),
        source: Box::new(NodeFailures(failures)),
    })
}

impl RedisClusterCacheRepository {
    /// One pipeline of `SET`s per node, all sent in parallel; not atomic. Keys whose node
    /// redirected (a stale slot map) are set again through the client's routing. If a node
    /// fails, the keys of the other nodes are set all the same, and the error names the node.
    pub(super) async fn set_many_per_node(
        &self,
        entries: &[(&str, Bytes)],
        expiry: Expiry,
    ) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        for (key, value) in entries {
            self.check_size(key, value)?;
        }
        let keys: Vec<&str> = entries.iter().map(|(k, _)| *k).collect();
        let shown_keys = || shown_many(&keys);
        let until = Instant::now() + self.inner.deadline;
        let set = |indices: &[usize]| {
            let (key, value) = &entries[indices[0]];
            set_command(key, value, expiry, false)
        };
        let sent = self
            .send_per_node("set_many", &keys, false, until, set)
            .await?;
        for (_, reply) in sent.replies {
            reply
                .extract_error()
                .map_err(|e| classify(e, "set_many", shown_keys(), self.waited(until)))?;
        }
        self.through_client_per_key::<()>(until, "set_many", &shown_keys, &sent.fallback, set)
            .await?;
        check_nodes("set_many", &shown_keys, sent.failures)
    }

    /// One pipeline per node of one `MGET` per slot, all sent in parallel, reassembled in the
    /// order of `keys`. Keys whose node redirected (a stale slot map) are read again through the
    /// client's routing. If a node fails, the call fails with an error naming it.
    pub(super) async fn get_many_per_node(&self, keys: &[&str]) -> Result<Vec<Option<Bytes>>> {
        self.read_many_per_node(keys, |indices: &[usize]| {
            let mut cmd = redis::cmd("MGET");
            for &index in indices {
                cmd.arg(keys[index]);
            }
            cmd
        })
        .await
    }

    /// [`get_many_per_node`](Self::get_many_per_node) with each key's remaining TTL: one script
    /// per slot (`GET` and `PTTL` of each of its keys, atomic, so each TTL is its value's), for a
    /// near cache, which keeps what it reads no longer than the key lives.
    pub(super) async fn get_many_with_ttl_per_node(
        &self,
        keys: &[&str],
    ) -> Result<Vec<Option<WithTtl>>> {
        let found: Vec<Option<MaybeWithTtl>> = self
            .read_many_per_node(keys, |indices: &[usize]| {
                let mut cmd = redis::cmd("EVAL");
                cmd.arg(GET_MANY_WITH_TTL_SCRIPT).arg(indices.len());
                for &index in indices {
                    cmd.arg(keys[index]);
                }
                cmd
            })
            .await?;
        Ok(found
            .into_iter()
            .map(|found| found.and_then(|MaybeWithTtl(found)| found))
            .collect())
    }

    /// A read of `keys` by one `command` per slot (its reply: one value or nil per key, in
    /// order), per node in parallel, reassembled in the order of `keys`; keys whose node
    /// redirected are read again through the client's routing. If a node fails, the call fails
    /// with an error naming it.
    async fn read_many_per_node<V>(
        &self,
        keys: &[&str],
        command: impl Fn(&[usize]) -> redis::Cmd,
    ) -> Result<Vec<Option<V>>>
    where
        V: redis::FromRedisValue + Send + 'static,
    {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let shown_keys = || shown_many(keys);
        let until = Instant::now() + self.inner.deadline;
        let sent = self
            .send_per_node("get_many", keys, true, until, &command)
            .await?;
        check_nodes("get_many", &shown_keys, sent.failures)?;
        let mut values: Vec<Option<V>> = keys.iter().map(|_| None).collect();
        for (indices, reply) in sent.replies {
            let got: Vec<Option<V>> = reply
                .extract_error()
                .and_then(|value| Ok(redis::from_redis_value(value)?))
                .map_err(|e| classify(e, "get_many", shown_keys(), self.waited(until)))?;
            for (index, value) in indices.into_iter().zip(got) {
                values[index] = value;
            }
        }
        // One key per command: the client follows each key's redirection on its own (a multi-key
        // command in a migrating slot would get `TRYAGAIN`).
        let read = self
            .through_client_per_key::<Vec<Option<V>>>(
                until,
                "get_many",
                &shown_keys,
                &sent.fallback,
                &command,
            )
            .await?;
        for (index, got) in read {
            values[index] = got.into_iter().next().flatten();
        }
        Ok(values)
    }

    /// One pipeline per node of one `UNLINK` per slot, all sent in parallel; the counts are
    /// summed. Keys whose node redirected (a stale slot map) are unlinked again through the
    /// client's routing. If a node fails, the keys of the other nodes are deleted all the same,
    /// and the error names the node.
    pub(super) async fn delete_many_per_node(&self, keys: &[&str]) -> Result<u64> {
        if keys.is_empty() {
            return Ok(0);
        }
        let shown_keys = || shown_many(keys);
        let until = Instant::now() + self.inner.deadline;
        let unlink = |indices: &[usize]| {
            let mut cmd = redis::cmd("UNLINK");
            for &index in indices {
                cmd.arg(keys[index]);
            }
            cmd
        };
        let sent = self
            .send_per_node("delete_many", keys, true, until, unlink)
            .await?;
        let mut removed = 0;
        for (_, reply) in sent.replies {
            removed += reply
                .extract_error()
                .and_then(|value| Ok(redis::from_redis_value::<u64>(value)?))
                .map_err(|e| classify(e, "delete_many", shown_keys(), self.waited(until)))?;
        }
        // One key per command, as in `get_many`.
        let unlinked = self
            .through_client_per_key::<u64>(
                until,
                "delete_many",
                &shown_keys,
                &sent.fallback,
                unlink,
            )
            .await?;
        removed += unlinked.into_iter().map(|(_, n)| n).sum::<u64>();
        check_nodes("delete_many", &shown_keys, sent.failures)?;
        Ok(removed)
    }

    /// Sends the commands for `keys` grouped per node: one pipeline per primary of the slot map,
    /// all in parallel (one round trip per node). `command` builds one command for the keys at the
    /// given indices of `keys`: with `per_slot`, one command per slot (`MGET`, `UNLINK`: all its
    /// keys are in one slot), else one per key.
    ///
    /// While a slot migrates, its node answers `ASK` (the keys are on the importing node) or, for a
    /// command on several keys of which only some moved, `TRYAGAIN`: those commands are sent again
    /// in a further round, split per key, and with `ASKING` in front on the importing node (in one
    /// pipeline, so that no other request can take the `ASKING`; the cluster client sends them
    /// apart). A few rounds at most.
    ///
    /// Each node's part runs under that node's breaker and gives up at `until`; a node that fails
    /// (unreachable, timed out, breaker open) fails its own part only: the other nodes' parts are
    /// done, and the failure is returned in [`PerNode::failures`], naming the node.
    ///
    /// Returns each command's reply with the indices it covers, and the indices the map could not
    /// serve: slot unknown to the map, `MOVED` (the map is stale: it is learned again on the next
    /// call) or a cluster-state error. Those are for the caller to send through the cluster
    /// client's own routing, which follows redirections.
    pub(super) async fn send_per_node(
        &self,
        operation: &'static str,
        keys: &[&str],
        per_slot: bool,
        until: Instant,
        command: impl Fn(&[usize]) -> redis::Cmd,
    ) -> Result<PerNode> {
        require_runtime(operation, &|| shown_many(keys)).map_err(Failed::into_error)?;
        let mut outcome = PerNode {
            replies: Vec::new(),
            fallback: Vec::new(),
            failures: Vec::new(),
        };
        let map = match tokio::time::timeout_at(until.into(), self.slot_map()).await {
            Ok(Ok(map)) => map,
            Err(_elapsed) => {
                return Err(Error::Timeout {
                    operation,
                    key: shown_many(keys),
                    deadline: self.inner.deadline,
                })
            }
            Ok(Err(e)) => {
                // The client's routing still works without the map.
                tracing::debug!(error = %e, "impcache: CLUSTER SLOTS failed; routing per slot");
                outcome.fallback = (0..keys.len()).collect();
                return Ok(outcome);
            }
        };
        let mut work = group_per_node(&map, keys, per_slot, &mut outcome.fallback);
        let mut stale = false;
        for round in 0..MIGRATION_ROUNDS {
            if work.is_empty() {
                break;
            }
            let last = round + 1 == MIGRATION_ROUNDS;
            let mut tasks = JoinSet::new();
            for (node, units) in work.drain() {
                let job = NodePipeline::new(node, units, keys, &command);
                let this = self.clone();
                tasks.spawn(async move {
                    let sent = this.send_pipeline(&job, operation, round, until).await;
                    (job, sent)
                });
            }
            while let Some(joined) = tasks.join_next().await {
                let (job, sent) = match joined {
                    Ok(done) => done,
                    Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                    Err(_) => continue,
                };
                match sent {
                    Ok(replies) => {
                        stale |= sort_replies(&mut outcome, &mut work, job, replies, last)
                    }
                    // This node's part only: the others go on.
                    Err(error) => outcome.failures.push(NodeFailure {
                        node: format!("{}:{}", job.node.0, job.node.1),
                        error,
                    }),
                }
            }
        }
        if stale {
            self.forget_slot_map(&map);
        }
        if !outcome.fallback.is_empty() {
            tracing::debug!(
                target: NODE_EVENTS,
                event = "fallback",
                keys = outcome.fallback.len(),
                "impcache: keys routed per slot by the cluster client (stale slot map)"
            );
        }
        outcome.fallback.sort_unstable();
        Ok(outcome)
    }

    /// Sends the command of each key at `fallback` (indices in the caller's keys) on its own
    /// through the cluster client's routing, which follows each key's redirection, all in
    /// parallel and giving up at `until`; returns each reply with its index. Nothing is sent for
    /// no keys.
    async fn through_client_per_key<T>(
        &self,
        until: Instant,
        operation: &'static str,
        subject: &(dyn Fn() -> String + Sync),
        fallback: &[usize],
        command: impl Fn(&[usize]) -> redis::Cmd,
    ) -> Result<Vec<(usize, T)>>
    where
        T: redis::FromRedisValue + Send + 'static,
    {
        if fallback.is_empty() {
            return Ok(Vec::new());
        }
        let command = &command;
        self.run_until(until, operation, subject, |connection| async move {
            let mut tasks = JoinSet::new();
            for &index in fallback {
                let cmd = command(&[index]);
                let mut connection = connection.clone();
                tasks.spawn(async move {
                    let reply = cmd.query_async::<T>(&mut connection).await?;
                    Ok::<_, RedisError>((index, reply))
                });
            }
            join_set(tasks).await
        })
        .await
    }

    /// Sends one node's pipeline over its direct connection, under its breaker, giving up at
    /// `until`: one round trip.
    async fn send_pipeline(
        &self,
        job: &NodePipeline,
        operation: &'static str,
        round: usize,
        until: Instant,
    ) -> Result<Vec<redis::Value>> {
        let node = self.node(&job.node.0, job.node.1);
        let commands = job.units.len();
        let label = format!("{}:{}", job.node.0, job.node.1);
        let (label, pipe, count) = (&label, &job.pipe, job.count);
        self.on_node(
            &node,
            until,
            operation,
            &|| job.part.clone(),
            |mut c| async move {
                tracing::debug!(
                    target: NODE_EVENTS,
                    event = "pipeline",
                    node = %label,
                    commands,
                    round,
                    "impcache: one pipeline to one cluster node"
                );
                c.send_packed_commands(pipe, 0, count).await
            },
        )
        .await
    }
}

/// The commands still to send, per node address.
type Work = HashMap<(String, u16), Vec<Unit>>;

/// One node's pipeline in one round: the command of each unit, with `ASKING` in front where the
/// unit asks for it.
struct NodePipeline {
    node: (String, u16),
    units: Vec<Unit>,
    /// Where each unit's reply is among the pipeline's replies.
    positions: Vec<usize>,
    pipe: redis::Pipeline,
    /// The commands in `pipe`, `ASKING` included.
    count: usize,
    /// The keys it covers, as errors show them.
    part: String,
}

impl NodePipeline {
    fn new(
        node: (String, u16),
        units: Vec<Unit>,
        keys: &[&str],
        command: &impl Fn(&[usize]) -> redis::Cmd,
    ) -> Self {
        let mut pipe = redis::pipe();
        let mut count = 0;
        let mut positions = Vec::with_capacity(units.len());
        for unit in &units {
            if unit.asking {
                pipe.cmd("ASKING");
                count += 1;
            }
            positions.push(count);
            pipe.add_command(command(&unit.indices));
            count += 1;
        }
        let part: Vec<&str> = units
            .iter()
            .flat_map(|u| u.indices.iter().map(|&index| keys[index]))
            .collect();
        NodePipeline {
            node,
            units,
            positions,
            pipe,
            count,
            part: shown_many(&part),
        }
    }
}

/// The commands for `keys` per primary of `map`: one per slot with `per_slot` (all its keys are
/// in one slot), else one per key. The indices of keys whose slot no known primary serves go to
/// `fallback`.
fn group_per_node(map: &SlotMap, keys: &[&str], per_slot: bool, fallback: &mut Vec<usize>) -> Work {
    // node -> slot -> indices, in the caller's order within each slot.
    let mut by_node: HashMap<usize, HashMap<u16, Vec<usize>>> = HashMap::new();
    for (index, key) in keys.iter().enumerate() {
        let slot = key_slot(key.as_bytes());
        match map.owner(slot) {
            Some(node) => by_node
                .entry(node)
                .or_default()
                .entry(slot)
                .or_default()
                .push(index),
            None => fallback.push(index),
        }
    }
    let mut work = Work::new();
    for (node, slots) in by_node {
        let units = work.entry(map.nodes[node].clone()).or_default();
        for indices in slots.into_values() {
            if per_slot {
                units.push(Unit {
                    indices,
                    asking: false,
                });
            } else {
                units.extend(per_key(indices, false));
            }
        }
    }
    work
}

/// One unit per key.
fn per_key(indices: Vec<usize>, asking: bool) -> impl Iterator<Item = Unit> {
    indices.into_iter().map(move |index| Unit {
        indices: vec![index],
        asking,
    })
}

/// Sorts the replies of one node's pipeline: a reply (an error of the command included) goes to
/// `outcome.replies`; unless this is the `last` round, the keys of an `ASK` go to the importing
/// node (per key, with `ASKING`: the keys of one slot may be on either side) and those of a
/// `TRYAGAIN` on several keys to the same node per key, in `work`; the keys of other
/// redirections go to `outcome.fallback`. `true` if a `MOVED` says the slot map is stale.
fn sort_replies(
    outcome: &mut PerNode,
    work: &mut Work,
    job: NodePipeline,
    mut replies: Vec<redis::Value>,
    last: bool,
) -> bool {
    let mut stale = false;
    for (unit, position) in job.units.into_iter().zip(job.positions) {
        let reply = replies
            .get_mut(position)
            .map_or(redis::Value::Nil, std::mem::take);
        let redis::Value::ServerError(error) = reply else {
            outcome.replies.push((unit.indices, reply));
            continue;
        };
        match error.kind() {
            Some(ServerErrorKind::Ask) if !last => match ask_target(error) {
                Some(target) => work
                    .entry(target)
                    .or_default()
                    .extend(per_key(unit.indices, true)),
                None => outcome.fallback.extend(unit.indices),
            },
            Some(ServerErrorKind::TryAgain) if !last && unit.indices.len() > 1 => {
                work.entry(job.node.clone())
                    .or_default()
                    .extend(per_key(unit.indices, unit.asking));
            }
            kind if is_redirection(kind) => {
                stale |= kind == Some(ServerErrorKind::Moved);
                outcome.fallback.extend(unit.indices);
            }
            _ => outcome
                .replies
                .push((unit.indices, redis::Value::ServerError(error))),
        }
    }
    stale
}

/// The node an `ASK` reply sends its keys to.
pub(super) fn ask_target(error: redis::ServerError) -> Option<(String, u16)> {
    let error = RedisError::from(error);
    let (address, _) = error.redirect_node()?;
    let (host, port) = address.rsplit_once(':')?;
    Some((host.to_owned(), port.parse::<u16>().ok()?))
}

/// Waits for every task; the first error wins (the others are aborted when the set is dropped).
pub(super) async fn join_set<T: 'static, E: 'static>(
    mut tasks: JoinSet<std::result::Result<T, E>>,
) -> std::result::Result<Vec<T>, E> {
    let mut results = Vec::with_capacity(tasks.len());
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(result) => results.push(result?),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Cancelled: only when the set itself is shutting down.
            Err(_) => {}
        }
    }
    Ok(results)
}
