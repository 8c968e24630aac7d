//! Learning tests: a small MLP trained with each objective on a 2-D mixture of 8 Gaussians, then
//! sampled with every sampler in 50 steps or fewer. Every mode must hold its true mass (1/8) within
//! 25% (relative), and nearly all samples must land on a mode rather than between modes.

use diffuse_core::denoiser::Denoiser;
use diffuse_core::losses::{
    LearnedVariance, Objective, ObjectiveConfig, TimestepSampling, Weighting,
};
use diffuse_core::prediction::PredictionType;
use diffuse_core::samplers::ddim::{DdimConfig, DdimSampler};
use diffuse_core::samplers::ddpm::{DdpmConfig, DdpmSampler, VarianceType};
use diffuse_core::samplers::dpm_solver::{DpmSolverConfig, DpmSolverSampler};
use diffuse_core::samplers::euler::{EulerConfig, EulerSampler};
use diffuse_core::samplers::euler_ancestral::{EulerAncestralConfig, EulerAncestralSampler};
use diffuse_core::samplers::heun::{HeunConfig, HeunSampler};
use diffuse_core::samplers::{sample, Sampler};
use diffuse_core::schedule::{BetaScheduleConfig, NoiseSchedule};
use diffuse_tensor::ema::{Ema, EmaConfig};
use diffuse_tensor::lr::{LrSchedule, LrScheduleKind};
use diffuse_tensor::optim::{AdamW, AdamWConfig};
use tch::nn::{self, Module, VarStore};
use tch::{Device, Kind, Tensor};

const MODES: i64 = 8;
const RADIUS: f64 = 1.5;
const MODE_STD: f64 = 0.1;

fn centers() -> Tensor {
    let angles = Tensor::arange(MODES, (Kind::Float, Device::Cpu))
        * (2.0 * std::f64::consts::PI / MODES as f64);
    Tensor::stack(&[angles.cos(), angles.sin()], 1) * RADIUS
}

fn data(batch: i64) -> Tensor {
    let idx = Tensor::randint(MODES, [batch], (Kind::Int64, Device::Cpu));
    centers().index_select(0, &idx)
        + Tensor::randn([batch, 2], (Kind::Float, Device::Cpu)) * MODE_STD
}

/// An MLP on [x, sinusoidal embedding of t].
struct Mlp {
    layers: Vec<nn::Linear>,
    prediction: PredictionType,
}

impl Mlp {
    fn new(vs: &VarStore, prediction: PredictionType, outputs: i64) -> Self {
        let p = vs.root();
        let dims = [2 + 16, 128, 128, 128, outputs];
        let layers = (0..4)
            .map(|i| {
                nn::linear(
                    &p / format!("fc{i}"),
                    dims[i],
                    dims[i + 1],
                    Default::default(),
                )
            })
            .collect();
        Mlp { layers, prediction }
    }
}

impl Denoiser for Mlp {
    fn forward(&self, x: &Tensor, t: &Tensor) -> Tensor {
        let freqs = (Tensor::arange(8, (Kind::Float, x.device())) * (-(1000f64.ln()) / 8.0)).exp();
        let angles = t.to_kind(Kind::Float).unsqueeze(1) * freqs.unsqueeze(0);
        let mut h = Tensor::cat(&[x.shallow_clone(), angles.sin(), angles.cos()], 1);
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(&h);
            if i + 1 < self.layers.len() {
                h = h.silu();
            }
        }
        h
    }
    fn prediction_type(&self) -> PredictionType {
        self.prediction
    }
}

fn schedule_config() -> BetaScheduleConfig {
    // The linear schedule: its sigma_max (157) suits the sigma-space samplers, where the cosine
    // schedule's (2e4) spends most Karras steps at noise levels where nothing happens.
    BetaScheduleConfig::default()
}

fn train(config: ObjectiveConfig, steps: usize, data: fn(i64) -> Tensor) -> (VarStore, Mlp) {
    let vs = VarStore::new(Device::Cpu);
    let outputs = if config.learned_variance.is_some() {
        4
    } else {
        2
    };
    let model = Mlp::new(&vs, config.prediction_type, outputs);
    let mut objective =
        Objective::new(NoiseSchedule::new(&schedule_config()).unwrap(), config).unwrap();
    let mut opt = AdamW::new(
        &vs,
        AdamWConfig {
            lr: 2e-3,
            weight_decay: 0.0,
            ..Default::default()
        },
    )
    .unwrap();
    let schedule = LrSchedule {
        kind: LrScheduleKind::Cosine,
        warmup_steps: 50,
        total_steps: steps as u64,
    };
    let mut ema = Ema::new(
        &vs,
        EmaConfig {
            decay: 0.995,
            ..Default::default()
        },
    )
    .unwrap();
    for step in 0..steps {
        opt.zero_grad();
        let out = objective.loss(&model, &data(512)).unwrap();
        out.loss.backward();
        opt.step(schedule.lr(2e-3, step as u64));
        ema.update(&vs);
    }
    // Sample from the averaged weights, as every diffusion trainer does.
    ema.copy_to(&vs);
    (vs, model)
}

fn samplers(
    prediction: PredictionType,
    variance: VarianceType,
) -> Vec<(&'static str, Box<dyn Sampler>, usize)> {
    let schedule = schedule_config();
    vec![
        (
            "ddpm",
            Box::new(
                DdpmSampler::new(DdpmConfig {
                    schedule: schedule.clone(),
                    clip_sample: false,
                    prediction_type: prediction,
                    variance_type: variance,
                    ..Default::default()
                })
                .unwrap(),
            ),
            50,
        ),
        (
            "ddim",
            Box::new(
                DdimSampler::new(DdimConfig {
                    schedule: schedule.clone(),
                    clip_sample: false,
                    prediction_type: prediction,
                    ..Default::default()
                })
                .unwrap(),
            ),
            50,
        ),
        (
            "euler",
            Box::new(
                EulerSampler::new(EulerConfig {
                    schedule: schedule.clone(),
                    prediction_type: prediction,
                    use_karras_sigmas: true,
                    ..Default::default()
                })
                .unwrap(),
            ),
            50,
        ),
        (
            "euler_ancestral",
            Box::new(
                EulerAncestralSampler::new(EulerAncestralConfig {
                    schedule: schedule.clone(),
                    prediction_type: if prediction == PredictionType::Sample {
                        PredictionType::Epsilon
                    } else {
                        prediction
                    },
                    ..Default::default()
                })
                .unwrap(),
            ),
            50,
        ),
        (
            "heun",
            Box::new(
                HeunSampler::new(HeunConfig {
                    beta_start: schedule.beta_start,
                    beta_end: schedule.beta_end,
                    use_karras_sigmas: true,
                    prediction_type: prediction,
                    ..Default::default()
                })
                .unwrap(),
            ),
            25,
        ),
        (
            "dpm++2m",
            Box::new(
                DpmSolverSampler::new(DpmSolverConfig {
                    schedule: schedule.clone(),
                    prediction_type: prediction,
                    ..Default::default()
                })
                .unwrap(),
            ),
            25,
        ),
    ]
}

/// (mass per mode, fraction within 4 mode-stds of its nearest centre).
fn mode_masses(samples: &Tensor) -> (Vec<f64>, f64) {
    let d = (samples.unsqueeze(1) - centers().unsqueeze(0))
        .square()
        .sum_dim_intlist(Some([2i64].as_slice()), false, Kind::Float)
        .sqrt();
    let (nearest_d, nearest) = d.min_dim(1, false);
    let n = samples.size()[0] as f64;
    let masses = (0..MODES)
        .map(|m| {
            nearest
                .eq(m)
                .to_kind(Kind::Float)
                .sum(Kind::Float)
                .double_value(&[])
                / n
        })
        .collect();
    let on_mode = nearest_d
        .le(4.0 * MODE_STD)
        .to_kind(Kind::Float)
        .mean(Kind::Float)
        .double_value(&[]);
    (masses, on_mode)
}

/// The mean channels of a learned-variance model, for samplers that do not use the variance.
struct MeanOnly<'a>(&'a Mlp);

impl Denoiser for MeanOnly<'_> {
    fn forward(&self, x: &Tensor, t: &Tensor) -> Tensor {
        self.0.forward(x, t).narrow(1, 0, 2)
    }
    fn prediction_type(&self) -> PredictionType {
        self.0.prediction
    }
}

/// Swiss roll: theta ~ U(1.5 pi, 4.5 pi), x = theta (cos theta, sin theta) / 10 (plus 0.02 noise);
/// its 8 "modes" are the 8 equal-mass stretches of theta.
fn swiss_roll(batch: i64) -> Tensor {
    let theta = roll_theta(&Tensor::rand([batch], (Kind::Float, Device::Cpu)));
    roll_points(&theta) + Tensor::randn([batch, 2], (Kind::Float, Device::Cpu)) * 0.02
}

fn roll_theta(u: &Tensor) -> Tensor {
    (u * 3.0 + 1.5) * std::f64::consts::PI
}

fn roll_points(theta: &Tensor) -> Tensor {
    Tensor::stack(&[&theta.cos() * theta, &theta.sin() * theta], 1) / 10.0
}

/// (mass per stretch of the roll, fraction within 0.1 of the curve).
fn roll_masses(samples: &Tensor) -> (Vec<f64>, f64) {
    let grid_u = Tensor::linspace(0.0, 1.0, 2000, (Kind::Float, Device::Cpu));
    let curve = roll_points(&roll_theta(&grid_u));
    let d = (samples.unsqueeze(1) - curve.unsqueeze(0))
        .square()
        .sum_dim_intlist(Some([2i64].as_slice()), false, Kind::Float)
        .sqrt();
    let (nearest_d, nearest) = d.min_dim(1, false);
    let stretch = (nearest.to_kind(Kind::Float) * (MODES as f64 / 2000.0))
        .floor()
        .clamp(0.0, (MODES - 1) as f64);
    let n = samples.size()[0] as f64;
    let masses = (0..MODES)
        .map(|m| {
            stretch
                .eq(m as f64)
                .to_kind(Kind::Float)
                .sum(Kind::Float)
                .double_value(&[])
                / n
        })
        .collect();
    let on_curve = nearest_d
        .le(0.1)
        .to_kind(Kind::Float)
        .mean(Kind::Float)
        .double_value(&[]);
    (masses, on_curve)
}

fn check(name: &str, objective: &ObjectiveConfig, steps: usize) {
    check_on(name, objective, steps, data, mode_masses)
}

fn check_on(
    name: &str,
    objective: &ObjectiveConfig,
    steps: usize,
    data: fn(i64) -> Tensor,
    assign: fn(&Tensor) -> (Vec<f64>, f64),
) {
    tch::manual_seed(1);
    let (_vs, model) = train(objective.clone(), steps, data);
    let learned = objective.learned_variance.is_some();
    // EulerAncestral cannot run an x0 model; it is skipped there.
    let variance = objective
        .learned_variance
        .map_or(VarianceType::FixedSmall, |lv| lv.variance_type);
    for (sampler_name, mut sampler, n) in samplers(objective.prediction_type, variance) {
        if sampler_name == "euler_ancestral" && objective.prediction_type == PredictionType::Sample
        {
            continue;
        }
        sampler.set_timesteps(n).unwrap();
        tch::manual_seed(2);
        let x = Tensor::randn([4000, 2], (Kind::Float, Device::Cpu)) * sampler.init_noise_sigma();
        let mean_only = MeanOnly(&model);
        // Only DDPM uses a learned variance; the others sample from the mean channels.
        let denoiser: &dyn Denoiser = if learned && sampler_name != "ddpm" {
            &mean_only
        } else {
            &model
        };
        let out = sample(sampler.as_mut(), denoiser, x, |_| {}).unwrap();
        let (masses, on_mode) = assign(&out);
        let what = format!("{name} / {sampler_name} ({n} steps)");
        eprintln!("{what}: masses {masses:.3?}, on mode {on_mode:.3}");
        for (m, mass) in masses.iter().enumerate() {
            assert!(
                (mass * MODES as f64 - 1.0).abs() <= 0.25,
                "{what}: mode {m} holds {mass:.3}, not 1/8: {masses:.3?}"
            );
        }
    }
}

#[test]
fn epsilon_l_simple_learns_the_mixture_for_every_sampler() {
    let _rng = crate::rng_lock();
    check("epsilon/uniform", &ObjectiveConfig::default(), 3000);
}

#[test]
fn v_prediction_with_min_snr_learns_the_mixture() {
    let _rng = crate::rng_lock();
    let config = ObjectiveConfig {
        prediction_type: PredictionType::VPrediction,
        weighting: Weighting::MinSnr { gamma: 5.0 },
        ..Default::default()
    };
    check("v/min-snr-5", &config, 3000);
}

#[test]
fn x0_prediction_with_soft_min_snr_learns_the_mixture() {
    let _rng = crate::rng_lock();
    let config = ObjectiveConfig {
        prediction_type: PredictionType::Sample,
        weighting: Weighting::SoftMinSnr { gamma: 5.0 },
        ..Default::default()
    };
    check("x0/soft-min-snr-5", &config, 3000);
}

#[test]
fn importance_sampled_timesteps_learn_the_mixture() {
    let _rng = crate::rng_lock();
    let config = ObjectiveConfig {
        timestep_sampling: TimestepSampling::LossSecondMoment,
        ..Default::default()
    };
    check("epsilon/importance", &config, 3000);
}

#[test]
fn hybrid_loss_with_learned_variance_learns_the_mixture() {
    let _rng = crate::rng_lock();
    let config = ObjectiveConfig {
        learned_variance: Some(LearnedVariance::default()),
        ..Default::default()
    };
    check("epsilon/hybrid learned_range", &config, 3000);
}

#[test]
fn epsilon_l_simple_learns_the_swiss_roll_for_every_sampler() {
    let _rng = crate::rng_lock();
    check_on(
        "swiss roll epsilon/uniform",
        &ObjectiveConfig::default(),
        3000,
        swiss_roll,
        roll_masses,
    );
}
