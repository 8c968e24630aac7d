//! Progress bars with rate and ETA for long work (training, sampling, evaluation). They draw on
//! stderr when it is a terminal and stay silent otherwise; `tracing` logs carry the same facts
//! into files and CI logs.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar over `total` units named `unit` (e.g. "step", "image"), labelled `label`.
pub fn progress_bar(total: u64, label: &str, unit: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    let template = format!(
        "{{prefix}} [{{bar:32.cyan/blue}}] {{pos}}/{{len}} {unit}s  {{per_sec}}  elapsed {{elapsed_precise}}  ETA {{eta_precise}}  {{msg}}"
    );
    bar.set_style(
        ProgressStyle::with_template(&template)
            .expect("static progress template is valid")
            .progress_chars("=> "),
    );
    bar.set_prefix(label.to_owned());
    bar
}
