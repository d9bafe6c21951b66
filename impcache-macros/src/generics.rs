//! The generics of a companion that takes only some of the function's arguments.

use std::collections::HashSet;

use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::{GenericParam, Generics, WherePredicate};

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
pub(crate) fn filter(generics: &Generics, used_types: TokenStream) -> Generics {
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
