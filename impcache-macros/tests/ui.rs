//! Compile-time diagnostics of `#[cached]`. The `.stderr` goldens come from rustc 1.95; other
//! compilers word some errors differently: regenerate with `TRYBUILD=overwrite` and review.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/fail/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
