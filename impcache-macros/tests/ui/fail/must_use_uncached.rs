//! `#[must_use]` on the function holds for `{name}_uncached`, which returns the same value.
#![deny(unused_must_use)]

use impcache::cached;

#[must_use]
#[cached(expire = 60)]
async fn f(id: u64) -> u64 {
    id
}

#[must_use = "the count is the point"]
#[cached(expire = 60)]
async fn g(id: u64) -> u64 {
    id
}

async fn callers() {
    f_uncached(1).await;
    g_uncached(1).await;
    // The companions returning an `impcache::Result` are `must_use` through it.
    f_invalidate(1).await;
    let _ = f(1).await;
}

fn main() {
    let _ = callers();
}
