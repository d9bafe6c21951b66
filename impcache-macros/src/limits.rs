//! The runtime's bounds on durations, checked at compile time where the values are known: an
//! option the runtime would refuse on every call (and so run the body uncached on every call) is
//! a compile error instead. A value is known when it is one of the literal forms
//! [`crate::durations::known`] reads (as the zero checks of [`crate::args`] do); anything else (a
//! `const`, a computed value, `Duration::MAX`) is left to the runtime.

use std::time::Duration;

use syn::Expr;

use crate::args::Args;
use crate::durations::known;
use crate::errors::Errors;

/// `impcache::MAX_EXPIRE`, which this crate cannot name: the longest expiry and the longest lock
/// lifetime, 100 years. A hard timeout this long or longer is no limit to the lock.
const MAX_EXPIRE: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// The longest stale window the runtime keeps (half of [`MAX_EXPIRE`]): a longer one is cut to
/// it, not refused.
const LONGEST_STALE_WINDOW: Duration = Duration::from_secs(MAX_EXPIRE.as_secs() / 2);

/// The stale windows, whose longer one is added to `expire` in the stored expiry.
const STALE_WINDOWS: [&str; 2] = ["stale_while_revalidate", "stale_if_error"];

/// `MAX_EXPIRE` as the messages write it.
const MAX_TEXT: &str = "100 years (3153600000s)";

/// The value of the freshness option `name`, when it is given and known.
fn freshness<'a>(args: &'a Args, name: &str) -> Option<(&'a Expr, Duration)> {
    let (_, expr) = args.freshness.iter().find(|(given, _)| given == name)?;
    known(expr).map(|value| (expr, value))
}

/// Checks the known durations against the runtime's bounds (`Expire::resolve`,
/// `Freshness::stored_expiry`, `Lock::checked`), pushing an error for each one it would refuse:
/// - `expire` longer than `MAX_EXPIRE`;
/// - `expire` plus the longer stale window (cut to `LONGEST_STALE_WINDOW`) longer than
///   `MAX_EXPIRE`;
/// - a `lock` lifetime longer than `MAX_EXPIRE`, or not longer than a `hard_timeout` shorter
///   than `MAX_EXPIRE`.
///
/// (A `lock` lifetime under 1 ms, also refused at run time, is left to the runtime.)
pub(crate) fn check(args: &Args, errors: &mut Errors) {
    check_expire(args, errors);
    check_lock(args, errors);
}

/// `expire` over `MAX_EXPIRE`, alone or plus the longer stale window.
fn check_expire(args: &Args, errors: &mut Errors) {
    let Some((expr, expire)) = args.expire.as_ref().and_then(|e| Some((e, known(e)?))) else {
        return;
    };
    if expire > MAX_EXPIRE {
        errors.push(syn::Error::new_spanned(
            expr,
            format!(
                "`expire` ({expire:?}) is longer than the longest expiry, {MAX_TEXT}: every call would be refused at run time and run the body uncached"
            ),
        ));
        return;
    }
    // Of the windows known, the longest: the runtime's window is at least that long.
    let window = STALE_WINDOWS
        .iter()
        .filter_map(|name| freshness(args, name).map(|(expr, value)| (*name, expr, value)))
        .max_by_key(|(_, _, value)| *value);
    if let Some((name, window_expr, window)) = window {
        let kept = window.min(LONGEST_STALE_WINDOW);
        if expire.saturating_add(kept) > MAX_EXPIRE {
            let cut = if window > kept {
                format!(", kept as 50 years ({kept:?})")
            } else {
                String::new()
            };
            errors.push(syn::Error::new_spanned(
                window_expr,
                format!(
                    "`expire` ({expire:?}) plus `{name}` ({window:?}{cut}) is longer than the longest expiry, {MAX_TEXT}: every call would be refused at run time and run the body uncached"
                ),
            ));
        }
    }
}

/// A `lock` lifetime over `MAX_EXPIRE`, or not longer than `hard_timeout`.
fn check_lock(args: &Args, errors: &mut Errors) {
    let Some((expr, lifetime)) = args.lock.as_ref().and_then(|e| Some((e, known(e)?))) else {
        return;
    };
    let refused = |reason: String| {
        syn::Error::new_spanned(
            expr,
            format!("{reason}: every call would be refused at run time and run the body uncached"),
        )
    };
    if lifetime > MAX_EXPIRE {
        errors.push(refused(format!(
            "`lock`'s lifetime ({lifetime:?}) is longer than the longest expiry, {MAX_TEXT}"
        )));
    } else if let Some((_, hard)) = freshness(args, "hard_timeout") {
        if hard < MAX_EXPIRE && lifetime <= hard {
            errors.push(refused(format!(
                "`lock`'s lifetime ({lifetime:?}) must be longer than `hard_timeout` ({hard:?}), so that the lock outlives the body it guards"
            )));
        }
    }
}
