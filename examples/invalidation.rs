//! Invalidation by key, by list and by pattern.
//!
//! Run with `cargo run --example invalidation` (set `REDIS_URL` to use Redis).

#[path = "common.rs"]
mod common;

use impcache::{escape_pattern, Cache};

#[tokio::main]
async fn main() -> impcache::Result<()> {
    let cache = Cache::builder_shared(common::repository_from_env()?)
        .key_prefix("invalidation-example")
        .build();
    for id in 1..=5 {
        cache.set(&format!("user:{id}:profile"), &id, 300).await?;
        cache.set(&format!("user:{id}:friends"), &[id], 300).await?;
    }
    cache
        .set("report[2024]*", &"literal glob characters", 300)
        .await?;

    println!("delete one key: {}", cache.delete("user:1:profile").await?);
    println!(
        "delete a list: {}",
        cache
            .delete_many(["user:1:friends", "user:2:profile"])
            .await?
    );
    // Everything of user 3, with a glob over the key part only: prefix and version are escaped.
    println!(
        "delete user:3:*: {}",
        cache.delete_pattern("user:3:*").await?
    );
    // All friends lists of users 4 and 5.
    println!(
        "delete user:[45]:friends: {}",
        cache.delete_pattern("user:[45]:friends").await?
    );
    // A key with glob characters in it: escape it to match only itself.
    let literal = escape_pattern("report[2024]*");
    println!(
        "delete {literal}: {}",
        cache.delete_pattern(&literal).await?
    );
    println!("left over: {}", cache.delete_pattern("*").await?);
    Ok(())
}
