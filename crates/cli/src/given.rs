//! Which flags the user typed (as opposed to clap's defaults), for the checks a default cannot
//! tell apart: a flag that does not apply to the chosen process or network, and flags that
//! `--resume` does not apply (the run's run.json settings do). `main` records them once.

use std::collections::BTreeSet;
use std::sync::OnceLock;

static GIVEN: OnceLock<BTreeSet<String>> = OnceLock::new();

/// Record the flags of the innermost subcommand that came from the command line (arg ids:
/// field names such as `lr_schedule`).
pub fn record(matches: &clap::ArgMatches) {
    let mut leaf = matches;
    while let Some((_, sub)) = leaf.subcommand() {
        leaf = sub;
    }
    let ids = leaf
        .ids()
        // Flattened structs add group ids named after the struct (CamelCase); flags are the
        // snake_case field names.
        .filter(|id| !id.as_str().chars().any(|c| c.is_ascii_uppercase()))
        .filter(|id| leaf.value_source(id.as_str()) == Some(clap::parser::ValueSource::CommandLine))
        .map(|id| id.as_str().to_string())
        .collect();
    let _ = GIVEN.set(ids);
}

/// Whether `--flag` (by arg id, e.g. `lr_schedule`) was typed.
pub fn given(id: &str) -> bool {
    GIVEN.get().is_some_and(|ids| ids.contains(id))
}

/// The typed flags among `ids`, as `--flag-name`s.
pub fn given_among<'a>(ids: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    ids.into_iter()
        .filter(|id| given(id))
        .map(flag_name)
        .collect()
}

/// The typed flags outside `allowed`, as `--flag-name`s.
pub fn given_except(allowed: &[&str]) -> Vec<String> {
    GIVEN
        .get()
        .map(|ids| {
            ids.iter()
                .filter(|id| !allowed.contains(&id.as_str()))
                .map(|id| flag_name(id))
                .collect()
        })
        .unwrap_or_default()
}

/// `lr_schedule` -> `--lr-schedule`.
pub fn flag_name(id: &str) -> String {
    format!("--{}", id.replace('_', "-"))
}

/// The arg ids of a flattened flag group (e.g. the count-diffusion flags).
pub fn ids_of<A: clap::Args>() -> Vec<String> {
    A::augment_args(clap::Command::new("flags"))
        .get_arguments()
        .map(|a| a.get_id().as_str().to_string())
        .collect()
}
