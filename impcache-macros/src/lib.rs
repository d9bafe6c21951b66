//! The `#[cached]` attribute macro of [impcache](https://docs.rs/impcache). Use it through the
//! `impcache` crate (`impcache::cached`, feature `macros`, on by default); the expansion names
//! `::impcache::__private` (or the path given with `crate = "..."`), so this crate is not useful
//! alone.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod args;
mod durations;
mod errors;
mod expand;
mod generate;
mod generics;
mod limits;
mod plan;
mod template;
mod tokens;

use proc_macro::TokenStream;

/// Memoizes an `async fn` in an impcache [`Cache`]: a hit costs one `GET` and one JSON decode; a
/// miss runs the body once per key per process, answers, and stores its value with an expiry in
/// the background (`SET NX`; a plain `SET` with a freshness option, `lock`, `tags` or `tags_from`,
/// or over a stored value that no longer decodes).
///
/// ```
/// use impcache::{cached, Cache, MemoryCacheRepository};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct User { id: u64, name: String }
///
/// /// Loads a user (a slow call).
/// #[cached(expire = 60)]
/// async fn get_user(id: u64) -> Result<User, std::io::Error> {
///     Ok(User { id, name: format!("user {id}") })
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// impcache::set_default_cache(Cache::new(MemoryCacheRepository::new()))?;
/// let user = get_user(1).await?;           // miss: runs the body, stores `user` (not an `Err`)
/// let again = get_user(1).await?;          // hit
/// assert_eq!(again.name, user.name);
/// get_user_invalidate(1).await?;           // drops the entry of `get_user(1)`
/// let fresh = get_user_uncached(1).await?; // runs the body, bypassing the cache
/// # let _ = fresh;
/// # Ok(()) }
/// ```
///
/// # Options
/// | option | meaning |
/// |---|---|
/// | `expire = 100` / `expire = Duration::from_millis(1500)` | **required**: the lifetime of an entry (seconds, or anything `Into<Expire>`) |
/// | `cache = APP_CACHE` | the cache: any expression giving a `Cache`, `&Cache`, or something that derefs to one (`LazyLock<Cache>`, `Arc<Cache>`, `self.cache`); default: the one installed with `impcache::set_default_cache` (without one, the function runs uncached and a `tracing` warning is emitted once) |
/// | `version = 2` | a constant key version (integer or string) replacing the cache's own, converted once (a value naming `Self`, `Self::VERSION`, at each call); not one with a `__impcache_tag` segment (`"__impcache_tag"`, `"x:__impcache_tag"`), the tags' state keys (a compile error when it is a literal) |
/// | `key = "user:{id}"` | the whole key part, a template over argument names (`{{` and `}}` are literal braces, as in `format!`); only the named arguments are part of the key; not starting with `__lock:`, the locks' keys, which the cache refuses to store: a compile error (as a `name` that makes every key start so) |
/// | `skip(db, client)` | arguments left out of the default key (an argument written as a pattern, `State(db): State<Db>`, is in the key whole and cannot be named here nor in `key` or `tags`: give it a plain name to skip or name it) |
/// | `name = "users::get"` | replaces the `{module_path}::{fn_name}` part of the default key |
/// | `cache_none = true` | with `Option<T>` (or an alias of it): cache `None` as well |
/// | `returns = "result"` / `"option"` / `"value"` | overrides the classification of the return type below: `"result"` caches `Ok`'s value and `"option"` `Some`'s (a compile error if the type is not one, through aliases), `"value"` caches the whole value whatever its type (`Err` and `None` included, which then need serde) |
/// | `stale_while_revalidate = 60` | freshness (whole seconds of any integer type, a `Duration` or an `Expire`): up to that long past `expire`, answer with the stale value and reload once in the background |
/// | `stale_if_error = 3600` | freshness: up to that long past `expire`, a body that fails (an `Err`, an uncached `None`, a panic) is answered with the stale value |
/// | `soft_timeout = Duration::from_millis(100)` | freshness: with a stale value at hand, answer with it after that long; the body finishes and stores in the background |
/// | `hard_timeout = Duration::from_secs(2)` | freshness: give up on the body after that long; the stale value answers within `stale_if_error`, else the call returns `None` (an `Option`) or `Err(impcache::Error::Loader { .. }.into())` (a `Result` whose error converts from `impcache::Error`; other return types do not compile: for a `Result<T, MyErr>` rustc says that `MyErr: From<impcache::Error>` is not satisfied, so implement that `From`, or return an `Option`), and so do the callers waiting for that run, without running the body |
/// | `early_refresh = 2` | freshness: reload a fresh value in the background with a probability growing as its expiry nears (XFetch; about the body's duration) |
/// | `fail_safe_throttle = 30` | freshness: for that long after the body failed, the stale value (within `stale_if_error` or `stale_while_revalidate`) answers without running the body |
/// | `lock` / `lock = 10` / `lock = Duration::from_secs(10)` / `lock = LOCK` (an `impcache::Lock`) | one body run across processes: a lock (`SET NX PX` with a token) taken before running the body, the other processes waiting for its value; `lock = 10` is a 10 s lifetime (waits up to twice that), `lock` alone the defaults |
/// | `tags = ["user:{id}", "org:{org}"]` | tags, templates over argument names as in `key`, never quoted for the text that follows: each value as its compact JSON, as in the key, except that a value whose JSON is a string is written as that string, without quotes, as `format!` writes a string (a `String`, a `char`, a unit enum variant: `Kind::Admin` is `Admin`, a `Some` of one: `Some("op")` is `op`); so integers and bools read as `format!` writes them, a float keeps its `.0` (`1.0f64` is `1.0`, not `format!`'s `1`), `None` is `null`, a struct or an enum variant with data is its JSON object (`Kind::Guest(1)` is `{"Guest":1}`); `cache.invalidate_tag("user:42")` hides every entry carrying it, without a scan |
/// | `tags_from = org_tags` / `tags_from = \|user\| [format!("org:{}", user.org)]` | tags chosen from the cached value once the body has answered (a function or closure over `&Value`, the cached part of the return value: `T` of `Result<T, E>` or `Option<T>`, but the whole `Option<T>` with `cache_none = true` (`fn tags(v: &Option<User>)`, called with `None` too) and the whole value with `returns = "value"`; returning a list of strings), stored with the `tags` ones: for a tag the arguments do not give |
/// | `invalidate_all` | gives the function its own tag, so `name_invalidate_all()` is one tag invalidation instead of a sweep; the tag comes from `name` or the `key` template when given (so it survives moving the function), else from the default key's first part (module path, a method's type or trait, see the key layout) |
/// | `crate = "my_facade::impcache"` / `crate = my_facade::impcache` | the path of the `impcache` crate in the expansion (default `::impcache`), for a crate that renamed the dependency or reaches it through a re-export (a facade's `macro_rules!` passes `crate = $crate::impcache`), as tokio's and serde's `crate` options; an unresolved path is reported there |
///
/// Durations are checked at compile time when they are literals (an integer, a path ending in
/// `ZERO` such as `Duration::ZERO`, or `from_secs`, `from_millis`, `from_micros`, `from_nanos`
/// or `Expire::seconds` of an integer), the runtime refusing them on every call and running the
/// body uncached: a zero or negative `expire`, freshness option or `lock`; an `expire` over 100
/// years (`impcache::MAX_EXPIRE`), or over it once the longer of `stale_while_revalidate` and
/// `stale_if_error` is added (a window over 50 years counts as 50); a `lock` lifetime over 100
/// years, or not longer than `hard_timeout` (unless that is 100 years or more: no limit). Other
/// values (a `const`, a computed `Duration`, a `lock` lifetime under 1 ms) are checked at run
/// time, where an invalid one logs a `tracing` warning and the call runs the body uncached.
///
/// With any freshness option, `lock`, `tags`, `tags_from` or `invalidate_all`, the body runs in a
/// spawned task: its future must be `Send + 'static`.
/// - `'static`: the arguments the body uses must be owned (`String`, not `&str`), and a method
///   whose body uses `self` takes `self: Arc<Self>` rather than `&self`; a compile error on the
///   borrowed type says so. (A borrowed argument the body does not use, a key argument only, is
///   fine.)
/// - `Send`: the body cannot hold a value that is not `Send` (an `Rc`, a `RefCell`'s borrow, a
///   `std::sync::MutexGuard`) across an `.await`; rustc reports "future cannot be sent between
///   threads safely … required by a bound in `impcache::__private::memoize_fresh`", naming the
///   value. Drop it before the `.await`, or use its `Send` counterpart (`Arc`,
///   `tokio::sync::Mutex`).
/// - The body runs in the caller's `tracing` span: its events belong to it, as when the body
///   runs in place (a background reload's, which no caller waits for, in no caller's span). Not the caller's task-locals (`tokio::task_local!`), which no spawned
///   task sees: a body that reads one its caller set (`REQUEST_ID.scope(id, get_user(1))`) finds
///   none there (`try_with` fails, `with` panics). Pass such a value as an argument (in
///   `skip(..)` if it is not part of the key).
///
/// The README's freshness, tags and lock sections say more.
///
/// # Key layout
/// The full key is the cache's `{key_prefix}:{version}:{key}`, where `{key}` is:
/// - default: `{module_path}::{fn_name}:{arg1}:{arg2}...`, each argument as compact JSON
///   (`myapp::users::get_user:42:"alice"`), `self`, `_` and an argument that `#[cfg]` removes
///   excluded; `{fn_name}` is written without `r#` (`r#type` is `type`, as in a path). For
///   methods and associated functions the first part is `{type_name::<Self>()}::{fn_name}`
///   (`myapp::users::UserRepo::get_user:42`), wherever their `impl` block is, so two types'
///   functions of the same name never share entries; for a trait's default method,
///   `<{type} as {trait path}>::{fn_name}` (`<myapp::Db as myapp::Users>::load:42`), so two
///   traits' methods of one name, implemented by one type, do not either; for a function nested
///   in another, `{enclosing fn path}::{fn_name}`.
///   `name = "..."` replaces this first part. Functions whose paths Rust writes alike share their
///   default keys, and so their entries: two functions of one name nested in two blocks of one
///   function (both `{enclosing fn path}::{fn_name}`), or in two `const _: () = { .. }` blocks of
///   one module (both `{module_path}::_::{fn_name}`). Give each its own `name = "..."`.
/// - with `key = "user:{id}"`: the template with each `{arg}` as compact JSON, except that a
///   value whose JSON is a string is written without quotes: a `String` or `&str`, a `char`, a
///   unit enum variant, a `Some` of one (`user:42`, `user:alice`, `role:Admin`).
///
/// Distinct argument values get distinct keys: `Some(None)` is `Some(null)` (`None` is `null`),
/// NaN and ±∞ are `NaN`, `Infinity`, `-Infinity`, and a template placeholder whose value could
/// run into what follows it (`{a}:{b}` with `a = "x:y"`) is written as a JSON string
/// (`"x:y":z`); other values keep `serde_json`'s text. See the README's key layout.
///
/// A function without key arguments (none, or all skipped) has the one key
/// `{module_path}::{fn_name}`, without the `:`. So `cache.delete_pattern("myapp::users::get_user:*")`
/// drops every entry of a function with arguments; `get_user_invalidate_all()` (below) covers
/// both forms.
///
/// # What is cached
/// The return type is classified by the type system, not by its spelling, so aliases count:
/// | return type | stored | not stored |
/// |---|---|---|
/// | `Result<T, E>` or an alias of it (`io::Result<T>`, `anyhow::Result<T>`, `type AppResult<T> = Result<T, AppError>`) | `T` of `Ok(T)` | `Err(E)`; `E` needs no serde |
/// | `Option<T>` or an alias of it | `T` of `Some(T)` | `None` (unless `cache_none = true`) |
/// | anything else, including a generic parameter `T` (even one instantiated as a `Result`) | the value | |
///
/// `returns = "..."` overrides this. Stored types must be `Serialize + DeserializeOwned` and own
/// their data (a borrowed return type such as `&str` is a compile error: return `String`); key
/// arguments must be `Serialize` (`&str`, `&T` work; with an option that spawns the body, see
/// above, only if the body does not use them).
///
/// # Behaviour
/// - **One execution per key per process**: concurrent callers with the same key wait for the
///   first one and decode its JSON (values need not be `Clone`). If it returns a value that is not
///   cached (`Err`, `None`, or one JSON cannot encode: a NaN, a `u128` above 64 bits, logged as a
///   warning), each waiter runs its own body, concurrently (with `lock`, one of
///   them first runs it once more through the lock for the others, and if that fails too they
///   run theirs without taking it); if it panics or is cancelled, the waiters elect a new
///   leader. Nothing is poisoned.
/// - **Not reentrant on one key**: a body that awaits a call with its own key (the same cached
///   function and key arguments, directly or through other functions) waits for its own run,
///   which never ends: the call never returns (with `hard_timeout`, until it gives up), as
///   moka's `get_with` documents for a recursive call of one key. Calls with other keys, a
///   recursion over smaller arguments, are fine.
/// - **Recursion and the stack**: a recursive call is boxed (`Box::pin(f(n - 1)).await`). Each
///   level of a cold recursion (a miss whose body awaits the next level) holds about 5.4 KiB of
///   the stack in a debug build, 4.2 KiB in a release one (`f(n: u64) -> u64`, memory
///   repository): 330 levels of a debug build fit a 2 MiB stack (a test thread's, a tokio
///   worker's). A helper that boxes the call, as below, saves another 2.5 KiB per level of a
///   debug build. With a freshness
///   option, `lock` or tags, each level's body runs in a task of its own (no stack per level),
///   and must be `Send`: `Box::pin(f(n - 1)).await` in the body is refused by rustc's auto-trait
///   cycle ("future cannot be sent between threads safely", "cannot satisfy `impl Future<Output =
///   u64>: Send`"); call it through a helper that returns it as a `dyn Future + Send`:
///   ```
///   use std::{future::Future, pin::Pin};
///   # use impcache::{cached, Cache, MemoryCacheRepository};
///
///   fn fib_boxed(n: u64) -> Pin<Box<dyn Future<Output = u64> + Send>> {
///       Box::pin(fib(n))
///   }
///
///   #[cached(expire = 60, stale_if_error = 60)]
///   async fn fib(n: u64) -> u64 {
///       if n < 2 { n } else { fib_boxed(n - 1).await + fib_boxed(n - 2).await }
///   }
///   # #[tokio::main(flavor = "current_thread")]
///   # async fn main() {
///   # impcache::set_default_cache(Cache::new(MemoryCacheRepository::new())).unwrap();
///   assert_eq!(fib(60).await, 1_548_008_755_920);
///   # }
///   ```
/// - **Fail open**: when the cache fails (server down, deadline passed, breaker open), the body
///   runs and its value is returned; a stored value that no longer decodes (the type changed) is
///   recomputed and overwritten. Errors go to `tracing`, never to the caller.
///
/// # Generated companions
/// Next to `fn name`, with the same visibility:
/// - `name_uncached(...)`: the same arguments; runs the body without the cache.
/// - `name_invalidate(...) -> impcache::Result<bool>`: `&self` if the function has a receiver, the
///   key arguments (and any argument the `cache` expression names); removes that call's entry. A
///   run of that call in progress in this process (its body not yet returned) then stores
///   nothing: the next call runs the body again.
/// - `name_invalidate_all(...) -> impcache::Result<()>`: `&self` if the function has a receiver
///   (and any argument the `cache` expression names); removes every entry of the function. With
///   `tags` or `invalidate_all`, one invalidation of the function's tag (no scan); else, with the
///   default keys, a `delete_pattern` sweep of the function's keys; not generated for an untagged
///   function with a `key` template.
///
/// Works on free functions, methods (`&self`) and generic functions, keeping visibility,
/// attributes, docs, generics and where clauses. The function and its arguments are written
/// several times over (the wrapper, the companions), and a lint may fire in one copy only: an
/// `#[expect(..)]` on the function or an argument, also under `#[cfg_attr]`, becomes an
/// `#[allow(..)]` of the same lints on every copy. Not in a trait impl (`impl Trait for T`): the
/// companions are not members of the trait. A method there (or a function whose signature
/// names `Self`) gets a compile error saying so; an associated function without either only
/// gets rustc's "method `name_uncached` is not a member of trait" (E0407): the macro sees the
/// function, not the impl around it. Put the cached function in an inherent impl or make it a
/// free function, and call it from the trait impl's method. A trait's default method is fine. Generic functions whose instantiations share a key share entries: a value of another
/// type fails to decode and is recomputed, so give them distinguishing key arguments or `name`s.
/// The body is compiled twice (the function and `name_uncached`).
///
/// [`Cache`]: https://docs.rs/impcache/latest/impcache/struct.Cache.html
#[proc_macro_attribute]
pub fn cached(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::cached(args.into(), item.into()).into()
}
