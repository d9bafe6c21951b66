//! [`LateWrites`]: a repository whose writes of values are answered late.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use impcache::{
    BoxFuture, CacheRepository, DeleteProgress, Expiry, Result, SetNxOrGet, TagInvalidation,
    TaggedRead, WithTtl,
};

/// A repository (a real Redis, say) whose writes of values (`set`, `set_nx`, `set_nx_or_get`)
/// answer `delay` after they complete: the write has landed, its reply is handled late, as on a
/// busy runtime. Everything else goes straight through. It widens the window in which a load's
/// store has landed while the load's flight is still open (it ends once the store's reply is
/// handled), which a real Redis alone opens only now and then.
///
/// Its `Cache` goes through the repository trait (as any custom repository's does), not the
/// built-in repository's own path.
#[derive(Debug)]
pub struct LateWrites {
    inner: Arc<dyn CacheRepository>,
    delay: Duration,
    /// Whether `delete` is answered late too ([`deletes_too`](LateWrites::deletes_too)).
    deletes: bool,
    /// Whether writes land late rather than answer late ([`lands_late`](LateWrites::lands_late)).
    lands: bool,
}

impl LateWrites {
    /// `inner`, its writes of values answered `delay` late.
    pub fn new(inner: impl CacheRepository, delay: Duration) -> Self {
        LateWrites {
            inner: Arc::new(inner),
            delay,
            deletes: false,
            lands: false,
        }
    }

    /// Writes *land* `delay` late (sent to `inner` after it) and are answered as they land:
    /// the window in which a response is out and its store still on its way.
    pub fn lands_late(mut self) -> Self {
        self.lands = true;
        self
    }

    /// `delete` answered `delay` late too: the key is gone, the reply not yet handled, which
    /// opens the window in which a write is in flight while a load of its key ends.
    pub fn deletes_too(mut self) -> Self {
        self.deletes = true;
        self
    }

    /// `write`'s result, `delay` after it completes (or, [`lands_late`](LateWrites::lands_late),
    /// `write` run `delay` late).
    fn late<'a, T: Send + 'a>(
        &'a self,
        write: BoxFuture<'a, Result<T>>,
    ) -> BoxFuture<'a, Result<T>> {
        Box::pin(async move {
            if self.lands {
                tokio::time::sleep(self.delay).await;
                return write.await;
            }
            let written = write.await;
            tokio::time::sleep(self.delay).await;
            written
        })
    }
}

impl CacheRepository for LateWrites {
    fn set<'a>(&'a self, key: &'a str, value: Bytes, expiry: Expiry) -> BoxFuture<'a, Result<()>> {
        self.late(self.inner.set(key, value, expiry))
    }
    fn set_nx<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        expiry: Expiry,
    ) -> BoxFuture<'a, Result<bool>> {
        self.late(self.inner.set_nx(key, value, expiry))
    }
    fn set_nx_or_get<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        expiry: Expiry,
    ) -> BoxFuture<'a, Result<SetNxOrGet>> {
        self.late(self.inner.set_nx_or_get(key, value, expiry))
    }
    fn set_many<'a>(
        &'a self,
        entries: &'a [(&'a str, Bytes)],
        expiry: Expiry,
    ) -> BoxFuture<'a, Result<()>> {
        self.inner.set_many(entries, expiry)
    }
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>>> {
        self.inner.get(key)
    }
    fn get_many<'a>(&'a self, keys: &'a [&'a str]) -> BoxFuture<'a, Result<Vec<Option<Bytes>>>> {
        self.inner.get_many(keys)
    }
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<u64>> {
        if self.deletes {
            return self.late(self.inner.delete(key));
        }
        self.inner.delete(key)
    }
    fn delete_many<'a>(&'a self, keys: &'a [&'a str]) -> BoxFuture<'a, Result<u64>> {
        self.inner.delete_many(keys)
    }
    fn delete_pattern<'a>(&'a self, pattern: &'a str) -> BoxFuture<'a, Result<u64>> {
        self.inner.delete_pattern(pattern)
    }
    fn delete_pattern_with_progress<'a>(
        &'a self,
        pattern: &'a str,
        progress: &'a mut (dyn FnMut(DeleteProgress) + Send),
    ) -> BoxFuture<'a, Result<u64>> {
        self.inner.delete_pattern_with_progress(pattern, progress)
    }
    fn get_with_ttl<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<WithTtl>>> {
        self.inner.get_with_ttl(key)
    }
    fn delete_if_equal<'a>(&'a self, key: &'a str, expected: Bytes) -> BoxFuture<'a, Result<bool>> {
        self.inner.delete_if_equal(key, expected)
    }
    fn get_with_tags<'a>(
        &'a self,
        key: &'a str,
        tag_keys: &'a [&'a str],
        with_ttl: bool,
    ) -> BoxFuture<'a, Result<TaggedRead>> {
        self.inner.get_with_tags(key, tag_keys, with_ttl)
    }
    fn set_if_equal<'a>(
        &'a self,
        key: &'a str,
        expected: Bytes,
        value: Bytes,
        expiry: Expiry,
    ) -> BoxFuture<'a, Result<bool>> {
        self.inner.set_if_equal(key, expected, value, expiry)
    }
    fn mark_tag<'a>(
        &'a self,
        key: &'a str,
        kind: TagInvalidation,
        at: Bytes,
    ) -> BoxFuture<'a, Result<()>> {
        self.inner.mark_tag(key, kind, at)
    }
}
