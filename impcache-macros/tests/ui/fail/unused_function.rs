//! `#[cached]` hides no lint of the user's: an unused cached function is reported as an unused
//! plain one is (it was not: the wrapper carried the attribute's spans, whose lints rustc drops
//! as an external macro's), and its generated companions are never reported.
#![deny(dead_code)]

use impcache::cached;

#[cached(expire = 60)]
async fn never_called(id: u64) -> u64 {
    id
}

#[cached(expire = 60, stale_if_error = 60)]
async fn never_called_either(id: u64) -> u64 {
    id
}

#[cached(expire = 60)]
async fn called(id: u64) -> u64 {
    id
}

fn main() {
    drop(called(1));
}
