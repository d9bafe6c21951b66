use impcache::cached;

#[cached(expire = 60)]
fn not_async(id: u64) -> u64 {
    id
}

fn main() {}
