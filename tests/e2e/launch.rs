//! Multi-process training through the binary: `diffuse launch` runs a training command as
//! several ranks (Gloo over loopback) and resumes it with another number of ranks; torchrun's
//! variables set by hand reach the same code; rendezvous and backend mistakes are one line each.

use diffuse_e2e::{assert_user_error, diffuse, diffuse_bin, repo_root};
use std::path::Path;
use std::process::Command;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn counts_args(out: &str) -> Vec<String> {
    let data = repo_root().join("data/fixtures/counts/nbinom-mixture.csv");
    [
        "train",
        "counts",
        "--data",
        s(&data),
        "--out",
        out,
        "--steps",
        "8",
        "--batch-size",
        "32",
        "--hidden",
        "32",
        "--blocks",
        "1",
        "--num-train-timesteps",
        "50",
        "--checkpoint-every",
        "4",
        "--sample-every",
        "4",
        "--sample-num",
        "40",
        "--sample-steps",
        "5",
        "--log-every",
        "1",
        "--device",
        "cpu",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect()
}

#[test]
fn launch_trains_on_two_ranks_and_resumes_on_three() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let mut args = vec![
        "launch".to_string(),
        "--nproc".into(),
        "2".into(),
        "--".into(),
    ];
    args.extend(counts_args(s(&run)));
    args.extend(["--stop-after".to_string(), "4".to_string()]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = diffuse(&argv, None);
    assert!(r.success(), "launch failed: {}", r.stderr);
    // Rank 0 alone writes: one metrics line per step, one outcome line.
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 4, "{metrics}");
    assert_eq!(
        r.stdout.matches("continue with --resume").count(),
        1,
        "{}",
        r.stdout
    );
    assert!(run
        .join("checkpoints/step-000000004/trainer.json")
        .is_file());
    // Resume on three ranks to the end.
    let r = diffuse(
        &[
            "launch",
            "--nproc",
            "3",
            "--",
            "train",
            "counts",
            "--out",
            s(&run),
            "--resume",
            "--device",
            "cpu",
        ],
        None,
    );
    assert!(r.success(), "resume failed: {}", r.stderr);
    assert!(run.join("model/model.safetensors").is_file());
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 8, "{metrics}");
    assert_eq!(
        r.stdout.matches("trained 8 steps").count(),
        1,
        "{}",
        r.stdout
    );
}

/// `diffuse ARGS` with extra environment variables.
fn diffuse_env(args: &[String], env: &[(&str, String)]) -> diffuse_e2e::Run {
    let mut cmd = Command::new(diffuse_bin());
    cmd.args(args)
        .env_remove("RUST_LOG")
        .env("RUST_BACKTRACE", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    diffuse_e2e::Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn rendezvous_and_backend_mistakes_are_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let args = counts_args(s(&tmp.path().join("run")));
    let base = |rank: &str, world: &str, port: u16| {
        vec![
            ("RANK", rank.to_string()),
            ("WORLD_SIZE", world.to_string()),
            ("MASTER_ADDR", "127.0.0.1".to_string()),
            ("MASTER_PORT", port.to_string()),
            ("DIFFUSE_DIST_TIMEOUT", "3".to_string()),
        ]
    };
    // WORLD_SIZE says 2, but only this process arrives.
    let r = diffuse_env(&args, &base("0", "2", free_port()));
    assert_user_error(&r, &["rendezvous failed", "are all 2 started"]);
    // Rank 1 with nobody listening at MASTER_ADDR:MASTER_PORT.
    let r = diffuse_env(&args, &base("1", "2", free_port()));
    assert_user_error(&r, &["could not reach rank 0", "MASTER_ADDR"]);
    // NCCL asked for on a machine without CUDA.
    if !tch_has_cuda() {
        let mut env = base("0", "1", free_port());
        env.push(("DIFFUSE_DIST_BACKEND", "nccl".into()));
        let r = diffuse_env(&args, &env);
        assert_user_error(&r, &["NCCL", "CUDA"]);
    }
    // Half the variables.
    let r = diffuse_env(&args, &[("RANK", "0".into())]);
    assert_user_error(&r, &["WORLD_SIZE is not set"]);
    // launch's own flags.
    for (argv, needles) in [
        (
            vec!["launch", "--nproc", "0", "--", "train", "counts"],
            vec!["--nproc"],
        ),
        (
            vec!["launch", "--nnodes", "2", "--node-rank", "2", "--", "train"],
            vec!["--node-rank"],
        ),
        (
            vec!["launch", "--", "sample", "counts"],
            vec!["launch runs a training command"],
        ),
    ] {
        assert_user_error(&diffuse(&argv, None), &needles);
    }
}

/// Whether the machine may have a CUDA device (then NCCL is a real option and that case is
/// skipped).
fn tch_has_cuda() -> bool {
    Path::new("/dev/nvidia0").exists() || Path::new("/dev/nvidiactl").exists()
}
