//! Durations the runtime would refuse on every call (the body then runs uncached every time),
//! refused at compile time when they are literals.
use impcache::cached;
use std::time::Duration;

// The lock's lifetime must be longer than the hard timeout: shorter, or equal.
#[cached(expire = 60, lock = 1, hard_timeout = 2)]
async fn lock_shorter(id: u64) -> Option<u64> {
    Some(id)
}

#[cached(expire = 60, lock = Duration::from_secs(1), hard_timeout = Duration::from_millis(1000))]
async fn lock_equal(id: u64) -> Option<u64> {
    Some(id)
}

// Over 100 years (`impcache::MAX_EXPIRE`, 3153600000 s).
#[cached(expire = 4_000_000_000u64)]
async fn expire_too_long(id: u64) -> u64 {
    id
}

#[cached(expire = Duration::from_secs(3_153_600_001))]
async fn expire_duration_too_long(id: u64) -> u64 {
    id
}

#[cached(expire = 60, lock = 3_153_600_001u64)]
async fn lock_too_long(id: u64) -> u64 {
    id
}

// 60 years fresh plus a stale window (any window over 50 years is cut to 50): over 100 years.
#[cached(expire = 1_892_160_000u64, stale_while_revalidate = 60, stale_if_error = 4_000_000_000u64)]
async fn expire_plus_window_too_long(id: u64) -> Option<u64> {
    Some(id)
}

#[cached(expire = 3_000_000_000u64, stale_while_revalidate = Duration::from_secs(200_000_000))]
async fn expire_plus_swr_too_long(id: u64) -> u64 {
    id
}

// With the others: a zero `expire` and an unknown option are reported too.
#[cached(expire = 0, lock = 2, hard_timeout = 5, colour = "red")]
async fn with_others(id: u64) -> Option<u64> {
    Some(id)
}

fn main() {}
