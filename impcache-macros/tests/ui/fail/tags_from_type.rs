use impcache::cached;

/// Tags of a `u32`, for a function whose cached value is a `String`: reported on the option's
/// value.
fn tags_of_a_number(value: &u32) -> Vec<String> {
    vec![value.to_string()]
}

#[cached(expire = 60, tags_from = tags_of_a_number)]
async fn wrong_type(id: u64) -> String {
    id.to_string()
}

fn main() {}
