//! Multi-process tests of data-parallel training on c10d (Gloo over loopback): each test starts
//! copies of this test binary as the ranks (the `rank_main` entry below, selected by
//! `DIFFUSE_DIST_SCENARIO`), waits for them and checks what they wrote.

use diffuse_tensor::data::EpochSampler;
use diffuse_tensor::dist::{self, DistBackend, DistEnv, ProcessGroup};
use diffuse_tensor::ema::EmaConfig;
use diffuse_tensor::optim::AdamWConfig;
use diffuse_tensor::train::{TrainConfig, TrainTask, Trainer};
use diffuse_tensor::weights::{load_tensors, save_var_store};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tch::nn::{self, Module, VarStore};
use tch::{Device, Kind, Tensor};

/// A free TCP port on the loopback interface (released again for rank 0 to bind).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Start `world` ranks of `scenario`, writing into `dir`.
fn spawn_ranks(scenario: &str, world: usize, dir: &Path, extra: &[(&str, String)]) -> Vec<Child> {
    let port = free_port();
    (0..world)
        .map(|rank| {
            let mut cmd = Command::new(std::env::current_exe().unwrap());
            cmd.args([
                "rank_main",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("DIFFUSE_DIST_SCENARIO", scenario)
            .env("DIFFUSE_DIST_OUT", dir)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", world.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .env("OMP_NUM_THREADS", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
            for (k, v) in extra {
                cmd.env(k, v);
            }
            cmd.spawn().unwrap()
        })
        .collect()
}

/// Wait for every rank; (exit success, stderr) per rank.
fn wait_all(children: Vec<Child>) -> Vec<(bool, String)> {
    children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            (out.status.success(), text)
        })
        .collect()
}

fn out_dir() -> PathBuf {
    PathBuf::from(std::env::var("DIFFUSE_DIST_OUT").unwrap())
}

/// The body of one rank (run only as a child: `DIFFUSE_DIST_SCENARIO` is set).
#[test]
#[ignore = "the body of a rank; started by the other tests"]
fn rank_main() {
    let Ok(scenario) = std::env::var("DIFFUSE_DIST_SCENARIO") else {
        return;
    };
    let timeout = dist::timeout_from_env().unwrap();
    let backend = if scenario == "collectives-nccl" {
        DistBackend::Nccl
    } else {
        DistBackend::Gloo
    };
    let group = match dist::init(backend, timeout) {
        Ok(Some(g)) => g,
        Ok(None) => panic!("no process group in the environment"),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(3);
        }
    };
    let rank = group.rank();
    match scenario.as_str() {
        "collectives" | "collectives-nccl" => collectives(group),
        "train" => {
            let run = out_dir().join("run");
            let resume = std::env::var("DIFFUSE_DIST_RESUME").is_ok();
            if let Err(e) = train(&run, BATCH, STEPS, resume, None) {
                eprintln!("error: {e}");
                std::process::exit(4);
            }
        }
        "die" => {
            // Rank 1 exits during step 3; rank 0 must stop with an error, not hang.
            let exit_at = if rank == 1 { Some(3) } else { None };
            if let Err(e) = train(&out_dir().join("run"), BATCH, STEPS, false, exit_at) {
                eprintln!("error: {e}");
                std::process::exit(4);
            }
        }
        other => panic!("unknown scenario {other}"),
    }
    std::fs::write(out_dir().join(format!("done-{rank}")), "ok").unwrap();
}

const BATCH: usize = 8;
const STEPS: u64 = 6;

/// Regression of a fixed function by a small MLP: no randomness in the loss, so two ranks with
/// half a batch each and one process with the whole batch compute the same gradients.
struct Regression {
    net: nn::Sequential,
    xs: Tensor,
    ys: Tensor,
    sampler: EpochSampler,
    exit_at: Option<u64>,
}

impl TrainTask for Regression {
    fn loss(&mut self, step: u64, _micro: u64) -> diffuse_tensor::Result<Tensor> {
        if self.exit_at == Some(step + 1) {
            std::process::exit(1);
        }
        let idx: Vec<i64> = self.sampler.batch(step).iter().map(|&i| i as i64).collect();
        let idx = Tensor::from_slice(&idx);
        let pred = self.net.forward(&self.xs.index_select(0, &idx));
        Ok((pred - self.ys.index_select(0, &idx))
            .square()
            .mean(Kind::Float))
    }
}

/// Train (or resume) the regression in `run` with `batch` rows per process to step `until`;
/// returns the final weights by name. In a multi-process run each rank also saves its weights as
/// `OUT/weights-RANK.safetensors`.
fn train(
    run: &Path,
    batch: usize,
    until: u64,
    resume: bool,
    exit_at: Option<u64>,
) -> diffuse_tensor::Result<Vec<(String, Tensor)>> {
    tch::manual_seed(7);
    let vs = VarStore::new(Device::Cpu);
    let p = vs.root();
    let net = nn::seq()
        .add(nn::linear(&p / "fc1", 3, 16, Default::default()))
        .add_fn(|x| x.tanh())
        .add(nn::linear(&p / "fc2", 16, 2, Default::default()));
    let xs = (Tensor::arange(96, (Kind::Float, Device::Cpu)) * 0.37)
        .sin()
        .reshape([32, 3]);
    let ys = Tensor::cat(
        &[
            xs.sum_dim_intlist(1, true, Kind::Float).cos(),
            &xs.narrow(1, 0, 1) * 2.0,
        ],
        1,
    );
    let mut task = Regression {
        net,
        xs,
        ys,
        sampler: EpochSampler::new(32, batch, 5),
        exit_at,
    };
    let config = TrainConfig {
        steps: STEPS,
        checkpoint_every: 3,
        log_every: 1,
        optimizer: AdamWConfig {
            lr: 1e-2,
            ..Default::default()
        },
        ema: Some(EmaConfig {
            decay: 0.9,
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut trainer = Trainer::new(&vs, config, run)?;
    if resume {
        trainer.resume(None)?;
    }
    trainer.run_until(&mut task, until)?;
    if let Some(g) = dist::current() {
        save_var_store(
            &vs,
            &out_dir().join(format!("weights-{}.safetensors", g.rank())),
            None,
        )?;
    }
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(named)
}

fn assert_weights_close(a: &[(String, Tensor)], b: &[(String, Tensor)], what: &str) {
    assert_eq!(a.len(), b.len());
    for ((na, ta), (nb, tb)) in a.iter().zip(b) {
        assert_eq!(na, nb);
        let diff = (ta - tb).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "{what}: {na} differs by {diff}");
    }
}

fn rank_weights(dir: &Path, rank: usize) -> Vec<(String, Tensor)> {
    let mut t = load_tensors(&dir.join(format!("weights-{rank}.safetensors")))
        .unwrap()
        .tensors;
    t.sort_by(|a, b| a.0.cmp(&b.0));
    t
}

#[test]
fn two_ranks_take_the_same_steps_as_one_process_on_the_union_of_their_batches() {
    let dir = tempfile::tempdir().unwrap();
    let results = wait_all(spawn_ranks("train", 2, dir.path(), &[]));
    for (rank, (ok, text)) in results.iter().enumerate() {
        assert!(ok, "rank {rank} failed:\n{text}");
    }
    // One process, batches of 2 x 8 rows: the union of the two ranks' shards.
    let single = train(&dir.path().join("single"), 2 * BATCH, STEPS, false, None).unwrap();
    let (r0, r1) = (rank_weights(dir.path(), 0), rank_weights(dir.path(), 1));
    assert_weights_close(&r0, &r1, "rank 0 vs rank 1");
    assert_weights_close(&r0, &single, "two ranks vs one process");
    // Only rank 0 wrote the run's files.
    let run = dir.path().join("run");
    assert!(run
        .join("checkpoints/step-000000006/trainer.json")
        .is_file());
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), STEPS as usize);
}

#[test]
fn a_run_resumes_with_another_number_of_ranks() {
    // One process with the global batch trains to step 3; two ranks continue to step 6; the
    // result equals one process training straight to step 6.
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    train(&run, 2 * BATCH, 3, false, None).unwrap();
    let results = wait_all(spawn_ranks(
        "train",
        2,
        dir.path(),
        &[("DIFFUSE_DIST_RESUME", "1".into())],
    ));
    for (rank, (ok, text)) in results.iter().enumerate() {
        assert!(ok, "rank {rank} failed:\n{text}");
    }
    let straight = train(&dir.path().join("straight"), 2 * BATCH, STEPS, false, None).unwrap();
    assert_weights_close(
        &rank_weights(dir.path(), 1),
        &straight,
        "resumed on two ranks",
    );
}

#[test]
fn a_rank_that_dies_stops_the_others_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let results = wait_all(spawn_ranks(
        "die",
        2,
        dir.path(),
        &[("DIFFUSE_DIST_TIMEOUT", "20".into())],
    ));
    let (ok0, text0) = &results[0];
    assert!(!ok0, "rank 0 should fail when rank 1 dies:\n{text0}");
    assert!(
        text0.contains("error:") && text0.contains("rank 0 of 2"),
        "{text0}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn a_missing_rank_or_an_unreachable_master_is_a_timeout_error() {
    let dir = tempfile::tempdir().unwrap();
    // WORLD_SIZE=2 but only rank 0 starts.
    let mut children = spawn_ranks(
        "collectives",
        2,
        dir.path(),
        &[("DIFFUSE_DIST_TIMEOUT", "3".into())],
    );
    let rank1 = children.pop().unwrap();
    let mut rank1 = rank1;
    rank1.kill().unwrap();
    let _ = rank1.wait();
    let results = wait_all(children);
    let (ok, text) = &results[0];
    assert!(!ok);
    assert!(
        text.contains("rendezvous failed") && text.contains("are all 2 started"),
        "{text}"
    );
    // A rank whose MASTER_ADDR:MASTER_PORT has nobody listening.
    let port = free_port();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "rank_main",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("DIFFUSE_DIST_SCENARIO", "collectives")
        .env("DIFFUSE_DIST_OUT", dir.path())
        .env("RANK", "1")
        .env("WORLD_SIZE", "2")
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .env("DIFFUSE_DIST_TIMEOUT", "3")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(text.contains("could not reach rank 0"), "{text}");
}

#[test]
fn nccl_collectives_on_the_gpus_when_present() {
    let gpus = tch::Cuda::device_count() as usize;
    if gpus == 0 {
        eprintln!("nccl_collectives_on_the_gpus_when_present: skipped: no CUDA device");
        return;
    }
    // One rank per GPU (NCCL refuses two ranks on one device), at most two.
    let world = gpus.min(2);
    let dir = tempfile::tempdir().unwrap();
    let results = wait_all(spawn_ranks("collectives-nccl", world, dir.path(), &[]));
    for (rank, (ok, text)) in results.iter().enumerate() {
        assert!(ok, "rank {rank} failed:\n{text}");
    }
}

#[test]
fn nccl_without_cuda_is_refused() {
    if tch::Cuda::is_available() {
        eprintln!("nccl_without_cuda_is_refused: skipped: a CUDA device is present");
        return;
    }
    let env = DistEnv {
        rank: 0,
        world_size: 1,
        local_rank: 0,
        master_addr: "127.0.0.1".into(),
        master_port: free_port(),
    };
    let err = ProcessGroup::new(&env, DistBackend::Nccl, Duration::from_secs(5))
        .err()
        .expect("NCCL without CUDA must fail")
        .to_string();
    assert!(err.contains("NCCL") && err.contains("CUDA"), "{err}");
}

fn collectives(group: &ProcessGroup) {
    let rank = group.rank() as f64;
    // all-reduce: sum of (rank + 1) over ranks.
    let mut t = Tensor::full([3], rank + 1.0, (Kind::Float, group.collective_device()));
    group.all_reduce_sum(&mut t).unwrap();
    let w = group.world_size() as f64;
    assert_eq!(t.double_value(&[0]), w * (w + 1.0) / 2.0);
    // broadcast from rank 0.
    let mut b = Tensor::full(
        [2, 2],
        rank + 10.0,
        (Kind::Float, group.collective_device()),
    );
    group.broadcast(&mut b, 0).unwrap();
    assert_eq!(b.double_value(&[1, 1]), 10.0);
    // bucketed averaging over many tensors of mixed sizes.
    let mut ts: Vec<Tensor> = (0..7)
        .map(|i| {
            Tensor::full(
                [i * 5 + 1],
                rank * 2.0 + i as f64,
                (Kind::Float, group.collective_device()),
            )
        })
        .collect();
    group.average_tensors(&mut ts, 64).unwrap();
    for (i, t) in ts.iter().enumerate() {
        let expected = (w - 1.0) + i as f64;
        assert!((t.double_value(&[0]) - expected).abs() < 1e-6, "{i}: {t}");
    }
    group.barrier().unwrap();
    assert_eq!(group.all_reduce_values(&[1.0, rank]).unwrap()[0], w);
}

#[test]
fn collectives_over_two_processes() {
    let dir = tempfile::tempdir().unwrap();
    let results = wait_all(spawn_ranks("collectives", 2, dir.path(), &[]));
    for (rank, (ok, text)) in results.iter().enumerate() {
        assert!(ok, "rank {rank} failed:\n{text}");
        assert!(dir.path().join(format!("done-{rank}")).is_file());
    }
}

#[test]
fn the_environment_is_read_as_torchrun_sets_it() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    };
    assert_eq!(DistEnv::from_lookup(env(&[])).unwrap(), None);
    let full = DistEnv::from_lookup(env(&[
        ("RANK", "1"),
        ("WORLD_SIZE", "4"),
        ("LOCAL_RANK", "1"),
        ("MASTER_ADDR", "10.0.0.2"),
        ("MASTER_PORT", "29500"),
    ]))
    .unwrap()
    .unwrap();
    assert_eq!(
        (full.rank, full.world_size, full.master_port),
        (1, 4, 29500)
    );
    let err = |pairs| DistEnv::from_lookup(env(pairs)).unwrap_err().to_string();
    assert!(err(&[("RANK", "0")]).contains("WORLD_SIZE is not set"));
    assert!(err(&[("RANK", "2"), ("WORLD_SIZE", "2")]).contains("RANK=2 is not below WORLD_SIZE=2"));
    assert!(err(&[("RANK", "0"), ("WORLD_SIZE", "2")]).contains("MASTER_ADDR"));
    assert!(
        err(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h")]).contains("MASTER_PORT")
    );
    assert!(err(&[("RANK", "x"), ("WORLD_SIZE", "2")]).contains("RANK=\"x\""));
    assert!(err(&[
        ("RANK", "0"),
        ("WORLD_SIZE", "2"),
        ("MASTER_ADDR", "h"),
        ("MASTER_PORT", "99999")
    ])
    .contains("MASTER_PORT"));
    let _ = Duration::from_secs(1);
}
