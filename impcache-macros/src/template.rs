//! Parsing a `key = "user:{id}"` (or `tags = ["user:{id}"]`) template into literal text and
//! placeholders.

/// A piece of a `key = "..."` template.
pub(crate) enum Segment {
    /// Text written as it is (`{{` and `}}` already unescaped).
    Literal(String),
    /// `{name}`: the name of an argument, trimmed.
    Placeholder(String),
}

/// Splits `template` (of the option `option`, named in errors) into segments, or says what is
/// wrong with it.
pub(crate) fn parse(template: &str, option: &str) -> Result<Vec<Segment>, String> {
    let mut segments = Vec::new();
    let mut literal = String::new();
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                literal.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                literal.push('}');
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) => name.push(c),
                        None => {
                            return Err(format!(
                                "unclosed `{{` in `{option}` (write `{{{{` for a literal `{{`)"
                            ))
                        }
                    }
                }
                let name = name.trim().to_owned();
                if name.is_empty() {
                    return Err(format!(
                        "empty `{{}}` in `{option}`: name an argument, as in `\"user:{{id}}\"`"
                    ));
                }
                if let Some(unsupported) = unsupported(&name) {
                    return Err(format!(
                        "`{{{name}}}` in `{option}`: {unsupported}; a placeholder names one \
                         argument as it is (`{{id}}`), written as JSON"
                    ));
                }
                if !literal.is_empty() {
                    segments.push(Segment::Literal(std::mem::take(&mut literal)));
                }
                segments.push(Segment::Placeholder(name));
            }
            '}' => {
                return Err(format!(
                    "unmatched `}}` in `{option}` (write `}}}}` for a literal `}}`)"
                ))
            }
            c => literal.push(c),
        }
    }
    if !literal.is_empty() {
        segments.push(Segment::Literal(literal));
    }
    Ok(segments)
}

/// What `format!` syntax a placeholder uses that a template does not support, if any: a
/// format spec (`{id:>5}`), a position (`{0}`), a field (`{user.id}`). Said as such, not as
/// "no argument `id:>5`" while `id` is one (found by a probe).
fn unsupported(name: &str) -> Option<&'static str> {
    if name.contains(':') {
        Some("format specs (`:>5`, `:?`) are not supported")
    } else if name.chars().all(|c| c.is_ascii_digit()) {
        Some("positional placeholders are not supported")
    } else if name.contains('.') {
        Some(
            "fields are not supported: take the field as an argument, or key by the whole argument",
        )
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::{parse, Segment};

    /// The segments as `"text"` and `{name}`, for comparison.
    fn shown(template: &str) -> Result<Vec<String>, String> {
        let segments = parse(template, "key")?;
        Ok(segments
            .into_iter()
            .map(|s| match s {
                Segment::Literal(text) => format!("{text:?}"),
                Segment::Placeholder(name) => format!("{{{name}}}"),
            })
            .collect())
    }

    #[test]
    fn text_and_placeholders_alternate() {
        assert_eq!(
            shown("user:{ id }:{name}{id}"),
            Ok(vec![
                "\"user:\"".to_owned(),
                "{id}".to_owned(),
                "\":\"".to_owned(),
                "{name}".to_owned(),
                "{id}".to_owned(),
            ])
        );
        assert_eq!(shown(""), Ok(vec![]));
    }

    #[test]
    fn doubled_braces_are_literal() {
        assert_eq!(
            shown("{{x}}:{a}"),
            Ok(vec!["\"{x}:\"".to_owned(), "{a}".to_owned()])
        );
    }

    #[test]
    fn malformed_templates_say_what_is_wrong() {
        for (template, said) in [
            ("a{b", "unclosed"),
            ("a}b", "unmatched"),
            ("{ }", "empty"),
            ("u:{id:>5}", "format specs"),
            ("u:{id:?}", "format specs"),
            ("{0}", "positional"),
            ("{user.id}", "fields"),
        ] {
            let error = shown(template).err().unwrap_or_default();
            assert!(error.contains(said), "{template}: {error}");
        }
    }
}
