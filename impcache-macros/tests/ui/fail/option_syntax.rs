use impcache::cached;
use std::collections::HashMap;

// A syntax error in one option is reported on its tokens; the other options are still read
// (and checked), and `expire` is not reported missing when an option starts with it.
#[cached(expire = 60, cache = , key = "x:{id}")]
async fn empty_value_mid(id: u64) -> u64 {
    id
}

#[cached(expire = 60, version = )]
async fn empty_value_last(id: u64) -> u64 {
    id
}

#[cached(expire = 60, key = "k:{id}" name = "n")]
async fn missing_comma(id: u64) -> u64 {
    id
}

#[cached(expire)]
async fn expire_without_value(id: u64) -> u64 {
    id
}

#[cached(expire: 60)]
async fn expire_with_colon(id: u64) -> u64 {
    id
}

#[cached(expire = 60, cache = , ttl = 5, expire = 0)]
async fn syntax_error_and_others(id: u64) -> u64 {
    id
}

// The options after a broken one are checked against the function.
#[cached(expire = 60, version = 1 +, key = "k:{nope}")]
async fn broken_then_checked(id: u64) -> u64 {
    id
}

// A comma inside a closure's arguments or a turbofish is not a separator.
#[cached(expire = 60, tags_from = |v: &HashMap<u8, u8>| v.keys().count(), ttl = 1)]
async fn comma_in_option(id: u8) -> HashMap<u8, u8> {
    [(id, id)].into()
}

// Still missing when no option names `expire` (another name of it, as `expires`, has its own
// error).
#[cached(version = , max_age = 60)]
async fn really_missing(id: u64) -> u64 {
    id
}

fn main() {}
