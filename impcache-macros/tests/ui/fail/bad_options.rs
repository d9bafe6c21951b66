use impcache::cached;
use std::time::Duration;

// Every problem is reported at once.
#[cached(expire = 0, expire = 5, ttl = 60, cache_none = true)]
async fn many(id: u64) -> u64 {
    id
}

#[cached(expire = Duration::from_secs(0))]
async fn zero_duration(id: u64) -> u64 {
    id
}

#[cached(expire = 60, skip(db, nope))]
async fn skip_unknown(id: u64, db: String) -> u64 {
    id + db.len() as u64
}

#[cached(expire = 60, key = "user:{id}:{missing}")]
async fn key_unknown(id: u64) -> u64 {
    id
}

#[cached(expire = 60, key = "user:{id", skip(id))]
async fn key_unclosed(id: u64) -> u64 {
    id
}

// A negative number, as the last option (one literal token, `-5`) or not.
#[cached(version = 2, expire = -5)]
async fn negative_last(id: u64) -> u64 {
    id
}

#[cached(expire = -5, version = 2)]
async fn negative_first(id: u64) -> u64 {
    id
}

// Every call of every function with it would share one entry.
#[cached(expire = 60, key = "")]
async fn empty_key(id: u64) -> u64 {
    id
}

// The `cached` crate's options say what to write instead (its `time` is not also reported as a
// missing `expire`).
#[cached(time = 60, result = true, sync_writes = true, size = 100)]
async fn cached_crate_options(id: u64) -> Result<u64, String> {
    Ok(id)
}

#[cached(expire = 60, option = true, convert = r#"{ format!("{}", id) }"#, unbound)]
async fn more_cached_crate_options(id: u64) -> Option<u64> {
    Some(id)
}

// The names of later `cached` releases, and a misspelled `expire` (neither is also reported as
// a missing `expire`).
#[cached(ttl = 60, max_size = 100, result_fallback = true, refresh = true)]
async fn later_cached_crate_options(id: u64) -> Result<u64, String> {
    Ok(id)
}

#[cached(expires = 60)]
async fn misspelled_expire(id: u64) -> u64 {
    id
}

struct Service;

impl Service {
    // `self` is never part of a key, said as such.
    #[cached(expire = 60, key = "{self}:{id}")]
    async fn keyed_by_self(&self, id: u64) -> u64 {
        id
    }
}

// `format!` syntax a template does not support, said as such.
#[cached(expire = 60, key = "user:{id:>5}")]
async fn key_format_spec(id: u64) -> u64 {
    id
}

#[cached(expire = 60, key = "user:{0}")]
async fn key_position(id: u64) -> u64 {
    id
}

fn main() {}
