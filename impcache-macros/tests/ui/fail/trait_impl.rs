use impcache::cached;

struct Repo;

trait Load {
    async fn load(&self, id: u64) -> u64;
}

impl Load for Repo {
    #[cached(expire = 60)]
    async fn load(&self, id: u64) -> u64 {
        id
    }
}

fn main() {}
