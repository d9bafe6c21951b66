//! Member lists: a key holding a short list of distinct names that only grows, for an index
//! that must be read in one round trip without a keyspace scan. `impcache-tower` keeps one per
//! namespace of the hosts that stored responses, so that `CacheLayer::purge_url` of a URL on
//! any host reads the list and removes each listed host's records (issue 16).
//!
//! The format: each member followed by `\n`. Past [`MAX_MEMBERS`] the list becomes [`TOO_MANY`]
//! for good (a reader must then find the members some other way, a sweep for the layer): a
//! bound on a list whose members may come from requests. The key lives as long as the longest
//! lifetime any addition asked for, or forever once one asked for no expiry, so that it never
//! goes before a key it indexes. Adding a member is atomic on the one key (on Redis one `EVAL`,
//! so it works on Cluster; in memory under the entry's lock): two processes adding two members
//! at once both stay listed.

use std::time::Duration;

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::expire::Expiry;

/// The most members a list holds; one more makes it [`Members::TooMany`] for good.
pub const MAX_MEMBERS: usize = 64;

/// A list that outgrew [`MAX_MEMBERS`].
pub(crate) const TOO_MANY: &[u8] = b"*\n";

/// What a member list holds.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Members {
    /// These members, in the order they were added.
    Listed(Vec<String>),
    /// More than the list keeps: they must be found some other way.
    TooMany,
}

impl Members {
    /// The members of the list `bytes` (no list: none).
    pub fn read(bytes: Option<&[u8]>) -> Members {
        let Some(bytes) = bytes else {
            return Members::Listed(Vec::new());
        };
        if bytes == TOO_MANY {
            return Members::TooMany;
        }
        Members::Listed(
            listed(bytes)
                .map(|member| String::from_utf8_lossy(member).into_owned())
                .collect(),
        )
    }
}

/// The members of the list `bytes`, each without its `\n`.
fn listed(bytes: &[u8]) -> impl Iterator<Item = &[u8]> + Clone {
    bytes
        .split(|&b| b == b'\n')
        .filter(|member| !member.is_empty())
}

/// Checks that `member` can be listed: not empty, no `\n`, not `*` (the mark of a full list).
pub(crate) fn check(key: &str, member: &str) -> Result<()> {
    let reason = if member.is_empty() {
        "a list member is empty"
    } else if member.contains('\n') {
        "a list member holds a newline"
    } else if member == "*" {
        "a list member is `*`"
    } else {
        return Ok(());
    };
    Err(Error::InvalidKey {
        key: crate::error::shown(key),
        reason: reason.into(),
    })
}

/// The list `old` with `member` added (when it is not listed yet and the list is not full).
pub(crate) fn with_member(old: Option<&[u8]>, member: &str) -> Bytes {
    let old = old.unwrap_or_default();
    if old == TOO_MANY {
        return Bytes::from_static(TOO_MANY);
    }
    let listed = listed(old);
    if listed.clone().any(|m| m == member.as_bytes()) {
        return Bytes::copy_from_slice(old);
    }
    if listed.count() >= MAX_MEMBERS {
        return Bytes::from_static(TOO_MANY);
    }
    let mut list = Vec::with_capacity(old.len() + member.len() + 1);
    list.extend_from_slice(old);
    list.extend_from_slice(member.as_bytes());
    list.push(b'\n');
    Bytes::from(list)
}

/// Whether adding to a list holding `old`, with `left` to live (`None`: no expiry), leaves it
/// as it was: `list` is `old` and the lifetime `wanted` is no longer than what is left.
pub(crate) fn unchanged(old: &[u8], left: Option<Duration>, list: &[u8], wanted: Expiry) -> bool {
    let long_enough = match (left, wanted.as_duration()) {
        (None, _) => true,
        (Some(left), Some(wanted)) => left >= wanted,
        (Some(_), None) => false,
    };
    old == list && long_enough
}

/// The lifetime of a list that had `left` to live (`None`: no list; `Some(None)`: no expiry)
/// when an addition asked for `wanted`: the longer of the two.
pub(crate) fn longer(left: Option<Option<Duration>>, wanted: Expiry) -> Expiry {
    match (left, wanted.as_duration()) {
        (Some(None), _) | (_, None) => Expiry::Never,
        (Some(Some(left)), Some(wanted)) if left > wanted => {
            Expiry::Milliseconds(u64::try_from(left.as_millis()).unwrap_or(u64::MAX).max(1))
        }
        _ => wanted,
    }
}

/// The addition in Lua (`EVAL` with the list's key, the member, the lifetime in ms, `0` for
/// none, and [`MAX_MEMBERS`]): [`with_member`] and [`longer`] on the server, atomic on the one
/// key. A list left as it was (the member listed, the lifetime long enough) is not written:
/// no write to replicate, no invalidation sent to near caches.
pub(crate) const ADD_MEMBER_SCRIPT: &str = "local old = redis.call('GET', KEYS[1]) \
     local member, wanted, max = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]) \
     local list = old or '' \
     if list ~= '*\\n' then \
       local n, found = 0, false \
       for m in string.gmatch(list, '([^\\n]+)\\n') do \
         n = n + 1 if m == member then found = true end \
       end \
       if not found then \
         if n >= max then list = '*\\n' else list = list .. member .. '\\n' end \
       end \
     end \
     local left = redis.call('PTTL', KEYS[1]) \
     if old and list == old and (left == -1 or (wanted ~= 0 and left >= wanted)) then \
       return 0 \
     end \
     if wanted == 0 or (old and left == -1) then \
       redis.call('SET', KEYS[1], list) \
     else \
       if left > wanted then wanted = left end \
       redis.call('SET', KEYS[1], list, 'PX', wanted) \
     end \
     return 1";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_is_added_once() {
        let one = with_member(None, "a.example");
        assert_eq!(&one[..], b"a.example\n");
        let two = with_member(Some(&one), "b.example");
        assert_eq!(&two[..], b"a.example\nb.example\n");
        assert_eq!(with_member(Some(&two), "a.example"), two);
        assert_eq!(
            Members::read(Some(&two)),
            Members::Listed(vec!["a.example".into(), "b.example".into()])
        );
        assert_eq!(Members::read(None), Members::Listed(Vec::new()));
    }

    #[test]
    fn a_full_list_becomes_too_many_for_good() {
        let mut list = Bytes::new();
        for i in 0..MAX_MEMBERS {
            list = with_member(Some(&list), &format!("h{i}"));
        }
        assert!(matches!(Members::read(Some(&list)), Members::Listed(m) if m.len() == MAX_MEMBERS));
        // A member already listed leaves a full list as it is.
        assert_eq!(with_member(Some(&list), "h0"), list);
        let over = with_member(Some(&list), "one-more");
        assert_eq!(Members::read(Some(&over)), Members::TooMany);
        assert_eq!(with_member(Some(&over), "h0"), Bytes::from_static(TOO_MANY));
    }

    #[test]
    fn the_longer_lifetime_wins_and_no_expiry_is_longest() {
        let secs = Duration::from_secs;
        assert_eq!(longer(None, Expiry::Seconds(5)), Expiry::Seconds(5));
        assert_eq!(
            longer(Some(Some(secs(1))), Expiry::Seconds(5)),
            Expiry::Seconds(5)
        );
        assert_eq!(
            longer(Some(Some(secs(9))), Expiry::Seconds(5)),
            Expiry::Milliseconds(9000)
        );
        assert_eq!(longer(Some(None), Expiry::Seconds(5)), Expiry::Never);
        assert_eq!(longer(Some(Some(secs(9))), Expiry::Never), Expiry::Never);
    }

    #[test]
    fn an_addition_that_changes_nothing_is_seen_as_such() {
        let secs = Duration::from_secs;
        let list = with_member(None, "a");
        assert!(unchanged(&list, None, &list, Expiry::Seconds(5)));
        assert!(unchanged(&list, Some(secs(9)), &list, Expiry::Seconds(5)));
        assert!(!unchanged(&list, Some(secs(1)), &list, Expiry::Seconds(5)));
        assert!(!unchanged(&list, Some(secs(9)), &list, Expiry::Never));
        let more = with_member(Some(&list), "b");
        assert!(!unchanged(&list, None, &more, Expiry::Never));
    }

    #[test]
    fn members_that_cannot_be_listed_are_refused() {
        for member in ["", "a\nb", "*"] {
            assert!(check("k", member).is_err(), "{member:?}");
        }
        assert!(check("k", "a.example").is_ok());
    }
}
