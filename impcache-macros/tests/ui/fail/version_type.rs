// A `version` of a type that is no key version is reported on the value, written by hand or
// naming `Self`.
use impcache::cached;

#[cached(expire = 60, version = 1.5)]
async fn float_version(id: u64) -> u64 {
    id
}

struct Api;

impl Api {
    const VERSION: f64 = 2.5;

    #[cached(expire = 60, version = Self::VERSION)]
    async fn load(id: u64) -> u64 {
        id
    }
}

fn main() {}
