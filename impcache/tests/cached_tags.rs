//! `#[cached(tags = [...])]` and `invalidate_all` (issue 16), on the in-memory repository: tags
//! templated from the arguments, `{name}_invalidate_all` invalidating every entry of one
//! function (and only that function's), and the function's tag following `name = "..."`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use impcache::{cached, Cache, MemoryCacheRepository};

static CACHE: LazyLock<Cache> = LazyLock::new(|| Cache::new(MemoryCacheRepository::new()));

static PROFILE_RUNS: AtomicUsize = AtomicUsize::new(0);
static ORDERS_RUNS: AtomicUsize = AtomicUsize::new(0);
static PLAIN_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(cache = CACHE, expire = 60, tags = ["user:{id}", "org:{org}"])]
async fn profile(id: u64, org: String) -> String {
    PROFILE_RUNS.fetch_add(1, SeqCst);
    format!("{org}/{id}")
}

#[cached(cache = CACHE, expire = 60, name = "shop::orders", invalidate_all)]
async fn orders(id: u64) -> Vec<u64> {
    ORDERS_RUNS.fetch_add(1, SeqCst);
    vec![id, id + 1]
}

static MEMBER_RUNS: AtomicUsize = AtomicUsize::new(0);

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Member {
    id: u64,
    org: String,
}

fn member_tags(member: &Member) -> Vec<String> {
    vec![format!("org:{}", member.org)]
}

/// The organisation is known only once the body has run (issue 16: tags chosen from the value).
#[cached(cache = CACHE, expire = 60, tags = ["member:{id}"], tags_from = member_tags)]
async fn member(id: u64) -> Option<Member> {
    MEMBER_RUNS.fetch_add(1, SeqCst);
    (id != 0).then(|| Member {
        id,
        org: if id.is_multiple_of(2) { "even" } else { "odd" }.to_owned(),
    })
}

static TEAM_RUNS: AtomicUsize = AtomicUsize::new(0);

/// A closure, its argument's type inferred; the tags any list of strings.
#[cached(cache = CACHE, expire = 60, tags_from = |team| [format!("lead:{}", team.1)])]
async fn team(id: u64) -> (u64, String) {
    TEAM_RUNS.fetch_add(1, SeqCst);
    (id, format!("lead{}", id % 2))
}

#[cached(cache = CACHE, expire = 60)]
async fn plain(id: u64) -> u64 {
    PLAIN_RUNS.fetch_add(1, SeqCst);
    id
}

/// The entries of one call are written in the background: wait until `key` is stored.
async fn stored(key: &str) {
    for _ in 0..5000 {
        if CACHE
            .repository()
            .get(&CACHE.make_key(key))
            .await
            .unwrap()
            .is_some()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("{key} was never stored");
}

#[tokio::test]
async fn tags_templated_from_the_arguments_invalidate_their_entries() {
    assert_eq!(profile(1, "acme".to_owned()).await, "acme/1");
    assert_eq!(profile(2, "acme".to_owned()).await, "acme/2");
    assert_eq!(profile(3, "other".to_owned()).await, "other/3");
    stored("cached_tags::profile:1:\"acme\"").await;
    stored("cached_tags::profile:3:\"other\"").await;
    assert_eq!(profile(1, "acme".to_owned()).await, "acme/1");
    assert_eq!(PROFILE_RUNS.load(SeqCst), 3);

    // The tag of user 1 hides only that entry.
    CACHE.invalidate_tag("user:1").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(profile(1, "acme".to_owned()).await, "acme/1");
    assert_eq!(profile(2, "acme".to_owned()).await, "acme/2");
    assert_eq!(PROFILE_RUNS.load(SeqCst), 4);

    // The org's tag (a string argument, written unquoted as in `key` templates) hides both.
    CACHE.invalidate_tag("org:acme").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(profile(2, "acme".to_owned()).await, "acme/2");
    assert_eq!(profile(3, "other".to_owned()).await, "other/3");
    assert_eq!(PROFILE_RUNS.load(SeqCst), 5);

    // Every entry of the function, whatever its arguments.
    profile_invalidate_all().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(profile(3, "other".to_owned()).await, "other/3");
    assert_eq!(PROFILE_RUNS.load(SeqCst), 6);
}

#[tokio::test]
async fn invalidate_all_hides_one_function_and_follows_its_name() {
    for id in 0..5 {
        assert_eq!(orders(id).await, [id, id + 1]);
        assert_eq!(plain(id).await, id);
    }
    stored("shop::orders:4").await;
    stored("cached_tags::plain:4").await;
    orders_invalidate_all().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    for id in 0..5 {
        assert_eq!(orders(id).await, [id, id + 1]);
        assert_eq!(plain(id).await, id);
    }
    assert_eq!(ORDERS_RUNS.load(SeqCst), 10);
    assert_eq!(PLAIN_RUNS.load(SeqCst), 5);
    // The function's tag is its `name`: the same invalidation from anywhere.
    stored("shop::orders:0").await;
    CACHE
        .invalidate_tag("__impcache_fn:shop::orders")
        .await
        .unwrap();
    assert_eq!(CACHE.get::<Vec<u64>>("shop::orders:0").await.unwrap(), None);
}

/// Two types' methods of one name in one module: each has its own function tag, as its own keys.
struct Users;
struct Teams;

static USERS_RUNS: AtomicUsize = AtomicUsize::new(0);
static TEAMS_RUNS: AtomicUsize = AtomicUsize::new(0);

impl Users {
    #[cached(cache = CACHE, expire = 60, invalidate_all)]
    async fn load(&self, id: u64) -> u64 {
        USERS_RUNS.fetch_add(1, SeqCst);
        id
    }
}

impl Teams {
    #[cached(cache = CACHE, expire = 60, invalidate_all)]
    async fn load(&self, id: u64) -> u64 {
        TEAMS_RUNS.fetch_add(1, SeqCst);
        id + 100
    }
}

#[tokio::test]
async fn invalidate_all_of_a_method_spares_another_types_method_of_the_same_name() {
    assert_eq!(Users.load(1).await, 1);
    assert_eq!(Teams.load(1).await, 101);
    stored(&format!("{}::load:1", std::any::type_name::<Users>())).await;
    stored(&format!("{}::load:1", std::any::type_name::<Teams>())).await;
    Users.load_invalidate_all().await.unwrap();
    assert_eq!(Users.load(1).await, 1);
    assert_eq!(Teams.load(1).await, 101);
    assert_eq!(USERS_RUNS.load(SeqCst), 2, "Users::load invalidated");
    assert_eq!(TEAMS_RUNS.load(SeqCst), 1, "Teams::load kept");
}

static SWEPT_RUNS: AtomicUsize = AtomicUsize::new(0);
static NEIGHBOUR_RUNS: AtomicUsize = AtomicUsize::new(0);

/// Untagged, with `name`: its entries keep the Python library's bytes.
#[cached(cache = CACHE, expire = 60, name = "reports::daily")]
async fn daily(day: u32) -> u32 {
    SWEPT_RUNS.fetch_add(1, SeqCst);
    day * 10
}

/// A neighbour whose name starts like `daily`'s: not swept with it.
#[cached(cache = CACHE, expire = 60, name = "reports::daily_total")]
async fn daily_total(day: u32) -> u32 {
    NEIGHBOUR_RUNS.fetch_add(1, SeqCst);
    day
}

static SUB_RUNS: AtomicUsize = AtomicUsize::new(0);

/// Keys under `daily`'s as a module path (`reports::daily::sub:{day}`): not swept with it.
#[cached(cache = CACHE, expire = 60, name = "reports::daily::sub")]
async fn daily_sub(day: u32) -> u32 {
    SUB_RUNS.fetch_add(1, SeqCst);
    day + 1
}

/// Every `#[cached]` function with the default keys has `{name}_invalidate_all`, tagged or not:
/// untagged, a sweep of its keys (`{name}:*` and the bare `{name}`), so its entries stay plain
/// JSON (no envelope).
#[tokio::test]
async fn an_untagged_function_has_invalidate_all_too() {
    for day in 0..3 {
        assert_eq!(daily(day).await, day * 10);
        assert_eq!(daily_total(day).await, day);
        assert_eq!(daily_sub(day).await, day + 1);
    }
    stored("reports::daily:2").await;
    stored("reports::daily_total:2").await;
    stored("reports::daily::sub:2").await;
    let raw = CACHE
        .repository()
        .get(&CACHE.make_key("reports::daily:2"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&raw[..], b"20", "plain JSON");
    daily_invalidate_all().await.unwrap();
    assert_eq!(CACHE.get::<u32>("reports::daily:1").await.unwrap(), None);
    for day in 0..3 {
        assert_eq!(daily(day).await, day * 10);
        assert_eq!(daily_total(day).await, day);
        assert_eq!(daily_sub(day).await, day + 1);
    }
    assert_eq!(SWEPT_RUNS.load(SeqCst), 6);
    assert_eq!(NEIGHBOUR_RUNS.load(SeqCst), 3);
    assert_eq!(SUB_RUNS.load(SeqCst), 3);
}

static VERSIONED_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(cache = CACHE, expire = 60, version = 2, tags = ["account:{id}"])]
async fn versioned(id: u64) -> u64 {
    VERSIONED_RUNS.fetch_add(1, SeqCst);
    id
}

/// Tag state has no version: the app cache's `invalidate_tag` reaches a function memoized under
/// its own `version` ("everything about user 42" in one call), and so does a cache of another
/// version (the other side of a rolling deploy).
#[tokio::test]
async fn an_invalidation_reaches_every_version() {
    let runs = || VERSIONED_RUNS.load(SeqCst);
    let key = CACHE.with_version(2).make_key("cached_tags::versioned:7");
    let stored_at_version_2 = || async {
        for _ in 0..5000 {
            if CACHE.repository().get(&key).await.unwrap().is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("{key} was never stored");
    };
    assert_eq!(versioned(7).await, 7);
    stored_at_version_2().await;
    assert_eq!(versioned(7).await, 7);
    assert_eq!(runs(), 1);
    CACHE.invalidate_tag("account:7").await.unwrap();
    assert_eq!(versioned(7).await, 7);
    assert_eq!(
        runs(),
        2,
        "the app cache's invalidation hid the version-2 entry"
    );
    stored_at_version_2().await;
    CACHE
        .with_version(3)
        .invalidate_tag("account:7")
        .await
        .unwrap();
    assert_eq!(versioned(7).await, 7);
    assert_eq!(runs(), 3, "a version-3 cache's invalidation too");
}

/// A function with a `key` template, before and after a move to another module: the template
/// makes its keys, and its function tag too, so `_invalidate_all` of the moved function still
/// hides the entries written before the move from every reader.
mod before_the_move {
    #[impcache::cached(cache = super::CACHE, expire = 60, key = "account:{id}", invalidate_all)]
    pub(crate) async fn account(id: u64) -> u64 {
        id * 10
    }
}

mod after_the_move {
    pub(crate) static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    #[impcache::cached(cache = super::CACHE, expire = 60, key = "account:{id}", invalidate_all)]
    pub(crate) async fn account(id: u64) -> u64 {
        RUNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        id * 10
    }
}

#[tokio::test]
async fn invalidate_all_of_a_key_template_survives_a_move() {
    assert_eq!(before_the_move::account(7).await, 70);
    stored("account:7").await;
    assert_eq!(after_the_move::account(7).await, 70);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        after_the_move::RUNS.load(SeqCst),
        0,
        "the entry written before the move"
    );
    after_the_move::account_invalidate_all().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    // Hidden from every reader, a plain `get` (which judges the entry by the tags it was stored
    // with) included.
    assert_eq!(CACHE.get::<u64>("account:7").await.unwrap(), None);
    assert_eq!(after_the_move::account(7).await, 70);
    assert_eq!(after_the_move::RUNS.load(SeqCst), 1);
}

#[tokio::test]
async fn tags_chosen_from_the_value_hide_its_entries() {
    let one = member(1).await;
    assert_eq!(one.as_ref().map(|m| m.org.as_str()), Some("odd"));
    member(2).await;
    stored("cached_tags::member:1").await;
    stored("cached_tags::member:2").await;
    member(1).await;
    assert_eq!(MEMBER_RUNS.load(SeqCst), 2);
    // The tag chosen from the value hides member 1 (odd), not member 2 (even).
    CACHE.invalidate_tag("org:odd").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(member(1).await, one);
    member(2).await;
    assert_eq!(MEMBER_RUNS.load(SeqCst), 3);
    // The template tags still count, and `None` (not cached) chooses nothing.
    stored("cached_tags::member:1").await;
    CACHE.invalidate_tag("member:2").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    member(2).await;
    assert_eq!(MEMBER_RUNS.load(SeqCst), 4);
    assert_eq!(member(0).await, None);

    // A closure: the lead's tag hides the teams it leads, whatever their ids.
    team(1).await;
    team(3).await;
    team(2).await;
    for id in [1, 2, 3] {
        stored(&format!("cached_tags::team:{id}")).await;
    }
    assert_eq!(TEAM_RUNS.load(SeqCst), 3);
    CACHE.invalidate_tag("lead:lead1").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    for id in [1, 2, 3] {
        team(id).await;
    }
    assert_eq!(TEAM_RUNS.load(SeqCst), 5);
    // `tags_from` alone tags the function's entries: `team_invalidate_all` is a tag invalidation.
    team_invalidate_all().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    team(2).await;
    assert_eq!(TEAM_RUNS.load(SeqCst), 6);
}

static POSTS_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(cache = CACHE, expire = 60, tags = ["user:{email}:posts", "{a}{b}"])]
async fn posts(email: String, a: String, b: String) -> String {
    POSTS_RUNS.fetch_add(1, SeqCst);
    format!("{email}/{a}{b}")
}

/// A tag template writes a string as `format!` does, whatever it holds: the user's own
/// `format!` of the template invalidates it (a `key` template would quote `a:b@x` before `:`,
/// and `x` before another placeholder).
#[tokio::test]
async fn tag_templates_are_written_as_format_writes_them() {
    let call = || posts("a:b@x".to_owned(), "x".to_owned(), "\"y".to_owned());
    assert_eq!(call().await, "a:b@x/x\"y");
    assert_eq!(call().await, "a:b@x/x\"y");
    assert_eq!(POSTS_RUNS.load(SeqCst), 1);
    let email = "a:b@x";
    CACHE
        .invalidate_tag(&format!("user:{email}:posts"))
        .await
        .unwrap();
    assert_eq!(call().await, "a:b@x/x\"y");
    assert_eq!(POSTS_RUNS.load(SeqCst), 2);
    let (a, b) = ("x", "\"y");
    CACHE.invalidate_tag(&format!("{a}{b}")).await.unwrap();
    assert_eq!(call().await, "a:b@x/x\"y");
    assert_eq!(POSTS_RUNS.load(SeqCst), 3);
}

static PRICED_RUNS: AtomicUsize = AtomicUsize::new(0);

#[derive(serde::Serialize)]
struct Sku {
    shop: u32,
    code: String,
}

#[cached(
    cache = CACHE,
    expire = 60,
    tags = ["price:{price}", "sku:{sku}", "stocked:{stocked}", "delta:{delta}"]
)]
async fn priced(price: f64, sku: Sku, stocked: bool, delta: i32) -> f64 {
    PRICED_RUNS.fetch_add(1, SeqCst);
    price + f64::from(delta)
}

/// A tag template writes integers and bools as `format!` does, and other values as their
/// compact JSON, as the key does: a float keeps its `.0` (`format!` writes `1.0f64` as `1`),
/// a struct is its JSON object. (So a tag matches across processes and languages.)
#[tokio::test]
async fn tag_templates_write_integers_and_bools_as_format_does_and_other_values_as_json() {
    let call = || {
        let sku = Sku {
            shop: 7,
            code: "a".to_owned(),
        };
        priced(1.0, sku, true, -3)
    };
    assert_eq!(call().await, -2.0);
    CACHE.invalidate_tag("price:1").await.unwrap();
    assert_eq!(call().await, -2.0);
    assert_eq!(
        PRICED_RUNS.load(SeqCst),
        1,
        "`price:1` is not the float's tag"
    );
    for tag in [
        "price:1.0".to_owned(),
        r#"sku:{"shop":7,"code":"a"}"#.to_owned(),
        format!("stocked:{}", true),
        format!("delta:{}", -3),
    ] {
        let runs = PRICED_RUNS.load(SeqCst);
        CACHE.invalidate_tag(&tag).await.unwrap();
        assert_eq!(call().await, -2.0);
        assert_eq!(PRICED_RUNS.load(SeqCst), runs + 1, "{tag} invalidates");
    }
}

static SHELF_RUNS: AtomicUsize = AtomicUsize::new(0);

struct Shelf {
    base: u64,
}

impl Shelf {
    #[cached(cache = CACHE, expire = 60, tags = ["shelf:{id}"])]
    async fn item(self: Arc<Self>, id: u64) -> u64 {
        SHELF_RUNS.fetch_add(1, SeqCst);
        self.base + id
    }
}

/// A method whose tagged body uses `self` cannot borrow it (the body runs in a spawned task: a
/// compile error on `&self` says so); with `self: Arc<Self>`, as that error suggests, the `Arc`
/// moves into the body.
#[tokio::test]
async fn a_method_whose_tagged_body_uses_self_takes_an_arc_of_self() {
    let shelf = Arc::new(Shelf { base: 100 });
    assert_eq!(Arc::clone(&shelf).item(1).await, 101);
    assert_eq!(Arc::clone(&shelf).item(1).await, 101);
    assert_eq!(SHELF_RUNS.load(SeqCst), 1);
    shelf.item_invalidate(1).await.unwrap();
    assert_eq!(Arc::clone(&shelf).item(1).await, 101);
    assert_eq!(SHELF_RUNS.load(SeqCst), 2);
}

static GAINED_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(cache = CACHE, expire = 60, name = "gained", tags = ["gained:{id}"], invalidate_all)]
async fn gained(id: u64) -> u64 {
    GAINED_RUNS.fetch_add(1, SeqCst);
    id + 1000
}

/// A function that gains tags: an entry stored before (untagged, the bytes of the same key)
/// has no creation time, so an invalidation of one of its call's tags, or `_invalidate_all`
/// (the function's tag), hides it.
#[tokio::test]
async fn a_function_that_gains_tags_hides_its_older_entries_once_invalidated() {
    CACHE.set("gained:1", &1u64, 60).await.unwrap();
    CACHE.set("gained:2", &2u64, 60).await.unwrap();
    assert_eq!(gained(1).await, 1, "no invalidation yet: the older entry");
    CACHE.invalidate_tag("gained:1").await.unwrap();
    assert_eq!(gained(1).await, 1001);
    assert_eq!(gained(2).await, 2);
    gained_invalidate_all().await.unwrap();
    assert_eq!(gained(2).await, 1002);
    assert_eq!(GAINED_RUNS.load(SeqCst), 2);
}

static WRITTEN_RUNS: AtomicUsize = AtomicUsize::new(0);

#[derive(serde::Serialize)]
enum Kind {
    Admin,
    Guest(u8),
}

#[cached(
    cache = CACHE,
    expire = 60,
    tags = ["op:{op}", "kind:{kind}", "guest:{guest}", "initial:{initial}", "none:{none}"]
)]
async fn written(
    op: Option<String>,
    kind: Kind,
    guest: Kind,
    initial: char,
    none: Option<u8>,
) -> u64 {
    WRITTEN_RUNS.fetch_add(1, SeqCst);
    7
}

/// Anything whose JSON is a string is written as the string, as `format!` writes one: a
/// `Some` of a string, a unit enum variant, a `char`; `None` is `null`, and a variant with data
/// its JSON object.
#[tokio::test]
async fn tag_templates_write_whatever_serializes_as_a_string_without_quotes() {
    let call = || {
        written(
            Some("read".to_owned()),
            Kind::Admin,
            Kind::Guest(1),
            'a',
            None,
        )
    };
    assert_eq!(call().await, 7);
    for tag in [
        "op:read",
        "kind:Admin",
        r#"guest:{"Guest":1}"#,
        "initial:a",
        "none:null",
    ] {
        let runs = WRITTEN_RUNS.load(SeqCst);
        CACHE.invalidate_tag(tag).await.unwrap();
        assert_eq!(call().await, 7);
        assert_eq!(WRITTEN_RUNS.load(SeqCst), runs + 1, "{tag} invalidates");
    }
}

static MAYBE_RUNS: AtomicUsize = AtomicUsize::new(0);

/// With `cache_none = true` the cached value is the whole `Option`: `tags_from` is given it.
fn maybe_member_tags(member: &Option<Member>) -> Vec<String> {
    member
        .iter()
        .map(|member| format!("maybe-org:{}", member.org))
        .collect()
}

#[cached(cache = CACHE, expire = 60, cache_none = true, tags_from = maybe_member_tags)]
async fn maybe_member(id: u64) -> Option<Member> {
    MAYBE_RUNS.fetch_add(1, SeqCst);
    (id != 0).then(|| Member {
        id,
        org: "maybe".to_owned(),
    })
}

#[tokio::test]
async fn with_cache_none_tags_from_takes_the_whole_option() {
    assert_eq!(maybe_member(0).await, None);
    assert_eq!(maybe_member(1).await.map(|m| m.id), Some(1));
    assert_eq!(maybe_member(0).await, None);
    assert_eq!(MAYBE_RUNS.load(SeqCst), 2, "`None` is cached too");
    CACHE.invalidate_tag("maybe-org:maybe").await.unwrap();
    assert_eq!(maybe_member(1).await.map(|m| m.id), Some(1));
    assert_eq!(maybe_member(0).await, None);
    assert_eq!(
        MAYBE_RUNS.load(SeqCst),
        3,
        "only the `Some` carried the tag"
    );
}

static RAW_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(cache = CACHE, expire = 60, invalidate_all)]
async fn r#match(id: u64) -> u64 {
    RAW_RUNS.fetch_add(1, SeqCst);
    id
}

/// A raw identifier's function tag is its name without `r#`, as its keys (`gen` and `r#gen`
/// are one identifier): it was `__impcache_fn:cached_tags::r#match`.
#[tokio::test]
async fn a_raw_identifiers_function_tag_is_its_name_without_r_hash() {
    assert_eq!(r#match(1).await, 1);
    stored("cached_tags::match:1").await;
    CACHE
        .invalidate_tag("__impcache_fn:cached_tags::match")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(r#match(1).await, 1);
    assert_eq!(RAW_RUNS.load(SeqCst), 2, "the tag hid the entry");
}

static FIRST_RUNS: AtomicUsize = AtomicUsize::new(0);
static SECOND_RUNS: AtomicUsize = AtomicUsize::new(0);
static CONSTANT_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(cache = CACHE, expire = 60, key = "u:{{x}}:{id}", invalidate_all)]
async fn first_braced(id: u64) -> String {
    FIRST_RUNS.fetch_add(1, SeqCst);
    format!("first {id}")
}

#[cached(cache = CACHE, expire = 60, key = "u:{x}:{{id}}", invalidate_all)]
async fn second_braced(x: u64) -> String {
    SECOND_RUNS.fetch_add(1, SeqCst);
    format!("second {x}")
}

#[cached(cache = CACHE, expire = 60, key = "u:{{id}}", invalidate_all)]
async fn constant_braced() -> String {
    CONSTANT_RUNS.fetch_add(1, SeqCst);
    "constant".to_owned()
}

/// Templates differing only in which braces are literal make other keys (`u:{x}:1`, `u:2:{id}`,
/// `u:{id}`), and other function tags: each `_invalidate_all` reaches its own function only (the
/// tag was spelled with literal braces undoubled, the same for the three: found by a probe,
/// 2026-12-07).
#[tokio::test]
async fn invalidate_all_tells_literal_braces_from_placeholders() {
    assert_eq!(first_braced(1).await, "first 1");
    assert_eq!(second_braced(2).await, "second 2");
    assert_eq!(constant_braced().await, "constant");
    first_braced_invalidate_all().await.unwrap();
    assert_eq!(second_braced(2).await, "second 2");
    assert_eq!(constant_braced().await, "constant");
    assert_eq!(first_braced(1).await, "first 1");
    assert_eq!(
        (
            FIRST_RUNS.load(SeqCst),
            SECOND_RUNS.load(SeqCst),
            CONSTANT_RUNS.load(SeqCst)
        ),
        (2, 1, 1)
    );
    second_braced_invalidate_all().await.unwrap();
    assert_eq!(constant_braced().await, "constant");
    assert_eq!(second_braced(2).await, "second 2");
    assert_eq!(
        (SECOND_RUNS.load(SeqCst), CONSTANT_RUNS.load(SeqCst)),
        (2, 1)
    );
}
