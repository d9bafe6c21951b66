//! The Python library's quickstart, in Rust.
//!
//! Run with `cargo run --example quickstart` (in-memory), or
//! `REDIS_URL=redis://127.0.0.1:6379/0 cargo run --example quickstart`.

#[path = "common.rs"]
mod common;

use impcache::Cache;

#[tokio::main]
async fn main() -> impcache::Result<()> {
    let cache = Cache::builder_shared(common::repository_from_env()?)
        .key_prefix("cache")
        .version(1)
        .build();

    cache.set("key", &"value", 100).await?;
    let result: Option<String> = cache.get("key").await?;
    println!("get(\"key\") = {result:?}");

    println!(
        "set_nx(\"key\") = {}",
        cache.set_nx("key", &"other", 100).await?
    );
    cache
        .set_many([("key1", "value1"), ("key2", "value2")], 100)
        .await?;
    let many: Vec<Option<String>> = cache
        .get_many(&["key1", "non-existing-key", "key2"])
        .await?;
    println!("get_many = {many:?}");
    println!("delete(\"key\") = {}", cache.delete("key").await?);
    println!(
        "delete_many = {}",
        cache
            .delete_many(&["key1", "non-existing-key", "key2"])
            .await?
    );
    cache
        .set_many([("hllo", "value1"), ("heeeello", "value2")], 100)
        .await?;
    println!(
        "delete_pattern(\"h*llo\") = {}",
        cache.delete_pattern("h*llo").await?
    );
    println!("full key of \"key\": {}", cache.make_key("key"));
    Ok(())
}
