//! The key layout `{key_prefix}:{version}:{key}`, versions, and Redis glob escaping.

use std::fmt;
use std::sync::Arc;

use arrayvec::ArrayString;

use crate::error::{Error, Result};

/// The hasher of full keys in process memory (the memory repository's entries, the near cache's
/// local entries and fail-safe copies): foldhash, randomly seeded per process (hashbrown's
/// default), rather than moka's default SipHash-1-3, which cost a hit ~165 of its ~7,700
/// instructions (BENCHMARKS.md, Pending). The `quality` variant: the keys also feed moka's
/// frequency sketch. The price: foldhash is only "minimally DoS-resistant" (random seeds defeat
/// precomputed colliding keys, not an attacker who can observe timings).
pub(crate) type LocalKeyHasher = foldhash::quality::RandomState;

/// A cache version: an integer or a string, as in the Python library.
///
/// ```
/// use impcache::Version;
/// assert_eq!(Version::from(2).as_str(), "2");
/// assert_eq!(Version::from("v2").as_str(), "v2");
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Version {
    text: Arc<str>,
    /// [`is_reserved`](Version::is_reserved), judged once: every operation asks.
    reserved: bool,
}

/// What the caller's part of every lock key (`freshness::lock`) starts with: user keys starting
/// so are refused (`Cache::check_written_key`), so that no value stands in a lock's place. The
/// `#[cached]` macro refuses a `key` or `name` that makes every key start so (its own copy,
/// `impcache-macros/src/plan.rs`: keep the two equal).
pub(crate) const LOCK_KEY_PART: &str = "__lock:";

/// The reserved key part of tag state keys (`{prefix}:__impcache_tag:{tag}`: `tags`).
pub(crate) const TAG_KEY_PART: &str = "__impcache_tag:";

/// Whether a segment of a key (between `:`s) is the tags' state space, `__impcache_tag`: a
/// prefix or a version holding one makes keys of some cache's tag state.
fn is_tag_space(segment: &str) -> bool {
    segment == TAG_KEY_PART.trim_end_matches(':')
}

/// Whether a key prefix makes keys of another cache's tag state: with a `__impcache_tag`
/// segment past its first (`cache:__impcache_tag`), its keys are those of the tags' state of the
/// cache whose prefix is the part before it (`cache:__impcache_tag:{tag}`), as a version
/// `__impcache_tag` would make them of its own prefix (found by a probe, 2026-12-07).
pub(crate) fn is_reserved_prefix(prefix: &str) -> bool {
    prefix.split(':').skip(1).any(is_tag_space)
}

impl Version {
    fn new(text: Arc<str>) -> Self {
        let reserved = text.split(':').any(is_tag_space);
        Version { text, reserved }
    }

    /// The version as it appears in keys.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether this version's keys would be tag state keys (`{prefix}:__impcache_tag:{tag}`,
    /// which have no version): a version with a `__impcache_tag` segment (`__impcache_tag`,
    /// `__impcache_tag:x`, and `x:__impcache_tag`, whose keys are the tag state of the cache
    /// whose prefix is `{prefix}:x`). Operations refuse it, so that a write cannot replace a
    /// tag's state. (The `#[cached]` macro refuses such a `version` string with its own copy of
    /// this rule, `impcache-macros/src/plan.rs`.)
    pub(crate) fn is_reserved(&self) -> bool {
        self.reserved
    }
}

impl Default for Version {
    fn default() -> Self {
        Version::new(Arc::from("1"))
    }
}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.text, f)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

macro_rules! version_from_int {
    ($($t:ty),*) => {$(
        impl From<$t> for Version {
            fn from(version: $t) -> Self {
                Version::new(Arc::from(version.to_string()))
            }
        }
    )*};
}
version_from_int!(i8, i16, i32, i64, isize, u8, u16, u32, u64, usize);

impl From<&str> for Version {
    fn from(version: &str) -> Self {
        Version::new(Arc::from(version))
    }
}

impl From<String> for Version {
    fn from(version: String) -> Self {
        Version::new(Arc::from(version))
    }
}

impl From<&String> for Version {
    fn from(version: &String) -> Self {
        Version::new(Arc::from(version.as_str()))
    }
}

/// Builds `{prefix}:{version}:{key}` with a single allocation.
pub(crate) fn full_key(prefix: &str, version: &str, key: &str) -> String {
    let mut full = String::with_capacity(prefix.len() + version.len() + key.len() + 2);
    full.push_str(prefix);
    full.push(':');
    full.push_str(version);
    full.push(':');
    full.push_str(key);
    full
}

/// The parts of one operation's full key, built where the repository wants it: owned by a
/// repository that keeps it, on the stack ([`FullKey`]) for one that only borrows it.
#[derive(Clone, Copy)]
pub(crate) struct KeyParts<'a> {
    pub(crate) prefix: &'a str,
    pub(crate) version: &'a str,
    pub(crate) key: &'a str,
}

impl KeyParts<'_> {
    /// `{prefix}:{version}:{key}` as an owned string.
    pub(crate) fn owned(self) -> String {
        full_key(self.prefix, self.version, self.key)
    }

    /// `{prefix}:{version}:{key}` on the stack when short.
    pub(crate) fn stack(self) -> FullKey {
        FullKey::new(self.prefix, self.version, self.key)
    }
}

/// Longest full key built on the stack by [`FullKey`]; longer ones go to the heap.
const INLINE_KEY_BYTES: usize = 128;

/// A full key for one operation, built on the stack when it is short: the hot path of a read
/// makes no allocation for its key (the repository copies it into its command or looks it up).
pub(crate) enum FullKey {
    Inline(ArrayString<INLINE_KEY_BYTES>),
    Heap(String),
}

impl FullKey {
    /// `{prefix}:{version}:{key}`.
    pub(crate) fn new(prefix: &str, version: &str, key: &str) -> FullKey {
        let mut inline = ArrayString::new();
        let fits = [prefix, ":", version, ":", key]
            .iter()
            .all(|part| inline.try_push_str(part).is_ok());
        if fits {
            FullKey::Inline(inline)
        } else {
            FullKey::Heap(full_key(prefix, version, key))
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        match self {
            FullKey::Inline(key) => key.as_str(),
            FullKey::Heap(key) => key.as_str(),
        }
    }
}

/// Keys in one buffer: a handful of allocations however many keys (a batch's full keys, the
/// state keys of a call's tags, built on every tagged read: `tags::state_keys`).
pub(crate) struct KeyBatch {
    buffer: String,
    ends: Vec<usize>,
}

impl KeyBatch {
    /// Room for `count` keys of `bytes` bytes in all.
    pub(crate) fn with_capacity(bytes: usize, count: usize) -> KeyBatch {
        KeyBatch {
            buffer: String::with_capacity(bytes),
            ends: Vec::with_capacity(count),
        }
    }

    /// Appends `{prefix}:{version}:{key}`.
    pub(crate) fn push(&mut self, prefix: &str, version: &str, key: &str) {
        self.push_parts([prefix, ":", version, ":", key]);
    }

    /// Appends the key made of `parts`, in order.
    pub(crate) fn push_parts<const N: usize>(&mut self, parts: [&str; N]) {
        for part in parts {
            self.buffer.push_str(part);
        }
        self.ends.push(self.buffer.len());
    }

    /// The keys, in the order they were pushed.
    pub(crate) fn keys(&self) -> Vec<&str> {
        let mut start = 0;
        self.ends
            .iter()
            .map(|&end| {
                // Each end is the length after a whole key: always a char boundary.
                let key = self.buffer.get(start..end).unwrap_or_default();
                start = end;
                key
            })
            .collect()
    }
}

/// The characters that mean something in a Redis glob pattern.
const GLOB_SPECIAL: [char; 5] = ['*', '?', '[', ']', '\\'];

/// Escapes `literal` so that, inside a Redis glob pattern (`SCAN MATCH`, `KEYS`, and
/// [`Cache::delete_pattern`](crate::Cache::delete_pattern)), it matches exactly itself.
///
/// ```
/// use impcache::escape_pattern;
/// assert_eq!(escape_pattern("a*b[1]"), r"a\*b\[1\]");
/// ```
pub fn escape_pattern(literal: &str) -> String {
    let mut escaped = String::with_capacity(literal.len() + 4);
    push_escaped(&mut escaped, literal);
    escaped
}

fn push_escaped(out: &mut String, literal: &str) {
    for c in literal.chars() {
        if GLOB_SPECIAL.contains(&c) {
            out.push('\\');
        }
        out.push(c);
    }
}

/// Builds the full pattern `{escaped prefix}:{escaped version}:{pattern}`: the caller's pattern
/// applies to the key part only.
pub(crate) fn full_pattern(prefix: &str, version: &str, pattern: &str) -> Result<String> {
    check_pattern(pattern)?;
    let mut full = String::with_capacity(prefix.len() + version.len() + pattern.len() + 8);
    push_escaped(&mut full, prefix);
    full.push(':');
    push_escaped(&mut full, version);
    full.push(':');
    full.push_str(pattern);
    Ok(full)
}

/// Rejects patterns that Redis would accept but read in a surprising way: an unclosed `[`
/// (Redis then matches it against the rest of the pattern as a set). A set is scanned as
/// Redis's matcher scans it (`glob.rs`): an escape first, then `]`, then a range, whose end is
/// taken whole, `]` and `\` included: `[a-]` does not close, `[a-\]` does.
pub(crate) fn check_pattern(pattern: &str) -> Result<()> {
    let bytes = pattern.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'[' => {
                let open = i;
                i += 1;
                if bytes.get(i) == Some(&b'^') {
                    i += 1;
                }
                let mut range_to_bracket = false;
                loop {
                    match &bytes[i.min(bytes.len())..] {
                        [] => {
                            let hint = if range_to_bracket {
                                "; `-]` in a set is a range ending at `]`: write `\\-` for a literal `-`"
                            } else {
                                ""
                            };
                            return Err(Error::InvalidPattern {
                                pattern: crate::error::shown(pattern),
                                reason: format!(
                                    "the `[` at byte {open} is never closed with `]` (escape it as `\\[` to match a literal `[`{hint})"
                                ),
                            });
                        }
                        [b'\\', _, ..] => i += 2,
                        [b']', ..] => break,
                        [_, b'-', end, ..] => {
                            range_to_bracket |= *end == b']';
                            i += 3;
                        }
                        _ => i += 1,
                    }
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_key_joins_with_colons() {
        assert_eq!(full_key("cache", "1", "key"), "cache:1:key");
        assert_eq!(full_key("", "", ""), "::");
    }

    #[test]
    fn stack_keys_equal_heap_keys() {
        for key in [
            "",
            "k",
            "ü:ß",
            &"x".repeat(INLINE_KEY_BYTES - 8),
            &"y".repeat(300),
        ] {
            let full = FullKey::new("cache", "1", key);
            assert_eq!(full.as_str(), full_key("cache", "1", key));
            let expected_inline = key.len() + 8 <= INLINE_KEY_BYTES;
            assert_eq!(matches!(full, FullKey::Inline(_)), expected_inline, "{key}");
        }
    }

    #[test]
    fn batches_hold_each_key_whole() {
        let mut batch = KeyBatch::with_capacity(8, 1);
        for key in ["a", "", "ü:ß", "long key with spaces"] {
            batch.push("p", "2", key);
        }
        assert_eq!(
            batch.keys(),
            ["p:2:a", "p:2:", "p:2:ü:ß", "p:2:long key with spaces"]
        );
    }

    #[test]
    fn escaping_covers_every_glob_character() {
        assert_eq!(escape_pattern(r"*?[]\x"), r"\*\?\[\]\\x");
        assert_eq!(escape_pattern("plain:ü"), "plain:ü");
        assert_eq!(
            full_pattern("a*", "[1]", "h?llo").ok().as_deref(),
            Some(r"a\*:\[1\]:h?llo")
        );
    }

    #[test]
    fn unclosed_brackets_are_rejected() {
        // `[a-]`: the range `a-]` takes the `]`, as Redis reads it, and the set runs on.
        for bad in ["[", "h[ae", "x[^", r"[\]", "ok[a]then[", "h[a-]llo", "[a-]"] {
            assert!(check_pattern(bad).is_err(), "{bad}");
        }
        for good in [
            "",
            "*",
            "h[ae]llo",
            r"\[",
            r"[\]]",
            "[]]",
            "a]",
            r"trailing\",
            // A range ending at `\`, closed by the `]` after it; `-` first or last is literal.
            r"[a-\]x",
            "[-a]",
            "[a-]]",
            r"[a\-]",
        ] {
            assert!(check_pattern(good).is_ok(), "{good}");
        }
        let message = check_pattern("h[a-]llo")
            .err()
            .map(|error| error.to_string());
        assert!(
            message
                .as_deref()
                .is_some_and(|m| m.contains("range ending at `]`")),
            "{message:?}"
        );
    }
}
