use impcache::cached;
use std::time::Duration;

// A given-up body has no `u64` to return.
#[cached(expire = 60, hard_timeout = 5)]
async fn hard(id: u64) -> u64 {
    id
}

#[cached(expire = 60, stale_while_revalidate = 0, stale_if_error = Duration::ZERO)]
async fn zero(id: u64) -> u64 {
    id
}

#[cached(expire = 60, soft_timeout = 1, soft_timeout = 2)]
async fn twice(id: u64) -> u64 {
    id
}

#[cached(expire = 60, early_refresh)]
async fn no_value(id: u64) -> u64 {
    id
}

fn main() {}
