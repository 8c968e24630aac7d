//! Learning test for count diffusion: the toy MLP learns a sparse, skewed, overdispersed 2-D
//! count distribution (a mixture of two products of negative binomials) with JUMP (binomial
//! thinning, Poisson-KL loss) and, on the same network, steps and batch, with Gaussian DDPM on
//! standardised counts (rounded and clipped at 0 when sampled). The earth mover's distance of each
//! generated marginal to a large true sample must be within a stated bound, and the Poisson
//! model's must be below the Gaussian model's.

use diffuse_core::denoiser::Denoiser;
use diffuse_core::losses::{Objective, ObjectiveConfig};
use diffuse_core::poisson::emd::marginal_emd;
use diffuse_core::poisson::sample::sample as jump_sample;
use diffuse_core::poisson::{
    negative_binomial, FnCountDenoiser, JumpConfig, JumpProcess, JumpSampler,
};
use diffuse_core::prediction::PredictionType;
use diffuse_core::samplers::ddpm::{DdpmConfig, DdpmSampler};
use diffuse_core::samplers::{sample, Sampler};
use diffuse_core::schedule::{BetaScheduleConfig, NoiseSchedule};
use diffuse_core::toy::MlpDenoiser;
use diffuse_tensor::lr::{LrSchedule, LrScheduleKind};
use diffuse_tensor::optim::{AdamW, AdamWConfig};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

const STEPS: usize = 1500;
const BATCH: i64 = 512;

/// Component 0 (weight 0.6): x ~ NB(mean 1, r 0.5), y ~ NB(mean 20, r 2);
/// component 1 (weight 0.4): x ~ NB(mean 30, r 5), y ~ NB(mean 0.5, r 0.5).
fn counts(n: i64) -> Tensor {
    let second = Tensor::rand([n, 1], (Kind::Float, Device::Cpu)).lt(0.4);
    let nb = |mean: f64, r: f64| {
        negative_binomial(&Tensor::full([n, 1], mean, (Kind::Float, Device::Cpu)), r)
    };
    // Both components are drawn for every row and one is kept.
    let x = nb(30.0, 5.0).where_self(&second, &nb(1.0, 0.5));
    let y = nb(0.5, 0.5).where_self(&second, &nb(20.0, 2.0));
    Tensor::cat(&[x, y], 1)
}

fn optimiser(vs: &VarStore) -> (AdamW, LrSchedule) {
    let opt = AdamW::new(
        vs,
        AdamWConfig {
            lr: 2e-3,
            weight_decay: 0.0,
            ..Default::default()
        },
    )
    .unwrap();
    let lr = LrSchedule {
        kind: LrScheduleKind::Cosine,
        warmup_steps: 50,
        total_steps: STEPS as u64,
    };
    (opt, lr)
}

fn train_jump(mean: f64) -> (VarStore, MlpDenoiser, JumpProcess) {
    let process = JumpProcess::new(JumpConfig {
        num_train_timesteps: 1000,
        signal_mean: mean,
        scale: 10.0,
        input_clip: 20.0,
        ..Default::default()
    })
    .unwrap();
    let vs = VarStore::new(Device::Cpu);
    let mlp = MlpDenoiser::new(&vs.root(), PredictionType::Sample, 2);
    let (mut opt, lr) = optimiser(&vs);
    for step in 0..STEPS {
        let model = FnCountDenoiser {
            f: |x: &Tensor, t: &Tensor| mlp.forward(x, t),
        };
        opt.zero_grad();
        process.loss(&model, &counts(BATCH)).backward();
        opt.step(lr.lr(2e-3, step as u64));
    }
    (vs, mlp, process)
}

fn train_gaussian(mean: &Tensor, std: &Tensor) -> (VarStore, MlpDenoiser) {
    let vs = VarStore::new(Device::Cpu);
    let mlp = MlpDenoiser::new(&vs.root(), PredictionType::Epsilon, 2);
    let schedule = NoiseSchedule::new(&BetaScheduleConfig::default()).unwrap();
    let mut objective = Objective::new(schedule, ObjectiveConfig::default()).unwrap();
    let (mut opt, lr) = optimiser(&vs);
    for step in 0..STEPS {
        opt.zero_grad();
        let x = (counts(BATCH) - mean) / std;
        objective.loss(&mlp, &x).unwrap().loss.backward();
        opt.step(lr.lr(2e-3, step as u64));
    }
    (vs, mlp)
}

#[test]
fn jump_learns_a_negative_binomial_mixture_better_than_gaussian_diffusion() {
    let _rng = crate::rng_lock();
    tch::manual_seed(0);
    let truth = counts(20_000);
    let reference = counts(20_000);
    let mean = truth.mean_dim(0, true, Kind::Float);
    let std = truth.std_dim(0, true, true);
    let floor = marginal_emd(&truth, &reference);

    tch::manual_seed(1);
    let (_vs, mlp, process) = train_jump(truth.mean(Kind::Float).double_value(&[]));
    let model = FnCountDenoiser {
        f: |x: &Tensor, t: &Tensor| mlp.forward(x, t),
    };
    tch::manual_seed(2);
    let jump = jump_sample(
        &process,
        &model,
        &[8000, 2],
        100,
        JumpSampler::Thickening,
        Device::Cpu,
        |_, _| {},
    )
    .unwrap();
    let blackout = jump_sample(
        &process,
        &model,
        &[8000, 2],
        100,
        JumpSampler::Blackout,
        Device::Cpu,
        |_, _| {},
    )
    .unwrap();

    tch::manual_seed(1);
    let (_gvs, gmlp) = train_gaussian(&mean, &std);
    tch::manual_seed(2);
    let mut sampler = DdpmSampler::new(DdpmConfig {
        clip_sample: false,
        ..Default::default()
    })
    .unwrap();
    sampler.set_timesteps(100).unwrap();
    let noise = Tensor::randn([8000, 2], (Kind::Float, Device::Cpu));
    let gauss = sample(&mut sampler, &gmlp, noise, |_| {}).unwrap();
    let gauss = (gauss * &std + &mean).round().clamp_min(0.0);

    let emd_jump = marginal_emd(&jump, &truth);
    let emd_blackout = marginal_emd(&blackout, &truth);
    let emd_gauss = marginal_emd(&gauss, &truth);
    let zeros = |x: &Tensor| {
        Vec::<f64>::try_from(
            x.eq(0.0)
                .to_kind(Kind::Double)
                .mean_dim(0, false, Kind::Double),
        )
        .unwrap()
    };
    eprintln!(
        "EMD per column: floor {floor:?}, jump {emd_jump:?}, blackout {emd_blackout:?}, \
         gaussian {emd_gauss:?}; zero fractions truth {:?} jump {:?} gaussian {:?}",
        zeros(&truth),
        zeros(&jump),
        zeros(&gauss)
    );
    let total = |v: &[f64]| v.iter().sum::<f64>();
    // The columns' means are 12.6 and 12.2; 0.75 counts of mean transport per column is ~6%.
    for (name, emd) in [("jump", &emd_jump), ("blackout", &emd_blackout)] {
        for (c, &e) in emd.iter().enumerate() {
            assert!(e < 0.75, "{name}: column {c} EMD {e} (floor {})", floor[c]);
        }
    }
    assert!(
        total(&emd_jump) < total(&emd_gauss),
        "jump {emd_jump:?} should beat gaussian {emd_gauss:?}"
    );
    // Exact zeros: the data's sparsity is a count the Poisson model produces natively.
    let (zt, zj) = (zeros(&truth), zeros(&jump));
    for c in 0..2 {
        assert!(
            (zt[c] - zj[c]).abs() < 0.05,
            "zero mass {} vs {}",
            zj[c],
            zt[c]
        );
    }
}
