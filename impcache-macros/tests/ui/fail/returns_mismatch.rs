use impcache::cached;

#[derive(Debug)]
struct AppError;

type AppResult<T> = Result<T, AppError>;
type Maybe<T> = Option<T>;

#[cached(expire = 60, returns = "result")]
async fn not_a_result(id: u64) -> u64 {
    id
}

#[cached(expire = 60, returns = "option")]
async fn not_an_option(id: u64) -> AppResult<u64> {
    Ok(id)
}

#[cached(expire = 60, cache_none = true)]
async fn cache_none_not_an_option(id: u64) -> AppResult<u64> {
    Ok(id)
}

// An alias of `Option` is an `Option`: no error.
#[cached(expire = 60, cache_none = true)]
async fn cache_none_alias(id: u64) -> Maybe<u64> {
    Some(id)
}

fn main() {}
