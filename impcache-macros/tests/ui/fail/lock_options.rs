use impcache::cached;

#[cached(expire = 60, lock = "10s")]
async fn text(id: u64) -> u64 {
    id
}

#[cached(expire = 60, lock = 0)]
async fn zero(id: u64) -> u64 {
    id
}

#[cached(expire = 60, lock = 5, lock = 6)]
async fn twice(id: u64) -> u64 {
    id
}

#[cached(expire = 60, lock(5))]
async fn list(id: u64) -> u64 {
    id
}

fn main() {}
