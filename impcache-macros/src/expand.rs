//! Validation against the signature, and code generation.

use std::collections::HashSet;

use proc_macro2::{Delimiter, Group, Span, TokenStream, TokenTree};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;
use syn::{
    Attribute, FnArg, GenericArgument, GenericParam, Generics, Ident, ItemFn, LitStr, Pat,
    PathArguments, ReturnType, Type, WherePredicate,
};

use crate::args::{self, Args, Returns};
use crate::errors::Errors;

/// Expands `#[cached(args)] item`. On any error: the item unchanged, plus every error.
pub(crate) fn cached(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let args = args::parse(args, &mut errors);
    let func: ItemFn = match syn::parse2(item.clone()) {
        Ok(func) => func,
        Err(_) => {
            errors.push(syn::Error::new(
                Span::call_site(),
                "the `#[cached]` attribute applies to `async fn` items",
            ));
            return with_errors(item, errors);
        }
    };
    let plan = validate(&args, &func, &mut errors);
    match (errors.finish(), plan) {
        (None, Some(plan)) => generate(&args, &func, &plan),
        (errors, _) => {
            let errors = errors.map(|e| e.to_compile_error());
            quote!(#item #errors)
        }
    }
}

fn with_errors(item: TokenStream, errors: Errors) -> TokenStream {
    let errors = errors.finish().map(|e| e.to_compile_error());
    quote!(#item #errors)
}

/// One typed argument of the function.
struct Arg {
    /// The name used in the wrapper and the companions (the user's, or `__impcache_argN`).
    name: Ident,
    /// The user's pattern, when it is not a plain name (restored inside the body).
    pattern: Option<Pat>,
    /// `mut` on a plain name.
    mutability: Option<syn::token::Mut>,
    ty: Type,
    attrs: Vec<Attribute>,
    /// `_`: never part of the default key.
    wild: bool,
}

/// A piece of a `key = "..."` template.
enum Segment {
    Literal(String),
    Arg(String),
}

/// How the cached part of the return value is chosen.
enum Policy {
    /// By the type system, through aliases: `Ok`'s value of a `Result`, `Some`'s value of an
    /// `Option`, the whole value otherwise.
    ByType,
    /// `returns = "result"`: `Ok`'s value; the type must be a `Result` (the span of the option).
    Result(Span),
    /// `returns = "option"`: `Some`'s value; the type must be an `Option`.
    Option(Span),
    /// `cache_none = true`: the whole `Option`; the type must be an `Option`.
    OptionWithNone(Span),
    /// `returns = "value"`: the whole value.
    Value,
}

struct Plan {
    args: Vec<Arg>,
    /// Indices into `args` of the key arguments, in key order.
    key_args: Vec<usize>,
    template: Option<Vec<Segment>>,
    has_receiver: bool,
    ret: Type,
    value_ty: Type,
    policy: Policy,
}

fn parse_template(template: &str) -> Result<Vec<Segment>, String> {
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
                            return Err(
                                "unclosed `{` in `key` (write `{{` for a literal `{`)".to_owned()
                            )
                        }
                    }
                }
                let name = name.trim().to_owned();
                if name.is_empty() {
                    return Err(
                        "empty `{}` in `key`: name an argument, as in `\"user:{id}\"`".to_owned(),
                    );
                }
                if !literal.is_empty() {
                    segments.push(Segment::Literal(std::mem::take(&mut literal)));
                }
                segments.push(Segment::Arg(name));
            }
            '}' => return Err("unmatched `}` in `key` (write `}}` for a literal `}`)".to_owned()),
            c => literal.push(c),
        }
    }
    if !literal.is_empty() {
        segments.push(Segment::Literal(literal));
    }
    Ok(segments)
}

/// The first type argument of a path type's last segment (`T` in `io::Result<T>`).
fn first_type_arg(ty: &Type) -> Option<&Type> {
    let Type::Path(p) = ty else { return None };
    let PathArguments::AngleBracketed(a) = &p.path.segments.last()?.arguments else {
        return None;
    };
    a.args.iter().find_map(|arg| match arg {
        GenericArgument::Type(t) => Some(t),
        _ => None,
    })
}

/// The span of the first borrow in a type: a reference, or a lifetime other than `'static`.
fn borrow_in(ty: &Type) -> Option<Span> {
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

/// Whether the signature mentions `Self`: then the function is in an impl. (Not the body: it may
/// hold an impl of its own.)
fn mentions_self(func: &ItemFn) -> bool {
    let mut names = HashSet::new();
    mentioned(func.sig.to_token_stream(), &mut names);
    names.contains("Self")
}

fn last_ident(ty: &Type) -> Option<String> {
    match ty {
        Type::Path(p) if p.qself.is_none() => p.path.segments.last().map(|s| s.ident.to_string()),
        _ => None,
    }
}

fn contains_impl_trait(ty: &Type) -> bool {
    fn walk(tokens: TokenStream) -> bool {
        tokens.into_iter().any(|t| match t {
            TokenTree::Ident(i) => i == "impl",
            TokenTree::Group(g) => walk(g.stream()),
            _ => false,
        })
    }
    walk(ty.to_token_stream())
}

fn validate(args: &Args, func: &ItemFn, errors: &mut Errors) -> Option<Plan> {
    let sig = &func.sig;
    if sig.asyncness.is_none() {
        errors.push(syn::Error::new_spanned(
            sig.fn_token,
            "the `#[cached]` attribute requires an `async fn`",
        ));
    }
    if let Some(c) = &sig.constness {
        errors.push(syn::Error::new_spanned(
            c,
            "the `#[cached]` attribute cannot be used on a `const fn`",
        ));
    }
    if args.expire.is_none() {
        errors.push(syn::Error::new(
            Span::call_site(),
            "missing `expire`: every cached value expires, as in `#[cached(expire = 60)]` (seconds or a `Duration`)",
        ));
    }

    let mut has_receiver = false;
    let mut plan_args = Vec::new();
    for (i, input) in sig.inputs.iter().enumerate() {
        match input {
            FnArg::Receiver(r) => {
                has_receiver = true;
                let by_value = match &r.colon_token {
                    None => r.reference.is_none(),
                    Some(_) => matches!(&*r.ty, Type::Path(p) if p.path.is_ident("Self")),
                };
                if by_value {
                    errors.push(syn::Error::new_spanned(
                        r.self_token,
                        "`#[cached]` methods cannot take `self` by value: use `&self`",
                    ));
                }
            }
            FnArg::Typed(pt) => {
                let (name, pattern, mutability, wild) = match &*pt.pat {
                    Pat::Ident(p) if p.by_ref.is_none() && p.subpat.is_none() => {
                        (p.ident.clone(), None, p.mutability, false)
                    }
                    Pat::Wild(_) => (format_ident!("__impcache_arg{}", i), None, None, true),
                    other => (
                        format_ident!("__impcache_arg{}", i),
                        Some(other.clone()),
                        None,
                        false,
                    ),
                };
                plan_args.push(Arg {
                    name,
                    pattern,
                    mutability,
                    ty: (*pt.ty).clone(),
                    attrs: pt.attrs.clone(),
                    wild,
                });
            }
        }
    }
    let find = |name: &str| {
        plan_args
            .iter()
            .position(|a| a.pattern.is_none() && !a.wild && a.name == name)
    };

    let mut key_args = Vec::new();
    let mut template = None;
    if let Some(key) = &args.key {
        if let Some((span, _)) = &args.skip {
            errors.push(syn::Error::new(
                *span,
                "`skip` cannot be combined with `key`: arguments not named in the `key` template are already left out",
            ));
        }
        if let Some(name) = &args.name {
            errors.push(syn::Error::new_spanned(
                name,
                "`name` cannot be combined with `key`: the template is the whole key",
            ));
        }
        match parse_template(&key.value()) {
            Err(message) => errors.push(syn::Error::new_spanned(key, message)),
            Ok(segments) => {
                for segment in &segments {
                    if let Segment::Arg(name) = segment {
                        match find(name) {
                            Some(i) => {
                                if !key_args.contains(&i) {
                                    key_args.push(i);
                                }
                            }
                            None => errors.push(syn::Error::new_spanned(
                                key,
                                format!("`key` names `{{{name}}}`, but the function has no argument `{name}`"),
                            )),
                        }
                    }
                }
                template = Some(segments);
            }
        }
    } else {
        let mut skipped = HashSet::new();
        if let Some((_, skip)) = &args.skip {
            for ident in skip {
                match find(&ident.to_string()) {
                    Some(i) => {
                        if !skipped.insert(i) {
                            errors.push(syn::Error::new_spanned(
                                ident,
                                format!("`{ident}` is skipped twice"),
                            ));
                        }
                    }
                    None => errors.push(syn::Error::new_spanned(
                        ident,
                        format!(
                            "`skip` names `{ident}`, but the function has no argument `{ident}`"
                        ),
                    )),
                }
            }
        }
        key_args = (0..plan_args.len())
            .filter(|i| !skipped.contains(i) && !plan_args[*i].wild)
            .collect();
    }

    let ret: Type = match &sig.output {
        ReturnType::Default => syn::parse_quote!(()),
        ReturnType::Type(_, ty) => (**ty).clone(),
    };
    if contains_impl_trait(&ret) {
        errors.push(syn::Error::new_spanned(
            &ret,
            "`#[cached]` cannot store an `impl Trait` return type: name the type",
        ));
    }
    if let Some(span) = borrow_in(&ret) {
        errors.push(syn::Error::new(
            span,
            "`#[cached]` cannot return a borrowed value: a cached value is decoded from the cache and owns its data; return an owned type (`String` for `&str`, `Vec<T>` for `&[T]`, `T` for `&T`, no lifetime parameters)",
        ));
    }
    // The policy is decided by the type system (aliases of `Result` and `Option` included);
    // `returns` and `cache_none` choose it explicitly, checked on the type. The spelling only
    // places the "cannot be cached" error on `T` of `Result<T, E>` rather than on the whole type.
    let cache_none = args.cache_none.as_ref().filter(|b| b.value);
    let returns = args
        .returns
        .as_ref()
        .map(|(lit, returns)| (lit.span(), *returns));
    let policy = match (returns, cache_none) {
        (Some((_, returns @ (Returns::Result | Returns::Value))), Some(b)) => {
            let name = if returns == Returns::Result {
                "result"
            } else {
                "value"
            };
            errors.push(syn::Error::new_spanned(
                b,
                format!("`cache_none` applies to functions returning an `Option`, not with `returns = \"{name}\"`"),
            ));
            Policy::Value
        }
        (Some((span, Returns::Option)), Some(_)) => Policy::OptionWithNone(span),
        (None, Some(b)) => Policy::OptionWithNone(b.span()),
        (Some((span, Returns::Result)), None) => Policy::Result(span),
        (Some((span, Returns::Option)), None) => Policy::Option(span),
        (Some((_, Returns::Value)), None) => Policy::Value,
        (None, None) => Policy::ByType,
    };
    let spelled = last_ident(&ret);
    let value_ty = match (&policy, spelled.as_deref()) {
        (Policy::ByType | Policy::Result(_), Some("Result"))
        | (Policy::ByType | Policy::Option(_), Some("Option")) => {
            first_type_arg(&ret).unwrap_or(&ret).clone()
        }
        _ => ret.clone(),
    };

    Some(Plan {
        args: plan_args,
        key_args,
        template,
        has_receiver,
        ret,
        value_ty,
        policy,
    })
}

/// The spans of the first and last tokens of `tokens` (a multi-token span without `Span::join`).
fn first_last(tokens: TokenStream) -> (Span, Span) {
    let mut iter = tokens.into_iter();
    let first = iter.next().map_or_else(Span::call_site, |t| t.span());
    let last = iter.last().map_or(first, |t| t.span());
    (first, last)
}

/// The idents and lifetimes mentioned in `tokens`.
fn mentioned(tokens: TokenStream, out: &mut HashSet<String>) {
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

fn param_name(param: &GenericParam) -> String {
    match param {
        GenericParam::Lifetime(l) => l.lifetime.to_string(),
        GenericParam::Type(t) => t.ident.to_string(),
        GenericParam::Const(c) => c.ident.to_string(),
    }
}

/// The generics of a companion that takes only some arguments: the parameters those arguments
/// mention, and the bounds that mention nothing else.
fn filter_generics(generics: &Generics, used_types: TokenStream) -> Generics {
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

/// Attributes that also apply to the companions.
fn shared_attrs(attrs: &[Attribute]) -> Vec<&Attribute> {
    attrs
        .iter()
        .filter(|a| {
            [
                "cfg",
                "cfg_attr",
                "allow",
                "warn",
                "deny",
                "forbid",
                "expect",
                "deprecated",
            ]
            .iter()
            .any(|name| a.path().is_ident(name))
        })
        .collect()
}

fn generate(args: &Args, func: &ItemFn, plan: &Plan) -> TokenStream {
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = func;
    let ident = &sig.ident;
    let fn_name = ident.to_string();
    let ret = &plan.ret;
    let (_, _, where_clause) = sig.generics.split_for_impl();
    let generics = &sig.generics;
    let unsafety = &sig.unsafety;
    let abi = &sig.abi;
    let output = &sig.output;
    let shared = shared_attrs(attrs);

    // The key: built into one buffer.
    let key_arg_expr = |i: usize| {
        let arg = &plan.args[i];
        // `&name` spans from the argument's name to the end of its type, so that an argument
        // that is not `Serialize` is reported on `name: Type`.
        let (_, last) = first_last(arg.ty.to_token_stream());
        let name = Ident::new(&arg.name.to_string(), last);
        let amp = quote_spanned!(arg.name.span()=> &);
        let label = LitStr::new(&arg.name.to_string(), arg.name.span());
        (quote!(#amp #name), label, last)
    };
    let mut key_parts = Vec::new();
    match &plan.template {
        Some(segments) => {
            for segment in segments {
                match segment {
                    Segment::Literal(s) => key_parts.push(quote!(__impcache_k.push_str(#s);)),
                    Segment::Arg(name) => {
                        // Validation checked that every placeholder names an argument.
                        let Some(i) = plan.args.iter().position(|a| a.name == name) else {
                            continue;
                        };
                        let (arg, label, span) = key_arg_expr(i);
                        key_parts
                            .push(quote_spanned!(span=> __impcache_k.push_template(#label, #arg);));
                    }
                }
            }
        }
        None => {
            let base = match &args.name {
                Some(name) => quote!(__impcache_k.push_str(#name);),
                None if plan.has_receiver => {
                    let suffix = format!("::{fn_name}");
                    quote! {
                        __impcache_k.push_str(::core::any::type_name::<Self>());
                        __impcache_k.push_str(#suffix);
                    }
                }
                None => {
                    quote!(__impcache_k.push_str(::core::concat!(::core::module_path!(), "::", #fn_name));)
                }
            };
            key_parts.push(base);
            for &i in &plan.key_args {
                let (arg, label, span) = key_arg_expr(i);
                key_parts.push(quote!(__impcache_k.push_str(":");));
                key_parts.push(quote_spanned!(span=> __impcache_k.push_json(#label, #arg);));
            }
        }
    }
    let key_block = quote! {
        let __impcache_key = {
            let mut __impcache_k = ::impcache::__private::KeyBuilder::with_capacity(64);
            #(#key_parts)*
            __impcache_k.finish()
        };
    };

    let (cache_binding, cache_opt) = match &args.cache {
        Some(expr) => {
            let binding = quote_spanned! {expr.span()=>
                let __impcache_cache: &::impcache::Cache = &(#expr);
            };
            (
                binding,
                quote!(::core::option::Option::Some(__impcache_cache)),
            )
        }
        None => (quote!(), quote!(::impcache::__private::default_cache())),
    };
    let (version_static, version_opt) = match &args.version {
        Some(expr) => {
            let version = quote_spanned! {expr.span()=>
                static __IMPCACHE_VERSION: ::std::sync::LazyLock<::impcache::Version> =
                    ::std::sync::LazyLock::new(|| ::impcache::Version::from(#expr));
            };
            (
                version,
                quote!(::core::option::Option::Some(&*__IMPCACHE_VERSION)),
            )
        }
        None => (quote!(), quote!(::core::option::Option::None)),
    };

    let expire = args.expire.as_ref().map(|expr| {
        quote_spanned!(expr.span()=> <::impcache::Expire as ::core::convert::From<_>>::from(#expr))
    });
    // The policy is chosen by method lookup on `&Returns<R>` (autoref specialization: see
    // `impcache::__private::Returns`), so that aliases are seen through.
    // Only the method name carries the option's span (where a contradiction is reported): the
    // rest is the macro's, so that no lint fires on the user's tokens.
    let classify = |method: &str, span: Span| {
        let method = Ident::new(method, span);
        quote! {{
            use ::impcache::__private::{
                ReturnsMismatch as _, ReturnsOption as _, ReturnsResult as _, ReturnsValue as _,
            };
            (&::impcache::__private::Returns::<#ret>::new()).#method()
        }}
    };
    let policy = match plan.policy {
        Policy::ByType => classify("policy", Span::call_site()),
        Policy::Result(span) => classify("result_policy", span),
        Policy::Option(span) => classify("option_policy", span),
        Policy::OptionWithNone(span) => classify("option_with_none_policy", span),
        Policy::Value => quote!(::impcache::__private::Plain),
    };
    // The bounds of `memoize` (the stored type is `Serialize + DeserializeOwned`) are reported on
    // the stored type: `T` of `Result<T, E>`, the whole type otherwise.
    // `codec()` is the one place that requires `Serialize + DeserializeOwned` of the stored type;
    // the call spans the type (`T` of `Result<T, E>`), so that is where a missing impl is reported.
    let (first, last) = first_last(plan.value_ty.to_token_stream());
    let codec_path = quote_spanned!(first=> ::impcache::__private::codec);
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
            quote!(let #pat = #name;)
        })
    });
    let receiver_comma = receiver.map(|r| quote!(#r,));
    let body = &block.stmts;

    let uncached = format_ident!("{}_uncached", ident);
    // In a trait impl the companions are not members of the trait (E0407, which says nothing
    // of `#[cached]`). A method (a receiver or a mention of `Self`) checks that its
    // `{name}_uncached` companion is inherent: if it is not, `Self::{name}_uncached` falls back
    // to a local trait whose bound fails with a message that says what to do. Skipped where the
    // path would need type arguments (type or const parameters, `impl Trait` arguments).
    let simple_generics = sig
        .generics
        .params
        .iter()
        .all(|p| matches!(p, GenericParam::Lifetime(_)))
        && !plan.args.iter().any(|a| contains_impl_trait(&a.ty));
    let trait_impl_check = ((plan.has_receiver || mentions_self(func)) && simple_generics).then(|| {
        quote! {
            #[allow(dead_code, non_camel_case_types)]
            trait __impcache_not_in_trait_impl {
                fn #uncached()
                where
                    Self: ::impcache::__private::NotInTraitImpl,
                {
                }
            }
            impl<__ImpcacheT: ?::core::marker::Sized> __impcache_not_in_trait_impl for __ImpcacheT {}
            #[allow(deprecated)]
            let _ = Self::#uncached;
        }
    });
    let invalidate = format_ident!("{}_invalidate", ident);
    let wrapper_doc = format!(
        " Cached with `#[cached]`: `{uncached}` runs the body without the cache, `{invalidate}` removes the entry of one call."
    );
    let uncached_doc = format!(
        " Runs `{fn_name}` without its cache: no lookup, no store (generated by `#[cached]`)."
    );
    let invalidate_doc = format!(
        " Removes the cached entry of `{fn_name}` for these key arguments; `Ok(true)` when an entry was removed, `Ok(false)` when there was none (or no default cache is installed). Generated by `#[cached]`."
    );

    let mut uncached_sig = sig.clone();
    uncached_sig.ident = uncached;

    // The invalidate companion: the receiver, the key arguments, and any other argument the
    // `cache` expression names.
    let mut cache_mentions = HashSet::new();
    if let Some(expr) = &args.cache {
        mentioned(expr.to_token_stream(), &mut cache_mentions);
    }
    let companion_args: Vec<&Arg> = plan
        .args
        .iter()
        .enumerate()
        .filter(|(i, a)| plan.key_args.contains(i) || cache_mentions.contains(&a.name.to_string()))
        .map(|(_, a)| a)
        .collect();
    let companion_inputs = companion_args.iter().map(|a| {
        let Arg {
            name, ty, attrs, ..
        } = a;
        quote!(#(#attrs)* #name: #ty)
    });
    let companion_types: TokenStream = companion_args
        .iter()
        .map(|a| a.ty.to_token_stream())
        .collect();
    let inv_generics = filter_generics(&sig.generics, companion_types);
    let (_, _, inv_where) = inv_generics.split_for_impl();
    let inv_receiver = receiver.map(|_| quote!(&self,));

    quote! {
        #(#attrs)*
        #[doc = ""]
        #[doc = #wrapper_doc]
        #vis #unsafety async #abi fn #ident #generics (#receiver_comma #(#wrapper_inputs),*) #output #where_clause {
            #trait_impl_check
            #key_block
            #cache_binding
            #version_static
            // The body's statements, not its block: `{ { expr } }` would make rustc's
            // `unused_braces` lint fire on the user's braces.
            let __impcache_body = ::impcache::__private::body::<#ret, _, _>(move || async move {
                #(#restore)*
                #(#body)*
            });
            ::impcache::__private::memoize(
                #cache_opt,
                #version_opt,
                __impcache_key,
                #expire,
                #policy,
                #codec_path #codec_args,
                __impcache_body,
            )
            .await
        }

        #[doc = #uncached_doc]
        #[allow(dead_code, unused)]
        #(#shared)*
        #vis #uncached_sig #block

        #[doc = #invalidate_doc]
        #[allow(dead_code)]
        #(#shared)*
        #vis async fn #invalidate #inv_generics (#inv_receiver #(#companion_inputs),*) -> ::impcache::Result<bool> #inv_where {
            #key_block
            #cache_binding
            #version_static
            ::impcache::__private::invalidate(#cache_opt, #version_opt, __impcache_key).await
        }
    }
}
