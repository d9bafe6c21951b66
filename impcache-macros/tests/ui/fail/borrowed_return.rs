use impcache::cached;

#[cached(expire = 60)]
async fn name<'a>(id: &'a str) -> &'a str {
    id
}

#[cached(expire = 60)]
async fn elided(id: &str) -> &str {
    id
}

#[cached(expire = 60)]
async fn cow<'a>(id: u64) -> Option<std::borrow::Cow<'a, str>> {
    Some(id.to_string().into())
}

// `'static` owns its data: no error.
#[cached(expire = 60)]
async fn owned_static(id: u64) -> Option<std::borrow::Cow<'static, str>> {
    Some(id.to_string().into())
}

fn main() {}
