//! `crate = "..."` must name the impcache crate: a path that does not resolve is reported at the
//! string (or the path), and a string or value that is not a path is refused.
use impcache::cached;

#[cached(expire = 60, crate = "not_impcache")]
async fn unresolved(id: u64) -> u64 {
    id
}

#[cached(expire = 60, crate = "not a path")]
async fn not_a_path(id: u64) -> u64 {
    id
}

#[cached(expire = 60, crate = 1)]
async fn not_a_path_either(id: u64) -> u64 {
    id
}

fn main() {}
