//! Load a text model directory, then sample, continue a prompt and fill gaps:
//! `cargo run --release -p diffuse-text --example sample_text -- [MODEL_DIR]`.

use diffuse_text::pipeline::{TextPipeline, TextSampleOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let model = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "data/models/shakespeare".into());
    let pipe = TextPipeline::load(model.as_ref(), tch::Device::cuda_if_available())?;
    let options = TextSampleOptions {
        num: 2,
        seed: Some(0),
        ..Default::default()
    };

    // Unconditional samples of the model's training length.
    for text in pipe.sample(&options, |_, _| {})?.texts {
        println!("--- sample ---\n{text}\n");
    }
    // A prompt is kept and the rest generated.
    let continued = pipe.continue_prompt("ROMEO:\n", &options, |_, _| {})?;
    println!("--- continued ---\n{}\n", continued.texts[0]);
    // Each `_` is one token to generate (one character with a character-level tokenizer).
    let filled = pipe.infill(
        "To be, or not to be, that is the ________:",
        &options,
        |_, _| {},
    )?;
    println!("--- filled ---\n{}", filled.texts[0]);
    Ok(())
}
