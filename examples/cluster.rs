//! A cache on Redis Cluster: spread keys, multi-key operations across slots, a hash-tagged
//! prefix, and a sweep of every primary.
//!
//! Start a local cluster (or point `REDIS_CLUSTER_NODES` at yours, comma-separated), then:
//! ```text
//! REDIS_CLUSTER_NODES=redis://127.0.0.1:7000,redis://127.0.0.1:7001 \
//!     cargo run -p impcache-examples --features cluster --example cluster
//! ```
//! Without a reachable cluster it shows the fail-open behaviour: every call returns a typed
//! error within the deadline.

use std::time::Duration;

use impcache::{Cache, RedisClusterCacheRepository};

#[tokio::main]
async fn main() -> impcache::Result<()> {
    let nodes = std::env::var("REDIS_CLUSTER_NODES")
        .unwrap_or_else(|_| "redis://127.0.0.1:7000".to_owned());
    // Any reachable node is enough: the client discovers the others.
    let repository = RedisClusterCacheRepository::builder(nodes.split(','))
        .deadline(Duration::from_millis(300))
        .build()?;
    let cache = Cache::builder(repository.clone())
        .key_prefix("shop")
        .version(1)
        .build();

    // Keys `shop:1:product:N` hash to different slots: set_many groups them per slot and sends
    // the groups concurrently; get_many answers in the order asked.
    let products: Vec<(String, String)> = (0..100)
        .map(|i| (format!("product:{i}"), format!("Product #{i}")))
        .collect();
    match cache
        .set_many(products.iter().map(|(k, v)| (k, v)), 600)
        .await
    {
        Ok(()) => {}
        Err(e) if e.is_backend_failure() => {
            // Fail open: the application would carry on without the cache.
            println!("cache unavailable, carrying on without it: {e}");
            return Ok(());
        }
        Err(e) => return Err(e),
    }
    let names: Vec<Option<String>> = cache
        .get_many(["product:7", "product:999", "product:42"])
        .await?;
    println!("get_many: {names:?}");
    println!("primaries: {:?}", repository.primaries().await?);

    // A hash tag keeps one user's entries in one slot (one node): fine for a small, related set,
    // a hot spot if one tag gets most of the traffic.
    let session = Cache::builder(repository).key_prefix("{user:42}").build();
    session.set("profile", &"Ada", 600).await?;
    session.set("cart", &vec![1, 2, 3], 600).await?;
    println!(
        "{} and {} share a slot",
        session.make_key("profile"),
        session.make_key("cart")
    );

    // delete_pattern sweeps every primary (SCAN per node) and sums what it removed.
    println!(
        "removed {} products",
        cache.delete_pattern("product:*").await?
    );
    println!(
        "removed {} session keys",
        session.delete_pattern("*").await?
    );
    Ok(())
}
