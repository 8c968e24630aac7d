//! Multi-process training through the binary: `diffuse launch` runs a training command as
//! several ranks (Gloo over loopback) and resumes it with another number of ranks; two
//! `launch --nnodes 2` commands act as two machines; torchrun itself (when a Python with torch is
//! at hand) starts the ranks; torchrun's variables set by hand reach the same code; rendezvous
//! and backend mistakes are one line each.

use diffuse_e2e::{assert_user_error, diffuse, diffuse_bin, path_str as s, repo_root};
use std::path::Path;
use std::process::Command;

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
    // The resumed command trained steps 5 to 8, and said that the global batch changed.
    assert_eq!(
        r.stdout.matches("trained 4 steps (steps 5 to 8)").count(),
        1,
        "{}",
        r.stdout
    );
    assert!(
        r.stderr.contains("trained on 2 processes and resumes on 3")
            && r.stderr.contains("global batch"),
        "{}",
        r.stderr
    );
    // Resuming a finished run trains nothing and says so.
    let r = diffuse(
        &[
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
    assert!(r.success(), "{}", r.stderr);
    assert!(
        r.stdout
            .contains("nothing to train: the run already has its 8 steps"),
        "{}",
        r.stdout
    );
}

/// An address of this machine on a real interface (the kernel's local IPv4 host routes, minus
/// loopback), so the two-node test goes through one when there is one; loopback otherwise.
fn this_machine_address() -> String {
    let trie = std::fs::read_to_string("/proc/net/fib_trie").unwrap_or_default();
    let lines: Vec<&str> = trie.lines().collect();
    for pair in lines.windows(2) {
        if pair[1].trim() == "/32 host LOCAL" {
            let ip = pair[0].trim().trim_start_matches("|--").trim();
            if let Ok(ip) = ip.parse::<std::net::Ipv4Addr>() {
                // Only an address this machine can listen on counts.
                if !ip.is_loopback() && std::net::TcpListener::bind((ip, 0)).is_ok() {
                    return ip.to_string();
                }
            }
        }
    }
    "127.0.0.1".into()
}

#[test]
fn two_launch_commands_act_as_two_machines() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let addr = this_machine_address();
    let port = free_port().to_string();
    eprintln!("the two nodes meet at {addr}:{port}");
    // Node 1 first: its rank waits for node 0's store, as on a real cluster started in any order.
    let node = |rank: &str| {
        let mut args: Vec<String> = [
            "launch",
            "--nnodes",
            "2",
            "--node-rank",
            rank,
            "--nproc",
            "1",
            "--master-addr",
            &addr,
            "--master-port",
            &port,
            "--",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        args.extend(counts_args(s(&run)));
        let mut cmd = Command::new(diffuse_bin());
        cmd.args(&args)
            .env_remove("RUST_LOG")
            .env("DIFFUSE_DIST_TIMEOUT", "120")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd.spawn().unwrap()
    };
    let second = node("1");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let first = node("0");
    let first = first.wait_with_output().unwrap();
    let second = second.wait_with_output().unwrap();
    let text = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    assert!(first.status.success(), "node 0 ({addr}): {}", text(&first));
    assert!(
        second.status.success(),
        "node 1 ({addr}): {}",
        text(&second)
    );
    // Rank 0 (on node 0) wrote the run; node 1 printed no outcome of its own.
    assert!(run.join("model/model.safetensors").is_file());
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 8, "{metrics}");
    assert!(String::from_utf8_lossy(&first.stdout).contains("trained 8 steps"));
    assert!(!String::from_utf8_lossy(&second.stdout).contains("trained"));
}

/// A Python that imports torch's launcher: the interpreter's own torch, or the one
/// `cargo xtask setup` installed with pip next to libtorch (LIBTORCH=.../torch).
fn python_with_torchrun() -> Option<(String, Option<std::ffi::OsString>)> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let mut candidates: Vec<Option<std::ffi::OsString>> = vec![None];
    if let Some(libtorch) = std::env::var_os("LIBTORCH") {
        let torch = std::path::PathBuf::from(libtorch);
        let torch = torch.canonicalize().unwrap_or(torch);
        if torch.join("__init__.py").is_file() {
            candidates.push(torch.parent().map(|p| p.as_os_str().to_owned()));
        }
    }
    for pythonpath in candidates {
        let mut cmd = Command::new(&python);
        cmd.args(["-c", "import torch.distributed.run"]);
        if let Some(p) = &pythonpath {
            cmd.env("PYTHONPATH", p);
        }
        if cmd.output().is_ok_and(|o| o.status.success()) {
            return Some((python, pythonpath));
        }
    }
    None
}

#[test]
fn torchrun_starts_the_ranks_when_python_has_torch() {
    let Some((python, pythonpath)) = python_with_torchrun() else {
        eprintln!("skipped: no python3 that imports torch.distributed.run (torchrun)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let port = free_port().to_string();
    let mut cmd = Command::new(&python);
    cmd.args([
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        &port,
        "--no-python",
    ])
    .arg(diffuse_bin())
    .args(counts_args(s(&run)))
    .env_remove("RUST_LOG")
    .env("DIFFUSE_DIST_TIMEOUT", "120");
    if let Some(p) = &pythonpath {
        cmd.env("PYTHONPATH", p);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "torchrun failed:\n{stdout}\n{stderr}");
    assert!(run.join("model/model.safetensors").is_file());
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 8, "{metrics}");
    assert_eq!(stdout.matches("trained 8 steps").count(), 1, "{stdout}");
}

/// `diffuse ARGS` with extra environment variables.
fn diffuse_env(args: &[String], env: &[(&str, String)]) -> diffuse_e2e::Run {
    let mut cmd = Command::new(diffuse_bin());
    cmd.args(args)
        .env_remove("RUST_LOG")
        .env("RUST_BACKTRACE", "1")
        .env("OMP_NUM_THREADS", "1");
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

#[test]
fn stopping_launch_stops_its_ranks() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let mut args = vec![
        "launch".to_string(),
        "--nproc".into(),
        "2".into(),
        "--".into(),
    ];
    args.extend(counts_args(s(&run)));
    // Long enough to still be training when the signal comes.
    let steps = args.iter().position(|a| a == "--steps").unwrap() + 1;
    args[steps] = "100000".into();
    let launch = Command::new(diffuse_bin())
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !run.join("metrics.jsonl").is_file() {
        assert!(started.elapsed().as_secs() < 120, "training never started");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let status = Command::new("kill")
        .args(["-TERM", &launch.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = launch.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("stopped by signal"), "{stderr}");
    // No rank is left training in the run directory.
    let marker = run.to_string_lossy().into_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let orphans = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
            .filter(|c| String::from_utf8_lossy(c).contains(&marker))
            .count();
        if orphans == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{orphans} rank(s) still running"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn a_mistake_every_rank_makes_is_reported_once() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    // Every rank would fail on the same missing file: one line, not one per rank plus launch's.
    let r = diffuse(
        &[
            "launch",
            "--nproc",
            "2",
            "--",
            "train",
            "counts",
            "--data",
            "no-such.csv",
            "--out",
            s(&out),
            "--device",
            "cpu",
        ],
        None,
    );
    assert_user_error(&r, &["no-such.csv"]);
    // A mistyped flag is refused by launch itself, before any rank starts, with clap's message.
    let r = diffuse(
        &[
            "launch",
            "--nproc",
            "2",
            "--",
            "train",
            "counts",
            "--out",
            s(&out),
            "--lr",
            "x",
        ],
        None,
    );
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert_eq!(r.stderr.matches("error:").count(), 1, "{}", r.stderr);
    assert!(r.stderr.contains("--lr"), "{}", r.stderr);
    assert!(!out.exists(), "a refused launch made {}", out.display());
}
