use impcache::cached;

// Every key would start with `__lock:`, which the cache refuses to store.
#[cached(expire = 60, key = "__lock:{id}")]
async fn lock_template(id: u64) -> u64 {
    id
}

#[cached(expire = 60, name = "__lock:users")]
async fn lock_name(id: u64) -> u64 {
    id
}

// `{name}:{id}`.
#[cached(expire = 60, name = "__lock")]
async fn lock_name_with_arguments(id: u64) -> u64 {
    id
}

// The one key `__lock`: not reserved.
#[cached(expire = 60, name = "__lock")]
async fn lock_name_alone() -> u64 {
    1
}

// Not at the start: not reserved.
#[cached(expire = 60, key = "{id}:__lock:")]
async fn lock_inside(id: u64) -> u64 {
    id
}

// The versions of the tags' state keys.
#[cached(expire = 60, version = "__impcache_tag")]
async fn tag_version(id: u64) -> u64 {
    id
}

#[cached(expire = 60, version = "__impcache_tag:2")]
async fn tag_version_and_more(id: u64) -> u64 {
    id
}

// Its keys are the tags' state of the cache whose prefix is `{prefix}:2`.
#[cached(expire = 60, version = "2:__impcache_tag")]
async fn tag_version_after_a_segment(id: u64) -> u64 {
    id
}

#[cached(expire = 60, version = "__impcache_tags")]
async fn another_version(id: u64) -> u64 {
    id
}

fn main() {}
