//! How a command prints an error: each cause once.
//!
//! The rule for error types (thiserror) in this workspace: a message either
//! names its cause in its own text (and then keeps it as a plain field, not a
//! `source`), or leaves it out and exposes it as `source`; never both, or
//! `{:#}`-style printing says it twice ("wrong service: …: wrong service: …").
//! [`error_chain`] also skips any cause whose text the message already
//! contains, so an error from a dependency that breaks the rule is still
//! said once.

use std::error::Error;

/// `error: cause: its cause`, each cause once; a cause already contained in
/// what was said before it is skipped.
pub fn error_chain(error: &(dyn Error + 'static)) -> String {
    let mut said = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let text = e.to_string();
        if !text.is_empty() && !said.contains(&text) {
            said.push_str(": ");
            said.push_str(&text);
        }
        cause = e.source();
    }
    said
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("talking to the index: {0}")]
    struct Doubled(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read notes.txt")]
    struct Plain(#[source] std::io::Error);

    #[test]
    fn each_cause_is_said_once() {
        let io = || std::io::Error::other("Is a directory (os error 21)");
        assert_eq!(
            error_chain(&Doubled(io())),
            "talking to the index: Is a directory (os error 21)"
        );
        assert_eq!(
            error_chain(&Plain(io())),
            "cannot read notes.txt: Is a directory (os error 21)"
        );
    }
}
