//! `diffuse-bench NAME [--device DEV]`: the Rust side of `cargo xtask bench`. Prints one JSON
//! line per case, `{"case", "ms", "work"}`; the peer script `xtask/bench/NAME.py` prints the
//! same cases for PyTorch, and xtask puts the two side by side.

use anyhow::{bail, Context, Result};
use diffuse_cli::measure::{matmul, time_ms};
use diffuse_tensor::optim::{AdamW, AdamWConfig};
use std::time::Duration;
use tch::nn::{self, ModuleT, VarStore};
use tch::{Device, Kind, Tensor};

fn emit(case: &str, ms: f64, work: &str) {
    println!(
        "{}",
        serde_json::json!({"case": case, "ms": ms, "work": work})
    );
}

fn bench_matmul(device: Device) {
    let sizes: &[i64] = if device.is_cuda() {
        &[2048, 8192]
    } else {
        &[512, 1024, 2048]
    };
    for &n in sizes {
        let (ms, gflops) = matmul(device, n, Duration::from_secs(2));
        emit(&format!("f32 {n}x{n}"), ms, &format!("{gflops:.1} GFLOP/s"));
    }
}

/// A small convolutional denoiser-shaped network; `xtask/bench/train_step.py` builds the same
/// layers with the same shapes, so the two time identical work.
fn conv_net(p: &nn::Path) -> nn::SequentialT {
    let conv = |name: &str, i, o, stride| {
        nn::conv2d(
            p / name,
            i,
            o,
            3,
            nn::ConvConfig {
                stride,
                padding: 1,
                ..Default::default()
            },
        )
    };
    nn::seq_t()
        .add(conv("conv1", 1, 32, 1))
        .add(nn::group_norm(p / "norm1", 8, 32, Default::default()))
        .add_fn(|x| x.silu())
        .add(conv("conv2", 32, 64, 2))
        .add(nn::group_norm(p / "norm2", 8, 64, Default::default()))
        .add_fn(|x| x.silu())
        .add(conv("conv3", 64, 64, 1))
        .add(nn::group_norm(p / "norm3", 8, 64, Default::default()))
        .add_fn(|x| x.silu())
        .add_fn(|x| x.upsample_nearest2d([28, 28], None, None))
        .add(conv("conv4", 64, 32, 1))
        .add_fn(|x| x.silu())
        .add(conv("conv5", 32, 1, 1))
}

fn bench_train_step(device: Device) -> Result<()> {
    tch::manual_seed(0);
    let vs = VarStore::new(device);
    let net = conv_net(&vs.root());
    let mut opt = AdamW::new(
        &vs,
        AdamWConfig {
            lr: 1e-4,
            ..Default::default()
        },
    )?;
    let batch = 64;
    let x = Tensor::randn([batch, 1, 28, 28], (Kind::Float, device));
    let target = Tensor::randn([batch, 1, 28, 28], (Kind::Float, device));
    let ms = time_ms(device, 3, 10, Duration::from_secs(3), || {
        opt.zero_grad();
        let loss = (net.forward_t(&x, true) - &target)
            .square()
            .mean(Kind::Float);
        loss.backward();
        opt.step(1e-4);
    });
    emit(
        "conv net b64 28x28 fwd+bwd+adamw",
        ms,
        &format!("{:.1} steps/s", 1e3 / ms),
    );
    Ok(())
}

/// Builds a fresh sampler for each timed loop.
type SamplerFactory = Box<dyn Fn() -> Result<Box<dyn diffuse_core::samplers::Sampler>>>;

fn bench_sampler_step(device: Device) -> Result<()> {
    use diffuse_core::samplers::{ddim, ddpm, dpm_solver, euler, euler_ancestral, heun, Sampler};
    let shape = [16i64, 3, 32, 32];
    let steps = 50;
    let samplers: Vec<(&str, SamplerFactory)> = vec![
        (
            "ddpm",
            Box::new(|| {
                Ok(Box::new(ddpm::DdpmSampler::new(Default::default())?) as Box<dyn Sampler>)
            }),
        ),
        (
            "ddim",
            Box::new(|| {
                Ok(Box::new(ddim::DdimSampler::new(Default::default())?) as Box<dyn Sampler>)
            }),
        ),
        (
            "euler",
            Box::new(|| {
                Ok(Box::new(euler::EulerSampler::new(Default::default())?) as Box<dyn Sampler>)
            }),
        ),
        (
            "euler_ancestral",
            Box::new(|| {
                Ok(Box::new(euler_ancestral::EulerAncestralSampler::new(
                    Default::default(),
                )?) as Box<dyn Sampler>)
            }),
        ),
        (
            "heun",
            Box::new(|| {
                Ok(Box::new(heun::HeunSampler::new(Default::default())?) as Box<dyn Sampler>)
            }),
        ),
        (
            "dpm++2m",
            Box::new(|| {
                Ok(
                    Box::new(dpm_solver::DpmSolverSampler::new(Default::default())?)
                        as Box<dyn Sampler>,
                )
            }),
        ),
    ];
    tch::manual_seed(0);
    let x0 = Tensor::randn(shape, (Kind::Float, device));
    let model_output = Tensor::randn(shape, (Kind::Float, device)) * 0.1;
    let (forward_ms, params) = time_reference_unet(device, &x0)?;
    emit(
        "UNet2d forward (reference model), b16 3x32x32",
        forward_ms,
        &format!("{params:.2}M parameters"),
    );
    for (name, make) in &samplers {
        // A whole 50-step loop with a precomputed model output, so only the sampler is timed.
        let mut failed = None;
        let ms = time_ms(device, 1, 3, Duration::from_secs(2), || {
            let run = || -> Result<()> {
                let mut sampler = make()?;
                sampler.set_timesteps(steps)?;
                let mut x = &x0 * sampler.init_noise_sigma();
                for t in sampler.timesteps().to_vec() {
                    let _input = sampler.scale_model_input(&x, t);
                    x = sampler.step(&model_output, t, &x)?.prev_sample;
                }
                Ok(())
            };
            if let Err(e) = run() {
                failed = Some(e);
            }
        });
        if let Some(e) = failed {
            return Err(e);
        }
        let evaluations = if *name == "heun" {
            2 * steps - 1
        } else {
            steps
        };
        emit(
            &format!("{name} step, b16 3x32x32"),
            ms / evaluations as f64,
            &format!(
                "{evaluations} steps per loop; {:.2}% of one reference forward",
                100.0 * ms / evaluations as f64 / forward_ms
            ),
        );
    }
    Ok(())
}

/// The reference model of `sampler_step`: the bundled model's UNet2d architecture (1.1M
/// parameters) for 3x32x32 images, its config written for the peer; returns the median ms of
/// one no-grad forward on `x`.
fn time_reference_unet(device: Device, x: &Tensor) -> Result<(f64, f64)> {
    use diffuse_image::unet::{parameter_count, UNet2d};
    let mut config = diffuse_image::train::small_unet();
    config.set_sample_size(32, 32);
    config.to_json_file(&bench_cache()?.join("sampler_step_unet_config.json"))?;
    tch::manual_seed(0);
    let vs = VarStore::new(device);
    let unet = UNet2d::new(&vs.root(), &config)?;
    let t = Tensor::full([x.size()[0]], 500, (Kind::Int64, device));
    let ms = time_ms(device, 2, 5, Duration::from_secs(3), || {
        let _ = tch::no_grad(|| unet.forward_t(x, &t, None, false));
    });
    Ok((ms, parameter_count(&vs) as f64 / 1e6))
}

/// Where benchmarks leave files for their Python peer: the repository's target/bench-cache, where
/// the peer scripts look (`ROOT/target/bench-cache`), wherever this binary was copied
/// (`DIFFUSE_BENCH_BIN` may point at a copy outside target/).
fn bench_cache() -> Result<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench-cache");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Quality per model evaluation on the 8-Gaussian mixture: one MLP trained here (and saved for the
/// peer, which runs diffusers' schedulers on the same weights), sampled by DPM-Solver++ 2M and Heun
/// at 10 and 20 steps and by DDPM at 1000; mode-mass error and MMD^2 against held-out data.
fn bench_sampler_quality() -> Result<()> {
    use diffuse_core::samplers::{ddpm, dpm_solver, heun, sample, Sampler};
    use diffuse_core::schedule::{BetaScheduleConfig, NoiseSchedule};
    use diffuse_core::toy::{mmd2, mode_mass_error, train_toy, ToyData};
    let data = ToyData::EightGaussians;
    tch::manual_seed(1);
    let (vs, model) = train_toy(
        data,
        NoiseSchedule::new(&BetaScheduleConfig::default())?,
        Default::default(),
        3000,
    )?;
    let weights = bench_cache()?.join("toy_mixture_mlp.safetensors");
    diffuse_tensor::weights::save_var_store(&vs, &weights, None)?;
    tch::manual_seed(3);
    let reference = data.sample(2000);
    let cases: Vec<(&str, usize, SamplerFactory)> = vec![
        (
            "dpm++2m",
            10,
            Box::new(|| {
                Ok(
                    Box::new(dpm_solver::DpmSolverSampler::new(Default::default())?)
                        as Box<dyn Sampler>,
                )
            }),
        ),
        (
            "dpm++2m",
            20,
            Box::new(|| {
                Ok(
                    Box::new(dpm_solver::DpmSolverSampler::new(Default::default())?)
                        as Box<dyn Sampler>,
                )
            }),
        ),
        (
            "heun",
            10,
            Box::new(|| Ok(Box::new(heun::HeunSampler::new(linear_heun())?) as Box<dyn Sampler>)),
        ),
        (
            "heun",
            20,
            Box::new(|| Ok(Box::new(heun::HeunSampler::new(linear_heun())?) as Box<dyn Sampler>)),
        ),
        (
            "ddpm",
            1000,
            Box::new(|| {
                let config = ddpm::DdpmConfig {
                    clip_sample: false,
                    ..Default::default()
                };
                Ok(Box::new(ddpm::DdpmSampler::new(config)?) as Box<dyn Sampler>)
            }),
        ),
    ];
    for (name, steps, make) in cases {
        // One untimed run, then the fastest of 3 identical seeded runs (single runs of tens of ms
        // are noisy here, and the first sampling after training ran measurably slower).
        let mut best = f64::INFINITY;
        let mut result = None;
        for run in 0..4 {
            let mut sampler = make()?;
            sampler.set_timesteps(steps)?;
            tch::manual_seed(2);
            let x =
                Tensor::randn([2000, 2], (Kind::Float, Device::Cpu)) * sampler.init_noise_sigma();
            let start = std::time::Instant::now();
            let out = sample(sampler.as_mut(), &model, x, |_| {})?;
            if run > 0 {
                best = best.min(start.elapsed().as_secs_f64() * 1e3);
            }
            result = Some((out, sampler.timesteps().len()));
        }
        let (out, evaluations) = result.expect("four runs");
        let ms = best;
        let (masses, _) = data.mode_masses(&out);
        let work = format!(
            "{evaluations} evaluations, mode-mass error {:.1}%, MMD^2 {:.2e}",
            100.0 * mode_mass_error(&masses),
            mmd2(&out, &reference, 0.2)
        );
        emit(&format!("{name} {steps} steps"), ms, &work);
    }
    Ok(())
}

/// Heun on the linear 1e-4..0.02 schedule the toy model was trained with (Heun's own default
/// betas differ).
fn linear_heun() -> diffuse_core::samplers::heun::HeunConfig {
    diffuse_core::samplers::heun::HeunConfig {
        beta_start: 0.0001,
        beta_end: 0.02,
        ..Default::default()
    }
}

/// Reset the process's peak resident set (Linux: writing 5 to /proc/self/clear_refs), so the next
/// `peak_rss_mb` reports the peak of what ran in between. No-op where unsupported.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident set since the last reset, in MB (VmHWM), or None off Linux.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn memory_note() -> String {
    peak_rss_mb()
        .map(|mb| format!(", peak RSS {mb:.0} MB"))
        .unwrap_or_default()
}

/// diffuse's UNet2d against diffusers' UNet2DModel built from the same config.json (written here
/// to target/bench-cache for the peer): the bundled MNIST model's architecture (1.1M parameters,
/// 28x28, 1 channel). Cases: a training step (forward, epsilon MSE, backward, AdamW) at batch 64,
/// a no-grad forward at batch 16, and a whole 20-step DPM-Solver++ 2M sampling of 16 images.
/// Median ms of a `steps`-step DPM-Solver++ 2M loop from noise shaped like `x` through `unet`
/// (the image and threads benchmarks' sampling case).
fn time_dpm_sampling(
    device: Device,
    unet: &diffuse_image::unet::UNet2d,
    x: &Tensor,
    steps: usize,
    min_time: Duration,
) -> Result<f64> {
    use diffuse_core::samplers::{dpm_solver, Sampler};
    let mut failed = None;
    let ms = time_ms(device, 1, 3, min_time, || {
        let run = || -> Result<()> {
            tch::no_grad(|| {
                let mut sampler = dpm_solver::DpmSolverSampler::new(Default::default())?;
                sampler.set_timesteps(steps)?;
                let mut sample = x * sampler.init_noise_sigma();
                for t in sampler.timesteps().to_vec() {
                    let input = sampler.scale_model_input(&sample, t);
                    let t_batch = Tensor::from(t).to_device(device);
                    let eps = unet.forward_t(&input, &t_batch, None, false);
                    sample = sampler.step(&eps, t, &sample)?.prev_sample;
                }
                Ok(())
            })
        };
        if let Err(e) = run() {
            failed = Some(e);
        }
    });
    match failed {
        Some(e) => Err(e),
        None => Ok(ms),
    }
}

fn bench_image(device: Device) -> Result<()> {
    use diffuse_image::unet::{parameter_count, UNet2d};
    let mut config = diffuse_image::train::small_unet();
    config.set_sample_size(28, 28);
    config.in_channels = 1;
    config.out_channels = 1;
    config.to_json_file(&bench_cache()?.join("image_unet_config.json"))?;

    tch::manual_seed(0);
    let vs = VarStore::new(device);
    let unet = UNet2d::new(&vs.root(), &config)?;
    let params = parameter_count(&vs) as f64 / 1e6;
    let mut opt = AdamW::new(
        &vs,
        AdamWConfig {
            lr: 1e-4,
            ..Default::default()
        },
    )?;
    let batch = 64;
    let x = Tensor::randn([batch, 1, 28, 28], (Kind::Float, device));
    let noise = Tensor::randn([batch, 1, 28, 28], (Kind::Float, device));
    let t = Tensor::randint(1000, [batch], (Kind::Int64, device));
    reset_peak_rss();
    let ms = time_ms(device, 2, 5, Duration::from_secs(5), || {
        opt.zero_grad();
        let loss = (unet.forward_t(&x, &t, None, true) - &noise)
            .square()
            .mean(Kind::Float);
        loss.backward();
        opt.step(1e-4);
    });
    emit(
        "UNet2d 1x28x28 b64 train step (fwd+bwd+adamw)",
        ms,
        &format!(
            "{params:.2}M parameters, {:.0} images/s{}",
            batch as f64 * 1e3 / ms,
            memory_note()
        ),
    );

    let x16 = x.narrow(0, 0, 16);
    let t16 = t.narrow(0, 0, 16);
    reset_peak_rss();
    let ms = time_ms(device, 2, 10, Duration::from_secs(3), || {
        let _ = tch::no_grad(|| unet.forward_t(&x16, &t16, None, false));
    });
    emit(
        "UNet2d 1x28x28 b16 forward (no grad)",
        ms,
        &format!("{:.0} images/s{}", 16e3 / ms, memory_note()),
    );

    let steps = 20;
    reset_peak_rss();
    let ms = time_dpm_sampling(device, &unet, &x16, steps, Duration::from_secs(5))?;
    emit(
        "sample 16 images, dpm++2m 20 steps",
        ms,
        &format!("{:.1} images/s{}", 16e3 / ms, memory_note()),
    );
    Ok(())
}

/// The bundled text model's architecture (character-level Shakespeare): `small_transformer()`
/// narrowed to width 192, 4 layers, 3 heads, dropout 0, for vocabularies of `vocab_size` ids in
/// and `output_vocab_size` logits out.
fn bench_text_config(
    vocab_size: i64,
    output_vocab_size: i64,
    causal: bool,
) -> diffuse_text::transformer::TransformerConfig {
    diffuse_text::transformer::TransformerConfig {
        vocab_size,
        output_vocab_size,
        hidden_size: 128,
        num_layers: 4,
        num_heads: 2,
        mlp_ratio: 4.0,
        max_seq_len: 128,
        positions: diffuse_text::transformer::Positions::Rotary,
        dropout: 0.0,
        causal,
        ..diffuse_text::train::small_transformer()
    }
}

/// diffuse's text transformer against the same network in plain PyTorch
/// (`crates/text/tests/golden/make_transformer_golden.py`, built from the config.json written
/// here to target/bench-cache): the bundled model's architecture with 84 data tokens (its characters) plus
/// [MASK]. Cases: an MDLM training step (random tokens, continuous-time ELBO, backward, AdamW)
/// at batch 32 x 128, a no-grad forward at the same size, and MDLM ancestral sampling of 8 x 128
/// and of 1 x 128 tokens in 128 steps with and without the cache (on the untrained, seeded
/// model). The cache saves a call only when a step unmasks nothing in the whole batch: about 1/e
/// of the steps for one sequence of 128 tokens in 128 steps, almost never for 8 sequences.
fn bench_text(device: Device) -> Result<()> {
    use diffuse_core::categorical::mdlm::{Mdlm, MdlmConfig};
    use diffuse_core::categorical::SampleOptions;
    use diffuse_text::process::TransformerDenoiser;
    use diffuse_text::transformer::{parameter_count, TextTransformer};
    let vocab = 84;
    let config = bench_text_config(vocab + 1, vocab + 1, false);
    config.to_json_file(&bench_cache()?.join("text_transformer_config.json"))?;
    let mdlm = Mdlm::new(MdlmConfig::new(vocab))?;

    tch::manual_seed(0);
    let vs = VarStore::new(device);
    let net = TextTransformer::new(&vs.root(), &config)?;
    let params = parameter_count(&vs) as f64 / 1e6;
    let mut opt = AdamW::new(
        &vs,
        AdamWConfig {
            lr: 1e-3,
            ..Default::default()
        },
    )?;
    let (batch, len) = (32i64, 128i64);
    let x0 = Tensor::randint(vocab, [batch, len], (Kind::Int64, device));
    let train = TransformerDenoiser {
        net: &net,
        time_conditioning: false,
        train: true,
    };
    reset_peak_rss();
    let mut failed = None;
    let ms = time_ms(device, 2, 5, Duration::from_secs(5), || {
        opt.zero_grad();
        match mdlm.loss(&train, &x0) {
            Ok(loss) => {
                loss.backward();
                opt.step(1e-3);
            }
            Err(e) => failed = Some(e),
        }
    });
    if let Some(e) = failed {
        return Err(e.into());
    }
    emit(
        "transformer b32x128 MDLM train step (fwd+bwd+adamw)",
        ms,
        &format!(
            "{params:.2}M parameters, {:.0} tokens/s{}",
            (batch * len) as f64 * 1e3 / ms,
            memory_note()
        ),
    );

    let x_t = Tensor::randint(vocab + 1, [batch, len], (Kind::Int64, device));
    reset_peak_rss();
    let ms = time_ms(device, 2, 10, Duration::from_secs(3), || {
        let _ = tch::no_grad(|| net.forward_t(&x_t, None, false));
    });
    emit(
        "transformer b32x128 forward (no grad)",
        ms,
        &format!(
            "{:.0} tokens/s{}",
            (batch * len) as f64 * 1e3 / ms,
            memory_note()
        ),
    );

    let eval = TransformerDenoiser {
        net: &net,
        time_conditioning: false,
        train: false,
    };
    let steps = 128usize;
    for (num, cache) in [(8i64, true), (8, false), (1, true), (1, false)] {
        let options = SampleOptions {
            steps,
            cache,
            ..Default::default()
        };
        let mut calls = 0;
        let mut failed = None;
        reset_peak_rss();
        let ms = time_ms(device, 1, 3, Duration::from_secs(5), || {
            // The same seed every run, so every run makes the same number of model calls.
            tch::manual_seed(1);
            match mdlm.sample(&eval, num, len, device, &options, |_, _| {}) {
                Ok(s) => calls = s.model_calls,
                Err(e) => failed = Some(e),
            }
        });
        if let Some(e) = failed {
            return Err(e.into());
        }
        emit(
            &format!(
                "MDLM sampling {num}x{len}, {steps} steps, {}",
                if cache { "cache" } else { "no cache" }
            ),
            ms,
            &format!(
                "{:.0} characters/s, {calls} model calls{}",
                (num * len) as f64 * 1e3 / ms,
                memory_note()
            ),
        );
    }
    Ok(())
}

/// The training budget of the quality benchmarks: `DIFFUSE_BENCH_SECONDS`, or `default`.
fn bench_seconds(default: f64) -> Result<f64> {
    match std::env::var("DIFFUSE_BENCH_SECONDS") {
        Ok(v) => v
            .trim()
            .parse()
            .ok()
            .filter(|s: &f64| *s > 0.0 && s.is_finite())
            .with_context(|| format!("DIFFUSE_BENCH_SECONDS={v:?}: expected seconds > 0")),
        Err(_) => Ok(default),
    }
}

/// One `text_quality` case: a process and its recipe, named as `DIFFUSE_BENCH_TEXT_CASES` lists
/// it: `mdlm`, `bd3lm-B`, `d3pm-absorbing`, `d3pm-uniform` or `autoregressive`, optionally
/// followed by `+count` (the exact-count estimator, in training and scoring), `+masked-ce` (the
/// unweighted masked cross-entropy as the training loss), `+clip=LO-HI` (mask rates drawn from
/// [LO, HI] in training) and `+ar=F` (a split budget: the autoregressive baseline trains for the
/// share F of the budget, then its weights are adapted into the process, which trains for the
/// rest, as `train text --init` adapts a model; the share is returned beside the config).
fn text_quality_case(name: &str) -> Result<(diffuse_text::process::ProcessConfig, Option<f64>)> {
    use diffuse_text::process::{ProcessConfig, ProcessKind};
    let mut parts = name.split('+');
    let head = parts.next().unwrap_or_default();
    let (kind, block) = match head.strip_prefix("bd3lm-") {
        Some(b) => (
            ProcessKind::Bd3lm,
            Some(
                b.parse::<usize>()
                    .with_context(|| format!("case {name}: block size"))?,
            ),
        ),
        None => (ProcessKind::parse(head)?, None),
    };
    let mut config = ProcessConfig {
        d3pm_timesteps: 100,
        ..ProcessConfig::new(kind)
    };
    if let Some(b) = block {
        config.block_size = b;
    }
    let mut ar_share = None;
    for part in parts {
        match part.split_once('=') {
            None if part == "count" => config.estimator = "count".into(),
            Some(("ar", share)) => {
                let share: f64 = share
                    .parse()
                    .ok()
                    .filter(|f| *f > 0.0 && *f < 1.0)
                    .with_context(|| format!("case {name}: ar=F with F in (0, 1)"))?;
                ar_share = Some(share);
            }
            None if part == "masked-ce" => config.loss = "masked-ce".into(),
            Some(("clip", range)) => {
                let (lo, hi) = range
                    .split_once('-')
                    .with_context(|| format!("case {name}: clip=LO-HI"))?;
                config.mask_rate_range = Some([lo.parse()?, hi.parse()?]);
            }
            _ => bail!("case {name}: unknown part '{part}' (count, masked-ce, clip=LO-HI or ar=F)"),
        }
    }
    if !kind.is_masked_diffusion()
        && (config.estimator != "time" || config.loss != "elbo" || config.mask_rate_range.is_some())
    {
        bail!("case {name}: +count, +masked-ce and +clip apply to mdlm and bd3lm");
    }
    if kind == diffuse_text::process::ProcessKind::Autoregressive && ar_share.is_some() {
        bail!("case {name}: +ar=F adapts the autoregressive model into another process");
    }
    Ok((config, ar_share))
}

/// Train `net` with `process` for `seconds` of wall time by `text_quality`'s recipe (AdamW at
/// `lr`, linear warmup over `warmup` steps, then cosine decay to 0 at the end of the budget by
/// elapsed time, so every process ends annealed whatever its step rate; gradient clipping at 1;
/// EMA 0.999), leave the EMA weights in `vs`, and return the steps made.
#[allow(clippy::too_many_arguments)]
fn train_text_for(
    vs: &VarStore,
    net: &diffuse_text::transformer::TextTransformer,
    process: &diffuse_text::process::TextProcess,
    time_conditioning: bool,
    data: &diffuse_text::corpus::TokenizedCorpus,
    (batch, seed, warmup, lr): (usize, u64, u64, f64),
    seconds: f64,
    device: Device,
) -> Result<u64> {
    use diffuse_tensor::ema::{Ema, EmaConfig};
    use std::time::Instant;
    let sampler = data.train.sampler(batch, seed)?;
    let mut opt = AdamW::new(
        vs,
        AdamWConfig {
            lr,
            ..Default::default()
        },
    )?;
    let mut ema = Ema::new(
        vs,
        EmaConfig {
            decay: 0.999,
            ..EmaConfig::default()
        },
    )?;
    let start = Instant::now();
    let budget = Duration::from_secs_f64(seconds);
    let mut steps = 0u64;
    while start.elapsed() < budget {
        let x0 = data.train.sampled_batch(&sampler, steps, device);
        opt.zero_grad();
        let loss = process.loss(net, &x0, time_conditioning)?;
        loss.backward();
        diffuse_tensor::grad::clip_grad_norm(opt.parameters(), 1.0);
        let done = (start.elapsed().as_secs_f64() / seconds).min(1.0);
        let factor = (steps as f64 / warmup as f64).min(1.0)
            * 0.5
            * (1.0 + (std::f64::consts::PI * done).cos());
        opt.step(lr * factor);
        ema.update(vs);
        steps += 1;
    }
    diffuse_cli::measure::sync(device);
    ema.copy_to(vs);
    Ok(steps)
}

/// Validation bits/char of the text processes after the same wall-clock training budget
/// (`DIFFUSE_BENCH_SECONDS`, default 120 s each) from the same seed: character-level Shakespeare,
/// sequences of 128, batch 32, the `text` benchmark's network (causal for the autoregressive
/// baseline, no adaLN where the process feeds no noise level), AdamW at 1e-3 with 100 warmup
/// steps, then cosine decay to 0 at the end of the budget (by elapsed time), gradient clipping at
/// 1, EMA 0.999 (diffusers' warmup rule), through the library's corpus, process losses and NLL.
/// The EMA weights are scored on every held-out window: MDLM and BD3-LM with 4 stratified draws
/// per sequence (per block for BD3-LM), D3PM's whole bound with T = 100 (not the default 1000,
/// whose bound takes 10x longer to evaluate), the autoregressive model exactly. Cases:
/// `DIFFUSE_BENCH_TEXT_CASES` (comma-separated, see [`text_quality_case`]), by default
/// `autoregressive,bd3lm-4,bd3lm-16,mdlm,d3pm-absorbing`; a case with `+ar=F` trains the
/// autoregressive baseline for the share F of the budget and the process from its adapted
/// weights for the rest, the budget counted once. The MDLM network's config.json goes to
/// target/bench-cache for the peer, which trains it in PyTorch with the same recipe.
fn bench_text_quality(device: Device) -> Result<()> {
    use diffuse_text::corpus::{default_datasets_dir, Corpus};
    use diffuse_text::process::{ProcessKind, TextProcess};
    use diffuse_text::transformer::TextTransformer;
    use std::time::Instant;
    let seconds = bench_seconds(120.0)?;
    let cases = std::env::var("DIFFUSE_BENCH_TEXT_CASES")
        .unwrap_or_else(|_| "autoregressive,bd3lm-4,bd3lm-16,mdlm,d3pm-absorbing".into());
    type Case = (diffuse_text::process::ProcessConfig, Option<f64>);
    let cases: Vec<(String, Case)> = cases
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| Ok((c.to_owned(), text_quality_case(c)?)))
        .collect::<Result<_>>()?;
    let (seq_len, batch, seed, warmup, lr) = (128usize, 32usize, 0u64, 100u64, 1e-3);
    let corpus = Corpus::load("shakespeare", &default_datasets_dir())?;
    let tokenizer = corpus.char_tokenizer()?;
    let data = corpus.tokenize(&tokenizer, seq_len, 0.05)?;
    let validation = &data.validation;
    let chars_per_token = validation.stats().chars_per_token();
    let v = tokenizer.vocab_size() as i64;
    let recipe = (batch, seed, warmup, lr);
    for (name, (process_config, ar_share)) in cases {
        let kind = process_config.kind;
        let (input, output) = kind.vocab_sizes(v);
        let mut config = bench_text_config(input, output, kind == ProcessKind::Autoregressive);
        config.time_conditioning = process_config.time_conditioning;
        process_config.check_seq_len(seq_len)?;
        if kind == ProcessKind::Mdlm && ar_share.is_none() {
            // The peer trains the same network for MDLM.
            config.to_json_file(&bench_cache()?.join("text_quality_mdlm_config.json"))?;
        }
        let start = Instant::now();
        // A split budget: the autoregressive baseline first, its EMA weights adapted into the
        // process's network (the seed's `[MASK]` row, attention no longer causal).
        let mut pretrained = None;
        if let Some(share) = ar_share {
            let ar_kind = ProcessKind::Autoregressive;
            let ar_process_config = diffuse_text::process::ProcessConfig::new(ar_kind);
            let (ar_in, ar_out) = ar_kind.vocab_sizes(v);
            let mut ar_config = bench_text_config(ar_in, ar_out, true);
            ar_config.time_conditioning = ar_process_config.time_conditioning;
            diffuse_tensor::manual_seed(seed);
            let ar_vs = VarStore::new(device);
            let ar_net = TextTransformer::new(&ar_vs.root(), &ar_config)?;
            let ar_process = TextProcess::new(&ar_process_config, v)?;
            let ar_steps = train_text_for(
                &ar_vs,
                &ar_net,
                &ar_process,
                ar_process_config.time_conditioning,
                &data,
                recipe,
                seconds * share,
                device,
            )?;
            let tensors = ar_vs
                .variables()
                .into_iter()
                .map(|(name, t)| (name, t.detach().to_device(Device::Cpu)))
                .collect();
            pretrained = Some((tensors, ar_steps));
        }
        diffuse_tensor::manual_seed(seed);
        let vs = VarStore::new(device);
        let net = TextTransformer::new(&vs.root(), &config)?;
        if let Some((tensors, _)) = pretrained.as_mut() {
            diffuse_text::train::load_adapted(
                &vs,
                std::mem::take(tensors),
                std::path::Path::new("the autoregressive phase"),
            )?;
        }
        let process = TextProcess::new(&process_config, v)?;
        let left = seconds - start.elapsed().as_secs_f64();
        let steps = train_text_for(
            &vs,
            &net,
            &process,
            process_config.time_conditioning,
            &data,
            recipe,
            left,
            device,
        )?;
        let ms = start.elapsed().as_secs_f64() * 1e3
            / (steps + pretrained.as_ref().map_or(0, |p| p.1)) as f64;
        let nll = process.nll(
            &net,
            process_config.time_conditioning,
            validation.tokens(),
            batch as i64,
            4,
            |_, _| {},
        )?;
        let bpc = nll.bits_per_char(chars_per_token)?;
        let se = nll.std_error / std::f64::consts::LN_2 / chars_per_token;
        let draws = match process_config.estimator.as_str() {
            "count" => "masked counts",
            _ => "times",
        };
        let how = match kind {
            ProcessKind::Autoregressive => "exact".to_owned(),
            ProcessKind::Mdlm => format!("upper bound, 4 {draws} per sequence"),
            ProcessKind::Bd3lm => format!("upper bound, 4 {draws} per block"),
            _ => format!("upper bound, T = {}", process_config.d3pm_timesteps),
        };
        let steps = match &pretrained {
            Some((_, ar_steps)) => format!("{ar_steps} autoregressive steps, then {steps}"),
            None => format!("{steps}"),
        };
        emit(
            &format!("{name}, {seconds} s of training"),
            ms,
            &format!(
                "{steps} steps, validation bits/char {bpc:.3} ({how}, {} windows; s.e. {se:.3})",
                validation.len()
            ),
        );
    }
    Ok(())
}

/// Count diffusion against Gaussian diffusion on MNIST pixel counts: the bundled MNIST
/// architecture trained from the same seed for the same wall-clock time with each process (batch
/// 64, AdamW 5e-4 after 100 warm-up steps, gradient clipping at 1, no EMA), then 500 samples in 50
/// steps each (DDIM for Gaussian, Poisson thickening for counts), their classifier-Fréchet
/// distance, and bits/dim of the first 20 test images under each model's full bound.
fn bench_poisson(device: Device) -> Result<()> {
    use diffuse_core::losses::Objective;
    use diffuse_core::poisson::JumpProcess;
    use diffuse_core::schedule::NoiseSchedule;
    use diffuse_core::scheduler_config::SchedulerConfig;
    use diffuse_image::classifier::{load_classifier_dir, load_reference_stats};
    use diffuse_image::data::{ImageDataset, Split};
    use diffuse_image::fid::{classifier_features, frechet_distance, FeatureStats};
    use diffuse_image::pipeline::{ImageModelInfo, ImagePipeline, SampleOptions, UNetDenoiser};
    use diffuse_image::poisson::{image_jump_config, to_counts, UNetCounts};
    use diffuse_image::train::{complete_unet_config, mean_pixel_count, ImageTrainConfig};
    use diffuse_tensor::data::EpochSampler;
    use diffuse_tensor::lr::{LrSchedule, LrScheduleKind};
    use std::time::Instant;
    let seconds = bench_seconds(300.0)?;
    let budget = Duration::from_secs_f64(seconds);
    let (batch, num_samples, sample_steps, bpd_images) = (64usize, 500usize, 50usize, 20usize);
    let datasets = ImageDataset::default_datasets_dir();
    let data = ImageDataset::load("mnist", Split::Train, None, None, &datasets)?;
    let test = ImageDataset::load("mnist", Split::Test, None, None, &datasets)?;
    let classifier_dir = diffuse_cli::fid::default_models_dir().join("mnist-classifier");
    let (classifier, _cvs, _) = load_classifier_dir(&classifier_dir, device)?;
    let reference = match load_reference_stats(&classifier_dir)? {
        Some(stats) => stats,
        None => FeatureStats::from_features(&classifier_features(&classifier, test.pixels(), 250)),
    };
    let schedule = LrSchedule {
        kind: LrScheduleKind::ConstantWithWarmup,
        warmup_steps: 100,
        total_steps: u64::MAX,
    };
    for poisson in [false, true] {
        let mut config = ImageTrainConfig::default();
        if poisson {
            let mut jump = image_jump_config();
            jump.signal_mean = mean_pixel_count(&data);
            config.process = Some(jump);
        }
        complete_unet_config(&mut config, &data)?;
        if !poisson {
            // The PyTorch peer trains the same network with the Gaussian recipe.
            config
                .unet
                .to_json_file(&bench_cache()?.join("poisson_unet_config.json"))?;
        }
        let info = ImageModelInfo {
            process: config.process.clone(),
            ..Default::default()
        };
        diffuse_tensor::manual_seed(0);
        let pipeline = ImagePipeline::new(
            &config.unet,
            SchedulerConfig::Ddpm(config.scheduler.clone()),
            info,
            device,
        )?;
        let mut objective = Objective::new(
            NoiseSchedule::new(&config.scheduler.schedule)?,
            config.objective.clone(),
        )?;
        let process = config.process.clone().map(JumpProcess::new).transpose()?;
        let sampler = EpochSampler::new(data.len(), batch, 0);
        let mut opt = AdamW::new(
            &pipeline.vs,
            AdamWConfig {
                lr: 5e-4,
                ..Default::default()
            },
        )?;
        let start = Instant::now();
        let mut steps = 0u64;
        while start.elapsed() < budget {
            let (x0, _) = data.batch(&sampler.batch(steps), false, device);
            opt.zero_grad();
            let loss = match &process {
                Some(p) => p.loss(
                    &UNetCounts {
                        unet: &pipeline.unet,
                        class_labels: None,
                        unconditional_labels: None,
                        guidance: 1.0,
                        train: true,
                    },
                    &to_counts(&x0),
                ),
                None => {
                    let model = UNetDenoiser {
                        unet: &pipeline.unet,
                        prediction_type: config.objective.prediction_type,
                        class_labels: None,
                        train: true,
                        keep_channels: None,
                    };
                    objective.loss(&model, &x0)?.loss
                }
            };
            loss.backward();
            diffuse_tensor::grad::clip_grad_norm(opt.parameters(), 1.0);
            opt.step(schedule.lr(5e-4, steps));
            steps += 1;
        }
        diffuse_cli::measure::sync(device);
        let ms = start.elapsed().as_secs_f64() * 1e3 / steps as f64;
        let options = SampleOptions {
            num: num_samples,
            sampler: Some(if poisson { "jump" } else { "ddim" }.into()),
            steps: Some(sample_steps),
            seed: Some(1),
            batch_size: Some(250),
            ..SampleOptions::default()
        };
        let started = Instant::now();
        let samples = tch::no_grad(|| pipeline.sample(&options, |_, _| {}))?;
        diffuse_cli::measure::sync(device);
        let sample_seconds = started.elapsed().as_secs_f64();
        let stats = FeatureStats::from_features(&classifier_features(&classifier, &samples, 250));
        let fid = frechet_distance(&stats, &reference);
        let idx: Vec<usize> = (0..bpd_images).collect();
        let (x, _) = test.batch(&idx, false, Device::Cpu);
        diffuse_tensor::manual_seed(2);
        let bpd = pipeline.bits_per_dim([x], Some(bpd_images as u64), None)?;
        let name = if poisson {
            "count diffusion (binomial thinning, x0, KL)"
        } else {
            "Gaussian diffusion (epsilon, linear betas)"
        };
        emit(
            &format!("{name}, {seconds} s of training"),
            ms,
            &format!(
                "{steps} steps; classifier-Fréchet {fid:.2} ({num_samples} samples, {} {sample_steps} steps, {:.1} s = {:.1} ms/image); bits/dim {bpd:.3} (first {bpd_images} test images, full 1000-term bound)",
                options.sampler.as_deref().unwrap_or_default(),
                sample_seconds,
                sample_seconds * 1e3 / num_samples as f64
            ),
        );
    }
    Ok(())
}

/// Rows per rank, warm-up and timed steps of the `dist` benchmark.
const DIST_BATCH: i64 = 32;
const DIST_WARMUP: usize = 3;
const DIST_STEPS: usize = 15;

/// One rank of the `dist` benchmark (a child process; the environment names its rank): the
/// bundled MNIST UNet's training step on fixed data, timed in three parts (forward + backward,
/// gradient all-reduce, AdamW); rank 0 prints `{"step_ms", "allreduce_ms"}` medians.
fn dist_rank(device: Device) -> Result<()> {
    use diffuse_image::unet::UNet2d;
    use diffuse_tensor::dist::{self, DistBackend};
    use std::time::Instant;
    let group = dist::init(DistBackend::for_device(device)?, Duration::from_secs(120))?;
    let mut config = diffuse_image::train::small_unet();
    config.set_sample_size(28, 28);
    config.in_channels = 1;
    config.out_channels = 1;
    tch::manual_seed(0);
    let vs = VarStore::new(device);
    let unet = UNet2d::new(&vs.root(), &config)?;
    let mut opt = AdamW::new(&vs, AdamWConfig::default())?;
    let x = Tensor::randn([DIST_BATCH, 1, 28, 28], (Kind::Float, device));
    let noise = Tensor::randn([DIST_BATCH, 1, 28, 28], (Kind::Float, device));
    let t = Tensor::randint(1000, [DIST_BATCH], (Kind::Int64, device));
    let (mut steps, mut reduces) = (Vec::new(), Vec::new());
    for i in 0..DIST_WARMUP + DIST_STEPS {
        if let Some(g) = group {
            g.barrier()?;
        }
        let start = Instant::now();
        opt.zero_grad();
        let loss = (unet.forward_t(&x, &t, None, true) - &noise)
            .square()
            .mean(Kind::Float);
        loss.backward();
        diffuse_cli::measure::sync(device);
        let reduce_start = Instant::now();
        if let Some(g) = group {
            let mut grads: Vec<Tensor> = opt.parameters().map(|p| p.grad()).collect();
            g.average_tensors(&mut grads, 25 << 20)?;
        }
        diffuse_cli::measure::sync(device);
        let reduce = reduce_start.elapsed().as_secs_f64() * 1e3;
        opt.step(1e-4);
        diffuse_cli::measure::sync(device);
        if i >= DIST_WARMUP {
            steps.push(start.elapsed().as_secs_f64() * 1e3);
            reduces.push(reduce);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    if group.is_none_or(|g| g.is_main()) {
        println!(
            "{}",
            serde_json::json!({"step_ms": median(&mut steps), "allreduce_ms": median(&mut reduces)})
        );
    }
    Ok(())
}

/// Data-parallel scaling on this machine: the bundled MNIST UNet's training step (32 images per
/// rank) as 1 process and as 2 processes over Gloo (c10d), one thread each, and as 1 process
/// with 2 threads and the 2-process global batch; the all-reduce time per step beside the step.
fn bench_dist(device: Device) -> Result<()> {
    if std::env::var_os("DIFFUSE_BENCH_DIST_CHILD").is_some() {
        return dist_rank(device);
    }
    let mut config = diffuse_image::train::small_unet();
    config.set_sample_size(28, 28);
    config.in_channels = 1;
    config.out_channels = 1;
    config.to_json_file(&bench_cache()?.join("dist_unet_config.json"))?;
    let exe = std::env::current_exe()?;
    let device_flag = match device {
        Device::Cuda(_) => "cuda",
        _ => "cpu",
    };
    let run = |world: usize, threads: usize| -> Result<(f64, f64)> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let children: Vec<std::process::Child> = (0..world)
            .map(|rank| {
                let mut cmd = std::process::Command::new(&exe);
                cmd.args(["dist", "--device", device_flag])
                    .env("DIFFUSE_BENCH_DIST_CHILD", "1")
                    .env("OMP_NUM_THREADS", threads.to_string())
                    .stdout(std::process::Stdio::piped());
                if world > 1 {
                    cmd.env("RANK", rank.to_string())
                        .env("LOCAL_RANK", rank.to_string())
                        .env("WORLD_SIZE", world.to_string())
                        .env("MASTER_ADDR", "127.0.0.1")
                        .env("MASTER_PORT", port.to_string());
                }
                cmd.spawn()
            })
            .collect::<std::io::Result<_>>()?;
        let mut result = None;
        for child in children {
            let out = child.wait_with_output()?;
            if !out.status.success() {
                bail!("a dist benchmark rank failed ({})", out.status);
            }
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                    result = Some((
                        v["step_ms"].as_f64().unwrap_or(f64::NAN),
                        v["allreduce_ms"].as_f64().unwrap_or(f64::NAN),
                    ));
                }
            }
        }
        result.context("rank 0 printed no timing")
    };
    let (one, _) = run(1, 1)?;
    let images = |world: usize, ms: f64| world as f64 * DIST_BATCH as f64 * 1e3 / ms;
    emit(
        "UNet2d train step, 1 process x 1 thread, 32 images",
        one,
        &format!("{:.0} images/s", images(1, one)),
    );
    let (two, reduce) = run(2, 1)?;
    emit(
        "UNet2d train step, 2 processes x 1 thread (gloo), 32 images each",
        two,
        &format!(
            "{:.0} images/s = {:.2}x one process; gradient all-reduce {reduce:.1} ms of the step ({:.0}%)",
            images(2, two),
            images(2, two) / images(1, one),
            100.0 * reduce / two
        ),
    );
    Ok(())
}

/// The OpenMP wait policies and thread counts the `threads` benchmark compares, as the
/// environment of a fresh process (libgomp reads it once, when libtorch is loaded).
const THREAD_SETTINGS: &[(&str, &[(&str, &str)])] = &[
    ("2 threads, libgomp default (spin, then sleep)", &[]),
    (
        "diffuse default: threads for the free cores",
        &[("DIFFUSE_BENCH_ADAPT_THREADS", "1")],
    ),
    (
        "2 threads, passive wait (OMP_WAIT_POLICY=PASSIVE)",
        &[("OMP_WAIT_POLICY", "PASSIVE")],
    ),
    (
        "2 threads, short spin (GOMP_SPINCOUNT=10000)",
        &[("GOMP_SPINCOUNT", "10000")],
    ),
    ("1 thread", &[("OMP_NUM_THREADS", "1")]),
];

/// What a busy neighbour costs: the bundled MNIST UNet's 20-step DPM-Solver++ 2M sampling of 4
/// images, in a fresh process per setting (libgomp's default spin, diffuse's thread count adapted
/// to the free cores, a passive wait, a short spin, one thread), on an idle machine and beside one
/// process that keeps a core busy. The child processes (`DIFFUSE_BENCH_THREADS_CHILD`) do the timing.
fn bench_threads(device: Device) -> Result<()> {
    if std::env::var_os("DIFFUSE_BENCH_THREADS_CHILD").is_some() {
        return threads_child(device);
    }
    let exe = std::env::current_exe()?;
    let device_flag = match device {
        Device::Cuda(_) => "cuda",
        _ => "cpu",
    };
    for busy in [false, true] {
        // The neighbour: a shell loop, as any other program hogging a core would.
        let mut neighbour = if busy {
            Some(
                std::process::Command::new("sh")
                    .args(["-c", "while :; do :; done"])
                    .spawn()
                    .context("starting a busy neighbour (sh)")?,
            )
        } else {
            None
        };
        for (name, env) in THREAD_SETTINGS {
            let mut cmd = std::process::Command::new(&exe);
            cmd.args(["threads", "--device", device_flag])
                .env("DIFFUSE_BENCH_THREADS_CHILD", "1")
                .env_remove("OMP_WAIT_POLICY")
                .env_remove("OMP_NUM_THREADS")
                .env_remove("GOMP_SPINCOUNT")
                .stdout(std::process::Stdio::piped());
            for (k, v) in *env {
                cmd.env(k, v);
            }
            let out = cmd.output()?;
            if !out.status.success() {
                if let Some(n) = neighbour.as_mut() {
                    let _ = n.kill();
                }
                bail!("a threads benchmark child failed ({})", out.status);
            }
            let result = String::from_utf8_lossy(&out.stdout)
                .lines()
                .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .context("the threads child printed no timing")?;
            let ms = result["ms"]
                .as_f64()
                .context("the threads child printed no timing")?;
            let threads = result["threads"].as_str().unwrap_or("?").to_owned();
            let place = if busy {
                "beside 1 busy process"
            } else {
                "idle machine"
            };
            emit(
                &format!("sample 4 images, dpm++2m 20 steps, {name}, {place}"),
                ms,
                &format!("{:.1} images/s ({threads})", 4e3 / ms),
            );
        }
        if let Some(mut n) = neighbour {
            let _ = n.kill();
            let _ = n.wait();
        }
    }
    Ok(())
}

/// One setting of [`bench_threads`]: the timed sampling loop, printed as `{"ms": ...}`.
fn threads_child(device: Device) -> Result<()> {
    // Measured before any tensor work, as the `diffuse` binary does at start.
    let adapted = std::env::var_os("DIFFUSE_BENCH_ADAPT_THREADS")
        .map(|_| diffuse_tensor::runtime::adapt_threads());
    use diffuse_image::unet::UNet2d;
    let mut config = diffuse_image::train::small_unet();
    config.set_sample_size(28, 28);
    config.in_channels = 1;
    config.out_channels = 1;
    config.to_json_file(&bench_cache()?.join("threads_unet_config.json"))?;
    tch::manual_seed(0);
    let vs = VarStore::new(device);
    let unet = UNet2d::new(&vs.root(), &config)?;
    let x = Tensor::randn([4, 1, 28, 28], (Kind::Float, device));
    let ms = time_dpm_sampling(device, &unet, &x, 20, Duration::from_secs(4))?;
    let n = tch::get_num_threads();
    let threads = format!("{n} thread{}", if n == 1 { "" } else { "s" });
    let threads = match adapted {
        Some(choice) => format!("{threads}: {choice}"),
        None => threads,
    };
    println!("{}", serde_json::json!({ "ms": ms, "threads": threads }));
    Ok(())
}

/// The audio models' training schedule: DDPM linear betas 1e-4..0.02 over T = 200 (DiffWave's
/// unconditional setting).
fn audio_schedule() -> diffuse_core::schedule::BetaScheduleConfig {
    diffuse_core::schedule::BetaScheduleConfig {
        num_train_timesteps: 200,
        beta_start: 1e-4,
        beta_end: 0.02,
        ..Default::default()
    }
}

/// One epsilon-MSE training step (random timesteps and noise, backward, AdamW at 2e-4) of
/// `config`'s network on `[batch, 1, len]` audio, through the library's objective, named `name`;
/// emits the case.
fn bench_audio_train_step(
    device: Device,
    name: &str,
    config: &diffuse_audio::network::AudioNetworkConfig,
    (batch, len): (i64, i64),
) -> Result<()> {
    use diffuse_audio::network::{parameter_count, AudioDenoiser, AudioNetwork};
    use diffuse_core::losses::{Objective, ObjectiveConfig};
    use diffuse_core::prediction::PredictionType;
    use diffuse_core::schedule::NoiseSchedule;
    tch::manual_seed(0);
    let vs = VarStore::new(device);
    let net = AudioNetwork::new(&vs.root(), config)?;
    let params = parameter_count(&vs) as f64 / 1e6;
    let mut opt = AdamW::new(
        &vs,
        AdamWConfig {
            lr: 2e-4,
            ..Default::default()
        },
    )?;
    let mut objective = Objective::new(
        NoiseSchedule::new(&audio_schedule())?,
        ObjectiveConfig::default(),
    )?;
    let x0 = Tensor::randn([batch, 1, len], (Kind::Float, device)) * 0.3;
    let model = AudioDenoiser {
        net: &net,
        prediction_type: PredictionType::Epsilon,
        train: true,
        class_labels: None,
    };
    reset_peak_rss();
    let mut failed = None;
    let ms = time_ms(device, 1, 3, Duration::from_secs(5), || {
        opt.zero_grad();
        match objective.loss(&model, &x0) {
            Ok(out) => {
                out.loss.backward();
                opt.step(2e-4);
            }
            Err(e) => failed = Some(e),
        }
    });
    if let Some(e) = failed {
        return Err(e.into());
    }
    let audio_s = (batch * len) as f64 / 16000.0;
    emit(
        &format!("{name} b{batch}x{len} train step (fwd+bwd+adamw)"),
        ms,
        &format!(
            "{params:.2}M parameters, {:.4} s of 16 kHz audio per s{}",
            audio_s * 1e3 / ms,
            memory_note()
        ),
    );
    Ok(())
}

/// DiffWave (the default config, 1.65 M parameters) against the same network in plain PyTorch
/// (`crates/audio/tests/golden/make_network_golden.py`, built from the config.json written here
/// to target/bench-cache), on the T = 200 linear schedule. Cases: sampling one second of 16 kHz
/// audio (batch 1 x 16000) through the library's sampling loop with DiffWave's 6-step fast
/// sampler (aligned fractional timesteps), with DDPM on 50 strided timesteps (leading spacing:
/// 196, 192, ..., 0) and with full 200-step DDPM (both clip x0 to [-1, 1], diffusers' default);
/// then epsilon-MSE training steps at batch 8 x 16384 samples of the default UNet1d (2.1 M
/// parameters, its config also written for the peer) and of DiffWave, with the bundled drums
/// model ([`bench_audio_recipe`]) before them. `work` gives the real-time factor (seconds of audio per second
/// of compute) and the peak resident set.
fn bench_audio(device: Device) -> Result<()> {
    use diffuse_audio::diffwave::DiffWaveConfig;
    use diffuse_audio::network::{AudioDenoiser, AudioNetwork, AudioNetworkConfig};
    use diffuse_audio::unet1d::UNet1dConfig;
    use diffuse_core::prediction::PredictionType;
    use diffuse_core::samplers::ddpm::{DdpmConfig, DdpmSampler};
    use diffuse_core::samplers::diffwave::{DiffWaveFastSampler, DIFFWAVE_FAST_BETAS};
    use diffuse_core::samplers::{sample, Sampler};
    use diffuse_core::schedule::NoiseSchedule;
    let cache = bench_cache()?;
    let diffwave = AudioNetworkConfig::DiffWave(DiffWaveConfig::default());
    diffwave.to_json_file(&cache.join("audio_diffwave_config.json"))?;
    let unet = AudioNetworkConfig::Unet1d(UNet1dConfig::default());
    unet.to_json_file(&cache.join("audio_unet1d_config.json"))?;

    // Smallest footprint first: each case's peak resident set is then its own, not an earlier
    // case's heap kept by the allocator (tune_allocator keeps buffers under 64 MiB in the heap).
    tch::manual_seed(0);
    let vs = VarStore::new(device);
    let net = AudioNetwork::new(&vs.root(), &diffwave)?;
    let model = AudioDenoiser {
        net: &net,
        prediction_type: PredictionType::Epsilon,
        train: false,
        class_labels: None,
    };
    let schedule = audio_schedule();
    let len = 16000i64;
    // (name, steps, warm-up runs, timed runs): one forward takes about a second on a 2-core
    // CPU, so the 50- and 200-step loops (one and several minutes) run once.
    let cases: [(&str, usize, usize, usize); 3] = [
        ("diffwave-fast", DIFFWAVE_FAST_BETAS.len(), 1, 3),
        ("ddpm", 50, 0, 1),
        ("ddpm", 200, 0, 1),
    ];
    for (name, steps, warmup, runs) in cases {
        let make = || -> Result<Box<dyn Sampler>> {
            let mut sampler: Box<dyn Sampler> = if name == "diffwave-fast" {
                Box::new(DiffWaveFastSampler::new(
                    &NoiseSchedule::new(&schedule)?,
                    &DIFFWAVE_FAST_BETAS,
                    PredictionType::Epsilon,
                )?)
            } else {
                Box::new(DdpmSampler::new(DdpmConfig {
                    schedule: schedule.clone(),
                    ..Default::default()
                })?)
            };
            sampler.set_timesteps(steps)?;
            Ok(sampler)
        };
        let mut failed = None;
        reset_peak_rss();
        let ms = time_ms(device, warmup, runs, Duration::ZERO, || {
            let run = || -> Result<()> {
                let mut sampler = make()?;
                tch::manual_seed(1);
                let x = Tensor::randn([1, 1, len], (Kind::Float, device));
                let _ = sample(sampler.as_mut(), &model, x, |_| {})?;
                Ok(())
            };
            if let Err(e) = run() {
                failed = Some(e);
            }
        });
        if let Some(e) = failed {
            return Err(e);
        }
        emit(
            &format!("diffwave sample 1 s at 16 kHz, {name} {steps} steps"),
            ms,
            &format!(
                "{steps} model calls, real-time factor {:.4} (s of audio per s){}",
                1e3 / ms,
                memory_note()
            ),
        );
    }

    drop(net);
    drop(vs);
    // Then the larger footprints, DiffWave's training step (8 GB) last.
    bench_audio_recipe(device)?;
    bench_audio_train_step(device, unet.name(), &unet, (8, 16384))?;
    bench_audio_train_step(device, diffwave.name(), &diffwave, (8, 16384))?;
    Ok(())
}

/// The bundled drums model (`data/models/drums`: the recipe's five-level UNet1d with attention
/// in its two coarsest levels, class-conditional, v-prediction on the zero-terminal-SNR
/// schedule), as a user runs it: one clip per drum class (5 x 0.512 s) by DDIM in 50 trailing
/// steps with classifier-free guidance at 3 (two network calls per step), through the
/// pipeline's own sampling; then its training step at the recipe's batch (16 x 8192).
fn bench_audio_recipe(device: Device) -> Result<()> {
    use diffuse_audio::pipeline::{AudioPipeline, AudioSampleOptions};
    use diffuse_core::sampler_choice::SamplerChoice;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/models/drums");
    let pipeline = AudioPipeline::load(&dir, device)?;
    let options = AudioSampleOptions {
        num: 5,
        sampler: SamplerChoice {
            name: Some("ddim".into()),
            steps: Some(50),
            ..SamplerChoice::default()
        },
        seed: Some(1),
        class: Some(0),
        guidance: 3.0,
        ..AudioSampleOptions::default()
    };
    let mut failed = None;
    reset_peak_rss();
    let ms = time_ms(device, 1, 3, Duration::ZERO, || {
        if let Err(e) = pipeline.sample(&options, |_, _| {}) {
            failed = Some(e);
        }
    });
    if let Some(e) = failed {
        return Err(e.into());
    }
    let audio_s = 5.0 * pipeline.frames_for(None)? as f64 / 16000.0;
    emit(
        "drums recipe sample 5 x 0.512 s, ddim 50 steps, guidance 3",
        ms,
        &format!(
            "100 model calls at batch 5, real-time factor {:.4} (s of audio per s){}",
            audio_s * 1e3 / ms,
            memory_note()
        ),
    );
    let config = pipeline.network.config().clone();
    drop(pipeline);
    bench_audio_train_step(device, "drums recipe", &config, (16, 8192))
}

fn main() -> std::process::ExitCode {
    diffuse_tensor::runtime::tune_allocator();
    diffuse_cli::report(run())
}

fn run() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mut name = None;
    let mut device = Device::Cpu;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--device" => {
                let value = args.next().context("--device needs a value")?;
                device = diffuse_tensor::parse_device(&value).context("--device")?;
            }
            other if !other.starts_with('-') && name.is_none() => name = Some(other.to_owned()),
            other => {
                bail!("unexpected argument '{other}' (usage: diffuse-bench NAME [--device DEV])")
            }
        }
    }
    match name.as_deref() {
        Some("matmul") => bench_matmul(device),
        Some("train_step") => bench_train_step(device)?,
        Some("sampler_step") => bench_sampler_step(device)?,
        Some("sampler_quality") => bench_sampler_quality()?,
        Some("image") => bench_image(device)?,
        Some("text") => bench_text(device)?,
        Some("text_quality") => bench_text_quality(device)?,
        Some("audio") => bench_audio(device)?,
        Some("poisson") => bench_poisson(device)?,
        Some("dist") => bench_dist(device)?,
        Some("threads") => bench_threads(device)?,
        Some(other) => {
            bail!("unknown benchmark '{other}': expected matmul, train_step, sampler_step, sampler_quality, image, text, text_quality, audio, poisson, dist or threads")
        }
        None => bail!(
            "usage: diffuse-bench NAME [--device DEV] (NAME: matmul, train_step, sampler_step, sampler_quality, image, text, text_quality, audio, poisson, dist, threads)"
        ),
    }
    Ok(())
}
