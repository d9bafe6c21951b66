//! The macro's steps: parse the options ([`crate::args`]), check them against the function and
//! decide what to generate ([`crate::plan`]), write it out ([`crate::generate`]).

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::ItemFn;

use crate::errors::Errors;
use crate::plan::Plan;
use crate::{args, generate};

/// Expands `#[cached(args)] item`. On any error: the item unchanged, plus every error.
pub(crate) fn cached(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let args = args::parse(args, &mut errors);
    let plan = match syn::parse2::<ItemFn>(item.clone()) {
        Ok(func) => Plan::new(args, func, &mut errors),
        Err(_) => {
            // A method declared without a body (a trait's required method) is an `async fn` too.
            let message = match syn::parse2::<syn::TraitItemFn>(item.clone()) {
                Ok(declared) if declared.default.is_none() => {
                    "the `#[cached]` attribute needs the function's body: it cannot be used on a \
                     method declared without one"
                }
                _ => "the `#[cached]` attribute applies to `async fn` items",
            };
            errors.push(syn::Error::new(Span::call_site(), message));
            None
        }
    };
    match (errors.finish(), plan) {
        (None, Some(plan)) => generate::generate(&plan),
        (errors, _) => {
            let errors = errors.map(|e| e.to_compile_error());
            quote!(#item #errors)
        }
    }
}
