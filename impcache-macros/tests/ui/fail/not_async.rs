use impcache::cached;

#[cached(expire = 60)]
fn not_async(id: u64) -> u64 {
    id
}

// A `fn` returning a future: one error, not a second one about its `impl Trait`.
#[cached(expire = 60)]
fn returns_a_future(id: u64) -> impl std::future::Future<Output = u64> {
    async move { id }
}

trait Store {
    // A method declared without a body.
    #[cached(expire = 60)]
    async fn declared(&self, id: u64) -> u64;
}

fn main() {}
