//! Key building for `#[cached]` calls: [`KeyBuilder`] writes the literal parts and the
//! arguments (as compact JSON, through [`write_arg`]) into one `String`.

mod arg;

use std::fmt;

use serde::Serialize;

use crate::error::{shown, Error};

use arg::write_arg;

/// A value that can be written into a cache key or a tag template: the one bound of
/// `push_json`, `push_template` and `push_tag`, so its message names both uses.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be written into a cache key or a tag template: it must implement `serde::Serialize`",
    label = "this argument is written into the cache key or a `tags` template",
    note = "leave it out of the key with `skip(...)` (or choose the key arguments with `key = \"...\"`) and out of `tags` templates"
)]
pub trait KeyArg: Serialize {}
impl<T: Serialize + ?Sized> KeyArg for T {}

/// What a `#[cached]` function's default key starts with, read from `marker`, the type name of
/// a closure written in the function's expansion (`type_name_of_val(&|| ())`: the path of the
/// function it is in, then `::{{closure}}` for it and each async block around it): the path of
/// what holds the function. A free function's module (the key is `{module_path}::{fn}`, as
/// always); an associated function's type (`{type}::{fn}`, as a method's, so that two types'
/// functions of one name do not share entries; wherever its impl is, see
/// [`inherent_impl_type`]), or for a trait's default one the qualified path
/// `<{type} as {trait}>`; an enclosing function's path for a nested one. The function's
/// own segment is the last one outside angle brackets (a generic function's is `name<T>`, whose
/// arguments may hold `::`). Written by hand: no crate reads Rust paths, and it runs on every
/// call (a few dozen bytes scanned, no allocation).
fn fn_container(marker: &'static str) -> &'static str {
    let path = without_closures(marker);
    match split_last(path) {
        // A function nested in an async one is under its body's `{{closure}}`.
        Some((container, _)) => inherent_impl_type(without_closures(container)),
        None => path,
    }
}

/// `path` split at its last `::` outside angle brackets: what precedes it and its last segment;
/// `None` for a path of one segment.
fn split_last(path: &'static str) -> Option<(&'static str, &'static str)> {
    let bytes = path.as_bytes();
    let mut depth = 0usize;
    for i in (1..bytes.len()).rev() {
        match bytes[i] {
            // (The `>` of a function type's `->` opens nothing.)
            b'>' if bytes[i - 1] == b'-' => {}
            b'>' => depth += 1,
            b'<' => depth = depth.saturating_sub(1),
            b':' if depth == 0 && bytes[i - 1] == b':' => {
                return Some((&path[..i - 1], &path[i + 1..]))
            }
            _ => {}
        }
    }
    None
}

/// An inherent impl, the container of its associated functions, as its type, as
/// `type_name::<Self>()` writes it (the documented `{type}::{fn}`, what a method's key starts
/// with): `type_name` writes the impl `{module}::<impl {type}>` when it is not in the type's
/// module (`app::db::<impl app::Db>` for `app::Db`) and `<{type}>` when the type is not a path
/// (`<dyn app::Local>`). Any other container is returned as it is: a module, a type's path, a
/// qualified path `<{type} as {trait}>` (a trait's default function), an enclosing function's
/// path, and a trait impl outside both its type's and its trait's module,
/// `{module}::<impl {trait} for {type}>` (no `#[cached]` function is directly in a trait impl:
/// its companions cannot be).
fn inherent_impl_type(container: &'static str) -> &'static str {
    let last = split_last(container).map_or(container, |(_, last)| last);
    if let Some(ty) = last
        .strip_prefix("<impl ")
        .and_then(|rest| rest.strip_suffix('>'))
    {
        if !has_top_level(ty, " for ") {
            return ty;
        }
    }
    match container
        .strip_prefix('<')
        .and_then(|rest| rest.strip_suffix('>'))
    {
        // `<{type}>`, one pair of brackets around it all (not `<A>::f<B>`), not `<{type} as ..>`.
        Some(ty) if split_last(container).is_none() && !has_top_level(ty, " as ") => ty,
        _ => container,
    }
}

/// Whether `text` holds `needle` outside angle brackets.
fn has_top_level(text: &str, needle: &str) -> bool {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    for (i, &byte) in bytes.iter().enumerate() {
        match byte {
            b'<' => depth += 1,
            // (The `>` of a function type's `->` closes nothing.)
            b'>' if i > 0 && bytes[i - 1] == b'-' => {}
            b'>' => depth = depth.saturating_sub(1),
            _ if depth == 0 && bytes[i..].starts_with(needle.as_bytes()) => return true,
            _ => {}
        }
    }
    false
}

/// `fn_container` of one function, computed once: the expansion keeps one in a `static` per
/// call site. A `static` is shared by a generic function's instances, whose markers differ (an
/// associated function of `G<u8>` and of `G<u16>`): the first instance's marker is remembered
/// with its container, and another's is computed on each call.
#[derive(Debug)]
pub struct FnContainer(std::sync::OnceLock<(&'static str, &'static str)>);

impl FnContainer {
    /// An empty one.
    #[allow(clippy::new_without_default)] // a `const fn`, for a `static`
    pub const fn new() -> Self {
        FnContainer(std::sync::OnceLock::new())
    }

    /// `fn_container` of `marker`.
    pub fn of(&self, marker: &'static str) -> &'static str {
        let (first, container) = *self.0.get_or_init(|| (marker, fn_container(marker)));
        // One instance's marker is one constant: compared by address (and length), not text.
        if std::ptr::eq(first, marker) {
            container
        } else {
            fn_container(marker)
        }
    }

    /// What a method's default key starts with (before `::{fn}`), `marker` read as
    /// [`of`](Self::of) does. For a trait's default method the container is a qualified path,
    /// `<{Self type} as {trait path}>`: it is the answer, so that two traits' methods of one
    /// name, implemented by one type, are two functions. Otherwise `self_type`
    /// (`type_name::<Self>()`), as always: an inherent method's container is its type too (see
    /// [`inherent_impl_type`]; `<dyn {trait}>`, an inherent impl on a trait object, is not a
    /// trait's method: no ` as `).
    pub fn of_method(&self, marker: &'static str, self_type: &'static str) -> &'static str {
        let container = self.of(marker);
        if is_qualified(container) {
            container
        } else {
            self_type
        }
    }
}

/// Whether `path` is a qualified path, `<{type} as {trait}>`: ` as ` within its outermost angle
/// brackets, not nested deeper (in a generic argument).
fn is_qualified(path: &str) -> bool {
    path.strip_prefix('<')
        .is_some_and(|inside| has_top_level(inside, " as "))
}

/// `path` without its trailing `::{{closure}}` segments.
fn without_closures(mut path: &'static str) -> &'static str {
    while let Some(outer) = path.strip_suffix("::{{closure}}") {
        path = outer;
    }
    path
}

/// Builds a key into one `String`: literal parts and arguments as compact JSON, written so
/// that distinct argument values give distinct keys (see `key/arg.rs` and the
/// README's key layout).
#[derive(Debug)]
pub struct KeyBuilder {
    key: String,
    error: Option<(&'static str, String)>,
    /// Where the text of the last `key = "..."` placeholder starts, until the literal after
    /// it is known, and whether it is a JSON array or object (which ends unambiguously).
    placeholder: Option<(usize, bool)>,
}

impl KeyBuilder {
    /// An empty key with room for `capacity` bytes.
    #[inline]
    pub fn with_capacity(capacity: usize) -> Self {
        KeyBuilder {
            key: String::with_capacity(capacity),
            error: None,
            placeholder: None,
        }
    }

    /// Appends a literal part.
    #[inline]
    pub fn push_str(&mut self, part: &str) {
        if let Some(first) = part.chars().next() {
            if let Some(placeholder) = self.placeholder.take() {
                self.end_placeholder(placeholder, Some(first));
            }
        }
        self.key.push_str(part);
    }

    /// Appends `value` as compact JSON (strings quoted).
    #[inline]
    pub fn push_json<T: KeyArg + ?Sized>(&mut self, name: &'static str, value: &T) {
        if let Err(e) = write_arg(&mut self.key, value, None) {
            self.fail(name, e);
        }
    }

    /// Appends `value` for a `key = "..."` template: compact JSON, except that a string is
    /// written without quotes (`user:{name}` gives `user:alice`).
    ///
    /// So that two calls never share a key, a placeholder's text is written as a JSON string
    /// instead when it could be read another way: when it contains the first character of
    /// the literal that follows it in the template (`{a}:{b}` with `a = "x:y"` gives
    /// `"x:y":…`), starts with `"`, or is directly followed by another placeholder (a JSON
    /// array or object never is: it ends at its closing bracket); and an
    /// `Option`'s string keeps its quotes when unquoted it would read as `null`, `Some(…)` or a
    /// quoted string.
    pub fn push_template<T: KeyArg + ?Sized>(&mut self, name: &'static str, value: &T) {
        if let Some(placeholder) = self.placeholder.take() {
            self.end_placeholder(placeholder, None);
        }
        let start = self.key.len();
        let mut is_option = false;
        if let Err(e) = write_arg(&mut self.key, value, Some(&mut is_option)) {
            self.fail(name, e);
            return;
        }
        let compound = matches!(self.key.as_bytes().get(start), Some(b'[' | b'{'));
        self.placeholder = Some((start, compound));
        if !self.key[start..].starts_with('"') {
            return;
        }
        // An `Option`'s string whose unquoted text could be another of its values keeps
        // its quotes.
        let keep_quotes = |text: &str| {
            is_option && (text == "null" || text.starts_with("Some(") || text.starts_with('"'))
        };
        let quoted = &self.key[start..];
        if !quoted.contains('\\') {
            // `"text"` without escapes: drop the quotes in place.
            if !keep_quotes(quoted.trim_matches('"')) {
                self.key.pop();
                self.key.remove(start);
            }
            return;
        }
        match serde_json::from_str::<String>(quoted) {
            Ok(text) if keep_quotes(&text) => {}
            Ok(text) => {
                self.key.truncate(start);
                self.key.push_str(&text);
            }
            Err(e) => self.fail(name, e),
        }
    }

    /// Appends `value` for a `tags = [..]` template: as [`push_template`](Self::push_template)
    /// writes it (a string without quotes), but never quoted for what follows it. A tag that two
    /// calls share only invalidates more, while a quoted one would be missed by an
    /// `invalidate_tag(&format!(..))` of the same template (`user:{email}:posts` with
    /// `email = "a:b@x"` is `user:a:b@x:posts`, as `format!` writes it).
    pub fn push_tag<T: KeyArg + ?Sized>(&mut self, name: &'static str, value: &T) {
        self.push_template(name, value);
        self.placeholder = None;
    }

    /// Ends the placeholder whose text starts at `start`, now that what follows it is
    /// known: the first character of the next literal, or `None` for another placeholder.
    /// A JSON array or object ends at its closing bracket whatever follows: it stays as is.
    fn end_placeholder(&mut self, (start, compound): (usize, bool), next: Option<char>) {
        let text = &self.key[start..];
        let readable = compound
            || match next {
                Some(next) => !text.starts_with('"') && !text.contains(next),
                None => false,
            };
        if readable {
            return;
        }
        let quoted = serde_json::Value::String(text.to_owned()).to_string();
        self.key.truncate(start);
        self.key.push_str(&quoted);
    }

    #[cold]
    fn fail(&mut self, name: &'static str, e: impl fmt::Display) {
        if self.error.is_none() {
            self.error = Some((name, e.to_string()));
        }
    }

    /// The key, or an [`Error::Encode`] naming the argument that could not be written.
    #[inline]
    pub fn finish(self) -> crate::Result<String> {
        match self.error {
            None => Ok(self.key),
            Some((name, reason)) => Err(Error::Encode {
                key: shown(&self.key),
                reason: format!("argument `{name}` cannot be written as JSON: {reason}"),
            }),
        }
    }
}

// Unit tests: an `assert!` here is the test failing (clippy.toml allows the panicking macros in
// tests); none of it is compiled into the library.
#[cfg(test)]
mod tests {
    #[test]
    fn the_container_of_a_function_is_read_from_its_closures_type_name() {
        for (marker, container) in [
            ("app::users::get::{{closure}}", "app::users"),
            ("app::users::get::{{closure}}::{{closure}}", "app::users"),
            ("app::User::title::{{closure}}::{{closure}}", "app::User"),
            (
                "app::G<alloc::string::String>::get::{{closure}}",
                "app::G<alloc::string::String>",
            ),
            ("app::generic<alloc::vec::Vec<u8>>::{{closure}}", "app"),
            // A function type's `->` in a generic argument opens no bracket.
            ("app::generic<fn(u8) -> u8>::{{closure}}", "app"),
            (
                "<fn() -> u8 as app::Tr>::load::{{closure}}",
                "<fn() -> u8 as app::Tr>",
            ),
            ("app::handler::helper::{{closure}}", "app::handler"),
            // A trait's default method, the trait generic, in an async fn.
            (
                "<app::Db as app::Users>::load::{{closure}}::{{closure}}",
                "<app::Db as app::Users>",
            ),
            (
                "<app::G<u8> as app::Repo<alloc::string::String>>::load::{{closure}}",
                "<app::G<u8> as app::Repo<alloc::string::String>>",
            ),
            // An inherent impl outside its type's module, or on a type that is not a path: its
            // type, as `type_name::<Self>()` writes it (an associated function's key was
            // `app::db::<impl app::Db>::get`, not the documented `app::Db::get`: found by a probe).
            ("app::db::<impl app::Db>::get::{{closure}}", "app::Db"),
            (
                "app::db::<impl app::G<fn() -> u8>>::get::{{closure}}::{{closure}}",
                "app::G<fn() -> u8>",
            ),
            ("app::db::<impl app::R<'_>>::get::{{closure}}", "app::R<'_>"),
            (
                "app::db::<impl dyn app::Local + core::marker::Send>::get::{{closure}}",
                "dyn app::Local + core::marker::Send",
            ),
            ("<dyn app::Local>::get::{{closure}}", "dyn app::Local"),
            (
                "<dyn app::Local<<u8 as app::Tr>::Out>>::get::{{closure}}",
                "dyn app::Local<<u8 as app::Tr>::Out>",
            ),
            // A trait impl outside its type's and its trait's module, and a function nested in
            // an associated one, as they were.
            (
                "app::db::<impl app::Tr for app::Db>::get::{{closure}}",
                "app::db::<impl app::Tr for app::Db>",
            ),
            (
                "app::db::<impl app::Db>::run::helper::{{closure}}",
                "app::db::<impl app::Db>::run",
            ),
            (
                "<dyn app::Local>::run::helper::{{closure}}",
                "<dyn app::Local>::run",
            ),
            // Non-ASCII names.
            ("app::données::<impl app::É>::get::{{closure}}", "app::É"),
            (
                "app::handler::{{closure}}::helper::{{closure}}",
                "app::handler",
            ),
            ("get", "get"),
        ] {
            assert_eq!(super::fn_container(marker), container, "{marker}");
        }
    }

    #[test]
    fn a_method_is_keyed_by_its_type_or_its_trait() {
        let inherent = FnContainer::new();
        let in_other_module = FnContainer::new();
        let default_method = FnContainer::new();
        for _ in 0..2 {
            assert_eq!(
                inherent.of_method("app::Db::get::{{closure}}", "app::Db"),
                "app::Db"
            );
            assert_eq!(
                in_other_module.of_method("app::db::<impl app::Db>::get::{{closure}}", "app::Db"),
                "app::Db"
            );
            assert_eq!(
                default_method.of_method("<app::Db as app::Users>::load::{{closure}}", "app::Db"),
                "<app::Db as app::Users>"
            );
        }
        // An inherent method of a trait object: not qualified (no ` as `), nor is a qualified
        // path nested in a generic argument.
        assert_eq!(
            FnContainer::new().of_method("<dyn app::Local>::on_dyn::{{closure}}", "dyn app::Local"),
            "dyn app::Local"
        );
        assert_eq!(
            FnContainer::new().of_method(
                "<dyn app::Local<<u8 as app::Tr>::Out>>::get::{{closure}}",
                "dyn app::Local<u8>"
            ),
            "dyn app::Local<u8>"
        );
        assert_eq!(
            FnContainer::new().of_method(
                "<app::Db as app::Repo<alloc::string::String>>::load::{{closure}}",
                "app::Db"
            ),
            "<app::Db as app::Repo<alloc::string::String>>"
        );
        // A function type's `->` is no bracket (it ended the qualified path early, and two
        // traits' methods implemented for `fn(u8) -> u8` shared entries: found by a probe).
        assert_eq!(
            FnContainer::new().of_method(
                "<fn(u8) -> u8 as app::Alpha>::load::{{closure}}",
                "fn(u8) -> u8"
            ),
            "<fn(u8) -> u8 as app::Alpha>"
        );
        assert_eq!(
            FnContainer::new().of_method(
                "<app::Gen<fn() -> u8> as app::Beta>::load::{{closure}}",
                "app::Gen<fn() -> u8>"
            ),
            "<app::Gen<fn() -> u8> as app::Beta>"
        );
        // Another implementor of the same default method (one `static` for all).
        assert_eq!(
            default_method.of_method(
                "<app::Cache as app::Users>::load::{{closure}}",
                "app::Cache"
            ),
            "<app::Cache as app::Users>"
        );
    }

    use super::*;
    use std::collections::BTreeMap;

    fn template(parts: &[Result<&str, &str>]) -> String {
        let mut key = KeyBuilder::with_capacity(8);
        for part in parts {
            match part {
                Ok(literal) => key.push_str(literal),
                Err(value) => key.push_template("arg", value),
            }
        }
        finished(key)
    }

    /// The key, or its error's message (which no expected key equals).
    fn finished(key: KeyBuilder) -> String {
        key.finish()
            .unwrap_or_else(|error| format!("error: {error}"))
    }

    #[test]
    fn template_placeholders_cannot_run_into_each_other() {
        // Ordinary values: unchanged.
        assert_eq!(template(&[Ok("user:"), Err("alice")]), "user:alice");
        assert_eq!(
            template(&[Ok("u:"), Err("a b"), Ok(":"), Err("c")]),
            "u:a b:c"
        );
        assert_eq!(
            template(&[Ok("u:"), Err("x:y")]),
            "u:x:y",
            "the last one is free"
        );
        // A value containing the separator that follows it is quoted.
        let a = template(&[Err("x:y"), Ok(":"), Err("z")]);
        let b = template(&[Err("x"), Ok(":"), Err("y:z")]);
        assert_eq!(a, r#""x:y":z"#);
        assert_eq!(b, "x:y:z");
        // So is one starting with a quote, and one right before another placeholder.
        assert_eq!(template(&[Err(r#""x"#), Ok("/"), Err("y")]), r#""\"x"/y"#);
        assert_eq!(template(&[Err("ab"), Err("c")]), r#""ab"c"#);
        assert_ne!(
            template(&[Err("a"), Err("bc")]),
            template(&[Err("ab"), Err("c")])
        );
        // A JSON array or object ends at its bracket: unchanged whatever follows.
        let mut key = KeyBuilder::with_capacity(8);
        key.push_template("list", &["a:b", "c"]);
        key.push_str(":");
        key.push_template("map", &BTreeMap::from([("k", 1)]));
        key.push_template("n", &1);
        assert_eq!(finished(key), r#"["a:b","c"]:{"k":1}1"#);
        // An unquoted string that looks like one is quoted when it holds the separator.
        assert_eq!(template(&[Err("[x:y]"), Ok(":"), Err("z")]), r#""[x:y]":z"#);
    }

    #[test]
    fn template_options_keep_their_quotes_when_unquoted_would_collide() {
        let key = |value: &Option<&str>| {
            let mut key = KeyBuilder::with_capacity(8);
            key.push_str("k:");
            key.push_template("arg", value);
            finished(key)
        };
        assert_eq!(key(&None), "k:null");
        assert_eq!(key(&Some("null")), r#"k:"null""#);
        assert_eq!(key(&Some(r#""null""#)), r#"k:"\"null\"""#);
        assert_eq!(key(&Some("alice")), "k:alice");
        assert_eq!(key(&Some("Some(null)")), r#"k:"Some(null)""#);
        let mut key = KeyBuilder::with_capacity(8);
        key.push_template("arg", &Some(None::<&str>));
        assert_eq!(finished(key), "Some(null)");
    }
}
