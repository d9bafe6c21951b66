use impcache::cached;

struct Repo;

impl Repo {
    #[cached(expire = 60)]
    async fn get(self, id: u64) -> u64 {
        id
    }
}

fn main() {}
