//! A crate that forbids `unsafe` code can use `#[cached]`: the expansion's `pin!` of its call
//! (the standard library's, whose `unsafe` is its own) trips no `unsafe_code` lint, plain, with
//! a freshness option and on a method.
#![forbid(unsafe_code)]
#![deny(warnings)]

use impcache::{cached, Cache, MemoryCacheRepository};

#[derive(serde::Serialize, serde::Deserialize)]
struct User {
    id: u64,
}

struct Repo;

impl Repo {
    #[cached(expire = 60)]
    async fn user(&self, id: u64) -> User {
        User { id }
    }
}

#[cached(expire = 60)]
async fn plain(id: u64) -> u64 {
    id
}

#[cached(expire = 60, stale_if_error = 10)]
async fn fresh(id: u64) -> u64 {
    id
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let _ = impcache::set_default_cache(Cache::new(MemoryCacheRepository::new()));
        assert_eq!(plain(1).await, 1);
        assert_eq!(fresh(1).await, 1);
        assert_eq!(Repo.user(2).await.id, 2);
    });
}
