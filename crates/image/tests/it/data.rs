//! Datasets: IDX parsing against the committed MNIST subset (golden values from
//! `data/fixtures/mnist-subset/golden.py`), folders of images, batches and the prefetcher.

use diffuse_image::data::{read_idx, step_flips, ImageDataset, Prefetcher, Split};
use diffuse_tensor::data::EpochSampler;
use diffuse_tensor::Error;
use image::{Rgb, RgbImage, Rgba, RgbaImage};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture() -> PathBuf {
    repo().join("data/fixtures/mnist-subset")
}

fn no_datasets() -> PathBuf {
    PathBuf::from("/nonexistent/diffuse-datasets")
}

fn load_fixture(split: Split) -> ImageDataset {
    ImageDataset::load(
        fixture().to_str().unwrap(),
        split,
        None,
        None,
        &no_datasets(),
    )
    .unwrap()
}

fn sum(t: &Tensor) -> i64 {
    t.to_kind(Kind::Int64).sum(Kind::Int64).int64_value(&[])
}

fn labels_vec(ds: &ImageDataset) -> Vec<i64> {
    Vec::<i64>::try_from(ds.labels().unwrap()).unwrap()
}

#[test]
fn mnist_fixture_train_split_matches_numpy() {
    let ds = load_fixture(Split::Train);
    assert_eq!(ds.len(), 256);
    assert_eq!(ds.pixels().size(), [256, 1, 28, 28]);
    assert_eq!(ds.pixels().kind(), Kind::Uint8);
    assert_eq!((ds.channels(), ds.height(), ds.width()), (1, 28, 28));
    // Golden values: numpy over the first 256 images of the real train-images-idx3-ubyte.
    assert_eq!(sum(&ds.pixels().get(0)), 27525);
    assert_eq!(sum(ds.pixels()), 6_564_753);
    let row: Vec<u8> = Vec::try_from(ds.pixels().get(0).get(0).get(14)).unwrap();
    assert_eq!(&row[12..20], &[0, 81, 240, 253, 253, 119, 25, 0]);
    let labels = labels_vec(&ds);
    assert_eq!(&labels[..12], &[5, 0, 4, 1, 9, 2, 1, 3, 1, 4, 3, 5]);
    assert!(labels.iter().all(|&l| (0..10).contains(&l)));
    let counts: Vec<usize> = (0..10)
        .map(|c| labels.iter().filter(|&&l| l == c).count())
        .collect();
    assert_eq!(counts, [30, 35, 25, 30, 24, 17, 24, 26, 19, 26]);
    assert_eq!(ds.num_classes(), Some(10));
}

#[test]
fn mnist_fixture_test_split_matches_numpy() {
    let ds = load_fixture(Split::Test);
    assert_eq!(ds.pixels().size(), [128, 1, 28, 28]);
    assert_eq!(sum(&ds.pixels().get(0)), 18454);
    assert_eq!(sum(ds.pixels()), 3_027_521);
    assert_eq!(
        &labels_vec(&ds)[..12],
        &[7, 2, 1, 0, 4, 1, 4, 9, 5, 9, 0, 6]
    );
    assert_eq!(ds.num_classes(), Some(10));
}

fn gzip(src: &Path, dst: &Path) {
    let bytes = std::fs::read(src).unwrap();
    let mut enc = flate2::write::GzEncoder::new(
        std::fs::File::create(dst).unwrap(),
        flate2::Compression::default(),
    );
    enc.write_all(&bytes).unwrap();
    enc.finish().unwrap();
}

#[test]
fn gzipped_and_plain_idx_give_the_same_dataset() {
    let dir = tempfile::tempdir().unwrap();
    for split in ["train", "t10k"] {
        for kind in ["images-idx3", "labels-idx1"] {
            let name = format!("{split}-{kind}-ubyte");
            gzip(
                &fixture().join(&name),
                &dir.path().join(format!("{name}.gz")),
            );
        }
    }
    let plain = load_fixture(Split::Train);
    let gz = ImageDataset::load(
        dir.path().to_str().unwrap(),
        Split::Train,
        None,
        None,
        &no_datasets(),
    )
    .unwrap();
    assert!(gz.pixels().equal(plain.pixels()));
    assert!(gz.labels().unwrap().equal(plain.labels().unwrap()));

    // Detection is by magic bytes, not by name: a gzipped file without .gz still reads.
    let misnamed = dir.path().join("images-without-suffix");
    gzip(&fixture().join("t10k-images-idx3-ubyte"), &misnamed);
    let test = ImageDataset::from_idx(&misnamed, None).unwrap();
    assert!(test.pixels().equal(load_fixture(Split::Test).pixels()));
    assert!(test.labels().is_none() && test.num_classes().is_none());
}

fn format_error_names(err: Error, path: &Path, words: &str) {
    let msg = err.to_string();
    assert!(matches!(err, Error::Format { .. }), "{msg}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains(words), "{msg}");
    assert!(!msg.contains('\n'), "one line: {msg}");
}

#[test]
fn broken_idx_files_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let real = std::fs::read(fixture().join("train-images-idx3-ubyte")).unwrap();

    let truncated = dir.path().join("truncated-images-idx3-ubyte");
    std::fs::write(&truncated, &real[..1000]).unwrap();
    let err = ImageDataset::from_idx(&truncated, None).unwrap_err();
    format_error_names(err, &truncated, "truncated");

    let magic = dir.path().join("magic");
    std::fs::write(&magic, b"\x89PNG\r\n\x1a\n and so on").unwrap();
    format_error_names(read_idx(&magic).unwrap_err(), &magic, "not an IDX file");

    let trailing = dir.path().join("trailing");
    std::fs::write(&trailing, [&real[..], b"xyz"].concat()).unwrap();
    format_error_names(
        read_idx(&trailing).unwrap_err(),
        &trailing,
        "3 unexpected bytes",
    );

    let bad_gz = dir.path().join("bad.gz");
    std::fs::write(&bad_gz, [0x1f, 0x8b, 8, 0, 1, 2, 3]).unwrap();
    format_error_names(read_idx(&bad_gz).unwrap_err(), &bad_gz, "gzip");

    // Labels passed as images, and labels that do not match the images in number.
    let labels = fixture().join("train-labels-idx1-ubyte");
    let err = ImageDataset::from_idx(&labels, None).unwrap_err();
    format_error_names(err, &labels, "3 dimensions");
    let test_labels = fixture().join("t10k-labels-idx1-ubyte");
    let err = ImageDataset::from_idx(
        &fixture().join("train-images-idx3-ubyte"),
        Some(&test_labels),
    )
    .unwrap_err();
    format_error_names(err, &test_labels, "128 labels for 256 images");
}

#[test]
fn named_datasets_come_from_the_datasets_dir() {
    let empty = tempfile::tempdir().unwrap();
    let err = ImageDataset::load("mnist", Split::Train, None, None, empty.path()).unwrap_err();
    assert!(
        err.to_string().contains("cargo xtask setup --data mnist"),
        "{err}"
    );
    let err =
        ImageDataset::load("no-such-thing", Split::Train, None, None, empty.path()).unwrap_err();
    assert!(err.to_string().contains("no-such-thing"), "{err}");

    let datasets = tempfile::tempdir().unwrap();
    let mnist = datasets.path().join("mnist");
    std::fs::create_dir(&mnist).unwrap();
    for entry in std::fs::read_dir(fixture()).unwrap() {
        let path = entry.unwrap().path();
        if path.to_string_lossy().ends_with("-ubyte") {
            std::fs::copy(&path, mnist.join(path.file_name().unwrap())).unwrap();
        }
    }
    let ds = ImageDataset::load("mnist", Split::Test, None, None, datasets.path()).unwrap();
    assert_eq!(ds.len(), 128);
    let names = ds.class_names().unwrap();
    assert_eq!(names.len(), 10);
    assert_eq!(names[7], "7");

    // An IDX images file given directly finds its labels beside it, whatever the split.
    let file = mnist.join("t10k-images-idx3-ubyte");
    let ds = ImageDataset::load(
        file.to_str().unwrap(),
        Split::Train,
        None,
        None,
        &no_datasets(),
    )
    .unwrap();
    assert_eq!(ds.len(), 128);
    assert_eq!(labels_vec(&ds)[0], 7);
}

#[test]
fn the_real_mnist_loads_when_present() {
    let dir = ImageDataset::default_datasets_dir();
    if !dir.join("mnist/train-images-idx3-ubyte").exists() {
        eprintln!("skipped: data/datasets/mnist absent (cargo xtask setup --data mnist)");
        return;
    }
    let ds = ImageDataset::load("mnist", Split::Test, None, None, &dir).unwrap();
    assert_eq!(ds.pixels().size(), [10000, 1, 28, 28]);
    assert_eq!(sum(&ds.pixels().get(0)), 18454);
}

#[test]
fn idx_images_resize_and_gain_channels_on_request() {
    let ds = ImageDataset::load(
        fixture().to_str().unwrap(),
        Split::Test,
        Some(32),
        Some(3),
        &no_datasets(),
    )
    .unwrap();
    assert_eq!(ds.pixels().size(), [128, 3, 32, 32]);
    let p = ds.pixels();
    assert!(p.get(0).get(0).equal(&p.get(0).get(2)));
    // Bilinear upsampling keeps the mean brightness roughly (28 -> 32 covers the same picture).
    let native = load_fixture(Split::Test);
    let mean = |t: &Tensor| t.to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
    let (a, b) = (mean(&native.pixels().get(0)), mean(&p.get(0).get(0)));
    assert!((a - b).abs() < 0.05 * a, "{a} vs {b}");
    // Labels and classes survive the resize.
    assert_eq!(labels_vec(&ds)[..3], [7, 2, 1]);
    let err = ImageDataset::load(
        fixture().to_str().unwrap(),
        Split::Test,
        None,
        Some(2),
        &no_datasets(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("channels"), "{err}");
}

#[test]
fn write_idx_round_trips_plain_and_gzipped() {
    let ds = load_fixture(Split::Test).take(10);
    let dir = tempfile::tempdir().unwrap();
    for suffix in ["", ".gz"] {
        let images = dir.path().join(format!("x-images-idx3-ubyte{suffix}"));
        let labels = dir.path().join(format!("x-labels-idx1-ubyte{suffix}"));
        ds.write_idx(&images, Some(&labels)).unwrap();
        let back = ImageDataset::from_idx(&images, Some(&labels)).unwrap();
        assert!(back.pixels().equal(ds.pixels()));
        assert!(back.labels().unwrap().equal(ds.labels().unwrap()));
    }
    let gz = std::fs::read(dir.path().join("x-images-idx3-ubyte.gz")).unwrap();
    assert_eq!(&gz[..2], &[0x1f, 0x8b]);
}

#[test]
fn take_and_select_subset_pixels_and_labels() {
    let ds = load_fixture(Split::Train);
    let sub = ds.select(&[3, 0, 3]);
    assert_eq!(sub.len(), 3);
    assert!(sub.pixels().get(1).equal(&ds.pixels().get(0)));
    assert_eq!(labels_vec(&sub), [1, 5, 1]);
    assert_eq!(sub.num_classes(), Some(10));
    assert_eq!(ds.take(5).len(), 5);
    assert_eq!(ds.take(1000).len(), 256);
}

// -------------------------------------------------------------------------------------------
// Folders

fn save_rgb(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let img = RgbImage::from_fn(w, h, |x, y| Rgb(f(x, y)));
    img.save(path).unwrap();
}

/// A band picture: black on the outer eighths of the longer side, white between, so a correct
/// shorter-side resize + centre crop (the middle half) leaves only white, and a missing crop or
/// an off-centre one shows black.
fn band(x: u32, y: u32, w: u32, h: u32) -> [u8; 3] {
    let (pos, len) = if w >= h { (x, w) } else { (y, h) };
    if pos >= len / 8 && pos < 7 * len / 8 {
        [255, 255, 255]
    } else {
        [0, 0, 0]
    }
}

fn labelled_folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    save_rgb(&root.join("cats/a.png"), 64, 32, |x, y| band(x, y, 64, 32));
    save_rgb(&root.join("cats/deeper/b.JPG"), 32, 64, |x, y| {
        band(x, y, 32, 64)
    });
    save_rgb(&root.join("dogs/c.jpeg"), 20, 20, |_, _| [12, 200, 77]);
    let rgba = RgbaImage::from_fn(16, 16, |x, _| {
        if x < 8 {
            Rgba([0, 0, 0, 0])
        } else {
            Rgba([255, 0, 0, 255])
        }
    });
    rgba.save(root.join("dogs/d.png")).unwrap();
    // Skipped: other extensions, hidden files (even corrupt ones) and hidden folders.
    std::fs::write(root.join("dogs/notes.txt"), "not an image").unwrap();
    std::fs::write(root.join("dogs/.hidden.png"), "corrupt").unwrap();
    std::fs::create_dir_all(root.join(".cache")).unwrap();
    std::fs::write(root.join(".cache/x.png"), "corrupt").unwrap();
    dir
}

#[test]
fn folder_labels_come_from_subfolders_and_images_are_resized_and_cropped() {
    let dir = labelled_folder();
    let ds = ImageDataset::from_folder(dir.path(), 16, 3).unwrap();
    assert_eq!(ds.pixels().size(), [4, 3, 16, 16]);
    assert_eq!(ds.class_names().unwrap(), ["cats", "dogs"]);
    assert_eq!(ds.num_classes(), Some(2));
    // Sorted paths: cats/a.png, cats/deeper/b.JPG, dogs/c.jpeg, dogs/d.png.
    assert_eq!(labels_vec(&ds), [0, 0, 1, 1]);
    let p = ds.pixels().to_kind(Kind::Int64);
    // Wide PNG: the centre crop keeps only the white band (exact: PNG, and the crop edges fall
    // well inside the band).
    assert_eq!(p.get(0).min().int64_value(&[]), 255);
    // Tall JPEG: white within JPEG error.
    assert!(p.get(1).min().int64_value(&[]) >= 235);
    // Solid JPEG colour survives within JPEG error.
    let c = p.get(2).mean_dim(&[1i64, 2][..], false, Kind::Float);
    let c: Vec<f32> = Vec::try_from(c).unwrap();
    for (got, want) in c.iter().zip([12.0, 200.0, 77.0]) {
        assert!((got - want).abs() < 6.0, "{c:?}");
    }
    // Transparent pixels are composited onto white; opaque red stays red.
    let d = ds.pixels().get(3);
    let px = |ch: i64, x: i64| d.int64_value(&[ch, 8, x]);
    assert_eq!((px(0, 0), px(1, 0), px(2, 0)), (255, 255, 255));
    assert_eq!((px(0, 15), px(1, 15), px(2, 15)), (255, 0, 0));
}

#[test]
fn grayscale_loading_uses_pils_luma() {
    let dir = labelled_folder();
    let ds = ImageDataset::from_folder(dir.path(), 16, 1).unwrap();
    assert_eq!(ds.pixels().size(), [4, 1, 16, 16]);
    // PIL's convert("L") of (255, 0, 0) is 76 (golden from data/fixtures/image_io_golden.py).
    assert_eq!(ds.pixels().int64_value(&[3, 0, 8, 15]), 76);
    assert_eq!(ds.pixels().int64_value(&[3, 0, 8, 0]), 255);
}

#[test]
fn folders_without_subfolders_have_no_labels_and_load_picks_sizes() {
    let dir = tempfile::tempdir().unwrap();
    save_rgb(&dir.path().join("top.png"), 24, 24, |_, _| [10, 20, 30]);
    save_rgb(&dir.path().join("sub/in.png"), 30, 24, |_, _| [10, 20, 30]);
    let ds = ImageDataset::load(
        dir.path().to_str().unwrap(),
        Split::Train,
        None,
        None,
        &no_datasets(),
    )
    .unwrap();
    assert!(ds.labels().is_none() && ds.class_names().is_none());
    // Size and channels from the first file in sorted order (sub/in.png: 30x24 RGB).
    assert_eq!(ds.pixels().size(), [2, 3, 24, 24]);
    // Without train/ and test/ subfolders the test split is the same images.
    let test = ImageDataset::load(
        dir.path().to_str().unwrap(),
        Split::Test,
        None,
        None,
        &no_datasets(),
    )
    .unwrap();
    assert!(test.pixels().equal(ds.pixels()));
}

#[test]
fn folders_with_train_and_test_subfolders_split() {
    let dir = tempfile::tempdir().unwrap();
    for (split, n) in [("train", 3), ("test", 2)] {
        for i in 0..n {
            let path = dir.path().join(format!("{split}/class{}/{i}.png", i % 2));
            save_rgb(&path, 8, 8, |_, _| [i as u8, 0, 0]);
        }
    }
    let load = |split| {
        ImageDataset::load(
            dir.path().to_str().unwrap(),
            split,
            Some(8),
            Some(3),
            &no_datasets(),
        )
        .unwrap()
    };
    let (train, test) = (load(Split::Train), load(Split::Test));
    assert_eq!((train.len(), test.len()), (3, 2));
    assert_eq!(train.class_names().unwrap(), ["class0", "class1"]);
    assert_eq!(labels_vec(&train), [0, 0, 1]);
}

#[test]
fn corrupt_images_and_empty_folders_are_errors_naming_the_path() {
    let dir = labelled_folder();
    let bad = dir.path().join("dogs/e.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\n but then nothing").unwrap();
    let err = ImageDataset::from_folder(dir.path(), 16, 3).unwrap_err();
    format_error_names(err, &bad, "cannot decode image");

    let empty = tempfile::tempdir().unwrap();
    std::fs::write(empty.path().join("readme.txt"), "no pictures").unwrap();
    let err = ImageDataset::from_folder(empty.path(), 16, 3).unwrap_err();
    format_error_names(err, empty.path(), "no PNG or JPEG images");

    let err = ImageDataset::from_folder(dir.path(), 16, 4).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
}

// -------------------------------------------------------------------------------------------
// Batches

#[test]
fn batches_are_in_minus_one_to_one_and_seeded_flips_repeat() {
    let ds = load_fixture(Split::Train);
    let idx: Vec<usize> = (0..64).collect();
    let (x, y) = ds.batch(&idx, false, Device::Cpu);
    assert_eq!(x.size(), [64, 1, 28, 28]);
    assert_eq!(x.kind(), Kind::Float);
    assert_eq!(x.min().double_value(&[]), -1.0);
    assert_eq!(x.max().double_value(&[]), 1.0);
    let expected = ds.pixels().narrow(0, 0, 64).to_kind(Kind::Float) / 255.0 * 2.0 - 1.0;
    assert!(x.equal(&expected));
    assert!(y.unwrap().equal(&ds.labels().unwrap().narrow(0, 0, 64)));

    let _guard = crate::rng_lock();
    tch::manual_seed(11);
    let (a, _) = ds.batch(&idx, true, Device::Cpu);
    tch::manual_seed(11);
    let (b, _) = ds.batch(&idx, true, Device::Cpu);
    assert!(a.equal(&b));
    let mut flipped = 0;
    for i in 0..64 {
        let (ai, xi) = (a.get(i), x.get(i));
        if ai.equal(&xi.flip([2])) && !ai.equal(&xi) {
            flipped += 1;
        } else {
            assert!(ai.equal(&xi), "image {i} is neither itself nor its mirror");
        }
    }
    assert!((16..=48).contains(&flipped), "{flipped} of 64 flipped");
}

#[test]
fn step_flips_depend_only_on_seed_and_step() {
    assert_eq!(step_flips(1, 7, 100), step_flips(1, 7, 100));
    assert_ne!(step_flips(1, 7, 100), step_flips(1, 8, 100));
    assert_ne!(step_flips(1, 7, 100), step_flips(2, 7, 100));
    let heads = step_flips(5, 0, 10_000).iter().filter(|&&f| f).count();
    assert!((4800..5200).contains(&heads), "{heads}");
}

#[test]
fn the_prefetcher_serves_the_batches_of_seed_and_step() {
    let ds = Arc::new(load_fixture(Split::Train));
    let sampler = EpochSampler::new(ds.len(), 24, 3);
    let direct = |step: u64| {
        let idx = sampler.batch(step);
        ds.batch_with_flips(&idx, &step_flips(9, step, idx.len()), Device::Cpu)
    };
    let mut pf = Prefetcher::new(ds.clone(), sampler.clone(), true, 9);
    // In order (each one prefetched), then a jump (computed on the spot), then resuming.
    for step in [0, 1, 2, 3, 10, 11, 11, 12, 4] {
        let (x, y) = pf.get(step);
        let (ex, ey) = direct(step);
        assert_eq!(x.size(), [24, 1, 28, 28]);
        assert!(x.equal(&ex), "step {step}");
        assert!(y.unwrap().equal(&ey.unwrap()), "step {step}");
    }
    // A fresh prefetcher, as after a resume, gives the same batch for the same step.
    let mut again = Prefetcher::new(ds.clone(), sampler.clone(), true, 9);
    assert!(again.get(12).0.equal(&pf.get(12).0));
    // Different seeds flip differently; without hflip nothing is mirrored.
    let mut other = Prefetcher::new(ds.clone(), sampler.clone(), true, 10);
    assert!(!other.get(0).0.equal(&pf.get(0).0));
    let mut plain = Prefetcher::new(ds.clone(), sampler.clone(), false, 9);
    let (x, _) = plain.get(5);
    assert!(x.equal(&ds.batch(&sampler.batch(5), false, Device::Cpu).0));
}

/// Regenerates `data/fixtures/mnist-subset` from the real MNIST (`cargo xtask setup --data
/// mnist` first): `cargo test -p diffuse-image --test it make_mnist_subset_fixture -- --ignored`.
#[test]
#[ignore = "writes the committed fixture; run by hand"]
fn make_mnist_subset_fixture() {
    let out = fixture();
    std::fs::create_dir_all(&out).unwrap();
    let source = ImageDataset::default_datasets_dir().join("mnist");
    for (prefix, n) in [("train", 256), ("t10k", 128)] {
        let images = |dir: &Path| dir.join(format!("{prefix}-images-idx3-ubyte"));
        let labels = |dir: &Path| dir.join(format!("{prefix}-labels-idx1-ubyte"));
        let ds = ImageDataset::from_idx(&images(&source), Some(&labels(&source))).unwrap();
        ds.take(n)
            .write_idx(&images(&out), Some(&labels(&out)))
            .unwrap();
    }
}

#[test]
fn the_digits_table_loads_as_8x8_gray_images_with_a_tenth_held_out() {
    let dir = tempfile::tempdir().unwrap();
    // 20 rows: pixel j of row r is (r + j) % 17, label r % 10.
    let mut text = String::new();
    for r in 0..20 {
        let pixels: Vec<String> = (0..64).map(|j| ((r + j) % 17).to_string()).collect();
        text.push_str(&format!("{},{}\n", pixels.join(","), r % 10));
    }
    std::fs::write(dir.path().join("digits.csv"), &text).unwrap();
    let path = dir.path().to_str().unwrap();
    let train = ImageDataset::load(path, Split::Train, None, None, dir.path()).unwrap();
    let test = ImageDataset::load(path, Split::Test, None, None, dir.path()).unwrap();
    assert_eq!((train.len(), test.len()), (18, 2));
    assert_eq!((train.channels(), train.height(), train.width()), (1, 8, 8));
    // Test rows are 9 and 19 (label 9): level 16 is white, (9 + 0) % 17 = 9 -> round(9 * 255 / 16).
    let (_, labels) = test.batch(&[0, 1], false, Device::Cpu);
    assert_eq!(Vec::<i64>::try_from(labels.unwrap()).unwrap(), vec![9, 9]);
    let first: Vec<u8> = Vec::try_from(test.pixels().get(0).flatten(0, -1)).unwrap();
    assert_eq!(first[0], (9.0f64 * 255.0 / 16.0).round() as u8);
    assert_eq!(first[7], 255);
    // A bad gray level names the row.
    std::fs::write(dir.path().join("digits.csv"), text.replacen("0,", "17,", 1)).unwrap();
    let err = ImageDataset::load(path, Split::Train, None, None, dir.path())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("digits.csv") && err.contains("row 1"), "{err}");
}
