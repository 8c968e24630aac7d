//! Load an audio model, sample clips into WAV files with their spectrograms, then fill a gap in
//! the first clip: the library calls the README shows, runnable.
//!
//! `cargo run --release -p diffuse-audio --example sample_and_fill -- [MODEL_DIR] [OUT_DIR]`
//! (defaults: the bundled `data/models/drums` and `out/`).

use diffuse_audio::features::save_spectrogram_png;
use diffuse_audio::pipeline::{AudioPipeline, AudioSampleOptions};
use diffuse_audio::wav::{read_audio, write_wav, SampleFormat};
use diffuse_core::sampler_choice::SamplerChoice;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let model = PathBuf::from(args.next().unwrap_or_else(|| "data/models/drums".into()));
    let out = PathBuf::from(args.next().unwrap_or_else(|| "out".into()));
    std::fs::create_dir_all(&out)?;

    // Three clips of the training length with DiffWave's 6-step schedule.
    let pipeline = AudioPipeline::load(&model, tch::Device::cuda_if_available())?;
    let options = AudioSampleOptions {
        num: 3,
        sampler: SamplerChoice {
            name: Some("diffwave-fast".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let clips = pipeline.sample_clips(&options, |_, _| {})?;
    for (i, clip) in clips.iter().enumerate() {
        let path = out.join(format!("example-{i}.wav"));
        write_wav(&path, clip, SampleFormat::Int16)?;
        save_spectrogram_png(
            &clip.to_tensor(),
            clip.sample_rate,
            &path.with_extension("png"),
        )?;
        println!("wrote {} and its spectrogram", path.display());
    }

    // Regenerate the middle fifth of the first clip with the full DDPM chain.
    let recording = read_audio(&out.join("example-0.wav"))?;
    let length = recording.duration_secs();
    let gap = (0.4 * length, 0.6 * length);
    let filled = pipeline.fill_gap(
        &recording,
        gap,
        None,
        &AudioSampleOptions::default(),
        |_| {},
    )?;
    let path = out.join("example-0-filled.wav");
    write_wav(&path, &filled[0], SampleFormat::Int16)?;
    println!(
        "wrote {} ({:.3}-{:.3} s regenerated)",
        path.display(),
        gap.0,
        gap.1
    );
    Ok(())
}
