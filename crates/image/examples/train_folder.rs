//! Train a diffusion model on a folder of PNG/JPEG images, then sample a grid from it:
//! `cargo run --release -p diffuse-image --example train_folder -- [FOLDER] [RUN_DIR] [STEPS]`.
//!
//! The defaults train 32x32 RGB on the Twemoji icons `cargo xtask setup --data twemoji` fetches
//! (the dataset name `twemoji`; an unfetched one is named in the error with that command) for 300 steps, which is minutes on a laptop CPU: long enough to see
//! blobs of emoji colour, far from converged (give it 20k+ steps, ideally on a GPU). The run
//! directory gets the usual metrics.jsonl, loss.png, preview grids, checkpoints and model/; running
//! the example again with more steps on the same RUN_DIR resumes it.

use diffuse_image::io::save_grid;
use diffuse_image::pipeline::{ImagePipeline, SampleOptions};
use diffuse_image::train::{train_image_model, ImageTrainConfig};
use diffuse_tensor::train::TrainConfig;

fn main() -> std::process::ExitCode {
    // One `error: ...` line, as the `diffuse` binary reports, rather than a Debug dump.
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    // A dataset name (looked up where setup puts it) or any folder.
    let folder = args.next().unwrap_or_else(|| "twemoji".into());
    let run_dir = args
        .next()
        .unwrap_or_else(|| "target/runs/example-folder".into());
    let steps: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(300);

    let config = ImageTrainConfig {
        data: folder,         // any folder of PNG/JPEG, searched recursively
        resolution: Some(32), // resized and centre-cropped to 32x32
        channels: Some(3),    // RGB (alpha is composited onto white)
        hflip: true,          // random horizontal flips
        batch_size: 32,
        sample_every: 100, // a preview grid in RUN_DIR/samples every 100 steps
        train: TrainConfig {
            steps,
            warmup_steps: 50,
            checkpoint_every: 100,
            ..Default::default()
        },
        ..Default::default()
    };
    let device = tch::Device::cuda_if_available();
    let resume = std::path::Path::new(&run_dir).join("run.json").exists();
    let outcome = train_image_model(&config, run_dir.as_ref(), device, resume, None)?;
    let model_dir = outcome
        .model_dir
        .ok_or("the run stopped before its last step")?;

    let pipe = ImagePipeline::load(&model_dir, device)?;
    let options = SampleOptions {
        num: 16,
        sampler: Some("dpm++2m".into()),
        steps: Some(25),
        seed: Some(0),
        ..Default::default()
    };
    let images = pipe.sample(&options, |_, _| {})?;
    let grid = std::path::Path::new(&run_dir).join("final-grid.png");
    save_grid(&images, &grid, None)?;
    println!(
        "model in {}, samples in {}",
        model_dir.display(),
        grid.display()
    );
    Ok(())
}
