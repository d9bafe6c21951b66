//! `delete_pattern`: every primary of a fresh slot map swept in parallel with `SCAN`, each batch
//! `UNLINK`ed on its node.

use std::time::Instant;

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::fan_out::{check_nodes, join_set, NodeFailure};
use super::node::Node;
use super::topology::{pattern_slot, serves_whole_slot};
use super::RedisClusterCacheRepository;
use crate::error::{shown, Error, Result};
use crate::progress::{Report, Sweep};
use crate::repository::call::require_runtime;
use crate::repository::commands::scan_command;
use crate::repository::failure::{classify, Failed};

impl RedisClusterCacheRepository {
    /// Sweeps every primary of a freshly learned slot map in parallel (`SCAN MATCH` in batches
    /// of 1,000, `UNLINK` per batch) and returns the total removed. The deadline applies to each
    /// round trip. If a primary fails, the others are swept all the same, and the error names it.
    ///
    /// While slots migrate, a key that moves is deleted where it now lives (the `UNLINK` is routed
    /// by slot) and one already gone counts 0, so the total never counts a key twice. As with
    /// `SCAN` on one server, a key written (or migrated) while the sweep runs may be missed.
    ///
    /// Each primary's task sends its batches here, where they are added up and reported; when a
    /// primary fails after keys were removed (on it or on the others), the error is
    /// [`Error::Interrupted`] with the total.
    pub(super) async fn sweep_primaries(&self, pattern: &str, report: Report<'_>) -> Result<u64> {
        let subject = || shown(pattern);
        require_runtime("delete_pattern", &subject).map_err(Failed::into_error)?;
        // A fresh map: the primaries of right now (a replica may just have been promoted).
        let until = Instant::now() + self.inner.deadline;
        let map = match tokio::time::timeout_at(until.into(), self.learn_slot_map()).await {
            Ok(Ok(map)) => map,
            Ok(Err(e)) => return Err(classify(e, "delete_pattern", subject(), self.waited(until))),
            Err(_elapsed) => {
                return Err(Error::Timeout {
                    operation: "delete_pattern",
                    key: subject(),
                    deadline: self.inner.deadline,
                })
            }
        };
        let (batches, mut done) = mpsc::unbounded_channel();
        let mut tasks = JoinSet::new();
        for (index, node) in map.handles.iter().enumerate() {
            let this = self.clone();
            let node = node.clone();
            let pattern = pattern.to_owned();
            let batches = batches.clone();
            tasks.spawn(async move {
                let swept = this.sweep(&node, &pattern, &batches).await;
                (index, format!("{}:{}", node.host, node.port), swept)
            });
        }
        // Every task holds a sender: the channel closes when the last one ends.
        drop(batches);
        let sweep = Sweep::new(report);
        while let Some((matched, removed)) = done.recv().await {
            sweep.batch(matched, removed);
        }
        let mut failures = Vec::new();
        let mut failed = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((_, _, Ok(_))) => {}
                Ok((index, node, Err(error))) => {
                    failed.push(index);
                    failures.push(NodeFailure { node, error });
                }
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => {}
            }
        }
        // A pattern whose keys all have one hash tag (a cache whose prefix is `{app}`) matches
        // keys of one slot only. When the primaries that failed are others, and the slot's
        // primary says it holds the whole slot (it serves it and is not migrating it, so no
        // primary importing it holds some of its keys), none of them held a key of the pattern:
        // the sweep is whole (a primary holding none of the cache's keys down failed it, all its
        // keys removed; found by a probe, 2026-12-07).
        if !failures.is_empty() {
            if let Some(slot) = pattern_slot(pattern.as_bytes()) {
                let owner = map.owner(slot).filter(|owner| !failed.contains(owner));
                if let Some(node) = owner.and_then(|owner| map.handles.get(owner)) {
                    if self.holds_whole_slot(node, slot, &subject).await {
                        tracing::debug!(pattern = %subject(), "impcache: delete_pattern: primaries that failed hold none of the pattern's slot");
                        failures.clear();
                    }
                }
            }
        }
        check_nodes("delete_pattern", &subject, failures).map_err(|e| sweep.interrupted(e))?;
        Ok(sweep.removed())
    }

    /// Whether `node` says it holds the whole of `slot` (its own line of `CLUSTER NODES`: it
    /// serves the slot and is not migrating it). `false` when it cannot tell.
    async fn holds_whole_slot(
        &self,
        node: &Node,
        slot: u16,
        subject: &(dyn Fn() -> String + Sync),
    ) -> bool {
        let until = Instant::now() + self.inner.deadline;
        let nodes = self
            .on_node(node, until, "delete_pattern", subject, |mut c| async move {
                let mut cmd = redis::cmd("CLUSTER");
                cmd.arg("NODES");
                let reply = c.send_packed_command(&cmd).await?.extract_error()?;
                Ok(redis::from_redis_value::<String>(reply)?)
            })
            .await;
        nodes.is_ok_and(|nodes| serves_whole_slot(&nodes, slot))
    }

    /// Sweeps one primary: `SCAN` it, `UNLINK` each batch on it; keys that moved away meanwhile
    /// are unlinked through the client's routing (one already gone counts 0). Each round trip is
    /// bounded by the deadline and counts against this node's breaker only. Each batch is sent
    /// to `batches` (keys found, keys removed).
    pub(super) async fn sweep(
        &self,
        node: &Node,
        pattern: &str,
        batches: &mpsc::UnboundedSender<(usize, u64)>,
    ) -> Result<u64> {
        let subject = || shown(pattern);
        let deadline = self.inner.deadline;
        let scan = |cursor: u64| async move {
            let cmd = scan_command(cursor, pattern);
            let cmd = &cmd;
            let until = Instant::now() + deadline;
            self.on_node(
                node,
                until,
                "delete_pattern",
                &subject,
                |mut c| async move {
                    let reply = c.send_packed_command(cmd).await?.extract_error()?;
                    Ok(redis::from_redis_value::<(u64, Vec<Vec<u8>>)>(reply)?)
                },
            )
            .await
        };
        // The keys a SCAN of this node found are on this node: one pipeline of `ASKING` +
        // `UNLINK key` pairs, sent to it. `ASKING` lets the node delete keys of a slot it is
        // importing (a migration in progress) and is a no-op otherwise; in one pipeline, nothing
        // can slip between the two. Keys that moved away since the SCAN come back as MOVED/ASK
        // and are deleted through the client's routing instead.
        let unlink = |keys: Vec<Vec<u8>>| async move {
            if keys.is_empty() {
                return Ok(0);
            }
            let mut pipe = redis::pipe();
            for key in &keys {
                pipe.cmd("ASKING").cmd("UNLINK").arg(key);
            }
            let (pipe, count) = (&pipe, keys.len() * 2);
            let until = Instant::now() + deadline;
            let replies = self
                .on_node(
                    node,
                    until,
                    "delete_pattern",
                    &subject,
                    |mut c| async move { c.send_packed_commands(pipe, 0, count).await },
                )
                .await?;
            let mut removed = 0;
            let mut moved = Vec::new();
            for (key, reply) in keys.into_iter().zip(replies.into_iter().skip(1).step_by(2)) {
                match reply {
                    redis::Value::Int(n) => removed += u64::try_from(n).unwrap_or(0),
                    _ => moved.push(key),
                }
            }
            if moved.is_empty() {
                return Ok(removed);
            }
            let moved = &moved;
            // A round trip of its own: a deadline of its own.
            let until = Instant::now() + deadline;
            let elsewhere = self
                .run_until(until, "delete_pattern", &subject, |connection| async move {
                    let mut tasks = JoinSet::new();
                    for key in moved.iter().cloned() {
                        let mut connection = connection.clone();
                        tasks.spawn(async move {
                            let mut cmd = redis::cmd("UNLINK");
                            cmd.arg(key);
                            cmd.query_async::<u64>(&mut connection).await
                        });
                    }
                    Ok(join_set(tasks).await?.into_iter().sum::<u64>())
                })
                .await?;
            Ok(removed + elsewhere)
        };
        // A send fails only when the caller gave up the sweep (its tasks are then aborted).
        let counted = |matched: usize, n: u64| {
            if matched > 0 {
                let _ = batches.send((matched, n));
            }
            n
        };
        let (mut cursor, mut keys) = scan(0).await?;
        let mut removed = 0;
        while cursor != 0 {
            // The UNLINK of this batch and the SCAN for the next one travel together.
            let matched = keys.len();
            let (n, next) = tokio::join!(unlink(std::mem::take(&mut keys)), scan(cursor));
            removed += counted(matched, n?);
            (cursor, keys) = next?;
        }
        let matched = keys.len();
        Ok(removed + counted(matched, unlink(keys).await?))
    }
}
