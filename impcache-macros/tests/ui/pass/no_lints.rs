//! The expansion triggers no rustc lint in user code (issue 12 item 9): one-line bodies,
//! methods, generics, `Result`/`Option` returns and aliases of them, under `deny(warnings)`.
#![deny(warnings)]
// Read by clippy only (rustc ignores it; see `underscore_key` below): the trybuild run does not
// run clippy, but this file under `cargo clippy` must be clean of it.
#![deny(clippy::used_underscore_binding)]

use impcache::{cached, Cache, MemoryCacheRepository};
use serde::de::DeserializeOwned;
use serde::Serialize;

#[derive(Debug)]
struct AppError;

type AppResult<T> = Result<T, AppError>;
type Maybe<T> = Option<T>;

// One-line bodies (the `unused_braces` case of the issue).
#[cached(expire = 60)]
async fn c(id: u64) -> Option<String> { Some(format!("user-{id}")) }

#[cached(expire = 60)]
async fn r(id: u64) -> Result<u64, AppError> { Ok(id) }

#[cached(expire = 60)]
async fn v(id: u64) -> u64 { id + 1 }

#[cached(expire = 60)]
async fn unit(id: u64) { let _ = id; }

// Tags from the arguments and from the value (a function, a closure), with a freshness option:
// the `get_or_set` runtime.
fn owner_tags(owner: &Owner) -> Vec<String> { vec![format!("owner:{}", owner.0)] }

#[derive(serde::Serialize, serde::Deserialize)]
struct Owner(u64);

#[cached(expire = 60, stale_while_revalidate = 30, tags = ["id:{id}"], tags_from = owner_tags)]
async fn tagged(id: u64) -> Option<Owner> { Some(Owner(id)) }

#[cached(expire = 60, tags_from = |v| [v.to_string()])]
async fn tagged_closure(id: u64) -> u64 { id }

// Aliases, classified by the type system.
#[cached(expire = 60)]
async fn alias_r(id: u64) -> AppResult<u64> { if id == 0 { Err(AppError) } else { Ok(id) } }

#[cached(expire = 60, cache_none = true)]
async fn alias_o(id: u64) -> Maybe<u64> { Some(id) }

#[cached(expire = 60, returns = "option")]
async fn explicit_o(id: u64) -> Maybe<u64> { Some(id) }

// Generics and where clauses.
#[cached(expire = 60)]
async fn g<T: Serialize + DeserializeOwned + Send>(value: T) -> T { value }

#[cached(expire = 60)]
async fn g_opt<T>(value: T) -> Option<T> where T: Serialize + DeserializeOwned + Send { Some(value) }

// Argument patterns and a mutable argument.
#[cached(expire = 60)]
async fn pat((a, b): (u8, u8), mut acc: Vec<u8>) -> Vec<u8> { acc.push(a + b); acc }

struct Repo {
    cache: Cache,
}

impl Repo {
    #[cached(cache = self.cache, expire = 60)]
    async fn get(&self, id: u64) -> Option<u64> { Some(id) }

    #[cached(cache = self.cache, expire = 60)]
    async fn load(&self, id: u64) -> AppResult<String> { Ok(id.to_string()) }

    #[cached(cache = self.cache, expire = 60, key = "user:{name}")]
    async fn by_name(&self, name: &str) -> <Self as HasOut>::Out { name.len() }

    #[cached(cache = self.cache, expire = 60)]
    async fn generic<T: Serialize + DeserializeOwned + Send>(&self, value: T) -> Maybe<T> { Some(value) }

    #[cached(expire = 60)]
    async fn assoc(id: u64) -> <Self as HasOut>::Out { id as usize }
}

trait HasOut {
    type Out;
}

impl HasOut for Repo {
    type Out = usize;
}

// A raw identifier as an argument (the key's label is `type`).
#[cached(expire = 60)]
async fn raw(r#type: u64) -> u64 { r#type }

// Underscore-prefixed arguments are part of the key and the tags: the macro's reads of them do
// not trigger pedantic clippy's `used_underscore_binding` (the user's own in the body would).
#[cached(expire = 60)]
async fn underscore_key(id: u64, _flag: bool) -> u64 { id }

#[cached(expire = 60, tags = ["flag:{_flag}"])]
async fn underscore_tag(id: u64, _flag: bool) -> u64 { id }

#[cached(expire = 60, key = "k:{id}:{_flag}")]
async fn underscore_template(id: u64, _flag: bool) -> u64 { id }

// An expectation on the function holds whichever of the generated items the lint fires in (or
// none): it is not reported unfulfilled.
#[expect(unused_variables)]
#[cached(expire = 60, skip(db))]
async fn expecting(id: u64, db: u8) -> u64 { id }

/// An `unsafe` function (the expansion's keywords in Rust's order).
///
/// # Safety
/// None needed: it only shows the expansion compiles.
#[cached(expire = 60)]
async unsafe fn not_really_unsafe(id: u64) -> u64 { id }

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let repo = Repo {
            cache: Cache::new(MemoryCacheRepository::new()),
        };
        assert_eq!(c(1).await.as_deref(), Some("user-1"));
        assert_eq!(r(2).await.ok(), Some(2));
        assert_eq!(v(3).await, 4);
        unit(4).await;
        assert!(alias_r(0).await.is_err());
        assert_eq!(alias_o(5).await, Some(5));
        assert_eq!(explicit_o(6).await, Some(6));
        assert_eq!(g(7u8).await, 7);
        assert_eq!(g_opt(8u8).await, Some(8));
        assert_eq!(pat((1, 2), vec![0]).await, vec![0, 3]);
        assert_eq!(repo.get(9).await, Some(9));
        assert_eq!(repo.load(10).await.ok().as_deref(), Some("10"));
        assert_eq!(repo.by_name("abc").await, 3);
        assert_eq!(repo.generic(11u8).await, Some(11));
        assert_eq!(Repo::assoc(12).await, 12);
        assert_eq!(tagged(13).await.map(|owner| owner.0), Some(13));
        assert_eq!(tagged_closure(14).await, 14);
        assert_eq!(raw(15).await, 15);
        assert_eq!(expecting(16, 0).await, 16);
        assert_eq!(underscore_key(18, true).await, 18);
        assert_eq!(underscore_tag(19, true).await, 19);
        assert_eq!(underscore_template(20, true).await, 20);
        // SAFETY: nothing unsafe happens in it.
        assert_eq!(unsafe { not_really_unsafe(17) }.await, 17);
    });
}
