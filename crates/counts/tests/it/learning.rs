//! Learning test through the product's own training run: the default count model (residual MLP,
//! binomial thinning, Poisson-KL loss) trained briefly on the committed negative-binomial mixture
//! must generate columns whose earth mover's distance to the held-out rows is well below what
//! independent Poisson draws with the right means score, and close to the training rows' own.

use diffuse_counts::data::load_counts;
use diffuse_counts::eval::emd_report;
use diffuse_counts::model::{CountModel, CountSampleOptions};
use diffuse_counts::train::{load_split, train_count_model, CountTrainConfig};
use diffuse_tensor::train::TrainConfig;
use std::path::PathBuf;
use tch::Device;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/fixtures/counts/nbinom-mixture.csv")
}

#[test]
fn the_default_count_model_learns_the_fixture_mixture() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = CountTrainConfig {
        data: fixture().display().to_string(),
        sample_every: 0,
        sample_num: 200,
        sample_steps: 20,
        ..CountTrainConfig::default()
    };
    config.network.hidden = 128;
    config.process.num_train_timesteps = 200;
    config.train = TrainConfig {
        steps: 800,
        log_every: 200,
        checkpoint_every: 800,
        ..config.train.clone()
    };
    config.train.optimizer.lr = 2e-3;
    config.train.lr_schedule = "cosine".parse().unwrap();
    config.train.warmup_steps = 50;
    let run = tmp.path().join("run");
    let outcome = train_count_model(&config, &run, Device::Cpu, false, None).unwrap();
    let model = CountModel::load(&outcome.model_dir.unwrap(), Device::Cpu).unwrap();
    let options = CountSampleOptions {
        num: 3000,
        steps: Some(200),
        seed: Some(1),
        ..CountSampleOptions::default()
    };
    let generated = model.sample(&options, |_, _| {}).unwrap();
    let (train, held_out) = load_split(&config).unwrap();
    tch::manual_seed(2);
    let report = emd_report(
        &generated,
        &held_out.values,
        Some(&train.values),
        &held_out.columns,
    );
    eprintln!("{}", report.summary());
    for c in &report.columns {
        eprintln!(
            "{}: EMD {:.3}, mean {:.2} vs {:.2}, zeros {:.3} vs {:.3}",
            c.name, c.emd, c.generated_mean, c.held_out_mean, c.generated_zeros, c.held_out_zeros
        );
    }
    let floor = report.train_floor.unwrap();
    // The mixture is overdispersed (variances 35-260 against means 7-12), so matching only the
    // means is far off; the learned model must do much better than that and come within a
    // small multiple of the sampling noise between two finite sets of rows.
    assert!(
        report.mean_emd < 0.4 * report.poisson_baseline,
        "{}",
        report.summary()
    );
    assert!(report.mean_emd < floor + 1.0, "{}", report.summary());
    assert_eq!(load_counts(&fixture()).unwrap().len(), 1200);
}
