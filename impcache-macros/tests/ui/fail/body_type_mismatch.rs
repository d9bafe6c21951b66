// A body whose value is not of the return type: the error is on the expression, as without
// `#[cached]`, on the plain path and on the spawned one (`tags`).
use impcache::cached;

#[cached(expire = 60)]
async fn early_return(id: u64) -> Result<u64, std::io::Error> {
    if id == 0 {
        return Err("zero".to_owned());
    }
    Ok(id)
}

#[cached(expire = 60, tags = ["id:{id}"])]
async fn tail(id: u64) -> u64 {
    format!("{id}")
}

fn main() {}
