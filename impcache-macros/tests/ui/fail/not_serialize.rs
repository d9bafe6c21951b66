use impcache::cached;

struct Db;
struct Row;
#[derive(Debug)]
struct NotSerde;

#[cached(expire = 60)]
async fn key_not_serialize(db: &Db, id: u64) -> u64 {
    let _ = db;
    id
}

#[cached(expire = 60)]
async fn value_not_serialize(id: u64) -> Row {
    let _ = id;
    Row
}

#[cached(expire = 60)]
async fn ok_not_serialize(id: u64) -> Result<Row, NotSerde> {
    let _ = id;
    Ok(Row)
}

// Left out of the key, but written into a tag: the message names tag templates too.
struct NoSer;

impl std::fmt::Display for NoSer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no-ser")
    }
}

#[cached(expire = 60, skip(n), tags = ["n:{n}"])]
async fn tag_not_serialize(n: NoSer, x: u64) -> u64 {
    let _ = n;
    x
}

// A pattern argument: the error points at the pattern, not at the attribute.
#[cached(expire = 60)]
async fn pattern_not_serialize((id, _db): (u64, Db)) -> u64 {
    id
}

fn main() {}
