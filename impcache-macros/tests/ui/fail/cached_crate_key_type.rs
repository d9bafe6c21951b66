//! What a user of the `cached` crate writes first: its `key` is the key's *type* (made by
//! `convert`), which here would be a constant key shared by every call; and options of its own
//! that impcache spells differently or does not need, each with a hint.
use impcache::cached;

#[cached(expire = 60, key = "String")]
async fn key_type(id: u64) -> u64 {
    id
}

#[cached(expire = 60, key = "(u64, String)")]
async fn key_tuple(id: u64, name: String) -> String {
    format!("{id}{name}")
}

#[cached(expire = 60, time_refresh = true)]
async fn time_refresh(id: u64) -> u64 {
    id
}

#[cached(expire = 60, map_error = r##"|e| e.to_string()"##)]
async fn map_error(id: u64) -> Result<u64, String> {
    Ok(id)
}

#[cached(expire = 60, redis = true)]
async fn redis_store(id: u64) -> u64 {
    id
}

fn main() {}
