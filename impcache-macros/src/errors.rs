//! Error accumulation: every problem is reported at once (serde's `Ctxt`, darling's `Accumulator`).

#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(error),
            None => self.0 = Some(error),
        }
    }

    pub(crate) fn finish(self) -> Option<syn::Error> {
        self.0
    }
}
