//! `#[cached]` adds no docs to an undocumented function, so the user's `missing_docs` still
//! reports it; its generated companions have docs of their own.
#![deny(missing_docs)]

use impcache::cached;

#[cached(expire = 60)]
pub async fn undocumented(id: u64) -> u64 {
    id
}

/// Documented: the macro's line is appended to these docs.
#[cached(expire = 60, invalidate_all)]
pub async fn documented(id: u64) -> u64 {
    id
}

fn main() {}
