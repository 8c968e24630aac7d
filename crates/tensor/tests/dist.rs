//! Multi-process tests of data-parallel training on c10d (Gloo over loopback): each test starts
//! copies of this test binary as the ranks (the `rank_main` entry below, selected by
//! `DIFFUSE_DIST_SCENARIO`), waits for them and checks what they wrote.

use diffuse_tensor::dist::{self, DistBackend, DistEnv, ProcessGroup};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
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
    let group = match dist::init(DistBackend::Gloo, timeout) {
        Ok(Some(g)) => g,
        Ok(None) => panic!("no process group in the environment"),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(3);
        }
    };
    let rank = group.rank();
    match scenario.as_str() {
        "collectives" => collectives(group),
        other => panic!("unknown scenario {other}"),
    }
    std::fs::write(out_dir().join(format!("done-{rank}")), "ok").unwrap();
}

fn collectives(group: &ProcessGroup) {
    let rank = group.rank() as f64;
    // all-reduce: sum of (rank + 1) over ranks.
    let mut t = Tensor::full([3], rank + 1.0, (Kind::Float, Device::Cpu));
    group.all_reduce_sum(&mut t).unwrap();
    let w = group.world_size() as f64;
    assert_eq!(t.double_value(&[0]), w * (w + 1.0) / 2.0);
    // broadcast from rank 0.
    let mut b = Tensor::full([2, 2], rank + 10.0, (Kind::Float, Device::Cpu));
    group.broadcast(&mut b, 0).unwrap();
    assert_eq!(b.double_value(&[1, 1]), 10.0);
    // bucketed averaging over many tensors of mixed sizes.
    let mut ts: Vec<Tensor> = (0..7)
        .map(|i| {
            Tensor::full(
                [i * 5 + 1],
                rank * 2.0 + i as f64,
                (Kind::Float, Device::Cpu),
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
