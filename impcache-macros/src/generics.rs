//! The generics of a companion that takes only some of the function's arguments.

use std::collections::{HashMap, HashSet};

use proc_macro2::{Group, Ident, Spacing, TokenStream, TokenTree};
use quote::ToTokens;
use syn::{GenericParam, Generics, Type, WherePredicate};

use crate::tokens::mentioned;

fn param_name(param: &GenericParam) -> String {
    match param {
        GenericParam::Lifetime(l) => l.lifetime.to_string(),
        GenericParam::Type(t) => t.ident.to_string(),
        GenericParam::Const(c) => c.ident.to_string(),
    }
}

/// The parameters of `generics` that `used_types` mention, and the bounds and where-predicates
/// that mention no other parameter.
fn filter(generics: &Generics, used_types: TokenStream) -> Generics {
    let mut used = HashSet::new();
    mentioned(used_types, &mut used);
    let all: HashSet<String> = generics.params.iter().map(param_name).collect();
    let kept: HashSet<String> = all.iter().filter(|p| used.contains(*p)).cloned().collect();
    let only_kept = |tokens: TokenStream| {
        let mut m = HashSet::new();
        mentioned(tokens, &mut m);
        m.iter().all(|x| !all.contains(x) || kept.contains(x))
    };
    let mut out = generics.clone();
    out.params = generics
        .params
        .iter()
        .filter(|p| kept.contains(&param_name(p)))
        .cloned()
        .map(|mut p| {
            if let GenericParam::Type(t) = &mut p {
                t.bounds = t
                    .bounds
                    .iter()
                    .filter(|b| only_kept(b.to_token_stream()))
                    .cloned()
                    .collect();
                if t.bounds.is_empty() {
                    t.colon_token = None;
                }
            }
            p
        })
        .collect();
    if let Some(wc) = &mut out.where_clause {
        wc.predicates = wc
            .predicates
            .iter()
            .filter(|p: &&WherePredicate| only_kept(p.to_token_stream()))
            .cloned()
            .collect();
        if wc.predicates.is_empty() {
            out.where_clause = None;
        }
    }
    out
}

/// A companion's generics and its arguments' types, from the function's `generics` and the
/// types of the arguments it takes: [`filter`]'s generics, less each lifetime that the types
/// name once and nothing else names (no bounds of its own, no other parameter's bound, no
/// where-predicate), which is elided, `'_` in its place. The function uses such a lifetime
/// more than once (with an argument the companion leaves out), the companion once: rustc's
/// `single_use_lifetimes` would report it there (found by a probe). One named in a function
/// type (`fn(&'a T)`, `Fn(&'a T)`, `for<'b> ..`) is kept: `'_` there would be the function
/// type's own lifetime, another type.
pub(crate) fn companion(generics: &Generics, types: &[&Type]) -> (Generics, Vec<TokenStream>) {
    let types: Vec<TokenStream> = types.iter().map(|ty| ty.to_token_stream()).collect();
    let mut kept = filter(generics, types.iter().cloned().collect());
    let mut uses = HashMap::new();
    for ty in &types {
        count_lifetimes(ty.clone(), &mut uses);
    }
    // What names a lifetime other than the types: the parameters' bounds, the where-clause.
    let mut elsewhere = HashSet::new();
    for param in &kept.params {
        let bounds = match param {
            GenericParam::Lifetime(l) => l.bounds.to_token_stream(),
            GenericParam::Type(t) => {
                let mut tokens = t.bounds.to_token_stream();
                t.default.to_tokens(&mut tokens);
                tokens
            }
            GenericParam::Const(c) => {
                let mut tokens = c.ty.to_token_stream();
                c.default.to_tokens(&mut tokens);
                tokens
            }
        };
        mentioned(bounds, &mut elsewhere);
    }
    mentioned(kept.where_clause.to_token_stream(), &mut elsewhere);
    let in_fn_type = |name: &str| {
        types.iter().any(|ty| {
            let mut names = HashSet::new();
            mentioned(ty.clone(), &mut names);
            names.contains(name)
                && [
                    "fn",
                    "Fn",
                    "FnMut",
                    "FnOnce",
                    "AsyncFn",
                    "AsyncFnMut",
                    "AsyncFnOnce",
                    "for",
                ]
                .iter()
                .any(|f| names.contains(*f))
        })
    };
    let elided: HashSet<String> = kept
        .params
        .iter()
        .filter_map(|param| match param {
            GenericParam::Lifetime(l) if l.bounds.is_empty() => Some(l.lifetime.to_string()),
            _ => None,
        })
        .filter(|name| uses.get(name) == Some(&1) && !elsewhere.contains(name) && !in_fn_type(name))
        .collect();
    if elided.is_empty() {
        return (kept, types);
    }
    let is_elided = |param: &&GenericParam| match param {
        GenericParam::Lifetime(l) => elided.contains(&l.lifetime.to_string()),
        _ => false,
    };
    kept.params = kept
        .params
        .iter()
        .filter(|param| !is_elided(param))
        .cloned()
        .collect();
    if kept.params.is_empty() {
        kept.lt_token = None;
        kept.gt_token = None;
    }
    let types = types.into_iter().map(|ty| elide(ty, &elided)).collect();
    (kept, types)
}

/// Counts each lifetime named in `tokens` (`'a` as `"'a"`).
fn count_lifetimes(tokens: TokenStream, uses: &mut HashMap<String, usize>) {
    let mut after_quote = false;
    for token in tokens {
        match token {
            TokenTree::Ident(ident) if after_quote => {
                *uses.entry(format!("'{ident}")).or_default() += 1;
                after_quote = false;
            }
            TokenTree::Punct(p) => after_quote = p.as_char() == '\'',
            TokenTree::Group(g) => {
                after_quote = false;
                count_lifetimes(g.stream(), uses);
            }
            _ => after_quote = false,
        }
    }
}

/// `tokens`, each lifetime of `elided` written `'_`.
fn elide(tokens: TokenStream, elided: &HashSet<String>) -> TokenStream {
    let mut out = Vec::new();
    let mut after_quote = false;
    for token in tokens {
        let token = match token {
            TokenTree::Ident(ident) if after_quote && elided.contains(&format!("'{ident}")) => {
                TokenTree::Ident(Ident::new("_", ident.span()))
            }
            TokenTree::Group(g) => {
                let mut group = Group::new(g.delimiter(), elide(g.stream(), elided));
                group.set_span(g.span());
                TokenTree::Group(group)
            }
            other => other,
        };
        after_quote = matches!(
            &token,
            TokenTree::Punct(p) if p.as_char() == '\'' && p.spacing() == Spacing::Joint
        );
        out.push(token);
    }
    out.into_iter().collect()
}
