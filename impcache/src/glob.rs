//! Redis's glob matcher (`stringmatchlen` in Redis's `util.c`), ported byte for byte so that the
//! in-memory repository's `delete_pattern` matches exactly the keys `SCAN MATCH` would.

/// Redis gives up (no match) past this depth of `*` recursion.
const MAX_NESTING: u32 = 1000;

/// `true` when `key` matches the Redis glob `pattern` (case-sensitive, as `SCAN MATCH`).
///
/// Rules: `?` one byte, `*` any run of bytes, `[ae]` a set, `[^e]` a negated set, `[a-b]` a range
/// (reversed ranges are swapped), `\x` the byte `x`. Like Redis, matching works on bytes, and range
/// bounds compare as C's signed `char`.
pub fn glob_match(pattern: &[u8], key: &[u8]) -> bool {
    let mut skip_longer = false;
    matches_at(pattern, key, &mut skip_longer, 0)
}

/// C's `char` on the platforms Redis ships for is signed: ranges compare bytes as `i8`.
fn signed(byte: u8) -> i32 {
    i32::from(byte as i8)
}

fn matches_at(mut p: &[u8], mut s: &[u8], skip_longer: &mut bool, nesting: u32) -> bool {
    if nesting > MAX_NESTING {
        return false;
    }
    // `at(p, i)` reads like C reading a NUL-terminated string: past the end is 0.
    let at = |p: &[u8], i: usize| p.get(i).copied().unwrap_or(0);
    while !p.is_empty() && !s.is_empty() {
        match p[0] {
            b'*' => {
                while at(p, 1) == b'*' {
                    p = &p[1..];
                }
                if p.len() == 1 {
                    return true;
                }
                while !s.is_empty() {
                    if matches_at(&p[1..], s, skip_longer, nesting + 1) {
                        return true;
                    }
                    if *skip_longer {
                        return false;
                    }
                    s = &s[1..];
                }
                *skip_longer = true;
                return false;
            }
            b'?' => s = &s[1..],
            b'[' => {
                p = &p[1..];
                let negate = at(p, 0) == b'^';
                if negate {
                    p = &p[1..];
                }
                let mut matched = false;
                loop {
                    if at(p, 0) == b'\\' && p.len() >= 2 {
                        p = &p[1..];
                        if p[0] == s[0] {
                            matched = true;
                        }
                    } else if at(p, 0) == b']' {
                        break;
                    } else if p.is_empty() {
                        // Unclosed set: C steps back one byte so the loop's final `pattern++`
                        // lands on the end again.
                        break;
                    } else if p.len() >= 3 && p[1] == b'-' {
                        let (mut start, mut end) = (signed(p[0]), signed(p[2]));
                        if start > end {
                            std::mem::swap(&mut start, &mut end);
                        }
                        let c = signed(s[0]);
                        p = &p[2..];
                        if c >= start && c <= end {
                            matched = true;
                        }
                    } else if p[0] == s[0] {
                        matched = true;
                    }
                    p = &p[1..];
                }
                if negate {
                    matched = !matched;
                }
                if !matched {
                    return false;
                }
                s = &s[1..];
                if p.is_empty() {
                    // The unclosed-set case: C's `pattern--` then `pattern++` leaves it at the end.
                    if s.is_empty() {
                        return true;
                    }
                    return false;
                }
            }
            b'\\' => {
                if p.len() >= 2 {
                    p = &p[1..];
                }
                if p[0] != s[0] {
                    return false;
                }
                s = &s[1..];
            }
            c => {
                if c != s[0] {
                    return false;
                }
                s = &s[1..];
            }
        }
        p = &p[1..];
        if s.is_empty() {
            while at(p, 0) == b'*' {
                p = &p[1..];
            }
            break;
        }
    }
    p.is_empty() && s.is_empty()
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    fn m(p: &str, s: &str) -> bool {
        glob_match(p.as_bytes(), s.as_bytes())
    }

    #[test]
    fn the_seed_examples() {
        assert!(m("h?llo", "hello") && m("h?llo", "hallo") && m("h?llo", "hxllo"));
        assert!(m("h*llo", "hllo") && m("h*llo", "heeeello"));
        assert!(m("h[ae]llo", "hello") && m("h[ae]llo", "hallo") && !m("h[ae]llo", "hillo"));
        assert!(m("h[^e]llo", "hallo") && m("h[^e]llo", "hbllo") && !m("h[^e]llo", "hello"));
        assert!(m("h[a-b]llo", "hallo") && m("h[a-b]llo", "hbllo") && !m("h[a-b]llo", "hcllo"));
    }

    #[test]
    fn escapes_stars_and_edges() {
        assert!(m(r"a\*b", "a*b") && !m(r"a\*b", "axb"));
        // Redis's matcher never enters its loop for an empty key: `*` does not match "" (SCAN
        // special-cases a bare `*`; our patterns always start with the escaped prefix).
        assert!(!m("*", "") && m("", "") && !m("", "a") && !m("?", ""));
        assert!(m("p:*", "p:") && m("p:**", "p:"));
        assert!(m("a*", "a") && m("**a**", "a") && m("[b-a]", "a"));
        assert!(m(r"x\", r"x\"));
        // `[]` is an empty set in Redis: it never matches, and the `]` after it is a literal.
        assert!(!m("[]]", "]") && !m("[]]", "x]"));
    }
}
