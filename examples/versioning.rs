//! Cache versioning: bump the version when the shape of cached values changes.
//!
//! Run with `cargo run --example versioning` (set `REDIS_URL` to use Redis).

#[path = "common.rs"]
mod common;

use impcache::Cache;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct UserV1 {
    name: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct UserV2 {
    first_name: String,
    last_name: String,
}

#[tokio::main]
async fn main() -> impcache::Result<()> {
    let v1 = Cache::builder_shared(common::repository_from_env()?)
        .key_prefix("versioning-example")
        .version(1)
        .build();
    v1.set(
        "user:1",
        &UserV1 {
            name: "Ada Lovelace".into(),
        },
        100,
    )
    .await?;

    // New code reads version 2: the old entries are simply not there for it (no decode errors).
    let v2 = v1.with_version(2);
    let user: Option<UserV2> = v2.get("user:1").await?;
    println!("v2 before filling: {user:?}");
    v2.set(
        "user:1",
        &UserV2 {
            first_name: "Ada".into(),
            last_name: "Lovelace".into(),
        },
        100,
    )
    .await?;
    println!("v2 after filling: {:?}", v2.get::<UserV2>("user:1").await?);
    println!("v1 still holds: {:?}", v1.get::<UserV1>("user:1").await?);

    // Old versions free no memory until they expire; drop them explicitly when you can.
    println!("removed {} old v1 entries", v1.delete_pattern("*").await?);
    v2.delete_pattern("*").await?;
    Ok(())
}
