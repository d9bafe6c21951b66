//! The plan: what to generate, decided from the parsed options and the function's signature.
//! Every problem found on the way is reported, together with the options' own errors; code
//! generation ([`crate::generate`]) then only writes out what the plan says.

use std::collections::HashSet;

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::{format_ident, ToTokens};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{
    Attribute, Expr, ExprLit, FnArg, GenericParam, Generics, Ident, ItemFn, Lit, LitStr, Meta, Pat,
    ReturnType, Token, Type,
};

use crate::args::{Args, Returns};
use crate::errors::Errors;
use crate::limits;
use crate::template::{self, Segment};
use crate::tokens::{
    borrow_in, contains_impl_trait, first_type_arg, last_ident, mentioned, mentions, StaticRef,
};

/// One typed argument of the function.
pub(crate) struct Arg {
    /// The name used in the wrapper and the companions (the user's, or `__impcache_argN`).
    pub(crate) name: Ident,
    /// The user's pattern, when it is not a plain name (restored inside the body).
    pub(crate) pattern: Option<Pat>,
    /// `mut` on a plain name.
    pub(crate) mutability: Option<syn::token::Mut>,
    pub(crate) ty: Type,
    /// The user's attributes, an `#[expect(..)]` made an `#[allow(..)]` ([`expect_as_allow`]):
    /// they are copied onto the wrapper's argument, the companions' and the statements the
    /// expansion writes for it (its part of the key), where an expectation would hold in one at
    /// most (found by a probe: `#[expect(unused_variables)]` on an argument the key reads).
    pub(crate) attrs: Vec<Attribute>,
    /// `_`: never part of the default key.
    wild: bool,
}

impl Arg {
    /// The argument's `#[cfg(..)]` and `#[cfg_attr(..)]` attributes: what the expansion writes
    /// for the argument (its part of the default key, its pattern restored in the body) is under
    /// them too, so that it goes when the argument does.
    pub(crate) fn cfg_attrs(&self) -> impl Iterator<Item = &Attribute> {
        self.attrs
            .iter()
            .filter(|a| a.path().is_ident("cfg") || a.path().is_ident("cfg_attr"))
    }
}

/// `attr`, an `#[expect(..)]` made an `#[allow(..)]` of the same lints (its `reason` too), also
/// under `#[cfg_attr(..)]`, nested or not: the expansion writes the function (and its arguments)
/// several times over, the wrapper and the companions, and a lint the user expects may fire in
/// one and not in the others, where the unfulfilled expectation would itself be reported.
pub(crate) fn expect_as_allow(attr: &Attribute) -> Attribute {
    Attribute {
        meta: meta_expect_as_allow(&attr.meta),
        ..attr.clone()
    }
}

/// [`expect_as_allow`] on an attribute's content.
fn meta_expect_as_allow(meta: &Meta) -> Meta {
    let Meta::List(list) = meta else {
        return meta.clone();
    };
    let mut list = list.clone();
    if list.path.is_ident("expect") {
        list.path = Ident::new("allow", list.path.span()).into();
    } else if list.path.is_ident("cfg_attr") {
        // `cfg_attr(predicate, attr, ..)`: the predicate as it is, each attribute rewritten. One
        // that does not parse is left as written, for rustc to report.
        let Ok(parts) = list.parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated)
        else {
            return meta.clone();
        };
        let parts: Punctuated<Meta, Token![,]> = parts
            .iter()
            .enumerate()
            .map(|(i, part)| {
                if i == 0 {
                    part.clone()
                } else {
                    meta_expect_as_allow(part)
                }
            })
            .collect();
        list.tokens = parts.into_token_stream();
    }
    Meta::List(list)
}

/// How the key is written.
pub(crate) enum Key {
    /// `key = "..."`: the template's text and arguments, in order.
    Template(Vec<Part>),
    /// The default layout: the prefix, then `:` and each of [`Plan::key_args`].
    Default(Prefix),
}

/// A piece of a `key = "..."` template, its placeholders resolved.
pub(crate) enum Part {
    Literal(String),
    /// An index into [`Plan::args`].
    Arg(usize),
}

/// The first part of the default key.
pub(crate) enum Prefix {
    /// `name = "..."`.
    Name(LitStr),
    /// `{type_name::<Self>()}::{fn_name}`, for a function with a receiver.
    Method,
    /// `{module_path}::{fn_name}`.
    Function,
}

/// How the cached part of the return value is chosen.
pub(crate) enum Policy {
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

/// The path of the impcache crate in the expansion: `::impcache`, or the one given with
/// `crate = ..` (a renamed dependency, a facade's re-export, a facade macro's `$crate::impcache`).
pub(crate) struct CratePath {
    tokens: TokenStream,
    given: bool,
}

impl CratePath {
    /// `::impcache` without `given`. A given path resolves at the call site, where the user wrote
    /// it (a `$crate` keeps its own resolution: the facade's), but as the expansion's tokens: the
    /// user's lints (`unused_qualifications`) do not reach the expansion's paths (they did, with
    /// the user's own spans, and `cargo fix` broke the attribute; found by a regression hunt).
    fn new(given: Option<syn::Path>) -> CratePath {
        let Some(path) = given else {
            return CratePath {
                tokens: quote::quote!(::impcache),
                given: false,
            };
        };
        let tokens = path
            .to_token_stream()
            .into_iter()
            .map(|mut token| {
                if !matches!(&token, TokenTree::Ident(ident) if ident == "$crate") {
                    token.set_span(Span::call_site().located_at(token.span()));
                }
                token
            })
            .collect();
        CratePath {
            tokens,
            given: true,
        }
    }

    /// The path located at `span`, for `quote_spanned!`: the whole call is then at the user's
    /// tokens (a missing impl is reported at the value's type). `::impcache` is spanned there
    /// whole, as when it was written in the `quote_spanned!`; a given path keeps its resolution
    /// (a `$crate` moved to the user's span named the user's crate: found by a regression hunt).
    pub(crate) fn at(&self, span: Span) -> TokenStream {
        self.tokens
            .clone()
            .into_iter()
            .map(|mut token| {
                let placed = if self.given {
                    token.span().located_at(span)
                } else {
                    span
                };
                token.set_span(placed);
                token
            })
            .collect()
    }
}

impl ToTokens for CratePath {
    fn to_tokens(&self, tokens: &mut TokenStream) {
        tokens.extend(self.tokens.clone());
    }
}

/// What to generate for one `#[cached]` function.
pub(crate) struct Plan {
    /// The function as written (its attributes without `#[cached]`).
    pub(crate) func: ItemFn,
    /// The typed arguments, in order (not the receiver).
    pub(crate) args: Vec<Arg>,
    pub(crate) key: Key,
    /// Indices into `args` of the key arguments, in key order, each once.
    pub(crate) key_args: Vec<usize>,
    pub(crate) expire: Expr,
    pub(crate) version: Option<Expr>,
    pub(crate) cache: Option<Expr>,
    /// The freshness options (`stale_while_revalidate = 30`, ...): each `Freshness` method and
    /// its value. Empty: the plain runtime (`memoize`).
    pub(crate) freshness: Vec<(Ident, Expr)>,
    /// `lock = ...` (issue 16): `true` or the lock's lifetime; `None` without one.
    pub(crate) lock: Option<Expr>,
    /// The option that runs the body in a spawned task (the `get_or_set` machinery,
    /// `memoize_fresh`), named in errors: the first freshness option, else `lock`, `tags`,
    /// `tags_from` or `invalidate_all`. `None`: the plain runtime (`memoize`), where the body
    /// may borrow.
    pub(crate) spawned_by: Option<String>,
    /// The return type (`()` when none is written).
    pub(crate) ret: Type,
    /// The stored type as spelled (`T` of `Result<T, E>`): where a missing serde impl is reported.
    pub(crate) value_ty: Type,
    pub(crate) policy: Policy,
    /// Whether the wrapper checks that it is not in a trait impl (see [`crate::generate`]).
    pub(crate) check_not_in_trait_impl: bool,
    /// Indices into `args` of the `{name}_invalidate` companion's arguments: the key arguments
    /// and any argument the `cache` expression names.
    pub(crate) invalidate_args: Vec<usize>,
    /// The generics of `{name}_invalidate`: those its arguments need.
    pub(crate) invalidate_generics: Generics,
    /// Tags (issue 16): `Some` (the templates of `tags`, possibly none) when the function's
    /// entries are tagged (`tags` or `invalidate_all`): they then carry the function's tag too,
    /// and `{name}_invalidate_all` is generated.
    pub(crate) tags: Option<Vec<Vec<Part>>>,
    /// `tags_from`: the function or closure choosing tags from the value (its entries are then
    /// tagged: `tags` is `Some`).
    pub(crate) tags_from: Option<Expr>,
    /// Indices into `args` of `{name}_invalidate_all`'s arguments: those the `cache` expression
    /// names.
    pub(crate) invalidate_all_args: Vec<usize>,
    /// The generics of `{name}_invalidate_all`: those its arguments need.
    pub(crate) invalidate_all_generics: Generics,
    /// The path of the `impcache` crate in the expansion: `crate = "..."`, else `::impcache`.
    pub(crate) krate: CratePath,
}

impl Plan {
    /// Checks `args` against `func`, pushing every problem to `errors`; the plan is only
    /// meaningful when no error was pushed.
    pub(crate) fn new(args: Args, func: ItemFn, errors: &mut Errors) -> Option<Plan> {
        check_fn(&args, &func, errors);
        limits::check(&args, errors);
        let (has_receiver, plan_args) = arguments(&func, errors);
        let (key, key_args) = key(&args, has_receiver, &plan_args, errors);
        check_reserved(&args, &key_args, errors);
        let (ret, value_ty, policy) = returns(&args, &func, errors);
        let tags = tags(&args, &plan_args, errors);
        let tags_from = args.tags_from.clone();
        let spawned_by = spawned_by(&args);
        if let Some(option) = &spawned_by {
            check_owned(option, &func, &plan_args, errors);
        }

        // A method (a receiver or a mention of `Self`) checks that it is not in a trait impl,
        // except where the path would need type arguments (type or const parameters,
        // `impl Trait` arguments).
        let simple_generics = func
            .sig
            .generics
            .params
            .iter()
            .all(|p| matches!(p, GenericParam::Lifetime(_)))
            && !plan_args.iter().any(|a| contains_impl_trait(&a.ty));
        let check_not_in_trait_impl = (has_receiver || mentions_self(&func)) && simple_generics;

        let mut cache_mentions = HashSet::new();
        if let Some(expr) = &args.cache {
            mentioned(expr.to_token_stream(), &mut cache_mentions);
        }
        let invalidate_args: Vec<usize> = (0..plan_args.len())
            .filter(|i| {
                key_args.contains(i) || cache_mentions.contains(&plan_args[*i].name.to_string())
            })
            .collect();
        let invalidate_types: TokenStream = invalidate_args
            .iter()
            .map(|&i| plan_args[i].ty.to_token_stream())
            .collect();
        let invalidate_generics = crate::generics::filter(&func.sig.generics, invalidate_types);
        let invalidate_all_args: Vec<usize> = (0..plan_args.len())
            .filter(|i| cache_mentions.contains(&plan_args[*i].name.to_string()))
            .collect();
        let invalidate_all_types: TokenStream = invalidate_all_args
            .iter()
            .map(|&i| plan_args[i].ty.to_token_stream())
            .collect();
        let invalidate_all_generics =
            crate::generics::filter(&func.sig.generics, invalidate_all_types);

        let Args {
            expire,
            version,
            cache,
            freshness,
            lock,
            krate,
            ..
        } = args;
        Some(Plan {
            func,
            args: plan_args,
            key,
            key_args,
            expire: expire?,
            version,
            cache,
            freshness,
            lock,
            spawned_by,
            ret,
            value_ty,
            policy,
            check_not_in_trait_impl,
            invalidate_args,
            invalidate_generics,
            tags,
            tags_from,
            invalidate_all_args,
            invalidate_all_generics,
            krate: CratePath::new(krate),
        })
    }
}

/// An `async fn`, not `const`, and an `expire`.
fn check_fn(args: &Args, func: &ItemFn, errors: &mut Errors) {
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
    // An `expire` that did not parse has its own error.
    if args.expire.is_none() && !args.expire_given {
        errors.push(syn::Error::new(
            Span::call_site(),
            "missing `expire`: every cached value expires, as in `#[cached(expire = 60)]` (seconds or a `Duration`)",
        ));
    }
}

/// Whether the function has a receiver (not by value), and its typed arguments.
fn arguments(func: &ItemFn, errors: &mut Errors) -> (bool, Vec<Arg>) {
    let mut has_receiver = false;
    let mut args = Vec::new();
    for (i, input) in func.sig.inputs.iter().enumerate() {
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
                    Pat::Wild(w) => (
                        format_ident!("__impcache_arg{}", i, span = w.span()),
                        None,
                        None,
                        true,
                    ),
                    other => (
                        // Spanned at the pattern: an argument that is not `Serialize` is
                        // reported on it, not on the whole attribute.
                        format_ident!("__impcache_arg{}", i, span = other.span()),
                        Some(other.clone()),
                        None,
                        false,
                    ),
                };
                args.push(Arg {
                    name,
                    pattern,
                    mutability,
                    ty: (*pt.ty).clone(),
                    attrs: pt.attrs.iter().map(expect_as_allow).collect(),
                    wild,
                });
            }
        }
    }
    (has_receiver, args)
}

/// The option that runs the body in a spawned task (see [`Plan::spawned_by`]), if any.
fn spawned_by(args: &Args) -> Option<String> {
    let first_given = [
        ("lock", args.lock.is_some()),
        ("tags", args.tags.is_some()),
        ("tags_from", args.tags_from.is_some()),
        ("invalidate_all", args.invalidate_all.is_some()),
    ]
    .into_iter()
    .find_map(|(option, given)| given.then(|| option.to_owned()));
    args.freshness
        .first()
        .map(|(option, _)| option.to_string())
        .or(first_given)
}

/// With `option`, the body runs in a spawned task, which cannot borrow (its future must be
/// `'static`): rustc's own error, "borrowed data escapes outside of function", points at the
/// whole attribute. Each borrowed argument the body uses (and `&self`, when the body uses
/// `self`) is reported on its type instead, saying what to take. One the body does not use
/// stays out of the task (the closure does not capture it): it may still be a key argument.
fn check_owned(option: &str, func: &ItemFn, plan_args: &[Arg], errors: &mut Errors) {
    let body = func.block.to_token_stream();
    let spawned = format!("with `{option}` the body runs in a spawned task, which cannot borrow");
    if let Some(receiver) = func.sig.receiver() {
        if borrow_in(&receiver.ty, StaticRef::Owned).is_some() && mentions(body.clone(), "self") {
            errors.push(syn::Error::new_spanned(
                receiver,
                format!("{spawned} `self`: take `self: Arc<Self>` (or `&'static self`), or make the cached function a free function over owned arguments and call it from the method"),
            ));
        }
    }
    for arg in plan_args {
        // A pattern is restored inside the task, so its argument always moves there.
        let used = arg.pattern.is_some() || mentions(body.clone(), &arg.name.to_string());
        if used && borrow_in(&arg.ty, StaticRef::Owned).is_some() {
            errors.push(syn::Error::new_spanned(
                &arg.ty,
                format!("{spawned}: take an owned type ({})", owned_instead(&arg.ty)),
            ));
        }
    }
}

/// What to take instead of the borrowed type `ty`, for [`check_owned`]'s error.
fn owned_instead(ty: &Type) -> &'static str {
    let Type::Reference(r) = ty else {
        return "no references nor lifetimes other than `'static`";
    };
    match &*r.elem {
        Type::Path(p) if p.path.is_ident("str") => "`String` instead of `&str`",
        Type::Slice(_) => "`Vec<T>` instead of `&[T]`",
        _ => "`T` instead of `&T`, or an `Arc<T>` to share it",
    }
}

/// The key layout and the key arguments, from `key`, `skip` and `name`.
/// Whether a `key` template spells a Rust type (`"String"`, `"u64"`, `"(u64, String)"`,
/// `"Vec<u8>"`, `"&str"`) rather than a key: the `cached` crate's `key` is the key's type (with
/// `convert` making it), and a user moving to impcache who drops `convert` keeps a constant key
/// that every call shares (found by a probe, 2026-12-07). A constant such as `"config"` is a
/// deliberate single entry and stays allowed.
fn spells_a_type(template: &str) -> bool {
    const NAMES: [&str; 18] = [
        "String", "str", "bool", "char", "u8", "u16", "u32", "u64", "u128", "usize", "i8", "i16",
        "i32", "i64", "i128", "isize", "f32", "f64",
    ];
    let template = template.trim();
    NAMES.contains(&template)
        || (template.contains(['<', '&', '('])
            && !template.contains('{')
            && syn::parse_str::<Type>(template).is_ok())
}

fn key(
    args: &Args,
    has_receiver: bool,
    plan_args: &[Arg],
    errors: &mut Errors,
) -> (Key, Vec<usize>) {
    let find = |name: &str| {
        plan_args
            .iter()
            .position(|a| a.pattern.is_none() && !a.wild && a.name == name)
    };
    let Some(key) = &args.key else {
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
                        not_an_argument(
                            format!(
                                "`skip` names `{ident}`, but the function has no argument \
                                 `{ident}`"
                            ),
                            &ident.to_string(),
                            plan_args,
                        ),
                    )),
                }
            }
        }
        let key_args = (0..plan_args.len())
            .filter(|i| !skipped.contains(i) && !plan_args[*i].wild)
            .collect();
        let prefix = match &args.name {
            Some(name) => Prefix::Name(name.clone()),
            None if has_receiver => Prefix::Method,
            None => Prefix::Function,
        };
        return (Key::Default(prefix), key_args);
    };

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
    if spells_a_type(&key.value()) {
        errors.push(syn::Error::new_spanned(
            key,
            format!(
                "`key = {:?}` reads as the `cached` crate's key *type*; here `key` is the key \
                 itself, a template over the arguments (`key = \"user:{{id}}\"`): as written, \
                 every call would share one entry",
                key.value()
            ),
        ));
    }
    let mut key_args = Vec::new();
    let mut parts = Vec::new();
    match template::parse(&key.value(), "key") {
        Err(message) => errors.push(syn::Error::new_spanned(key, message)),
        Ok(segments) => {
            for segment in segments {
                match segment {
                    Segment::Literal(text) => parts.push(Part::Literal(text)),
                    Segment::Placeholder(name) => match find(&name) {
                        Some(i) => {
                            if !key_args.contains(&i) {
                                key_args.push(i);
                            }
                            parts.push(Part::Arg(i));
                        }
                        None => errors.push(syn::Error::new_spanned(
                            key,
                            no_such_argument("key", &name, plan_args),
                        )),
                    },
                }
            }
        }
    }
    (Key::Template(parts), key_args)
}

/// The error of a placeholder of `option`'s template that names no argument.
fn no_such_argument(option: &str, name: &str, args: &[Arg]) -> String {
    if name == "self" {
        return format!(
            "`{option}` names `{{self}}`, but `self` is never part of a key: pass what \
             identifies it as an argument, and name that"
        );
    }
    let message =
        format!("`{option}` names `{{{name}}}`, but the function has no argument `{name}`");
    not_an_argument(message, name, args)
}

/// `message` (an option names `name`, which is no argument), with a way out when `name` is
/// bound by an argument written as a pattern (`State(hits): State<..>`, as axum handlers take
/// theirs), which `key`, `skip` and `tags` cannot name.
fn not_an_argument(message: String, name: &str, args: &[Arg]) -> String {
    let bound_by = args
        .iter()
        .find_map(|arg| arg.pattern.as_ref().filter(|pattern| binds(pattern, name)));
    match bound_by {
        Some(pattern) => format!(
            "{message}: `{name}` is bound by the pattern `{}`, whose bindings cannot be named \
             here; give that argument a plain name (`name: Type`), name or skip that, and take \
             it apart in the body",
            pattern.to_token_stream()
        ),
        None => message,
    }
}

/// Whether `pattern` binds `name` (not a path or a field name it mentions).
fn binds(pattern: &Pat, name: &str) -> bool {
    fn any<'a>(patterns: impl IntoIterator<Item = &'a Pat>, name: &str) -> bool {
        patterns.into_iter().any(|pattern| binds(pattern, name))
    }
    match pattern {
        Pat::Ident(binding) => {
            binding.ident == name
                || binding
                    .subpat
                    .as_ref()
                    .is_some_and(|(_, sub)| binds(sub, name))
        }
        Pat::Tuple(tuple) => any(&tuple.elems, name),
        Pat::TupleStruct(tuple) => any(&tuple.elems, name),
        Pat::Struct(fields) => any(fields.fields.iter().map(|field| &*field.pat), name),
        Pat::Slice(slice) => any(&slice.elems, name),
        Pat::Or(or) => any(&or.cases, name),
        Pat::Reference(reference) => binds(&reference.pat, name),
        Pat::Paren(paren) => binds(&paren.pat, name),
        Pat::Type(typed) => binds(&typed.pat, name),
        _ => false,
    }
}

/// What the runtime refuses a written key to start with: the cross-process locks' keys
/// (impcache's `key::LOCK_KEY_PART`; the two must stay equal).
const LOCK_KEY_PART: &str = "__lock:";

/// The segment the runtime refuses in a version: its keys would be tags' state keys
/// (impcache's `Version::is_reserved`; the two must stay equal).
const TAG_SPACE: &str = "__impcache_tag";

/// A key or a version that the runtime refuses on every call (the function would then run
/// uncached, with a warning each time), reported on the option instead: a `key` template or a
/// `name` that makes every key start with `__lock:`, a `version` string with a `__impcache_tag`
/// segment. (A key that only some argument values make reserved is refused at run time.)
fn check_reserved(args: &Args, key_args: &[usize], errors: &mut Errors) {
    let reserved_key = |option: &str, lit: &LitStr| {
        syn::Error::new_spanned(
            lit,
            format!("with this `{option}`, every key starts with `{LOCK_KEY_PART}`, which is reserved for the cross-process locks of loads: the cache refuses to store such a key, and the function would never be cached"),
        )
    };
    match (&args.key, &args.name) {
        (Some(template), _) => {
            if template.value().starts_with(LOCK_KEY_PART) {
                errors.push(reserved_key("key", template));
            }
        }
        (None, Some(name)) => {
            // The default key is `{name}`, or `{name}:{arguments}` with key arguments.
            let mut start = name.value();
            if !key_args.is_empty() {
                start.push(':');
            }
            if start.starts_with(LOCK_KEY_PART) {
                errors.push(reserved_key("name", name));
            }
        }
        (None, None) => {}
    }
    if let Some(Expr::Lit(ExprLit {
        lit: Lit::Str(version),
        ..
    })) = &args.version
    {
        if version
            .value()
            .split(':')
            .any(|segment| segment == TAG_SPACE)
        {
            errors.push(syn::Error::new_spanned(
                version,
                format!("a version with a `{TAG_SPACE}` segment is reserved: `{{prefix}}:{TAG_SPACE}:{{tag}}` keys hold tags' state, and the cache refuses every operation with this version"),
            ));
        }
    }
}

/// The tag templates, their placeholders resolved to arguments as `key`'s are; `None` when the
/// function's entries are not tagged.
fn tags(args: &Args, plan_args: &[Arg], errors: &mut Errors) -> Option<Vec<Vec<Part>>> {
    if args.tags.is_none() && args.invalidate_all.is_none() && args.tags_from.is_none() {
        return None;
    }
    let find = |name: &str| {
        plan_args
            .iter()
            .position(|a| a.pattern.is_none() && !a.wild && a.name == name)
    };
    let mut tags = Vec::new();
    for template in args.tags.iter().flat_map(|(_, templates)| templates) {
        let mut parts = Vec::new();
        match template::parse(&template.value(), "tags") {
            Err(message) => errors.push(syn::Error::new_spanned(template, message)),
            Ok(segments) => {
                if segments.is_empty() {
                    errors.push(syn::Error::new_spanned(template, "a tag cannot be empty"));
                }
                for segment in segments {
                    match segment {
                        Segment::Literal(text) => parts.push(Part::Literal(text)),
                        Segment::Placeholder(name) => match find(&name) {
                            Some(i) => parts.push(Part::Arg(i)),
                            None => errors.push(syn::Error::new_spanned(
                                template,
                                no_such_argument("tags", &name, plan_args),
                            )),
                        },
                    }
                }
            }
        }
        tags.push(parts);
    }
    Some(tags)
}

/// The return type, the stored type as spelled, and the policy choosing what is cached.
fn returns(args: &Args, func: &ItemFn, errors: &mut Errors) -> (Type, Type, Policy) {
    let ret: Type = match &func.sig.output {
        ReturnType::Default => syn::parse_quote!(()),
        ReturnType::Type(_, ty) => (**ty).clone(),
    };
    // Not for a `fn` returning `impl Future`: `check_fn`'s "requires an `async fn`" says it.
    if contains_impl_trait(&ret) && func.sig.asyncness.is_some() {
        errors.push(syn::Error::new_spanned(
            &ret,
            "`#[cached]` cannot store an `impl Trait` return type: name the type",
        ));
    }
    if let Some(span) = borrow_in(&ret, StaticRef::Borrow) {
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
    (ret, value_ty, policy)
}

/// Whether the signature mentions `Self`: then the function is in an impl. (Not the body: it may
/// hold an impl of its own.)
fn mentions_self(func: &ItemFn) -> bool {
    let mut names = HashSet::new();
    mentioned(func.sig.to_token_stream(), &mut names);
    names.contains("Self")
}
