//! Parsing `#[cached(...)]` options: one struct, duplicates and unknown options reported
//! together with every other error.

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::ToTokens;
use syn::parse::{ParseStream, Parser};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, ExprLit, Ident, Lit, LitBool, LitStr, Meta, Token};

use crate::errors::Errors;

/// The valid options, in the order the error message lists them.
const OPTIONS: &str = "`expire`, `version`, `cache`, `key`, `skip`, `name`, `cache_none`, `returns`, `stale_while_revalidate`, `stale_if_error`, `soft_timeout`, `hard_timeout`, `early_refresh`, `fail_safe_throttle`, `lock`, `tags`, `tags_from`, `invalidate_all`, `crate`";

/// The freshness options (issue 15), each taking seconds or a `Duration`: the name of the
/// `impcache::Freshness` builder method each one calls.
const FRESHNESS: [&str; 6] = [
    "stale_while_revalidate",
    "stale_if_error",
    "soft_timeout",
    "hard_timeout",
    "early_refresh",
    "fail_safe_throttle",
];

/// What `crate = ..` takes.
const CRATE_EXPECTED: &str =
    "`crate` takes the path of the impcache crate, e.g. `crate = \"my_facade::impcache\"`";

/// `returns = "..."`: which part of the return value is cached, overriding the classification
/// by type.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Returns {
    /// `Ok`'s value of a `Result` (checked on the type).
    Result,
    /// `Some`'s value of an `Option` (checked on the type).
    Option,
    /// The whole value, whatever its type.
    Value,
}

#[derive(Default)]
pub(crate) struct Args {
    pub(crate) expire: Option<Expr>,
    pub(crate) version: Option<Expr>,
    pub(crate) cache: Option<Expr>,
    pub(crate) key: Option<LitStr>,
    pub(crate) skip: Option<(Span, Vec<Ident>)>,
    pub(crate) name: Option<LitStr>,
    pub(crate) cache_none: Option<LitBool>,
    pub(crate) returns: Option<(LitStr, Returns)>,
    /// The freshness options given, in order: each option's name and value.
    pub(crate) freshness: Vec<(Ident, Expr)>,
    /// `lock` (issue 16): `true` for the default `Lock`, else its lifetime (seconds or a
    /// `Duration`); `None` without one (or `lock = false`).
    pub(crate) lock: Option<Expr>,
    /// Whether `lock` was given (a second one is a duplicate, even after `lock = false`).
    pub(crate) lock_given: bool,
    /// Tags (issue 16): `tags = ["user:{id}", ..]`, the option's span and its templates.
    pub(crate) tags: Option<(Span, Vec<LitStr>)>,
    /// `tags_from = org_tags` (issue 16): tags chosen from the value once it is there, by a
    /// function or closure over `&Value`.
    pub(crate) tags_from: Option<Expr>,
    /// `invalidate_all`: tag every entry with the function's tag and generate
    /// `{name}_invalidate_all` (implied by `tags`).
    pub(crate) invalidate_all: Option<Span>,
    /// `crate = "path"`: the path of the `impcache` crate in the expansion, for a crate that
    /// renamed the dependency or uses it through a re-export (as tokio's `crate` option).
    pub(crate) krate: Option<syn::Path>,
    /// Whether an option starts with `expire` (or `time`, the `cached` crate's name for it),
    /// even one that did not parse: `expire` is then not reported missing on top of its own
    /// error.
    pub(crate) expire_given: bool,
}

/// Stores `value` in `slot`, or reports a duplicate at `path`.
fn set<T>(slot: &mut Option<T>, value: T, path: &syn::Path, option: &str, errors: &mut Errors) {
    if slot.is_some() {
        errors.push(syn::Error::new_spanned(
            path,
            format!("`{option}` specified more than once"),
        ));
    } else {
        *slot = Some(value);
    }
}

fn value<'a>(meta: &'a Meta, option: &str, example: &str, errors: &mut Errors) -> Option<&'a Expr> {
    match meta {
        Meta::NameValue(nv) => Some(&nv.value),
        _ => {
            errors.push(syn::Error::new_spanned(
                meta,
                format!("expected `{option} = {example}`"),
            ));
            None
        }
    }
}

fn lit_str(expr: &Expr, option: &str, errors: &mut Errors) -> Option<LitStr> {
    match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => Some(s.clone()),
        _ => {
            errors.push(syn::Error::new_spanned(
                expr,
                format!("`{option}` takes a string literal"),
            ));
            None
        }
    }
}

/// Whether `expr` is a literal negative number, or a duration known to be zero (the literal
/// forms [`durations::known`](crate::durations::known) reads).
fn is_obviously_not_positive(expr: &Expr) -> bool {
    match expr {
        // (A negative literal as an attribute's last value is one `Lit::Int`, `-5`.)
        Expr::Lit(ExprLit {
            lit: Lit::Int(i), ..
        }) if i.base10_digits().starts_with('-') => true,
        Expr::Unary(u) => matches!(u.op, syn::UnOp::Neg(_)),
        Expr::Paren(p) => is_obviously_not_positive(&p.expr),
        _ => crate::durations::known(expr).is_some_and(|duration| duration.is_zero()),
    }
}

/// The options, each parsed on its own: a syntax error in one is reported and the parsing goes
/// on after the next top-level comma, so that the other options are still read (and checked),
/// and an `expire` that does not parse is not also reported missing.
fn options(tokens: TokenStream, args: &mut Args, errors: &mut Errors) -> Vec<Meta> {
    let mut metas = Vec::new();
    let parser = |input: ParseStream<'_>| -> syn::Result<()> {
        while !input.is_empty() {
            // (Another name of `expire`, such as `cached`'s `time`, has its own error, which
            // says to write `expire`.)
            if input
                .cursor()
                .ident()
                .is_some_and(|(ident, _)| ident == "expire" || names_expire(&ident.to_string()))
            {
                args.expire_given = true;
            }
            match option(input) {
                Ok(meta) => {
                    metas.push(meta);
                    if input.is_empty() {
                        break;
                    }
                    if input.peek(Token![,]) {
                        input.parse::<Token![,]>()?;
                    } else {
                        // A missing comma before the next option (`key = "k" name = "n"`): both
                        // are read, the second from here.
                        errors.push(input.error("expected `,` between options"));
                    }
                }
                Err(e) => {
                    errors.push(e);
                    // From wherever the failed option stopped (a comma it consumed, as in a
                    // closure's `|a, b|`, was inside it).
                    skip_past_comma(input)?;
                }
            }
        }
        Ok(())
    };
    if let Err(e) = parser.parse2(tokens) {
        errors.push(e);
    }
    metas
}

/// One option (`name`, `name = value`, `name(...)`), followed by a `,`, the end, or an
/// identifier (the next option, its comma missing).
fn option(input: ParseStream<'_>) -> syn::Result<Meta> {
    // `name = ,` / `name = )`: said on `name =` rather than on what follows (a comma, or the
    // whole attribute at its end).
    if let Some((name, rest)) = input.cursor().ident() {
        if let Some((eq, rest)) = rest.punct() {
            let value_missing = rest.eof() || rest.punct().is_some_and(|(p, _)| p.as_char() == ',');
            if eq.as_char() == '=' && value_missing {
                let mut tokens = TokenStream::new();
                tokens.extend([TokenTree::Ident(name.clone()), TokenTree::Punct(eq)]);
                return Err(syn::Error::new_spanned(
                    tokens,
                    format!("`{name} =` needs a value"),
                ));
            }
        }
    }
    let meta: Meta = input.parse()?;
    if !(input.is_empty() || input.peek(Token![,]) || input.peek(Ident)) {
        let message = match &meta {
            Meta::Path(path) => format!(
                "expected `=`, `(` or `,` after `{}`",
                path.to_token_stream()
            ),
            _ => "expected `,` between options".to_owned(),
        };
        return Err(input.error(message));
    }
    Ok(meta)
}

/// Skips the tokens of an option that did not parse, up to and including the next top-level
/// comma (commas inside brackets are in their group, skipped with it).
fn skip_past_comma(input: ParseStream<'_>) -> syn::Result<()> {
    input.step(|cursor| {
        let mut rest = *cursor;
        while let Some((tree, next)) = rest.token_tree() {
            rest = next;
            if matches!(&tree, TokenTree::Punct(p) if p.as_char() == ',') {
                break;
            }
        }
        Ok(((), rest))
    })
}

pub(crate) fn parse(tokens: TokenStream, errors: &mut Errors) -> Args {
    let mut args = Args::default();
    let metas = options(tokens, &mut args, errors);
    for meta in &metas {
        let path = meta.path();
        let Some(option) = path.get_ident().map(Ident::to_string) else {
            errors.push(syn::Error::new_spanned(
                path,
                format!("unknown option; expected one of: {OPTIONS}"),
            ));
            continue;
        };
        match option.as_str() {
            "expire" => {
                if let Some(expr) = value(meta, "expire", "100", errors) {
                    if is_obviously_not_positive(expr) {
                        errors.push(syn::Error::new_spanned(
                            expr,
                            "`expire` must be positive: a cached value always expires",
                        ));
                    }
                    set(&mut args.expire, expr.clone(), path, "expire", errors);
                }
            }
            "version" => {
                if let Some(expr) = value(meta, "version", "2", errors) {
                    set(&mut args.version, expr.clone(), path, "version", errors);
                }
            }
            "cache" => {
                if let Some(expr) = value(meta, "cache", "MY_CACHE", errors) {
                    set(&mut args.cache, expr.clone(), path, "cache", errors);
                }
            }
            "key" => {
                if let Some(s) = value(meta, "key", "\"user:{id}\"", errors)
                    .and_then(|e| lit_str(e, "key", errors))
                {
                    if s.value().is_empty() {
                        errors.push(syn::Error::new_spanned(
                            &s,
                            "`key` cannot be empty: every call (of every function with it) would share one entry",
                        ));
                    }
                    set(&mut args.key, s, path, "key", errors);
                }
            }
            "name" => {
                if let Some(s) = value(meta, "name", "\"users::get\"", errors)
                    .and_then(|e| lit_str(e, "name", errors))
                {
                    if s.value().is_empty() {
                        errors.push(syn::Error::new_spanned(&s, "`name` cannot be empty"));
                    }
                    set(&mut args.name, s, path, "name", errors);
                }
            }
            "crate" => {
                // A string, as tokio's and serde's `crate` options, or the path itself.
                let krate = match value(meta, "crate", "\"my_facade::impcache\"", errors) {
                    Some(Expr::Path(p)) if p.qself.is_none() && p.attrs.is_empty() => {
                        Some(p.path.clone())
                    }
                    Some(Expr::Lit(ExprLit {
                        lit: Lit::Str(s), ..
                    })) => match s.parse_with(syn::Path::parse_mod_style) {
                        // Parsed with the literal's span: an unresolved path is reported there.
                        Ok(krate) => Some(krate),
                        Err(_) => {
                            errors.push(syn::Error::new_spanned(s, CRATE_EXPECTED));
                            None
                        }
                    },
                    Some(other) => {
                        errors.push(syn::Error::new_spanned(other, CRATE_EXPECTED));
                        None
                    }
                    None => None,
                };
                if let Some(krate) = krate {
                    set(&mut args.krate, krate, path, "crate", errors);
                }
            }
            "cache_none" => {
                let b = match meta {
                    Meta::Path(p) => Some(LitBool::new(true, p.span())),
                    Meta::NameValue(nv) => match &nv.value {
                        Expr::Lit(ExprLit {
                            lit: Lit::Bool(b), ..
                        }) => Some(b.clone()),
                        other => {
                            errors.push(syn::Error::new_spanned(
                                other,
                                "`cache_none` takes `true` or `false`",
                            ));
                            None
                        }
                    },
                    Meta::List(_) => {
                        errors.push(syn::Error::new_spanned(
                            meta,
                            "expected `cache_none = true`",
                        ));
                        None
                    }
                };
                if let Some(b) = b {
                    set(&mut args.cache_none, b, path, "cache_none", errors);
                }
            }
            "returns" => {
                if let Some(s) = value(meta, "returns", "\"result\"", errors)
                    .and_then(|e| lit_str(e, "returns", errors))
                {
                    let returns = match s.value().as_str() {
                        "result" => Some(Returns::Result),
                        "option" => Some(Returns::Option),
                        "value" => Some(Returns::Value),
                        _ => {
                            errors.push(syn::Error::new_spanned(
                                &s,
                                "`returns` takes \"result\" (cache `Ok`'s value), \"option\" (cache `Some`'s value) or \"value\" (cache the whole value)",
                            ));
                            None
                        }
                    };
                    if let Some(returns) = returns {
                        set(&mut args.returns, (s, returns), path, "returns", errors);
                    }
                }
            }
            "skip" => match meta {
                Meta::List(list) => {
                    let parser = |input: syn::parse::ParseStream<'_>| {
                        Punctuated::<Ident, Token![,]>::parse_terminated_with(input, |input| {
                            if input.peek(Token![self]) {
                                return Err(input
                                    .error("`self` is never part of the key: no need to skip it"));
                            }
                            input.parse::<Ident>()
                        })
                    };
                    match list.parse_args_with(parser) {
                        Ok(idents) => set(
                            &mut args.skip,
                            (path.span(), idents.into_iter().collect()),
                            path,
                            "skip",
                            errors,
                        ),
                        Err(e) => errors.push(e),
                    }
                }
                _ => errors.push(syn::Error::new_spanned(meta, "expected `skip(arg, ...)`")),
            },
            name if FRESHNESS.contains(&name) => freshness(&mut args, meta, name, errors),
            "lock" => lock(&mut args, meta, errors),
            "tags" => {
                if let Some(templates) = value(meta, "tags", "[\"user:{id}\"]", errors)
                    .and_then(|e| tag_templates(e, errors))
                {
                    set(
                        &mut args.tags,
                        (path.span(), templates),
                        path,
                        "tags",
                        errors,
                    );
                }
            }
            "tags_from" => {
                if let Some(expr) = value(meta, "tags_from", "org_tags", errors) {
                    set(&mut args.tags_from, expr.clone(), path, "tags_from", errors);
                }
            }
            "invalidate_all" => match meta {
                Meta::Path(p) => set(
                    &mut args.invalidate_all,
                    p.span(),
                    path,
                    "invalidate_all",
                    errors,
                ),
                _ => errors.push(syn::Error::new_spanned(
                    meta,
                    "`invalidate_all` takes no value: write `invalidate_all`",
                )),
            },
            _ => {
                let message = match cached_crate_hint(&option) {
                    Some(hint) => format!("unknown option `{option}`{hint}"),
                    None => format!("unknown option `{option}`; expected one of: {OPTIONS}"),
                };
                errors.push(syn::Error::new_spanned(path, message));
            }
        }
    }
    args
}

/// Whether `option` is another name of `expire`: the `cached` crate's (`time` in its 0.x
/// releases, `ttl`, `ttl_secs` and `ttl_millis` later) or a likely misspelling.
fn names_expire(option: &str) -> bool {
    matches!(
        option,
        "time" | "ttl" | "ttl_secs" | "ttl_millis" | "expires" | "expiry" | "expiration"
    )
}

/// For an option of the `cached` crate's `#[cached]` (in its 0.x releases and later), or a
/// likely misspelling of `expire`, what says the same here (the end of the "unknown option"
/// error).
fn cached_crate_hint(option: &str) -> Option<&'static str> {
    Some(match option {
        "ttl_millis" => "; did you mean `expire`? (`expire = Duration::from_millis(..)`, or seconds: `expire = 60`)",
        _ if names_expire(option) => "; did you mean `expire`? (seconds, as `cached`'s `time` and `ttl`: `expire = 60`, or a `Duration`)",
        "result" => "; did you mean `returns = \"result\"`? (not needed: a `Result` is told by its type, and only `Ok` is cached)",
        "option" => "; did you mean `returns = \"option\"`? (not needed: an `Option` is told by its type, and only `Some` is cached)",
        "sync_writes" => "; did you mean `lock`? (concurrent calls of one key run once per process already, as with `cached`'s `sync_writes`; `lock` makes it once across processes)",
        "size" | "unbound" | "max_size" => ": a function has no size of its own here; bound the cache instead (`MemoryCacheRepository::builder().max_capacity_bytes(..)`)",
        "convert" => "; did you mean `key = \"...\"`? (a template over the arguments, as in `key = \"user:{id}\"`; `skip(..)` leaves arguments out of the default key)",
        "result_fallback" => "; did you mean `stale_if_error = ..`? (the last value answers when the body fails, for that long past `expire`)",
        "cache_err" => ": an `Err` is never cached here; `stale_if_error = ..` answers with the last `Ok` value when the body fails",
        "refresh" | "time_refresh" => ": a hit does not restart an entry's lifetime here (it lives `expire` from its store); `stale_while_revalidate = ..` serves it past that while one call recomputes it, `early_refresh` recomputes it before",
        "map_error" => ": not needed; a cache error never reaches the caller here (the body runs instead, fail open), and an `Err` of the body is returned as it is",
        "redis" | "disk" | "disk_dir" | "connection_config" | "sync_to_disk_on_cache_change" | "cache_prefix_block" => ": the store is the `Cache` given with `cache = ..` (else the default cache); for Redis, `Cache::new(RedisCacheRepository::new(url)?)`",
        "ty" | "create" => ": the store is a `Cache`, given with `cache = ..` (else the default cache)",
        "in_impl" => ": not needed, `#[cached]` works on methods in `impl` blocks as it is",
        "with_cached_flag" => ": not available; hits and misses are counted in `impcache_lookups_total` (see OBSERVABILITY.md)",
        _ => return None,
    })
}

/// `tags = ["user:{id}", "org:{org}"]`: an array of string literals.
fn tag_templates(expr: &Expr, errors: &mut Errors) -> Option<Vec<LitStr>> {
    let Expr::Array(array) = expr else {
        errors.push(syn::Error::new_spanned(
            expr,
            "`tags` takes a list of string literals, as in `tags = [\"user:{id}\"]`",
        ));
        return None;
    };
    let mut templates = Vec::new();
    for element in &array.elems {
        templates.push(lit_str(element, "tags", errors)?);
    }
    Some(templates)
}

/// A freshness option: `name = 30` (seconds) or `name = Duration::from_millis(100)`.
fn freshness(args: &mut Args, meta: &Meta, name: &str, errors: &mut Errors) {
    let Some(expr) = value(meta, name, "30", errors) else {
        return;
    };
    if is_obviously_not_positive(expr) {
        errors.push(syn::Error::new_spanned(
            expr,
            format!("`{name}` must be positive"),
        ));
    }
    let path = meta.path();
    if args.freshness.iter().any(|(given, _)| given == name) {
        errors.push(syn::Error::new_spanned(
            path,
            format!("`{name}` specified more than once"),
        ));
        return;
    }
    if let Some(ident) = path.get_ident() {
        args.freshness.push((ident.clone(), expr.clone()));
    }
}

/// `lock` (or `lock = true`): the default lock; `lock = 30` / `lock = Duration::...`: a lock of
/// that lifetime (its wait `Lock`'s default, twice that); `lock = Lock::new()...`: that lock;
/// `lock = false`: none.
fn lock(args: &mut Args, meta: &Meta, errors: &mut Errors) {
    const TAKES: &str =
        "`lock` takes `true`, `false`, a lifetime in seconds or a `Duration`, or a `Lock`";
    if args.lock_given {
        errors.push(syn::Error::new_spanned(
            meta.path(),
            "`lock` specified more than once",
        ));
        return;
    }
    args.lock_given = true;
    let expr = match meta {
        Meta::Path(path) => Expr::Lit(ExprLit {
            attrs: Vec::new(),
            lit: Lit::Bool(LitBool::new(true, path.span())),
        }),
        Meta::NameValue(nv) => nv.value.clone(),
        Meta::List(_) => {
            errors.push(syn::Error::new_spanned(meta, "expected `lock = 10`"));
            return;
        }
    };
    match &expr {
        Expr::Lit(ExprLit {
            lit: Lit::Bool(b), ..
        }) if !b.value => {}
        Expr::Lit(ExprLit {
            lit: Lit::Bool(_) | Lit::Int(_),
            ..
        })
        | Expr::Path(_)
        | Expr::Call(_)
        | Expr::MethodCall(_)
        | Expr::Paren(_)
        | Expr::Unary(_)
        | Expr::Binary(_)
        | Expr::Macro(_)
        | Expr::Field(_)
        | Expr::Block(_) => {
            if is_obviously_not_positive(&expr) {
                errors.push(syn::Error::new_spanned(
                    &expr,
                    "`lock`'s lifetime must be positive",
                ));
            } else {
                args.lock = Some(expr);
            }
        }
        other => errors.push(syn::Error::new_spanned(other, TAKES)),
    }
}
