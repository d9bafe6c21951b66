//! The key layout `{key_prefix}:{version}:{key}`, versions, and Redis glob escaping.

use std::fmt;
use std::sync::Arc;

use crate::error::{Error, Result};

/// A cache version: an integer or a string, as in the Python library.
///
/// ```
/// use impcache::Version;
/// assert_eq!(Version::from(2).as_str(), "2");
/// assert_eq!(Version::from("v2").as_str(), "v2");
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Version(Arc<str>);

impl Version {
    /// The version as it appears in keys.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Version {
    fn default() -> Self {
        Version(Arc::from("1"))
    }
}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

macro_rules! version_from_int {
    ($($t:ty),*) => {$(
        impl From<$t> for Version {
            fn from(version: $t) -> Self {
                Version(Arc::from(version.to_string()))
            }
        }
    )*};
}
version_from_int!(i8, i16, i32, i64, isize, u8, u16, u32, u64, usize);

impl From<&str> for Version {
    fn from(version: &str) -> Self {
        Version(Arc::from(version))
    }
}

impl From<String> for Version {
    fn from(version: String) -> Self {
        Version(Arc::from(version))
    }
}

impl From<&String> for Version {
    fn from(version: &String) -> Self {
        Version(Arc::from(version.as_str()))
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
/// (Redis then matches it against the rest of the pattern as a set).
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
                loop {
                    match bytes.get(i) {
                        None => {
                            return Err(Error::InvalidPattern {
                                pattern: crate::error::shown(pattern),
                                reason: format!(
                                    "the `[` at byte {open} is never closed with `]` (escape it as `\\[` to match a literal `[`)"
                                ),
                            })
                        }
                        Some(b'\\') => i += 2,
                        Some(b']') => break,
                        Some(_) => i += 1,
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
        for bad in ["[", "h[ae", "x[^", r"[\]", "ok[a]then["] {
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
        ] {
            assert!(check_pattern(good).is_ok(), "{good}");
        }
    }
}
