//! Durations at the runtime's bounds, and ones the macro cannot read, compile: only what the
//! runtime would refuse on every call is a compile error (see `fail/duration_limits.rs`).
#![allow(dead_code)]

use std::time::Duration;

use impcache::cached;

const LOCK: u64 = 1;

// Exactly 100 years (`impcache::MAX_EXPIRE`).
#[cached(expire = 3_153_600_000u64)]
async fn longest(id: u64) -> u64 { id }

// About 95 years without a suffix, as a literal or a product, for `expire` and the other
// durations: seconds as a `u64`, not an `i32` out of range.
#[cached(expire = 3_000_000_000)]
async fn unsuffixed_long(id: u64) -> u64 { id }

#[cached(expire = 60 * 60 * 24 * 365 * 80)]
async fn unsuffixed_product(id: u64) -> u64 { id }

#[cached(expire = 60, stale_while_revalidate = 3_000_000_000)]
async fn unsuffixed_window(id: u64) -> u64 { id }

#[cached(expire = 60, lock = 3_153_600_000, hard_timeout = 3_000_000_000)]
async fn unsuffixed_lock(id: u64) -> Option<u64> { Some(id) }

// A lock just longer than the hard timeout, in seconds or as `Duration`s.
#[cached(expire = 60, lock = 3, hard_timeout = 2)]
async fn lock_longer(id: u64) -> Option<u64> { Some(id) }

#[cached(expire = 60, lock = Duration::from_millis(2001), hard_timeout = Duration::from_secs(2))]
async fn lock_longer_millis(id: u64) -> Option<u64> { Some(id) }

// A hard timeout of 100 years or more is no limit to the lock; the default lock outlives any.
#[cached(expire = 60, lock = 10, hard_timeout = 4_000_000_000u64)]
async fn unbounded_hard(id: u64) -> Option<u64> { Some(id) }

#[cached(expire = 60, lock, hard_timeout = 30)]
async fn default_lock(id: u64) -> Option<u64> { Some(id) }

// Not known at compile time: left to the runtime.
#[cached(expire = 60, lock = LOCK, hard_timeout = 2)]
async fn lock_const(id: u64) -> Option<u64> { Some(id) }

// A stale window over 50 years is cut to 50: with `expire` up to 50 years it is stored.
#[cached(expire = 60, stale_if_error = 4_000_000_000u64)]
async fn long_window(id: u64) -> Option<u64> { Some(id) }

fn main() {}
