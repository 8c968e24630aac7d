//! `diffuse doctor`: versions, devices, a timed matmul; clear errors for bad devices.

use diffuse_e2e::{assert_user_error, diffuse};

#[test]
fn doctor_reports_libtorch_2_11_and_cpu_gflops() {
    let run = diffuse(&["doctor"], None);
    assert!(run.success(), "{}", run.stderr);
    assert!(run.stdout.contains("libtorch     2.11.0"), "{}", run.stdout);
    let line = run
        .stdout
        .lines()
        .find(|l| l.starts_with("matmul cpu"))
        .expect("a cpu matmul line");
    let gflops: f64 = line
        .split_whitespace()
        .rev()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no GFLOP/s figure in: {line}"));
    assert!(gflops > 0.5, "{line}");
}

#[test]
fn doctor_json_lists_every_device() {
    let run = diffuse(&["doctor", "--json"], None);
    assert!(run.success(), "{}", run.stderr);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert!(report["libtorch"].as_str().unwrap().starts_with("2.11."));
    assert_eq!(report["tch"], "0.24.0");
    // CUDA really linked: libtorch_cuda is loaded whenever the libtorch has it (the linker
    // would otherwise drop it and tch would never see a GPU).
    let libdir = std::path::PathBuf::from(report["libtorch_dir"].as_str().unwrap());
    if libdir.join("libtorch_cuda.so").exists() {
        assert_eq!(report["libtorch_cuda_loaded"], true);
    }
    let gpus = report["cuda_devices"].as_array().unwrap().len();
    assert_eq!(report["cuda_available"], gpus > 0);
    let timed: Vec<&str> = report["matmul"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["device"].as_str().unwrap())
        .collect();
    assert_eq!(timed.len(), 1 + gpus);
    assert_eq!(timed[0], "cpu");
}

#[test]
fn an_unknown_device_is_one_clear_error() {
    let run = diffuse(&["doctor", "--device", "tpu:0"], None);
    assert_user_error(
        &run,
        &[
            "--device",
            "unknown device 'tpu:0'",
            "expected auto, cpu, cuda or cuda:N",
        ],
    );
}

#[test]
fn cuda_on_a_machine_without_it_is_one_clear_error() {
    let probe = diffuse(&["doctor", "--json", "--device", "cpu"], None);
    let report: serde_json::Value = serde_json::from_str(&probe.stdout).unwrap();
    if report["cuda_available"] == true {
        // On a GPU machine the same request must work and time the GPU.
        let run = diffuse(&["doctor", "--device", "cuda"], None);
        assert!(run.success(), "{}", run.stderr);
        assert!(run.stdout.contains("matmul cuda:0"), "{}", run.stdout);
        let beyond = diffuse(&["doctor", "--device", "cuda:64"], None);
        assert_user_error(&beyond, &["cuda:64", "CUDA device"]);
        return;
    }
    let run = diffuse(&["doctor", "--device", "cuda"], None);
    assert_user_error(&run, &["--device", "no CUDA device"]);
}

#[test]
fn doctor_says_why_libtorch_has_its_threads() {
    // OMP_NUM_THREADS is the user's choice and is kept; without it diffuse counts the cores other
    // processes keep busy at start (BENCHMARKS.md, threads), which tests cannot pin down here.
    let out = std::process::Command::new(diffuse_e2e::diffuse_bin())
        .args(["doctor", "--device", "cpu"])
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("threads      1 (libtorch intra-op; OMP_NUM_THREADS set)"),
        "{stdout}"
    );
    let run = diffuse(&["doctor", "--json", "--device", "cpu"], None);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let reason = report["threads_reason"].as_str().unwrap();
    assert!(
        reason.contains("cores free")
            || reason.contains("busy with other work")
            || reason.contains("OMP_NUM_THREADS"),
        "{reason}"
    );
}
