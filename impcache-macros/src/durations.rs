//! The durations an option's literal forms spell, read at compile time: an integer literal
//! (seconds), a path ending in `ZERO`, or `from_secs`, `seconds`, `from_millis`, `from_micros` or
//! `from_nanos` of an integer literal. Read by the zero checks ([`crate::args`]) and the bounds
//! checks ([`crate::limits`]).

use std::time::Duration;

use syn::{Expr, ExprLit, Lit};

/// The value of a duration option, when it is known at compile time (see the module docs).
pub(crate) fn known(expr: &Expr) -> Option<Duration> {
    match expr {
        Expr::Lit(_) => integer(expr).map(Duration::from_secs),
        Expr::Paren(p) => known(&p.expr),
        Expr::Path(p) => p
            .path
            .segments
            .last()
            .filter(|s| s.ident == "ZERO")
            .map(|_| Duration::ZERO),
        Expr::Call(call) if call.args.len() == 1 => {
            let Expr::Path(func) = &*call.func else {
                return None;
            };
            let ctor = func.path.segments.last()?.ident.to_string();
            let count = integer(call.args.first()?)?;
            match ctor.as_str() {
                "from_secs" | "seconds" => Some(Duration::from_secs(count)),
                "from_millis" => Some(Duration::from_millis(count)),
                "from_micros" => Some(Duration::from_micros(count)),
                "from_nanos" => Some(Duration::from_nanos(count)),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The value of a non-negative integer literal (any suffix), possibly in parentheses.
fn integer(expr: &Expr) -> Option<u64> {
    match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Int(i), ..
        }) => i.base10_digits().parse().ok(),
        Expr::Paren(p) => integer(&p.expr),
        _ => None,
    }
}
