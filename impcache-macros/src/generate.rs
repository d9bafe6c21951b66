//! Code generation: the wrapper, `{name}_uncached` and `{name}_invalidate`, written out from a
//! [`Plan`]. The expansion stays thin: it calls `::impcache::__private`, where the logic is.

use std::collections::HashSet;

use proc_macro2::{Delimiter, Group, Span, TokenStream};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{Attribute, BinOp, Expr, ExprLit, FnArg, Ident, ItemFn, Lit, LitStr};

use crate::plan::{expect_as_allow, Arg, CratePath, Key, Part, Plan, Policy, Prefix};
use crate::tokens::{first_last, mentioned, mentions};

/// Attributes that also apply to the companions.
fn shared_attrs(attrs: &[Attribute]) -> Vec<Attribute> {
    attrs
        .iter()
        .filter(|a| {
            let doc_hidden = a.path().is_ident("doc")
                && matches!(&a.meta, syn::Meta::List(list) if list.tokens.to_string() == "hidden");
            doc_hidden
                || [
                    "cfg",
                    "cfg_attr",
                    "allow",
                    "warn",
                    "deny",
                    "forbid",
                    "expect",
                    "deprecated",
                    // (`clippy::missing_inline_in_public_items` asks it of each companion.)
                    "inline",
                ]
                .iter()
                .any(|name| a.path().is_ident(name))
        })
        .map(expect_as_allow)
        .collect()
}

/// `#[must_use]` on the function, for `{name}_uncached`, which returns the same value. (Not for
/// `{name}_invalidate` and `{name}_invalidate_all`: their `impcache::Result` is `must_use`
/// already, and clippy's `double_must_use` would report a second one.)
fn must_use_attrs(attrs: &[Attribute]) -> impl Iterator<Item = &Attribute> {
    attrs.iter().filter(|a| a.path().is_ident("must_use"))
}

/// Whether the function has docs of its own (`///`, `#[doc = ".."]`; not `#[doc(hidden)]`).
fn has_docs(attrs: &[Attribute]) -> bool {
    attrs
        .iter()
        .any(|a| a.path().is_ident("doc") && matches!(a.meta, syn::Meta::NameValue(_)))
}

/// The function's name, without `r#` (`r#type` is `type`), as Rust writes it in paths
/// (`module_path!`, `type_name`) and as the argument labels and companions are named: what the
/// default keys, the function's tag, the metrics name and the companions' docs say. `gen` and
/// `r#gen` are one identifier (`cargo fix --edition 2024` rewrites one into the other), so they
/// are one function's keys.
fn fn_name(plan: &Plan) -> String {
    plan.func.sig.ident.unraw().to_string()
}

/// `arg`'s name located at the end of its type (where an error about the argument's value is
/// reported), and that location. Only located there: given the type's span whole, the name (and
/// the key builder, in the statement spanned there) resolved where the type was written, so a
/// `macro_rules!` whose caller names an argument (`$arg:ident`) of a type it writes itself
/// (`$t:ty`, or a type in its own body) failed to compile ("cannot find value `n` in this
/// scope"; found by a probe).
fn at_type(arg: &Arg) -> (Ident, Span) {
    let (_, last) = first_last(arg.ty.to_token_stream());
    let mut name = arg.name.clone();
    name.set_span(arg.name.span().located_at(last));
    (name, last)
}

/// A local variable of the expansion, named with the expansion's own resolution: in a statement
/// spanned at a user's tokens (so that their errors are reported there), a name spanned with them
/// would resolve where they were written, which differs when a `macro_rules!` wrote them (a
/// `cache = ..` or `version = ..` forwarded whole as `$(#[$m:meta])*`: "cannot find value
/// `__impcache_cache`"; found by a probe).
fn local(name: &str) -> Ident {
    Ident::new(name, Span::call_site())
}

/// The statement that builds the key into `__impcache_key`, in one buffer.
fn key_block(plan: &Plan) -> TokenStream {
    let krate = &plan.krate;
    let key_arg_expr = |i: usize| {
        let arg = &plan.args[i];
        // `&name` spans from the argument's name to the end of its type, so that an argument
        // that is not `Serialize` is reported on `name: Type`. Located there only: the name
        // keeps its own resolution (and the statement the macro's), for a type written by a
        // `macro_rules!` other than the one that wrote the name (see `at_type`).
        let (name, last) = at_type(arg);
        let amp = quote_spanned!(arg.name.span()=> &);
        let label = LitStr::new(&arg.name.unraw().to_string(), arg.name.span());
        (quote!(#amp #name), label, last)
    };
    // The builder, in statements spanned at a type (see `local`).
    let k = local("__impcache_k");
    let mut key_parts = Vec::new();
    match &plan.key {
        Key::Template(parts) => {
            for part in parts {
                match part {
                    Part::Literal(s) => key_parts.push(quote!(__impcache_k.push_str(#s);)),
                    Part::Arg(i) => {
                        let (arg, label, span) = key_arg_expr(*i);
                        key_parts.push(quote_spanned!(span=> #k.push_template(#label, #arg);));
                    }
                }
            }
        }
        Key::Default(prefix) => {
            for part in default_key_base(plan, prefix) {
                key_parts.push(quote!(__impcache_k.push_str(#part);));
            }
            for &i in &plan.key_args {
                let (arg, label, span) = key_arg_expr(i);
                let push_json = quote_spanned!(span=> #k.push_json(#label, #arg););
                let cfg = plan.args[i].cfg_attrs();
                key_parts.push(quote! {
                    #(#cfg)*
                    {
                        __impcache_k.push_str(":");
                        #push_json
                    }
                });
            }
        }
    }
    // The key reads the arguments by name, `_flag` included: a use of the macro's, not the
    // user's, which pedantic clippy's `used_underscore_binding` would report on the argument.
    quote! {
        #[allow(clippy::used_underscore_binding)]
        let __impcache_key = {
            let mut __impcache_k = #krate::__private::KeyBuilder::with_capacity(64);
            #(#key_parts)*
            __impcache_k.finish()
        };
    }
}

/// Tags (issue 16): the statement that builds the call's tags into `__impcache_tags` (each
/// template as `key`'s but never quoted for what follows a placeholder, `KeyBuilder::push_tag`;
/// then the function's own tag), or `Ok(vec![])` for an untagged function.
fn tags_block(plan: &Plan) -> TokenStream {
    let krate = &plan.krate;
    let Some(tags) = &plan.tags else {
        if plan.spawned_by.is_none() {
            // The plain runtime (`memoize`) takes no tags.
            return TokenStream::new();
        }
        return quote! {
            let __impcache_tags = ::core::result::Result::Ok(::std::vec::Vec::new());
        };
    };
    let tags = tags.iter().map(|parts| {
        let parts = parts.iter().map(|part| match part {
            Part::Literal(s) => quote!(__impcache_k.push_str(#s);),
            Part::Arg(i) => {
                let arg = &plan.args[*i];
                let (name, last) = at_type(arg);
                let label = LitStr::new(&arg.name.unraw().to_string(), arg.name.span());
                // As in `key_block`.
                let k = local("__impcache_k");
                quote_spanned!(last=> #k.push_tag(#label, &#name);)
            }
        });
        quote! {{
            let mut __impcache_k = #krate::__private::KeyBuilder::with_capacity(32);
            #(#parts)*
            __impcache_k.finish()
        }}
    });
    let function_tag = function_tag(plan);
    // As the key's (see `key_block`): the tags read the arguments by name.
    quote! {
        #[allow(clippy::used_underscore_binding)]
        let __impcache_tags = #krate::__private::tag_list([#(#tags),*], #function_tag);
    }
}

/// The function's own tag (what `{name}_invalidate_all` invalidates): from `name = "..."` when
/// given, so that it survives moving the function; from a `key = "..."` template, for the same
/// reason (the template makes its keys: two functions with one template share their entries;
/// it is spelled as written, literal braces doubled);
/// else the default key's first part (see [`default_key_base`]): for a method its type (or
/// `<{type} as {trait}>`) and name, as its keys (two types' methods of one name in one module
/// are two functions), for a free function its module path and name.
fn function_tag(plan: &Plan) -> TokenStream {
    match &plan.key {
        Key::Template(parts) => {
            let mut template = String::from("__impcache_fn:key=");
            for part in parts {
                match part {
                    // Literal braces doubled, as written: `u:{{x}}:{id}` and `u:{x}:{{id}}`
                    // make other keys, and must make other tags.
                    Part::Literal(text) => {
                        template.push_str(&text.replace('{', "{{").replace('}', "}}"));
                    }
                    Part::Arg(i) => {
                        if let Some(arg) = plan.args.get(*i) {
                            template.push('{');
                            template.push_str(&arg.name.to_string());
                            template.push('}');
                        }
                    }
                }
            }
            quote!(#template)
        }
        Key::Default(Prefix::Name(name)) => {
            quote!(::core::concat!("__impcache_fn:", #name))
        }
        Key::Default(prefix) => {
            let base = default_key_base(plan, prefix);
            quote!(&["__impcache_fn:", #(#base),*].concat())
        }
    }
}

/// What holds the function, at run time (see `impcache::__private::FnContainer`): its module,
/// or for an associated function its type, or for a nested one the enclosing function; read once
/// per call site.
fn fn_container(krate: &CratePath) -> TokenStream {
    quote!({
        static __IMPCACHE_CONTAINER: #krate::__private::FnContainer =
            #krate::__private::FnContainer::new();
        __IMPCACHE_CONTAINER.of(::core::any::type_name_of_val(&|| ()))
    })
}

/// What a method's default key starts with, at run time (see
/// `impcache::__private::FnContainer::of_method`): its type, or for a trait's default method
/// `<{type} as {trait}>`.
fn method_owner(krate: &CratePath) -> TokenStream {
    quote!({
        static __IMPCACHE_CONTAINER: #krate::__private::FnContainer =
            #krate::__private::FnContainer::new();
        __IMPCACHE_CONTAINER.of_method(
            ::core::any::type_name_of_val(&|| ()),
            ::core::any::type_name::<Self>(),
        )
    })
}

/// `version = ..`: the `static` holding the version (converted once, through `From`, spelled
/// out so that it needs no prelude: `#[no_implicit_prelude]`), or, for a value that names `Self`
/// (`Self::VERSION`), which no `static` can, the statement converting it at each call; and the
/// version argument of the runtime's calls. None and `None` without the option.
fn version(plan: &Plan) -> Version {
    let krate = &plan.krate;
    let Some(expr) = &plan.version else {
        return Version {
            item: quote!(),
            statement: quote!(),
            arg: quote!(::core::option::Option::None),
        };
    };
    // Spanned at the value: a value of another type is reported there.
    let k = krate.at(expr.span());
    let convert =
        quote_spanned!(expr.span()=> <#k::Version as ::core::convert::From<_>>::from(#expr));
    let mut names = HashSet::new();
    mentioned(expr.to_token_stream(), &mut names);
    if names.contains("Self") {
        let version = local("__impcache_version");
        return Version {
            item: quote!(),
            statement: quote!(let #version: #krate::Version = #convert;),
            arg: quote!(::core::option::Option::Some(&#version)),
        };
    }
    Version {
        item: quote_spanned! {expr.span()=>
            static __IMPCACHE_VERSION: ::std::sync::LazyLock<#krate::Version> =
                ::std::sync::LazyLock::new(|| #convert);
        },
        statement: quote!(),
        arg: quote!(::core::option::Option::Some(&*__IMPCACHE_VERSION)),
    }
}

/// What `version = ..` adds to a function (see [`version`]).
struct Version {
    /// An item, first in the function.
    item: TokenStream,
    /// A statement, after the items.
    statement: TokenStream,
    /// The version argument of the runtime's calls.
    arg: TokenStream,
}

/// The policy argument of `memoize`.
fn policy(plan: &Plan) -> TokenStream {
    let krate = &plan.krate;
    let ret = &plan.ret;
    // The policy is chosen by method lookup on `&Returns<R>` (autoref specialization: see
    // `impcache::__private::Returns`), so that aliases are seen through.
    // Only the method name carries the option's span (where a contradiction is reported): the
    // rest is the macro's, so that no lint fires on the user's tokens.
    let classify = |method: &str, span: Span| {
        let method = Ident::new(method, span);
        quote! {{
            use #krate::__private::{
                ReturnsMismatch as _, ReturnsOption as _, ReturnsResult as _, ReturnsValue as _,
            };
            (&#krate::__private::Returns::<#ret>::new()).#method()
        }}
    };
    match plan.policy {
        Policy::ByType => classify("policy", Span::call_site()),
        Policy::Result(span) => classify("result_policy", span),
        Policy::Option(span) => classify("option_policy", span),
        Policy::OptionWithNone(span) => classify("option_with_none_policy", span),
        Policy::Value => quote!(#krate::__private::Plain),
    }
}

/// Whether `value` is integer arithmetic on literals without a suffix (`3_000_000_000`,
/// `60 * 60 * 24 * 365 * 80`): through a generic conversion (`From<_>`, `IntoDuration`) it would
/// be an `i32`, which overflows past 68 years (rustc refuses such a literal; a product panics in
/// a debug build and wraps in a release one). Such seconds are given a `u64` instead.
fn unsuffixed_seconds(value: &Expr) -> bool {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Int(int), ..
        }) => int.suffix().is_empty(),
        Expr::Paren(inner) => unsuffixed_seconds(&inner.expr),
        Expr::Group(inner) => unsuffixed_seconds(&inner.expr),
        Expr::Binary(binary) => {
            matches!(
                binary.op,
                BinOp::Add(_) | BinOp::Sub(_) | BinOp::Mul(_) | BinOp::Div(_) | BinOp::Rem(_)
            ) && unsuffixed_seconds(&binary.left)
                && unsuffixed_seconds(&binary.right)
        }
        _ => false,
    }
}

/// A duration option's value, its [`unsuffixed_seconds`] typed as a `u64`.
fn typed_seconds(value: &Expr, krate: &CratePath) -> TokenStream {
    if unsuffixed_seconds(value) {
        let k = krate.at(value.span());
        quote_spanned!(value.span()=> #k::__private::seconds(#value))
    } else {
        value.to_token_stream()
    }
}

/// In a trait impl the companions are not members of the trait (E0407, which says nothing of
/// `#[cached]`). A method checks that its `{name}_uncached` companion is inherent: if it is not,
/// `Self::{name}_uncached` falls back to a local trait whose bound fails with a message that says
/// what to do.
fn trait_impl_check(uncached: &Ident, krate: &CratePath) -> TokenStream {
    quote! {
        #[allow(dead_code, non_camel_case_types)]
        trait __impcache_not_in_trait_impl {
            fn #uncached()
            where
                Self: #krate::__private::NotInTraitImpl,
            {
            }
        }
        impl<__ImpcacheT: ?::core::marker::Sized> __impcache_not_in_trait_impl for __ImpcacheT {}
        #[allow(deprecated)]
        let _ = Self::#uncached;
    }
}

/// Whether the `cache` expression starts from an argument, or a receiver other than `&self`,
/// that the body mentions, and so moves into the body's closure.
fn borrows_moved_argument(plan: &Plan, expr: &syn::Expr, body: &[syn::Stmt]) -> bool {
    let Some(root) = root_ident(expr) else {
        return false;
    };
    // `self` moves too unless it is a shared reference (`&self`, which is `Copy`): `&mut self`,
    // `self: Arc<Self>`.
    let moved_receiver = root == "self"
        && plan.func.sig.receiver().is_some_and(
            |receiver| !matches!(&*receiver.ty, syn::Type::Reference(r) if r.mutability.is_none()),
        );
    (moved_receiver || plan.args.iter().any(|arg| arg.name == *root))
        && body
            .iter()
            .any(|stmt| mentions(stmt.to_token_stream(), &root.to_string()))
}

/// The variable an expression such as `state.cache`, `(*state).cache` or `state.cache()` starts
/// from.
fn root_ident(expr: &syn::Expr) -> Option<&Ident> {
    match expr {
        syn::Expr::Path(path) => path.path.get_ident(),
        syn::Expr::Field(field) => root_ident(&field.base),
        syn::Expr::MethodCall(call) => root_ident(&call.receiver),
        syn::Expr::Reference(reference) => root_ident(&reference.expr),
        syn::Expr::Paren(paren) => root_ident(&paren.expr),
        syn::Expr::Unary(unary) => root_ident(&unary.expr),
        _ => None,
    }
}

/// The wrapper, then `{name}_uncached` and `{name}_invalidate`.
pub(crate) fn generate(plan: &Plan) -> TokenStream {
    let krate = &plan.krate;
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = &plan.func;
    let ident = &sig.ident;
    let fn_name = fn_name(plan);
    let ret = &plan.ret;
    let (_, _, where_clause) = sig.generics.split_for_impl();
    let generics = &sig.generics;
    let unsafety = &sig.unsafety;
    let abi = &sig.abi;
    let output = &sig.output;
    let shared = shared_attrs(attrs);
    let must_use = must_use_attrs(attrs);
    let wrapper_attrs: Vec<Attribute> = attrs.iter().map(expect_as_allow).collect();
    let key_block = key_block(plan);

    let (cache_binding, cache_opt) = match &plan.cache {
        // A cache reached through an argument that the body uses (`cache = state.cache` with
        // `state` used in the body): that argument moves into the body, so the cache cannot stay
        // borrowed from it; a clone of it (two reference counts) is taken instead.
        Some(expr) if borrows_moved_argument(plan, expr, &block.stmts) => {
            let owned = local("__impcache_owned_cache");
            let cache = local("__impcache_cache");
            let binding = quote_spanned! {expr.span()=>
                let #owned: #krate::Cache = #krate::Cache::clone(&(#expr));
                let #cache: &#krate::Cache = &#owned;
            };
            (binding, quote!(::core::option::Option::Some(#cache)))
        }
        Some(expr) => {
            let cache = local("__impcache_cache");
            let binding = quote_spanned! {expr.span()=>
                let #cache: &#krate::Cache = &(#expr);
            };
            (binding, quote!(::core::option::Option::Some(#cache)))
        }
        None => (quote!(), quote!(#krate::__private::default_cache())),
    };
    let Version {
        item: version_item,
        statement: version_statement,
        arg: version_opt,
    } = version(plan);

    let expire = &plan.expire;
    let k = krate.at(expire.span());
    let expire = if unsuffixed_seconds(expire) {
        quote_spanned!(expire.span()=> #k::Expire::seconds(#expire))
    } else {
        quote_spanned!(expire.span()=> <#k::Expire as ::core::convert::From<_>>::from(#expire))
    };
    let policy = policy(plan);
    // `codec()` is the one place that requires `Serialize + DeserializeOwned` of the stored type;
    // the call spans the type (`T` of `Result<T, E>`), so that is where a missing impl is reported.
    let (first, last) = first_last(plan.value_ty.to_token_stream());
    let k = krate.at(first);
    let codec_path = quote_spanned!(first=> #k::__private::codec);
    let mut codec_args = Group::new(Delimiter::Parenthesis, TokenStream::new());
    codec_args.set_span(last);

    // The wrapper's arguments: plain names, patterns restored inside the body.
    let receiver = sig.inputs.iter().find(|a| matches!(a, FnArg::Receiver(_)));
    let wrapper_inputs = plan.args.iter().map(|a| {
        let Arg {
            name,
            mutability,
            ty,
            attrs,
            ..
        } = a;
        quote!(#(#attrs)* #mutability #name: #ty)
    });
    let restore = plan.args.iter().filter_map(|a| {
        a.pattern.as_ref().map(|pat| {
            let name = &a.name;
            let cfg = a.cfg_attrs();
            quote!(#(#cfg)* let #pat = #name;)
        })
    });
    let receiver_comma = receiver.map(|r| quote!(#r,));
    let body = &block.stmts;
    // An async block has no declared output type: it is inferred from the body, where a coercion
    // to the function's return type (`Err(Box::new(e))` for a `Box<dyn Error>`, in a `return`
    // or the tail) then fails. An unreachable `return` of the return type first fixes it, as
    // async-trait does: each `return` and the tail are then checked against it, and a mismatch is
    // reported on the expression, its note ("return type inferred to be ... here") on the type.
    // The type is named outside the body (`__impcache_returns`), where the signature is: an item
    // the body declares (`type Out = ..;`, a `use`) would otherwise change what it names.
    let (ret_first, _) = first_last(ret.to_token_stream());
    let returns = quote_spanned! {ret_first=>
        let __impcache_returns = ::core::marker::PhantomData::<fn() -> #ret>;
    };
    let return_type = quote_spanned! {ret_first=>
        if let ::core::option::Option::Some(__impcache_ret) =
            #krate::__private::no_value(__impcache_returns)
        {
            #[allow(unreachable_code)]
            return __impcache_ret;
        }
    };

    let tags_block = tags_block(plan);
    let call = if plan.spawned_by.is_none() {
        quote! {
            #krate::__private::memoize(
                &__IMPCACHE_FUNCTION,
                #cache_opt,
                #version_opt,
                __impcache_key,
                #expire,
                #policy,
                #codec_path #codec_args,
                __impcache_body,
            )
        }
    } else {
        // Freshness options, `lock` or tags: the `get_or_set` machinery, which needs a
        // `Send + 'static` body (the plan has refused the arguments it would borrow).
        let options = plan.freshness.iter().map(|(name, value)| {
            let value = typed_seconds(value, &plan.krate);
            let k = krate.at(value.span());
            quote_spanned!(value.span()=> .#name(#k::__private::duration(#value)))
        });
        // `lock = ...` (issue 16): a lock of that lifetime, or the default one.
        let freshness = quote!(#krate::Freshness::new() #(#options)*);
        let freshness = match &plan.lock {
            Some(value) => {
                let value = typed_seconds(value, &plan.krate);
                let k = krate.at(value.span());
                quote_spanned!(value.span()=> #k::__private::with_lock(#freshness, #value))
            }
            None => freshness,
        };
        // `hard_timeout = ...`: what a given-up body returns (`None`, `Err(..)`); a return type
        // with no such value is reported on the return type. A typed binding, not an `as` cast
        // (which `trivial_casts` would flag in the user's crate).
        let ret = &plan.ret;
        let timed_out = if plan
            .freshness
            .iter()
            .any(|(name, _)| name == "hard_timeout")
        {
            quote! {{
                let __impcache_timed_out: fn(#krate::Error) -> #ret =
                    <#ret as #krate::__private::TimedOut>::timed_out;
                ::core::option::Option::Some(__impcache_timed_out)
            }}
        } else {
            quote!(::core::option::Option::None)
        };
        // `tags_from = f` (issue 16): `f` over `&{stored type}`, named so that a closure's argument
        // type is inferred; a wrong one is reported on `f`.
        let tags_from = match &plan.tags_from {
            Some(f) => {
                let value_ty = &plan.value_ty;
                let k = krate.at(f.span());
                quote_spanned!(f.span()=> #k::__private::tags_from::<#value_ty, _, _>(#f))
            }
            None => quote!(#krate::__private::NoTagsFrom),
        };
        quote! {
            #krate::__private::memoize_fresh(
                &__IMPCACHE_FUNCTION,
                #cache_opt,
                #version_opt,
                __impcache_key,
                #expire,
                #freshness,
                __impcache_tags,
                #tags_from,
                #timed_out,
                #policy,
                #codec_path #codec_args,
                __impcache_body,
            )
        }
    };
    // The call's future is pinned where it is built, in the wrapper's: `.await` of it would build
    // it in the wrapper's poll stack frame first (twice in a debug build), which a recursive
    // function holds once per level (2 x 2.5 KiB). `pin!` is spanned at the user's `fn`, which
    // clippy's `unsafe_derive_deserialize` then sees as the standard library's `pin!` (whose
    // `unsafe` it accepts), not as the attribute's own `unsafe` in a method of the user's type.
    let span = sig.fn_token.span;
    let mut pinned = Group::new(Delimiter::Parenthesis, call);
    pinned.set_span(span);
    let pinned = quote_spanned!(span=> ::core::pin::pin! #pinned);
    // A local, not the tail's temporary, which would outlive the wrapper's locals (a cache it
    // borrows from one).
    let call = quote! {
        let __impcache_call = #pinned;
        __impcache_call.await
    };
    let uncached = format_ident!("{}_uncached", ident);
    let trait_impl_check = plan
        .check_not_in_trait_impl
        .then(|| trait_impl_check(&uncached, &plan.krate));
    let invalidate = format_ident!("{}_invalidate", ident);
    // Appended to the user's docs only: on an undocumented function it would silence the
    // user's `missing_docs`.
    let wrapper_doc = has_docs(attrs).then(|| {
        let line = format!(
            " Cached with `#[cached]`: `{uncached}` runs the body without the cache, `{invalidate}` removes the entry of one call."
        );
        quote! {
            #[doc = ""]
            #[doc = #line]
        }
    });
    let uncached_doc = format!(
        " Runs `{fn_name}` without its cache: no lookup, no store (generated by `#[cached]`)."
    );
    // `{name}_uncached` is as `unsafe` as the function: clippy's `missing_safety_doc` asks
    // its docs for a `# Safety` section. Clippy reads only the docs that are not the macro's
    // (spanned at the attribute): the section is spanned at the user's `unsafe`.
    let uncached_safety = unsafety.map(|unsafe_token| {
        let span = unsafe_token.span;
        let line = LitStr::new(&format!(" As for `{fn_name}`, whose body this runs."), span);
        quote_spanned! {span=>
            #[doc = ""]
            #[doc = " # Safety"]
            #[doc = ""]
            #[doc = #line]
        }
    });
    let invalidate_doc = format!(
        " Removes the cached entry of `{fn_name}` for these key arguments; `Ok(true)` when an entry was removed, `Ok(false)` when there was none (or no default cache is installed). A run of that call in progress in this process then stores nothing: the next call runs the body again. Generated by `#[cached]`."
    );

    let mut uncached_sig = sig.clone();
    uncached_sig.ident = uncached;
    for input in &mut uncached_sig.inputs {
        if let FnArg::Typed(pt) = input {
            pt.attrs = pt.attrs.iter().map(expect_as_allow).collect();
        }
    }

    let invalidate_inputs = companion_inputs(plan, &plan.invalidate_args);
    let inv_generics = &plan.invalidate_generics;
    let (_, _, inv_where) = inv_generics.split_for_impl();
    let inv_receiver = receiver.map(|_| quote!(&self,));
    let invalidate_all = invalidate_all(plan, receiver);

    // The wrapper's first token (`async`, when it has no visibility) and its braces are the
    // user's: the item's span, the context of the span rustc's `dead_code` reports (the name, in
    // the item's context), is then the user's, not the attribute's, whose lints rustc drops as
    // from an external macro. An unused `#[cached]` function is reported as a plain one.
    let asyncness = &sig.asyncness;
    let mut wrapper_body = Group::new(
        Delimiter::Brace,
        quote! {
            // Items first: a statement before an item, in the user's braces, is clippy's
            // `items_after_statements` (the `static` is spanned at the `version` value).
            #version_item
            #trait_impl_check
            #version_statement
            #key_block
            #tags_block
            #cache_binding
            #returns
            // The body's statements, not its block: `{ { expr } }` would make rustc's
            // `unused_braces` lint fire on the user's braces.
            let __impcache_body = move || async move {
                #return_type
                #(#restore)*
                #(#body)*
            };
            static __IMPCACHE_FUNCTION: #krate::__private::CachedFunction =
                #krate::__private::CachedFunction::new(::core::concat!(::core::module_path!(), "::", #fn_name));
            #call
        },
    );
    wrapper_body.set_span(block.brace_token.span.join());

    quote! {
        #(#wrapper_attrs)*
        #wrapper_doc
        #vis #asyncness #unsafety #abi fn #ident #generics (#receiver_comma #(#wrapper_inputs),*) #output #where_clause #wrapper_body

        #[doc = #uncached_doc]
        #uncached_safety
        // The user's body and signature, as written: what the user cannot change (an `async`
        // the macro requires, `# Errors` written on the function) is not the companion's to lint.
        // `async_fn_in_trait`: a default method of a `pub trait` gets it once, for the function.
        #[allow(
            dead_code,
            unused,
            async_fn_in_trait,
            clippy::unused_async,
            clippy::missing_errors_doc,
            clippy::missing_panics_doc,
            clippy::double_must_use
        )]
        #(#shared)*
        #(#must_use)*
        #vis #uncached_sig #block

        #[doc = #invalidate_doc]
        // A lifetime the function names twice, once in an argument the companion leaves out,
        // the companion names once (`single_use_lifetimes`, found by a probe).
        #[allow(dead_code, single_use_lifetimes, clippy::missing_errors_doc)]
        #(#shared)*
        #vis async fn #invalidate #inv_generics (#inv_receiver #(#invalidate_inputs),*) -> #krate::Result<bool> #inv_where {
            #key_block
            #cache_binding
            #version_item
            #version_statement
            #krate::__private::invalidate(#cache_opt, #version_opt, __impcache_key).await
        }

        #invalidate_all
    }
}

/// A companion's arguments (`name: Type`), from their indices into [`Plan::args`].
fn companion_inputs<'a>(
    plan: &'a Plan,
    args: &'a [usize],
) -> impl Iterator<Item = TokenStream> + 'a {
    args.iter().map(|&i| {
        let Arg {
            name, ty, attrs, ..
        } = &plan.args[i];
        quote!(#(#attrs)* #name: #ty)
    })
}

/// `{name}_invalidate_all`: for a function whose entries are tagged, one invalidation of the
/// function's tag; for an untagged one with the default keys, a sweep of its keys (its entries
/// keep the Python library's format); none for an untagged one with a `key` template, whose keys
/// have no prefix of their own.
fn invalidate_all(plan: &Plan, receiver: Option<&FnArg>) -> TokenStream {
    let krate = &plan.krate;
    let sweep_base = match (&plan.tags, &plan.key) {
        (Some(_), _) => None,
        (None, Key::Default(prefix)) => Some(default_key_base(plan, prefix)),
        (None, Key::Template(_)) => return TokenStream::new(),
    };
    let ItemFn {
        attrs, vis, sig, ..
    } = &plan.func;
    let fn_name = fn_name(plan);
    let name = format_ident!("{}_invalidate_all", sig.ident);
    let shared = shared_attrs(attrs);
    let doc = if sweep_base.is_some() {
        format!(
            " Removes every cached entry of `{fn_name}`, whatever its arguments: a `delete_pattern` sweep of its keys (a keyspace scan on Redis; with `tags` or `invalidate_all` in `#[cached]`, one tag invalidation instead). Generated by `#[cached]`. Without a default cache installed, does nothing."
        )
    } else {
        format!(
            " Invalidates every cached entry of `{fn_name}`, whatever its arguments: one tag invalidation, no keyspace scan (generated by `#[cached]`). Without a default cache installed, does nothing."
        )
    };
    let inputs = companion_inputs(plan, &plan.invalidate_all_args);
    let generics = &plan.invalidate_all_generics;
    let (_, _, where_clause) = generics.split_for_impl();
    let receiver = receiver.map(|_| quote!(&self,));
    let (cache_binding, cache_opt) = match &plan.cache {
        Some(expr) => {
            let cache = local("__impcache_cache");
            (
                quote_spanned! {expr.span()=>
                    let #cache: &#krate::Cache = &(#expr);
                },
                quote!(::core::option::Option::Some(#cache)),
            )
        }
        None => (quote!(), quote!(#krate::__private::default_cache())),
    };
    let Version {
        item: version_item,
        statement: version_statement,
        arg: version_opt,
    } = version(plan);
    let body = match sweep_base {
        Some(base) => quote! {
            #krate::__private::invalidate_all_keys(#cache_opt, #version_opt, &[#(#base),*].concat()).await
        },
        None => {
            let function_tag = function_tag(plan);
            quote! {
                #krate::__private::invalidate_all(#cache_opt, #version_opt, #function_tag).await
            }
        }
    };
    quote! {
        #[doc = #doc]
        // A lifetime the function names twice, once in an argument the companion leaves out,
        // the companion names once (`single_use_lifetimes`, found by a probe).
        #[allow(dead_code, single_use_lifetimes, clippy::missing_errors_doc)]
        #(#shared)*
        #vis async fn #name #generics (#receiver #(#inputs),*) -> #krate::Result<()> #where_clause {
            #cache_binding
            #version_item
            #version_statement
            #body
        }
    }
}

/// The part of a default key before its arguments (`{name}`, `{module}::{fn}`, for a method or
/// an associated function `{type}::{fn}`, for a trait's default one `<{type} as {trait}>::{fn}`,
/// for a nested function `{enclosing fn}::{fn}`), as
/// `&str` expressions to join: what holds the function is known at run time only, and the key
/// is built by appending them, with no allocation of its own.
fn default_key_base(plan: &Plan, prefix: &Prefix) -> Vec<TokenStream> {
    let fn_name = fn_name(plan);
    match prefix {
        Prefix::Name(name) => vec![quote!(#name)],
        Prefix::Method => {
            let suffix = format!("::{fn_name}");
            vec![method_owner(&plan.krate), quote!(#suffix)]
        }
        Prefix::Function => {
            let suffix = format!("::{fn_name}");
            vec![fn_container(&plan.krate), quote!(#suffix)]
        }
    }
}

#[cfg(test)]
mod tests {
    use proc_macro2::TokenStream;
    use quote::{quote, ToTokens};
    use syn::{Item, Meta};

    /// The attributes of `name` in the expansion of `#[cached(expire = 60)] item`, each as its
    /// text (a doc comment as its line); empty when there is no such function.
    fn attrs_of(item: TokenStream, name: &str) -> Vec<String> {
        let expanded = crate::expand::cached(quote!(expire = 60), item);
        let items = syn::parse2::<syn::File>(expanded)
            .map(|file| file.items)
            .unwrap_or_default();
        items
            .iter()
            .filter_map(|item| match item {
                Item::Fn(f) if f.sig.ident == name => Some(&f.attrs),
                _ => None,
            })
            .flatten()
            .map(|attr| match &attr.meta {
                Meta::NameValue(doc) if attr.path().is_ident("doc") => {
                    doc.value.to_token_stream().to_string()
                }
                meta => meta.to_token_stream().to_string(),
            })
            .collect()
    }

    /// `{name}_uncached` of an `unsafe fn` is `unsafe` too: clippy's `missing_safety_doc` (on by
    /// default) asks its docs for a `# Safety` section, which they lacked (found by a probe).
    #[test]
    fn an_unsafe_companion_has_a_safety_section() {
        let uncached = attrs_of(
            quote! {
                /// Reads.
                ///
                /// # Safety
                ///
                /// None needed.
                pub async unsafe fn read(id: u64) -> u64 { id }
            },
            "read_uncached",
        );
        assert!(
            uncached.iter().any(|doc| doc == "\" # Safety\""),
            "{uncached:?}"
        );
        let safe = attrs_of(
            quote!(
                pub async fn read(id: u64) -> u64 {
                    id
                }
            ),
            "read_uncached",
        );
        assert!(!safe.is_empty(), "the companion exists");
        assert!(!safe.iter().any(|doc| doc.contains("Safety")), "{safe:?}");
    }

    /// `#[inline]` on the function is on each companion too (clippy's
    /// `missing_inline_in_public_items` asked it of them).
    #[test]
    fn inline_is_copied_to_the_companions() {
        let item = quote! {
            #[inline]
            pub async fn read(id: u64) -> u64 { id }
        };
        for companion in ["read_uncached", "read_invalidate", "read_invalidate_all"] {
            let attrs = attrs_of(item.clone(), companion);
            assert!(
                attrs.iter().any(|a| a == "inline"),
                "{companion}: {attrs:?}"
            );
        }
    }
}
