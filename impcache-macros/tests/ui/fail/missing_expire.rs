use impcache::cached;

#[cached(version = 2)]
async fn no_expire(id: u64) -> u64 {
    id
}

fn main() {}
