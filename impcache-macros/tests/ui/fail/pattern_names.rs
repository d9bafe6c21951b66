// `key`, `skip` and `tags` cannot name a binding of an argument written as a pattern: the error
// says which pattern binds it and the way out.
use impcache::cached;

struct Wrapper<T>(T);

#[cached(expire = 60, skip(hits))]
async fn skipped(Wrapper(hits): Wrapper<u64>, id: u64) -> u64 {
    hits + id
}

#[cached(expire = 60, key = "user:{id}")]
async fn templated(Wrapper(id): Wrapper<u64>) -> u64 {
    id
}

struct Point {
    x: u64,
}

// A field name is no binding: no hint.
#[cached(expire = 60, key = "p:{x}")]
async fn field(Point { x: px }: Point) -> u64 {
    px
}

fn main() {}
