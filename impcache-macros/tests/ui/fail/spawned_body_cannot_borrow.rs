use impcache::cached;
use std::borrow::Cow;

// Each option that runs the body in a spawned task is named in the error on the borrowed
// argument's type, and every such argument is reported at once.
#[cached(expire = 60, tags = ["user:{name}"])]
async fn tags(name: &str) -> u64 {
    name.len() as u64
}

#[cached(expire = 60, lock)]
async fn lock(ids: &[u64], label: Cow<'_, str>) -> u64 {
    ids.len() as u64 + label.len() as u64
}

#[cached(expire = 60, stale_if_error = 3600)]
async fn stale_if_error(user: &String) -> u64 {
    format!("{user}").len() as u64
}

#[cached(expire = 60, soft_timeout = std::time::Duration::from_millis(100), hard_timeout = 2)]
async fn timeouts((a, b): (&str, u64)) -> Option<u64> {
    Some(a.len() as u64 + b)
}

#[cached(expire = 60, invalidate_all)]
async fn invalidate_all(name: &str) -> u64 {
    name.len() as u64
}

struct Repo;

impl Repo {
    #[cached(expire = 60, early_refresh = 2)]
    async fn method(&self, id: u64) -> u64 {
        self.offset() + id
    }

    fn offset(&self) -> u64 {
        1
    }
}

// Not errors: a `'static` borrow, a borrowed key argument the body does not use, a method whose
// body does not use `self`, the plain runtime (no option that spawns the body), and a function
// type taking a reference.
#[cached(expire = 60, tags = ["user:{name}"])]
async fn static_borrow(name: &'static str) -> u64 {
    name.len() as u64
}

#[cached(expire = 60, stale_while_revalidate = 30)]
async fn key_only(name: &str, id: u64) -> u64 {
    id
}

impl Repo {
    #[cached(expire = 60, tags = ["id:{id}"])]
    async fn without_self(&self, id: u64) -> u64 {
        id
    }
}

#[cached(expire = 60, lock = false)]
async fn plain(name: &str) -> u64 {
    name.len() as u64
}

// A function type's references are its own arguments': it holds no borrow.
#[cached(expire = 60, tags = ["id:{id}"], skip(parse))]
async fn function_argument(parse: fn(&str) -> u64, id: u64) -> u64 {
    parse("1") + id
}

// A field, a method or a struct literal's field named like a borrowed key argument is not that
// argument: the body does not use it.
struct User {
    name: String,
}

fn lookup() -> User {
    User {
        name: "ann".to_owned(),
    }
}

#[cached(expire = 60, lock)]
async fn field_named_like_an_argument(name: &str) -> String {
    let user = lookup();
    let copy = User { name: user.name.clone() };
    copy.name.trim().to_owned()
}

fn main() {}
