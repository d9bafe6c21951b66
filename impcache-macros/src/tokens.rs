//! Reading types and token streams: the names they mention (and whether they use a variable),
//! borrows, `impl Trait`, the type argument of `Result<T, E>`, and the spans of their first and
//! last tokens.

use std::collections::HashSet;

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::ToTokens;
use syn::punctuated::Punctuated;
use syn::{GenericArgument, Lifetime, Path, PathArguments, Token, Type, TypeParamBound};

/// The first type argument of a path type's last segment (`T` in `io::Result<T>`).
pub(crate) fn first_type_arg(ty: &Type) -> Option<&Type> {
    let Type::Path(p) = ty else { return None };
    let PathArguments::AngleBracketed(a) = &p.path.segments.last()?.arguments else {
        return None;
    };
    a.args.iter().find_map(|arg| match arg {
        GenericArgument::Type(t) => Some(t),
        _ => None,
    })
}

/// The last identifier of a path type (`Result` in `std::io::Result<T>`).
pub(crate) fn last_ident(ty: &Type) -> Option<String> {
    match ty {
        Type::Path(p) if p.qself.is_none() => p.path.segments.last().map(|s| s.ident.to_string()),
        _ => None,
    }
}

/// What a `&'static` reference is to [`borrow_in`].
#[derive(Clone, Copy)]
pub(crate) enum StaticRef {
    /// A borrow: a cached value is decoded from the cache and must own its data.
    Borrow,
    /// Not a borrow: it outlives any task it is moved into.
    Owned,
}

/// The span of the first borrow in a type: a reference (see [`StaticRef`] for `&'static`), or a
/// lifetime other than `'static`. The references of a function type's arguments (`fn(&str)`,
/// `Fn(&str) -> u64`) are not borrows: the type holds none.
pub(crate) fn borrow_in(ty: &Type, static_ref: StaticRef) -> Option<Span> {
    let lifetime = |l: &Lifetime| (l.ident != "static").then(|| l.span());
    let path = |path: &Path| {
        path.segments
            .iter()
            .find_map(|segment| match &segment.arguments {
                PathArguments::AngleBracketed(a) => a.args.iter().find_map(|arg| match arg {
                    GenericArgument::Lifetime(l) => lifetime(l),
                    GenericArgument::Type(t) => borrow_in(t, static_ref),
                    GenericArgument::AssocType(assoc) => borrow_in(&assoc.ty, static_ref),
                    _ => None,
                }),
                PathArguments::Parenthesized(_) | PathArguments::None => None,
            })
    };
    let bounds = |bounds: &Punctuated<TypeParamBound, Token![+]>| {
        bounds.iter().find_map(|bound| match bound {
            TypeParamBound::Lifetime(l) => lifetime(l),
            // `for<'a> Trait<'a>`: its lifetimes are its own.
            TypeParamBound::Trait(t) if t.lifetimes.is_none() => path(&t.path),
            _ => None,
        })
    };
    match ty {
        Type::Reference(r) => {
            let is_static = r.lifetime.as_ref().is_some_and(|l| l.ident == "static");
            match static_ref {
                StaticRef::Owned if is_static => borrow_in(&r.elem, static_ref),
                _ => Some(r.and_token.span),
            }
        }
        Type::Path(p) => p
            .qself
            .as_ref()
            .and_then(|q| borrow_in(&q.ty, static_ref))
            .or_else(|| path(&p.path)),
        Type::Array(a) => borrow_in(&a.elem, static_ref),
        Type::Slice(s) => borrow_in(&s.elem, static_ref),
        Type::Paren(p) => borrow_in(&p.elem, static_ref),
        Type::Group(g) => borrow_in(&g.elem, static_ref),
        Type::Tuple(t) => t.elems.iter().find_map(|t| borrow_in(t, static_ref)),
        Type::TraitObject(t) => bounds(&t.bounds),
        Type::ImplTrait(t) => bounds(&t.bounds),
        _ => None,
    }
}

/// Whether `impl` appears anywhere in the type (`impl Trait`, also nested).
pub(crate) fn contains_impl_trait(ty: &Type) -> bool {
    fn walk(tokens: TokenStream) -> bool {
        tokens.into_iter().any(|t| match t {
            TokenTree::Ident(i) => i == "impl",
            TokenTree::Group(g) => walk(g.stream()),
            _ => false,
        })
    }
    walk(ty.to_token_stream())
}

/// The spans of the first and last tokens of `tokens` (a multi-token span without `Span::join`).
pub(crate) fn first_last(tokens: TokenStream) -> (Span, Span) {
    let mut iter = tokens.into_iter();
    let first = iter.next().map_or_else(Span::call_site, |t| t.span());
    let last = iter.last().map_or(first, |t| t.span());
    (first, last)
}

/// The idents and lifetimes mentioned in `tokens`.
pub(crate) fn mentioned(tokens: TokenStream, out: &mut HashSet<String>) {
    let mut after_quote = false;
    for t in tokens {
        match t {
            TokenTree::Ident(i) => {
                let s = i.to_string();
                out.insert(if after_quote { format!("'{s}") } else { s });
                after_quote = false;
            }
            TokenTree::Punct(p) => after_quote = p.as_char() == '\'',
            TokenTree::Group(g) => {
                after_quote = false;
                mentioned(g.stream(), out);
            }
            TokenTree::Literal(_) => after_quote = false,
        }
    }
}

/// Whether `tokens` use the variable `name`: as an identifier (in any group), or as a format
/// string's inline argument (`"{name}"`, `"{name:?}"`), which a closure captures too. An
/// escaped `"{{name}}"` counts as well (rare: telling it apart would take parsing the format
/// string). An identifier that is a field or method (`user.name`, `x.name()`), a struct
/// literal's field or a binding's type (`name: ..`) or a path's first segment (`name::..`) is
/// not the variable; a `let name` that shadows it still counts (rare: telling it apart would
/// take resolving scopes).
pub(crate) fn mentions(tokens: TokenStream, name: &str) -> bool {
    let tokens: Vec<TokenTree> = tokens.into_iter().collect();
    tokens.iter().enumerate().any(|(i, token)| match token {
        TokenTree::Ident(found) => {
            found == name && !is_member(&tokens[..i]) && !is_punct(tokens.get(i + 1), ':')
        }
        TokenTree::Group(group) => mentions(group.stream(), name),
        TokenTree::Literal(literal) => {
            let text = literal.to_string();
            text.match_indices('{').any(|(i, _)| {
                text[i + 1..]
                    .strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(['}', ':']))
            })
        }
        TokenTree::Punct(_) => false,
    })
}

/// Whether the identifier after `before` follows a single `.`: a field or a method, not a
/// variable (after the `..` of a range it is a variable).
fn is_member(before: &[TokenTree]) -> bool {
    match before {
        [.., previous, dot] => is_punct(Some(dot), '.') && !is_punct(Some(previous), '.'),
        [dot] => is_punct(Some(dot), '.'),
        [] => false,
    }
}

fn is_punct(token: Option<&TokenTree>, c: char) -> bool {
    matches!(token, Some(TokenTree::Punct(punct)) if punct.as_char() == c)
}
