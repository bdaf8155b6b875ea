//! The environment variables that set command-line flags (`PEER_*`,
//! `INDEX_*`, `LAB_*`): an empty one counts as unset, as README's input
//! rules say, instead of a flag given an empty value.

/// Removes every environment variable whose name starts with one of
/// `prefixes` and whose value is empty, so that clap falls back to the
/// flag's default. Call it first thing in `main`, before any thread is
/// started (changing the environment is only sound while the process has
/// one thread).
pub fn unset_empty(prefixes: &[&str]) {
    let empty: Vec<std::ffi::OsString> = std::env::vars_os()
        .filter(|(k, v)| {
            v.is_empty()
                && k.to_str()
                    .is_some_and(|k| prefixes.iter().any(|p| k.starts_with(p)))
        })
        .map(|(k, _)| k)
        .collect();
    for k in empty {
        std::env::remove_var(k);
    }
}
