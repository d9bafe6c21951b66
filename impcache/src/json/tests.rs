//! Unit tests of the JSON encoding: orjson's compact output, packing, depth and integer limits.

use super::*;
use std::collections::BTreeMap;

#[test]
fn compact_json_like_orjson() {
    let mut m = BTreeMap::new();
    m.insert("a", vec![1.5, 2.0]);
    assert_eq!(
        encode("k", &m).ok().as_deref(),
        Some(&br#"{"a":[1.5,2.0]}"#[..])
    );
    assert_eq!(encode("k", "ü").ok().as_deref(), Some("\"ü\"".as_bytes()));
    assert_eq!(encode("k", &None::<u8>).ok().as_deref(), Some(&b"null"[..]));
}

#[test]
fn packed_values_equal_single_ones() {
    let mut packed = BytesMut::new();
    let big = "y".repeat(3 * PACK_BYTES);
    let values = [
        serde_json::json!({"a": [1, 2.5, null]}),
        serde_json::json!(big),
        serde_json::json!("ü"),
    ];
    let encoded: Vec<_> = values
        .iter()
        .map(|v| encode_packed("k", v, &mut packed).ok())
        .collect();
    for (value, packed) in values.iter().zip(encoded) {
        assert_eq!(packed, encode("k", value).ok());
    }
    assert!(encode_packed("k", &f64::NAN, &mut packed).is_err());
    assert_eq!(
        encode_packed("k", &1, &mut packed).ok().as_deref(),
        Some(&b"1"[..])
    );
}

#[test]
fn large_values_do_not_stay_in_the_thread_buffer() {
    let big = "x".repeat(1 << 20);
    let encoded = encode("k", &big).ok().map(|b| b.len());
    assert_eq!(encoded, Some(big.len() + 2));
    let retained = SCRATCH.with(|s| s.borrow().capacity());
    assert!(retained <= MAX_RETAINED_BYTES, "{retained}");
    assert_eq!(encode("k", &1).ok().as_deref(), Some(&b"1"[..]));
}

/// `depth` levels of arrays and objects, alternating, around a number.
fn nested(depth: usize) -> serde_json::Value {
    let mut value = serde_json::json!(1);
    for level in 0..depth {
        value = if level % 2 == 0 {
            serde_json::json!([value])
        } else {
            serde_json::json!({ "k": value })
        };
    }
    value
}

#[test]
fn values_nested_as_deep_as_orjson_writes_them_round_trip() -> crate::Result<()> {
    for depth in [SERDE_JSON_DEPTH, SERDE_JSON_DEPTH + 1, 200, MAX_DEPTH] {
        let value = nested(depth);
        let bytes = encode("k", &value)?;
        assert_eq!(nesting_depth(&bytes), depth);
        let back: serde_json::Value = decode(|| "k".to_owned(), &bytes)?;
        assert_eq!(back, value, "depth {depth}");
    }
    Ok(())
}

/// Measured in a debug build: 255 levels need less than 512 KiB (not 256 KiB). A tokio worker
/// thread has 2 MiB.
#[test]
fn values_at_the_limit_fit_in_half_a_tokio_worker_stack() -> std::io::Result<()> {
    let round_trip = std::thread::Builder::new()
        .stack_size(1024 * 1024)
        .spawn(|| {
            let raw = format!("{}1{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
            let value: crate::Result<serde_json::Value> = decode(|| "k".to_owned(), raw.as_bytes());
            let bytes = value.and_then(|value| encode("k", &value));
            matches!(bytes, Ok(bytes) if bytes == raw.as_bytes())
        })?
        .join();
    assert!(matches!(round_trip, Ok(true)));
    Ok(())
}

#[test]
fn deeper_values_are_refused_both_ways() {
    let error = encode("k1", &nested(MAX_DEPTH + 1)).unwrap_err();
    assert!(matches!(error, Error::Encode { .. }), "{error}");
    assert!(error.to_string().contains("k1"), "{error}");
    assert!(error.to_string().contains("255 levels"), "{error}");
    let mut packed = BytesMut::new();
    assert!(encode_packed("k", &nested(MAX_DEPTH + 1), &mut packed).is_err());

    let too_deep = format!("{}{}", "[".repeat(256), "]".repeat(256));
    let hostile = "[".repeat(1_000_000);
    for bytes in [too_deep.as_bytes(), hostile.as_bytes()] {
        let error = decode::<serde_json::Value>(|| "k2".to_owned(), bytes).unwrap_err();
        assert!(matches!(error, Error::Decode { .. }), "{error}");
        assert!(error.to_string().contains("k2"), "{error}");
        assert!(error.to_string().contains("255 levels"), "{error}");
    }
}

#[test]
fn nesting_depth_ignores_brackets_in_strings() {
    assert_eq!(nesting_depth(br#"{"a":"[[{\"[","b":[[]]}"#), 3);
    assert_eq!(nesting_depth(b"1"), 0);
    assert_eq!(nesting_depth(b"]]][["), 2);
}

#[test]
fn integers_beyond_64_bits_are_refused() {
    for error in [
        encode("k1", &(u128::from(u64::MAX) + 1)).unwrap_err(),
        encode("k1", &u128::MAX).unwrap_err(),
        encode("k1", &(i128::from(i64::MIN) - 1)).unwrap_err(),
        encode("k1", &vec![i128::MAX]).unwrap_err(),
    ] {
        assert!(matches!(error, Error::Encode { .. }), "{error}");
        assert!(error.to_string().contains("beyond 64 bits"), "{error}");
    }
    // Within 64 bits, the same bytes as u64 / i64.
    assert_eq!(
        encode("k", &u128::from(u64::MAX)).ok(),
        encode("k", &u64::MAX).ok()
    );
    assert_eq!(
        encode("k", &i128::from(i64::MIN)).ok(),
        encode("k", &i64::MIN).ok()
    );
    // As a map key, an integer is a string: any size is fine.
    let mut keyed = BTreeMap::new();
    keyed.insert(u128::MAX, 1);
    assert_eq!(
        encode("k", &keyed).ok().as_deref(),
        Some(format!(r#"{{"{}":1}}"#, u128::MAX).as_bytes())
    );
}

#[test]
fn non_finite_floats_are_refused_wherever_they_are() {
    let mut m = BTreeMap::new();
    m.insert("deep", vec![Some(1.0), Some(f64::NAN)]);
    for err in [
        encode("k1", &f64::NAN).unwrap_err(),
        encode("k1", &f32::INFINITY).unwrap_err(),
        encode("k1", &m).unwrap_err(),
    ] {
        assert!(matches!(err, Error::Encode { .. }), "{err}");
        assert!(err.to_string().contains("k1"), "{err}");
    }
}

#[test]
fn writes_null_reads_only_the_first_bytes() {
    assert!(writes_null(&()));
    assert!(writes_null(&None::<u8>));
    assert!(writes_null(&Some(None::<u8>)));
    assert!(!writes_null(&Some(Some(1u8))));
    assert!(!writes_null("null"));
    assert!(!writes_null(&0u8));
    // A large value: writing stops past four bytes.
    assert!(!writes_null(&vec![0u64; 100_000]));
}

#[test]
fn decode_errors_show_a_bounded_part_of_the_value() {
    // A JSON string, written out (nothing in it needs escaping).
    let stored = format!(r#""alice@example.com {}""#, "x".repeat(100_000)).into_bytes();
    let error = decode::<u64>(|| "profile".to_owned(), &stored).unwrap_err();
    let message = error.to_string();
    assert!(
        message.len() < 300,
        "{} bytes: {message:.200}",
        message.len()
    );
    assert!(message.contains("profile"), "{message}");
    assert!(message.contains("expected u64"), "{message}");
    assert!(message.contains("at line 1 column"), "{message}");
    assert!(
        matches!(&error, Error::Decode { source, .. }
            if source.is_data() && source.line() == 1 && source.column() > 100_000),
        "{error:?}"
    );
    // A short message is left as serde_json wrote it (its line and column as numbers).
    let error = decode::<u64>(|| "k".to_owned(), br#""ab""#).unwrap_err();
    assert!(
        matches!(&error, Error::Decode { source, .. } if source.line() == 1),
        "{error:?}"
    );
}

/// What a log shows of a decode error without `record_keys`: none of the stored data, whether
/// serde quotes it in `"…"` or in backticks (numbers, unknown variant and field names: those
/// used to show), and the names the type expects.
#[test]
fn logged_decode_messages_show_no_stored_data() {
    let message = |json: &str, shown: fn(&[u8]) -> Option<serde_json::Error>| {
        shown(json.as_bytes()).map(|error| without_data(&error.to_string()))
    };
    let as_u8 = |bytes: &[u8]| serde_json::from_slice::<u8>(bytes).err();
    let as_result = |bytes: &[u8]| serde_json::from_slice::<Result<u8, u8>>(bytes).err();
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // Only its decoding is tested.
    struct Named {
        name: String,
    }
    let as_named = |bytes: &[u8]| serde_json::from_slice::<Named>(bytes).err();
    assert_eq!(
        message("123456789", as_u8).as_deref(),
        Some("invalid value: integer `…`, expected u8 at line 1 column 9")
    );
    assert_eq!(
        message(r#""alice@example.com""#, as_u8).as_deref(),
        Some(r#"invalid type: string "…", expected u8 at line 1 column 19"#)
    );
    let variant = message(r#"{"alice@example.com":1}"#, as_result).unwrap_or_default();
    assert!(
        variant.starts_with("unknown variant `…`, expected `Ok` or `Err`"),
        "{variant}"
    );
    let field = message(r#"{"name":"a","secret":1}"#, as_named).unwrap_or_default();
    assert!(
        field.starts_with("unknown field `…`, expected `name`"),
        "{field}"
    );
    let missing = message("{}", as_named).unwrap_or_default();
    assert!(missing.starts_with("missing field `name`"), "{missing}");
    assert_eq!(
        without_data("unknown field `secret`, there are no fields"),
        "unknown field `…`, there are no fields"
    );
    // Data that holds quotes, or `, expected` itself: cut up to the type's `, expected`.
    let tricky = message(r#"{"a`, expected `hunter2":1}"#, as_result).unwrap_or_default();
    assert!(
        tricky.starts_with("unknown variant `…`, expected `Ok` or `Err`")
            && !tricky.contains("hunter2"),
        "{tricky}"
    );
    let tricky = message(r#""x, expected `hunter2`""#, as_u8).unwrap_or_default();
    assert!(
        tricky.starts_with(r#"invalid type: string "…", expected u8"#)
            && !tricky.contains("hunter2"),
        "{tricky}"
    );
}

#[test]
fn quoted_parts_are_cut() {
    assert_eq!(
        cut_quoted(r#"string "abcdef", expected u64"#, 3, true),
        r#"string "abc…", expected u64"#
    );
    assert_eq!(
        cut_quoted(r#"string "a\"bc\\", expected"#, 0, true),
        r#"string "…", expected"#
    );
    assert_eq!(cut_quoted(r#"string "a\"b""#, 10, true), r#"string "a\"b""#);
    assert_eq!(
        cut_quoted("unknown field `secret`, expected `a`", 0, true),
        "unknown field `…`, expected `…`"
    );
    assert_eq!(cut_quoted("unclosed \"abc", 1, true), "unclosed \"a…");
    assert_eq!(cut_quoted("no quotes", 0, true), "no quotes");
    assert_eq!(
        cut_quoted("missing field `name`", 0, false),
        "missing field `name`"
    );
    // One character over the limit is cut too, though `…` makes the message no shorter.
    let value = format!(r#""{}""#, "x".repeat(SHOWN_QUOTED_CHARS + 1)).into_bytes();
    let error = decode::<u64>(|| "k".to_owned(), &value).unwrap_err();
    assert!(
        error
            .to_string()
            .contains(&format!("{}…", "x".repeat(SHOWN_QUOTED_CHARS))),
        "{error}"
    );
}
