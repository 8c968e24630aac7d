//! A count model directory: `config.json` (the network's shape), `model.safetensors` (its
//! weights) and `diffuse.json` ([`CountModelInfo`]: the count process, the column names, the
//! training data and how it was split). [`CountModel`] samples new count vectors, optionally with
//! some columns fixed to given values (the other columns are then drawn conditionally, by running
//! the fixed ones down their exact posterior path, `diffuse_core::poisson::sample::inpaint`), and
//! bounds the data's likelihood in bits per dimension.

use crate::network::{CountNetwork, CountNetworkConfig, NetworkDenoiser};
use diffuse_core::poisson::{self, JumpConfig, JumpProcess, JumpSampler};
use diffuse_tensor::atomic::write_json_atomic;
use diffuse_tensor::weights::{load_var_store, save_var_store};
use diffuse_tensor::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const INFO_FILE: &str = "diffuse.json";

/// What diffuse knows about a count model beyond its network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CountModelInfo {
    /// The count process it was trained with.
    pub process: JumpConfig,
    /// Column names (the CSV header, or c0, c1, ...).
    pub columns: Vec<String>,
    /// Shape of one example when the data had more than two dimensions (else `[dim]`).
    pub item_shape: Vec<i64>,
    /// The training file, as given to `--data`.
    pub data: Option<String>,
    /// Fraction of the file's rows held out from training (`CountTable::split`).
    pub held_out: f64,
    /// Optimiser steps it was trained for.
    pub steps: Option<u64>,
}

impl Default for CountModelInfo {
    fn default() -> Self {
        CountModelInfo {
            process: JumpConfig::default(),
            columns: Vec::new(),
            item_shape: Vec::new(),
            data: None,
            held_out: 0.1,
            steps: None,
        }
    }
}

/// How to sample.
#[derive(Clone, Debug, PartialEq)]
pub struct CountSampleOptions {
    pub num: usize,
    /// `jump` (Poisson thickening) or `blackout` (binomial bridge); `None` = jump.
    pub sampler: Option<String>,
    /// Model calls per sample; `None` = every training step.
    pub steps: Option<usize>,
    pub seed: Option<u64>,
    /// Rows per model call; `None` = all at once.
    pub batch_size: Option<usize>,
    /// Columns fixed to values: (column index, count).
    pub given: Vec<(usize, f64)>,
}

impl Default for CountSampleOptions {
    fn default() -> Self {
        CountSampleOptions {
            num: 1000,
            sampler: None,
            steps: None,
            seed: Some(0),
            batch_size: None,
            given: Vec::new(),
        }
    }
}

/// A loaded count model.
pub struct CountModel {
    pub vs: VarStore,
    pub network: CountNetwork,
    pub info: CountModelInfo,
    process: JumpProcess,
}

/// Where the model of `dir` lives: `dir` itself, or `dir/model` for a training run directory.
pub fn resolve_model_dir(dir: &Path) -> Result<PathBuf> {
    diffuse_tensor::atomic::resolve_model_dir(dir, &[INFO_FILE])
}

fn require_file(dir: &Path, name: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::format(
            dir,
            format!(
                "not a complete count model directory: {name} is missing (expected \
                 {CONFIG_FILE}, {WEIGHTS_FILE} and {INFO_FILE})"
            ),
        ))
    }
}

impl CountModel {
    /// A fresh (untrained) model.
    pub fn new(config: &CountNetworkConfig, info: CountModelInfo, device: Device) -> Result<Self> {
        if info.columns.len() as i64 != config.dim {
            return Err(Error::InvalidArgument(format!(
                "the model has {} columns but {} column names",
                config.dim,
                info.columns.len()
            )));
        }
        let process = JumpProcess::new(info.process.clone())?;
        let vs = VarStore::new(device);
        let network = CountNetwork::new(&vs.root(), config)?;
        Ok(CountModel {
            vs,
            network,
            info,
            process,
        })
    }

    /// Load a model directory (or a training run directory holding one in `model/`).
    pub fn load(dir: &Path, device: Device) -> Result<Self> {
        let dir = resolve_model_dir(dir)?;
        let config_path = require_file(&dir, CONFIG_FILE)?;
        let weights_path = require_file(&dir, WEIGHTS_FILE)?;
        let info_path = require_file(&dir, INFO_FILE)?;
        let config = CountNetworkConfig::from_json_file(&config_path)?;
        let text = fs::read_to_string(&info_path).map_err(|e| Error::io(&info_path, e))?;
        let info: CountModelInfo = serde_json::from_str(&text).map_err(|e| {
            Error::format(&info_path, format!("not a count model's diffuse.json: {e}"))
        })?;
        let model = CountModel::new(&config, info, device)
            .map_err(|e| Error::format(&info_path, e.to_string()))?;
        load_var_store(&model.vs, &weights_path, true)?;
        Ok(model)
    }

    /// Write the directory atomically (files a user put beside the model are kept).
    pub fn save(&self, dir: &Path) -> Result<()> {
        diffuse_tensor::atomic::write_dir_atomic(
            dir,
            INFO_FILE,
            &[CONFIG_FILE, WEIGHTS_FILE, INFO_FILE],
            |staging| {
                self.network
                    .config()
                    .to_json_file(&staging.join(CONFIG_FILE))?;
                save_var_store(&self.vs, &staging.join(WEIGHTS_FILE), None)?;
                write_json_atomic(&staging.join(INFO_FILE), &self.info)
            },
        )
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    pub fn process(&self) -> &JumpProcess {
        &self.process
    }

    pub fn dim(&self) -> i64 {
        self.network.config().dim
    }

    /// The sampler an option names (jump by default) and its steps, checked.
    pub fn sampler_and_steps(&self, options: &CountSampleOptions) -> Result<(JumpSampler, usize)> {
        let sampler = JumpSampler::parse(options.sampler.as_deref().unwrap_or("jump"))?;
        sampler.check(&self.process)?;
        let steps = options.steps.unwrap_or(self.process.timesteps());
        poisson::schedule::sampling_timesteps(self.process.timesteps(), steps)?;
        Ok((sampler, steps))
    }

    /// Parse `--given NAME=COUNT,...` (names or 0-based column numbers) into (column, count).
    pub fn parse_given(&self, spec: &str) -> Result<Vec<(usize, f64)>> {
        let mut out: Vec<(usize, f64)> = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part.split_once('=').ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "--given: '{part}' is not NAME=COUNT (e.g. --given {}=3)",
                    self.info.columns.first().map_or("c0", String::as_str)
                ))
            })?;
            let name = name.trim();
            let column = self
                .info
                .columns
                .iter()
                .position(|c| c == name)
                .or_else(|| {
                    name.parse::<usize>()
                        .ok()
                        .filter(|&i| i < self.info.columns.len())
                })
                .ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "--given: no column '{name}' (the model's columns are {})",
                        preview_list(&self.info.columns)
                    ))
                })?;
            let count: f64 = value.trim().parse().map_err(|_| {
                Error::InvalidArgument(format!("--given: {name}={value} is not a number"))
            })?;
            if !(count.is_finite() && count >= 0.0 && count.fract() == 0.0) {
                return Err(Error::InvalidArgument(format!(
                    "--given: {name}={value}: counts are non-negative whole numbers"
                )));
            }
            // The largest counts the tables hold exactly (as the data loader accepts).
            if count > crate::data::MAX_COUNT as f64 {
                return Err(Error::InvalidArgument(format!(
                    "--given: {name}={value}: counts must be at most 2^53 = {}",
                    crate::data::MAX_COUNT
                )));
            }
            if out.iter().any(|(c, _)| *c == column) {
                return Err(Error::InvalidArgument(format!(
                    "--given: column '{name}' is given twice"
                )));
            }
            out.push((column, count));
        }
        if out.len() == self.info.columns.len() {
            return Err(Error::InvalidArgument(
                "--given: every column is given, so there is nothing to generate".into(),
            ));
        }
        Ok(out)
    }

    /// Generate `options.num` count vectors `[N, dim]` (Int64 on the CPU). `on_step(done, total)`
    /// reports progress over all batches.
    pub fn sample(
        &self,
        options: &CountSampleOptions,
        mut on_step: impl FnMut(usize, usize),
    ) -> Result<Tensor> {
        if options.num == 0 {
            return Err(Error::InvalidArgument("--num: must be at least 1".into()));
        }
        if options.batch_size == Some(0) {
            return Err(Error::InvalidArgument(
                "--batch-size: must be at least 1".into(),
            ));
        }
        let (sampler, steps) = self.sampler_and_steps(options)?;
        if let Some(seed) = options.seed {
            diffuse_tensor::manual_seed(seed);
        }
        let d = self.dim();
        let batch = options.batch_size.unwrap_or(options.num).min(options.num);
        let chunks_total = options.num.div_ceil(batch);
        let model = NetworkDenoiser {
            network: &self.network,
            train: false,
        };
        let (mut done, mut chunk) = (0usize, 0usize);
        let mut parts = Vec::new();
        while done < options.num {
            let n = batch.min(options.num - done) as i64;
            let progress =
                |i: usize, total: usize| on_step(chunk * total + i, total * chunks_total);
            let x = if options.given.is_empty() {
                poisson::sample::sample(
                    &self.process,
                    &model,
                    &[n, d],
                    steps,
                    sampler,
                    self.device(),
                    progress,
                )?
            } else {
                let mut known = vec![0f32; d as usize];
                let mut mask = vec![0f32; d as usize];
                for &(c, v) in &options.given {
                    known[c] = v as f32;
                    mask[c] = 1.0;
                }
                let known = Tensor::from_slice(&known)
                    .to_device(self.device())
                    .unsqueeze(0)
                    .expand([n, d], false)
                    .contiguous();
                let mask = Tensor::from_slice(&mask)
                    .to_device(self.device())
                    .unsqueeze(0);
                poisson::sample::inpaint(
                    &self.process,
                    &model,
                    &known,
                    &mask,
                    steps,
                    sampler,
                    progress,
                )?
            };
            let rows = x
                .round()
                .clamp_min(0.0)
                .to_kind(Kind::Int64)
                .to_device(Device::Cpu);
            // The network works in f32, which rounds counts above 2^24; given columns come out
            // exactly as given.
            for &(c, v) in &options.given {
                let _ = rows.select(1, c as i64).fill_(v as i64);
            }
            parts.push(rows);
            done += n as usize;
            chunk += 1;
        }
        Ok(Tensor::cat(&parts, 0))
    }

    /// Bits per dimension of `rows` `[N, dim]` under the full bound (binomial thinning only),
    /// `batch` rows at a time; `on_term` after every bound term of every batch.
    pub fn bits_per_dim(
        &self,
        rows: &Tensor,
        batch: usize,
        mut on_term: impl FnMut(usize),
    ) -> Result<f64> {
        let model = NetworkDenoiser {
            network: &self.network,
            train: false,
        };
        let n = rows.size()[0];
        if n == 0 {
            return Err(Error::InvalidArgument("bits/dim of no rows".into()));
        }
        let mut sum = 0.0;
        let mut start = 0;
        while start < n {
            let len = (batch.max(1) as i64).min(n - start);
            let x = rows
                .narrow(0, start, len)
                .to_kind(Kind::Float)
                .to_device(self.device());
            let bpd = tch::no_grad(|| {
                poisson::likelihood::bits_per_dim(&self.process, &model, &x, &mut on_term)
            })?;
            sum += bpd.sum(Kind::Double).double_value(&[]);
            start += len;
        }
        Ok(sum / n as f64)
    }
}

/// The first few names of a list, for messages.
fn preview_list(names: &[String]) -> String {
    let shown: Vec<&str> = names.iter().take(8).map(String::as_str).collect();
    if names.len() > 8 {
        format!("{}, ... ({} in all)", shown.join(", "), names.len())
    } else {
        shown.join(", ")
    }
}
