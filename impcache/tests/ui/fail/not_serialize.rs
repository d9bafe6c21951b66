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

fn main() {}
