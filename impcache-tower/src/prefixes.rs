//! Path prefixes purged by tag (issue 16, [`CacheLayer::tag_prefixes`](crate::CacheLayer::tag_prefixes)):
//! each response stored under a declared prefix carries that prefix's tag for its host, so
//! [`purge_prefix`](crate::CacheLayer::purge_prefix) of the prefix is one tag invalidation, not a
//! sweep of the keyspace.
//!
//! **The tag** of a prefix on a host is `__impcache_prefix:{namespace}:{host}:{prefix}`, the host
//! and prefix written as in keys (the host segment, `-` for none; the prefix percent-encoded as a
//! path segment), so it names exactly what [`key::prefix_pattern`] would sweep on that host.
//!
//! **Entries without it** (stored before the prefix was declared, or by a process that does not
//! declare it) cannot be reached by the tag: a lookup treats an entry under a declared prefix
//! that lacks the prefix's tag as a miss, and the response stored in its place carries it. So a
//! purge by tag never leaves an older entry served, without the sweep the issue keeps for them.

use std::sync::Arc;

use crate::entry::Entry;
use crate::key::{self, UrlKeys};

/// The start of every prefix tag.
const TAG_START: &str = "__impcache_prefix:";

/// The layer's declared prefixes, each as the path segment of a key (percent-encoded).
#[derive(Debug, Clone, Default)]
pub(crate) struct TagPrefixes(Arc<[String]>);

impl TagPrefixes {
    /// `prefixes` as declared (`/users/`), each encoded once; repeats kept once.
    pub(crate) fn new(prefixes: impl IntoIterator<Item = String>) -> Self {
        let mut encoded: Vec<String> = Vec::new();
        for prefix in prefixes {
            // As a purge's path is taken (`/café/` names the requests for `/caf%C3%A9/`).
            let prefix = key::path_segment(&key::as_sent(&prefix));
            if !encoded.contains(&prefix) {
                encoded.push(prefix);
            }
        }
        TagPrefixes(encoded.into())
    }

    /// The tags a response of the URL of `keys` carries: one per declared prefix its path starts
    /// with.
    pub(crate) fn tags_of<'a>(&'a self, keys: &'a UrlKeys) -> impl Iterator<Item = String> + 'a {
        self.0
            .iter()
            .filter(|prefix| keys.path_onwards().starts_with(prefix.as_str()))
            .map(|prefix| tag(keys.through_host(), prefix))
    }

    /// Whether an entry found for the URL of `keys` carries every prefix tag of the URL: without
    /// one it was stored before the prefix was declared, and a purge by tag cannot reach it.
    pub(crate) fn reachable(&self, keys: &UrlKeys, entry: &Entry) -> bool {
        if self.0.is_empty() {
            return true;
        }
        let carried: &[String] = entry.tags.as_ref().map_or(&[], |tagged| &tagged.tags);
        self.tags_of(keys).all(|tag| carried.contains(&tag))
    }

    /// The declared prefix `path_prefix` is (encoded), if it is one.
    pub(crate) fn declared(&self, path_prefix: &str) -> Option<&str> {
        let encoded = key::path_segment(path_prefix);
        self.0
            .iter()
            .find(|prefix| **prefix == encoded)
            .map(String::as_str)
    }
}

/// The tag of the encoded `prefix` under `through_host` (`{namespace}:{host}:`).
pub(crate) fn tag(through_host: &str, prefix: &str) -> String {
    [TAG_START, through_host, prefix].concat()
}

// Unit tests: an `assert!` here is the test failing; none of it is compiled into the library.
#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    fn keys(host: Option<&str>, path: &str) -> UrlKeys {
        UrlKeys::new("http", host, path, Some("a=1"), &Method::GET)
    }

    /// A prefix declared as written (`/café/`, `/a b/`) is the prefix of the requests sent for
    /// it, percent-encoded, as a purge's path is: it was never a tag, its purges swept (found
    /// by a regression hunt).
    #[test]
    fn a_prefix_declared_as_written_is_its_requests_prefix() {
        let prefixes = TagPrefixes::new(["/café/", "/a b/"].map(String::from));
        let tags: Vec<String> = prefixes.tags_of(&keys(None, "/caf%C3%A9/1")).collect();
        // (`%` itself encoded in keys.)
        assert_eq!(tags, ["__impcache_prefix:http:-:/caf%25C3%25A9/"]);
        assert!(prefixes.declared(&key::as_sent("/café/")).is_some());
        assert!(prefixes.declared("/a%20b/").is_some());
    }

    #[test]
    fn a_url_carries_the_tags_of_the_prefixes_its_path_starts_with() {
        let prefixes =
            TagPrefixes::new(["/users/", "/users/1", "/p%20a/", "/users/"].map(String::from));
        let tags: Vec<String> = prefixes
            .tags_of(&keys(Some("A.example"), "/users/12"))
            .collect();
        assert_eq!(
            tags,
            [
                "__impcache_prefix:http:a.example:/users/",
                "__impcache_prefix:http:a.example:/users/1"
            ]
        );
        // Declared as in the request line, encoded as keys are; no host is `-`.
        let tags: Vec<String> = prefixes.tags_of(&keys(None, "/p%20a/x")).collect();
        assert_eq!(tags, ["__impcache_prefix:http:-:/p%2520a/"]);
        assert_eq!(prefixes.tags_of(&keys(None, "/users")).count(), 0);
        assert_eq!(prefixes.declared("/p%20a/"), Some("/p%2520a/"));
        assert_eq!(prefixes.declared("/users"), None);
    }
}
