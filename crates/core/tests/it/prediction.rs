//! Parameterisations: every conversion recovers the clean sample and the noise it came from.

use diffuse_core::prediction::PredictionType;
use diffuse_core::schedule::{BetaScheduleConfig, NoiseSchedule};
use tch::{Device, Kind, Tensor};

const ALL: [PredictionType; 3] = [
    PredictionType::Epsilon,
    PredictionType::Sample,
    PredictionType::VPrediction,
];

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn targets_invert_to_the_sample_and_noise_they_came_from() {
    let _rng = crate::rng_lock();
    let schedule = NoiseSchedule::new(&BetaScheduleConfig::default()).unwrap();
    tch::manual_seed(4);
    let x0 = Tensor::randn([5, 3, 4, 4], (Kind::Double, Device::Cpu));
    let noise = Tensor::randn([5, 3, 4, 4], (Kind::Double, Device::Cpu));
    let t = [0.0, 1.0, 250.5, 700.0, 999.0];
    let (alpha, sigma) = schedule.alpha_sigma(&t, Device::Cpu, 4);
    let x_t = schedule.add_noise(&x0, &noise, &t);
    for p in ALL {
        let target = p.target(&x0, &noise, &alpha, &sigma);
        assert!(
            max_diff(&p.to_x0(&target, &x_t, &alpha, &sigma), &x0) < 1e-9,
            "{p:?} x0"
        );
        assert!(
            max_diff(&p.to_eps(&target, &x_t, &alpha, &sigma), &noise) < 1e-9,
            "{p:?} eps"
        );
        for q in ALL {
            let converted = p.convert(q, &target, &x_t, &alpha, &sigma);
            let expected = q.target(&x0, &noise, &alpha, &sigma);
            assert!(max_diff(&converted, &expected) < 1e-9, "{p:?} -> {q:?}");
        }
    }
}

#[test]
fn v_matches_the_diffusers_velocity_definition() {
    // diffusers get_velocity: sqrt(abar) * noise - sqrt(1 - abar) * sample.
    let schedule = NoiseSchedule::new(&BetaScheduleConfig::default()).unwrap();
    let x0 = Tensor::from_slice(&[1.0f64, -2.0]).reshape([2, 1]);
    let noise = Tensor::from_slice(&[0.5f64, 0.25]).reshape([2, 1]);
    let t = [10.0, 900.0];
    let (alpha, sigma) = schedule.alpha_sigma(&t, Device::Cpu, 2);
    let v = PredictionType::VPrediction.target(&x0, &noise, &alpha, &sigma);
    for (i, &ti) in t.iter().enumerate() {
        let abar = schedule.alphas_cumprod()[ti as usize];
        let (x, n) = ([1.0, -2.0][i], [0.5, 0.25][i]);
        let want = abar.sqrt() * n - (1.0 - abar).sqrt() * x;
        assert!((v.double_value(&[i as i64, 0]) - want).abs() < 1e-12);
    }
}

#[test]
fn names_parse_like_diffusers_configs() {
    assert_eq!(
        "v_prediction".parse::<PredictionType>().unwrap(),
        PredictionType::VPrediction
    );
    assert_eq!(
        serde_json::from_str::<PredictionType>("\"sample\"").unwrap(),
        PredictionType::Sample
    );
    let err = "score".parse::<PredictionType>().unwrap_err().to_string();
    assert!(
        err.contains("expected epsilon, sample or v_prediction"),
        "{err}"
    );
}
