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
