//! Reading types and token streams: the names they mention, borrows, `impl Trait`, the type
//! argument of `Result<T, E>`, and the spans of their first and last tokens.

use std::collections::HashSet;

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::ToTokens;
use syn::{GenericArgument, PathArguments, Type};

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

/// The span of the first borrow in a type: a reference, or a lifetime other than `'static`.
pub(crate) fn borrow_in(ty: &Type) -> Option<Span> {
    fn walk(tokens: TokenStream) -> Option<Span> {
        let mut iter = tokens.into_iter().peekable();
        while let Some(t) = iter.next() {
            match t {
                TokenTree::Punct(p) if p.as_char() == '&' => return Some(p.span()),
                TokenTree::Punct(p) if p.as_char() == '\'' => {
                    if matches!(iter.peek(), Some(TokenTree::Ident(i)) if i != "static") {
                        return Some(p.span());
                    }
                }
                TokenTree::Group(g) => {
                    if let Some(span) = walk(g.stream()) {
                        return Some(span);
                    }
                }
                _ => {}
            }
        }
        None
    }
    walk(ty.to_token_stream())
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
