use impcache::cached;

#[cached(expire = 60, tags = ["user:{id"])]
async fn unclosed(id: u64) -> u64 {
    id
}

#[cached(expire = 60, tags = ["user:{user}"])]
async fn unknown_argument(id: u64) -> u64 {
    id
}

#[cached(expire = 60, tags = "user:{id}")]
async fn not_a_list(id: u64) -> u64 {
    id
}

#[cached(expire = 60, tags = [""])]
async fn empty(id: u64) -> u64 {
    id
}

#[cached(expire = 60, invalidate_all = true)]
async fn with_a_value(id: u64) -> u64 {
    id
}

#[cached(expire = 60, tags_from)]
async fn tags_from_without_a_function(id: u64) -> u64 {
    id
}

fn main() {}
