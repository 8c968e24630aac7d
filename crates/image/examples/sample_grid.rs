//! Load a model directory, sample 16 images and save them as a grid:
//! `cargo run --release -p diffuse-image --example sample_grid -- [MODEL_DIR] [OUT.png|OUT.jpg]`.

use diffuse_image::io::save_grid;
use diffuse_image::pipeline::{ImagePipeline, SampleOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let model = args.next().unwrap_or_else(|| "data/models/mnist".into());
    let out = args.next().unwrap_or_else(|| "out/example-grid.png".into());
    let pipe = ImagePipeline::load(model.as_ref(), tch::Device::cuda_if_available())?;
    let options = SampleOptions {
        num: 16,
        sampler: Some("dpm++2m".into()),
        steps: Some(20),
        ..Default::default()
    };
    let images = pipe.sample(&options, |_, _| {})?;
    save_grid(&images, out.as_ref(), None)?;
    println!("wrote {out}");
    Ok(())
}
