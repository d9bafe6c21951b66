//! A `#[cached]` default method of a `pub trait` gets rustc's `async_fn_in_trait` once, for the
//! function as written, as a plain `async fn` there does (it got it twice: its `_uncached`
//! companion copies the signature).
#![deny(async_fn_in_trait)]

use impcache::cached;

pub trait Load {
    #[cached(expire = 60)]
    async fn load(&self, id: u64) -> u64 {
        id
    }
}

fn main() {}
