use impcache::cached;

#[cached(expire = 60, returns = "ok")]
async fn unknown(id: u64) -> u64 {
    id
}

#[cached(expire = 60, returns = "value", cache_none = true)]
async fn with_cache_none(id: u64) -> Option<u64> {
    Some(id)
}

#[cached(expire = 60, returns = result)]
async fn not_a_string(id: u64) -> u64 {
    id
}

fn main() {}
