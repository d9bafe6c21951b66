//! Header values holding small numbers (`Age`, and the `ttl` of a hit's `Cache-Status`), taken
//! from tables built at compile time: serving a hit formats and allocates nothing for them.
//! Numbers past the tables (1,000 and up) are formatted as usual (one allocation).

use bytes::Bytes;
use http::HeaderValue;

/// Numbers below this are in the tables.
const LIMIT: usize = 1000;

/// The text of a hit's `Cache-Status` before its remaining TTL.
const HIT_PREFIX: &[u8] = b"impcache; hit; ttl=";

const fn decimal_digits(n: usize) -> usize {
    if n >= 100 {
        3
    } else if n >= 10 {
        2
    } else {
        1
    }
}

/// Bytes of a table of `prefix` followed by each number below [`LIMIT`].
const fn table_size(prefix: &[u8]) -> usize {
    let mut size = 0;
    let mut n = 0;
    while n < LIMIT {
        size += prefix.len() + decimal_digits(n);
        n += 1;
    }
    size
}

/// `prefix` + `n` for every `n` below [`LIMIT`], back to back; entry `n` ends at `ends[n]`.
struct Table<const SIZE: usize> {
    text: [u8; SIZE],
    ends: [u16; LIMIT],
}

impl<const SIZE: usize> Table<SIZE> {
    const fn build(prefix: &[u8]) -> Self {
        let mut text = [0u8; SIZE];
        let mut ends = [0u16; LIMIT];
        let mut at = 0;
        let mut n = 0;
        while n < LIMIT {
            let mut i = 0;
            while i < prefix.len() {
                text[at] = prefix[i];
                at += 1;
                i += 1;
            }
            let digits = decimal_digits(n);
            let mut rest = n;
            let mut d = digits;
            while d > 0 {
                d -= 1;
                text[at + d] = b'0' + (rest % 10) as u8;
                rest /= 10;
            }
            at += digits;
            ends[n] = at as u16;
            n += 1;
        }
        Table { text, ends }
    }

    /// Entry `n`, `None` past the table.
    fn get(&'static self, n: u64) -> Option<HeaderValue> {
        let n = usize::try_from(n).ok().filter(|&n| n < LIMIT)?;
        let start = match n.checked_sub(1) {
            Some(previous) => usize::from(*self.ends.get(previous)?),
            None => 0,
        };
        let end = usize::from(*self.ends.get(n)?);
        let text: &'static [u8] = self.text.get(start..end)?;
        HeaderValue::from_maybe_shared(Bytes::from_static(text)).ok()
    }
}

// Entries end at `u16` offsets: a larger table would not build.
const _: () = assert!(table_size(HIT_PREFIX) <= u16::MAX as usize);

static NUMBERS: Table<{ table_size(b"") }> = Table::build(b"");
static HIT_STATUSES: Table<{ table_size(HIT_PREFIX) }> = Table::build(HIT_PREFIX);

/// `n` as a header value (an `Age`, say).
pub(crate) fn number(n: u64) -> HeaderValue {
    NUMBERS.get(n).unwrap_or_else(|| HeaderValue::from(n))
}

/// The `Cache-Status` of a hit: `impcache; hit; ttl={ttl_left}`, or `impcache; hit` for an entry
/// without expiry.
pub(crate) fn hit_status(ttl_left: Option<u64>) -> HeaderValue {
    const NO_TTL: HeaderValue = HeaderValue::from_static("impcache; hit");
    let Some(ttl) = ttl_left else {
        return NO_TTL;
    };
    HIT_STATUSES.get(ttl).unwrap_or_else(|| {
        // Visible ASCII only: always a valid header value.
        HeaderValue::from_str(&format!("impcache; hit; ttl={ttl}")).unwrap_or(NO_TTL)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_match_their_decimal_form() {
        for n in [
            0u64,
            1,
            9,
            10,
            42,
            99,
            100,
            500,
            999,
            1000,
            12_345,
            u64::MAX,
        ] {
            assert_eq!(number(n), n.to_string().as_str(), "{n}");
        }
    }

    #[test]
    fn hit_statuses_match_their_formatted_form() {
        for n in [0u64, 7, 10, 60, 300, 999, 1000, 86_400] {
            assert_eq!(
                hit_status(Some(n)),
                format!("impcache; hit; ttl={n}").as_str(),
                "{n}"
            );
        }
        assert_eq!(hit_status(None), "impcache; hit");
    }
}
