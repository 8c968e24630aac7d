//! `diffuse inspect`: lists a weights file; names corrupt and truncated files in one line.

use diffuse_e2e::{assert_user_error, diffuse, write_safetensors};

#[test]
fn inspect_lists_names_shapes_and_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    write_safetensors(
        &path,
        &[
            ("conv_in.weight", &[2, 3], &[1.0; 6]),
            ("conv_in.bias", &[2], &[0.5, 0.25]),
        ],
    );
    let run = diffuse(&["inspect", path.to_str().unwrap()], None);
    assert!(run.success(), "{}", run.stderr);
    assert!(run.stdout.contains("2 tensors, 8 values"), "{}", run.stdout);
    assert!(run.stdout.contains("conv_in.weight"), "{}", run.stdout);
    assert!(run.stdout.contains("[2, 3]"), "{}", run.stdout);
    assert!(run.stdout.contains("made_by = e2e"), "{}", run.stdout);
}

#[test]
fn corrupt_truncated_and_missing_files_are_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.safetensors");
    write_safetensors(&good, &[("a", &[16], &[2.0; 16])]);
    let bytes = std::fs::read(&good).unwrap();

    let truncated = dir.path().join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() - 9]).unwrap();
    let run = diffuse(&["inspect", truncated.to_str().unwrap()], None);
    assert_user_error(
        &run,
        &["truncated.safetensors", "not a valid safetensors file"],
    );

    let text = dir.path().join("notes.safetensors");
    std::fs::write(&text, "just some notes, not weights\n").unwrap();
    let run = diffuse(&["inspect", text.to_str().unwrap()], None);
    assert_user_error(&run, &["notes.safetensors", "not a valid safetensors file"]);

    let run = diffuse(
        &[
            "inspect",
            dir.path().join("absent.safetensors").to_str().unwrap(),
        ],
        None,
    );
    assert_user_error(&run, &["absent.safetensors", "No such file"]);
}

/// `diffuse inspect FILE | head`: a reader that stops early ends the listing quietly (SIGPIPE, as
/// other command-line tools), not with a panic.
#[test]
fn a_closed_pipe_ends_the_output_without_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let names: Vec<String> = (0..3000).map(|i| format!("layer{i}.weight")).collect();
    let tensors: Vec<(&str, &[usize], &[f32])> = names
        .iter()
        .map(|n| (n.as_str(), &[1usize][..], &[0.0f32][..]))
        .collect();
    write_safetensors(&path, &tensors);
    let mut child = std::process::Command::new(diffuse_e2e::diffuse_bin())
        .args(["inspect", path.to_str().unwrap()])
        .env("RUST_BACKTRACE", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Read one line, then close the pipe while the listing is still being written.
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).unwrap();
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_ne!(out.status.code(), Some(101), "{stderr}");
}
