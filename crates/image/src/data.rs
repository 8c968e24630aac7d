//! Image datasets held in memory as u8 `[N, C, H, W]`, loaded from IDX files (MNIST,
//! Fashion-MNIST; plain or gzipped) or from folders of PNG/JPEG, and served as f32 batches in
//! [-1, 1].
//!
//! Two ways to get batches: [`ImageDataset::batch`] (flips drawn from libtorch's global
//! generator, so the trainer's seeding covers them) and [`Prefetcher`], which assembles step
//! `s + 1` on a background thread while step `s` trains; its batches are a pure function of
//! (seed, step), so a resumed run sees exactly the batches of the uninterrupted one.
//!
//! Folder images go through the preprocessing of diffusers' `train_unconditional.py`: resize the
//! shorter side to the resolution with an antialiased bilinear filter (torchvision's
//! `Resize(interpolation=BILINEAR)`; here the image crate's `Triangle`, which widens its kernel
//! when shrinking as PIL does), then a centre crop (torchvision's `CenterCrop` offsets), then
//! `ToTensor` + `Normalize([0.5], [0.5])`. Alpha is composited onto white (see [`crate::io`]).

use crate::io;
use diffuse_tensor::data::EpochSampler;
use diffuse_tensor::seed::derive_seed;
use diffuse_tensor::{atomic, Error, Result};
use image::DynamicImage;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use tch::{Device, Kind, Tensor};

/// Which part of a dataset to load: IDX datasets have train (`train-*`) and test (`t10k-*`) files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    /// The training images (`train-*-ubyte`, or a folder's `train/`).
    Train,
    /// The held-out images (`t10k-*-ubyte`, or a folder's `test/` or `val/`).
    Test,
}

impl Split {
    /// The file-name prefix of this split in the MNIST layout.
    pub fn idx_prefix(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "t10k",
        }
    }
}

/// Image datasets that `cargo xtask setup --data NAME` provides, with their class names.
const NAMED: [(&str, Option<&[&str]>); 4] = [
    (
        "mnist",
        Some(&["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]),
    ),
    (
        "fashion-mnist",
        Some(&[
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ]),
    ),
    ("twemoji", None),
    (
        "digits",
        Some(&["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]),
    ),
];

/// scikit-learn's digits table: 64 gray levels 0..=16 per 8x8 image, then the label.
const DIGITS_CSV: &str = "digits.csv";

/// In-memory image dataset: pixels kept as u8 `[N, C, H, W]` (CPU tensor), optional labels `[N]` i64.
pub struct ImageDataset {
    pixels: Tensor,
    labels: Option<Tensor>,
    num_classes: Option<i64>,
    class_names: Option<Vec<String>>,
}

// SAFETY: tch marks `Tensor` Send but not Sync because `&Tensor` methods could in principle race
// (e.g. tch's `set_requires_grad(&self)` touches autograd metadata). An ImageDataset's tensors are
// private, built once in a constructor and never modified afterwards: every `&self` method only
// reads them (index_select, size, copy out), and libtorch supports concurrent reads of one tensor
// (its reference counts are atomic). Sharing `&ImageDataset` across threads is what lets
// `Arc<ImageDataset>` feed the Prefetcher's worker thread.
unsafe impl Sync for ImageDataset {}

impl std::fmt::Debug for ImageDataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageDataset")
            .field("shape", &self.pixels.size())
            .field("num_classes", &self.num_classes)
            .finish()
    }
}

impl ImageDataset {
    /// The names `--data` takes for the datasets `cargo xtask setup` provides.
    pub const NAMED_DATASETS: [&'static str; NAMED.len()] = {
        let mut names = [""; NAMED.len()];
        let mut i = 0;
        while i < NAMED.len() {
            names[i] = NAMED[i].0;
            i += 1;
        }
        names
    };
}

impl ImageDataset {
    /// A dataset from u8 pixels `[N, C, H, W]` and optional i64 labels `[N]` in `0..num_classes`
    /// (`num_classes` defaults to the largest label + 1). Panics on mismatched shapes or kinds.
    pub fn from_tensors(pixels: Tensor, labels: Option<Tensor>, num_classes: Option<i64>) -> Self {
        let size = pixels.size();
        assert!(
            size.len() == 4 && pixels.kind() == Kind::Uint8,
            "pixels must be u8 [N, C, H, W], got {:?} {size:?}",
            pixels.kind()
        );
        let pixels = pixels.to_device(Device::Cpu).contiguous();
        let labels = labels.map(|l| {
            assert_eq!(
                l.size(),
                [size[0]],
                "labels must be [N] with N = {}",
                size[0]
            );
            l.to_kind(Kind::Int64).to_device(Device::Cpu).contiguous()
        });
        let num_classes = match (&labels, num_classes) {
            (None, _) => None,
            (Some(_), Some(k)) => Some(k),
            (Some(l), None) if l.numel() == 0 => Some(0),
            (Some(l), None) => Some(l.max().int64_value(&[]) + 1),
        };
        ImageDataset {
            pixels,
            labels,
            num_classes,
            class_names: None,
        }
    }

    /// Name the classes (label `i` is `names[i]`); also sets `num_classes` to `names.len()`.
    pub fn with_class_names(mut self, names: Vec<String>) -> Self {
        if self.labels.is_some() {
            self.num_classes = Some(names.len() as i64);
            self.class_names = Some(names);
        }
        self
    }

    /// IDX image file (idx3, u8) + optional IDX label file (idx1), each gzipped (detected by the
    /// magic bytes 1f 8b, whatever the name) or not. Labels must be as many as images.
    /// scikit-learn's digits (UCI optdigits): `digits.csv`, one image per row as 64 gray levels
    /// 0..=16 (row-major 8x8) and the label, scaled to 0..=255. It has no official split: every
    /// tenth row (rows 9, 19, ...) is the test split, the rest train.
    pub fn from_digits_csv(path: &Path, split: Split) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut pixels: Vec<u8> = Vec::new();
        let mut labels: Vec<i64> = Vec::new();
        let rows = text.lines().filter(|l| !l.trim().is_empty());
        for (row, line) in rows.enumerate() {
            if (row % 10 == 9) != matches!(split, Split::Test) {
                continue;
            }
            let values: Vec<&str> = line.split(',').map(str::trim).collect();
            let bad = |what: String| Error::format(path, format!("row {}: {what}", row + 1));
            if values.len() != 65 {
                return Err(bad(format!(
                    "{} values, expected 64 pixels and a label",
                    values.len()
                )));
            }
            for v in &values[..64] {
                let level: f64 = v
                    .parse()
                    .ok()
                    .filter(|x: &f64| (0.0..=16.0).contains(x))
                    .ok_or_else(|| bad(format!("{v:?} is not a gray level 0..16")))?;
                pixels.push((level * 255.0 / 16.0).round() as u8);
            }
            let label: i64 = values[64]
                .parse::<f64>()
                .ok()
                .filter(|x| (0.0..=9.0).contains(x) && x.fract() == 0.0)
                .ok_or_else(|| bad(format!("label {:?} is not a digit 0..9", values[64])))?
                as i64;
            labels.push(label);
        }
        if labels.is_empty() {
            return Err(Error::format(path, "no digit rows"));
        }
        let n = labels.len() as i64;
        Ok(ImageDataset::from_tensors(
            Tensor::from_slice(&pixels).view([n, 1, 8, 8]),
            Some(Tensor::from_slice(&labels)),
            Some(10),
        ))
    }

    pub fn from_idx(images: &Path, labels: Option<&Path>) -> Result<Self> {
        let (dims, data) = read_idx(images)?;
        if dims.len() != 3 {
            return Err(Error::format(
                images,
                format!(
                    "expected IDX images with 3 dimensions [N, H, W], found {} dimension(s) {dims:?}",
                    dims.len()
                ),
            ));
        }
        let (n, h, w) = (dims[0] as i64, dims[1] as i64, dims[2] as i64);
        let pixels = Tensor::from_slice(&data).view([n, 1, h, w]);
        let labels = match labels {
            None => None,
            Some(path) => {
                let (ldims, ldata) = read_idx(path)?;
                if ldims.len() != 1 {
                    return Err(Error::format(
                        path,
                        format!(
                            "expected IDX labels with 1 dimension [N], found {} dimension(s) {ldims:?}",
                            ldims.len()
                        ),
                    ));
                }
                if ldims[0] as i64 != n {
                    return Err(Error::format(
                        path,
                        format!("{} labels for {n} images in {}", ldims[0], images.display()),
                    ));
                }
                let l: Vec<i64> = ldata.iter().map(|&v| v as i64).collect();
                Some(Tensor::from_slice(&l))
            }
        };
        Ok(ImageDataset::from_tensors(pixels, labels, None))
    }

    /// Recursive folder of PNG/JPEG (extensions case-insensitive; other files, and hidden files
    /// and folders, skipped), in sorted path order. Each image: alpha composited onto white,
    /// converted to `channels` (1 = grayscale as PIL's `convert("L")`, 3 = RGB), shorter side
    /// resized to `resolution` (antialiased bilinear), centre-cropped to `resolution` square.
    ///
    /// Labels come from first-level subfolder names (sorted; label = index), as torchvision's
    /// `ImageFolder`, when every image sits in a subfolder; otherwise there are none. Decoding
    /// runs on all cores. A corrupt image is an error naming the file; so is a folder without images.
    pub fn from_folder(root: &Path, resolution: u32, channels: u32) -> Result<Self> {
        check_resolution_channels(resolution, channels)?;
        let files = image_files(root)?;
        let rels: Vec<PathBuf> = files
            .iter()
            .map(|f| f.strip_prefix(root).unwrap_or(f).to_path_buf())
            .collect();
        let labelled = rels.iter().all(|r| r.components().count() >= 2);
        let (labels, class_names) = if labelled {
            let class_of = |r: &PathBuf| {
                r.components()
                    .next()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .unwrap_or_default()
            };
            let mut names: Vec<String> = rels.iter().map(class_of).collect();
            names.sort();
            names.dedup();
            let labels: Vec<i64> = rels
                .iter()
                .map(|r| names.binary_search(&class_of(r)).expect("listed") as i64)
                .collect();
            (Some(Tensor::from_slice(&labels)), Some(names))
        } else {
            (None, None)
        };

        let r = resolution as usize;
        let per_image = channels as usize * r * r;
        let mut out = pixel_buffer(files.len(), per_image, resolution)?;
        par_fill(&files, per_image, &mut out, |path, slot| {
            let img = io::convert_channels(&io::decode(path)?, channels);
            slot.copy_from_slice(&io::to_chw(&resize_crop(&img, resolution)));
            Ok(())
        })?;
        let pixels = Tensor::from_slice(&out).view([
            files.len() as i64,
            channels as i64,
            resolution as i64,
            resolution as i64,
        ]);
        let dataset = ImageDataset::from_tensors(pixels, labels, None);
        Ok(match class_names {
            Some(names) => dataset.with_class_names(names),
            None => dataset,
        })
    }

    /// Load a dataset by name or path.
    ///
    /// `name_or_path` is one of:
    /// - `mnist`, `fashion-mnist`, `twemoji`: the dataset in `datasets_dir/<name>/` (always, even
    ///   if a folder of that name exists here: write `./mnist` for that); missing => an error
    ///   saying to run `cargo xtask setup --data NAME`. Any other plain name is also looked up
    ///   in `datasets_dir` when no such path exists;
    /// - a directory holding MNIST-style IDX files (`{train,t10k}-{images-idx3,labels-idx1}-ubyte`,
    ///   optionally `.gz`, or with `.` for the first `-` as some mirrors name them): the split picks `train-`
    ///   or `t10k-`; a missing labels file means no labels;
    /// - an IDX images file: loaded whatever the split, with the labels file beside it (the name
    ///   with `images-idx3` replaced by `labels-idx1`) when that exists;
    /// - a folder of images (see [`ImageDataset::from_folder`]). If it has both `train/` and `test/`
    ///   (or `val/`) subfolders, the split picks one; otherwise a folder has no split and
    ///   [`Split::Test`] gives the same images as [`Split::Train`] — what FID against the training
    ///   set needs, and logged so it is never a surprise.
    ///
    /// `resolution`: `None` keeps IDX images at their native size and sizes folder images by the
    /// first file's shorter side. For IDX data a different resolution resizes every image like a
    /// folder image (antialiased bilinear, centre crop): MNIST at 32 is the usual UNet input.
    /// `channels`: `None` = 1 for IDX, and for folders 1 if the first image is grayscale else 3;
    /// IDX data asked for 3 channels repeats the gray channel.
    pub fn load(
        name_or_path: &str,
        split: Split,
        resolution: Option<u32>,
        channels: Option<u32>,
        datasets_dir: &Path,
    ) -> Result<Self> {
        let path = Path::new(name_or_path);
        // A file or folder of that name here is the user's and wins over the dataset.
        let named = NAMED
            .iter()
            .find(|(n, _)| *n == name_or_path)
            .filter(|_| !path.exists());
        let plain_name = !name_or_path.is_empty()
            && !name_or_path.contains(['/', '\\'])
            && name_or_path != "."
            && name_or_path != "..";
        let location = if let Some((name, _)) = named {
            let dir = datasets_dir.join(name);
            if !dir.is_dir() {
                return Err(Error::InvalidArgument(format!(
                    "dataset {name} is not in {}: run `cargo xtask setup --data {name}` \
                     (or set DIFFUSE_DATA_DIR to the folder holding {name}/)",
                    datasets_dir.display()
                )));
            }
            dir
        } else if path.exists() {
            path.to_path_buf()
        } else if plain_name && datasets_dir.join(name_or_path).exists() {
            datasets_dir.join(name_or_path)
        } else {
            let known: Vec<&str> = NAMED.iter().map(|(n, _)| *n).collect();
            return Err(Error::InvalidArgument(format!(
                "{name_or_path}: no such file or folder{} (named datasets: {})",
                if plain_name {
                    format!(
                        ", and no dataset of that name in {}",
                        datasets_dir.display()
                    )
                } else {
                    String::new()
                },
                known.join(", ")
            )));
        };

        let dataset = if location.is_file() {
            let labels = sibling_labels(&location);
            let ds = ImageDataset::from_idx(&location, labels.as_deref())?;
            ds.adjust(resolution, channels)?
        } else if location.join(DIGITS_CSV).is_file() {
            let ds = ImageDataset::from_digits_csv(&location.join(DIGITS_CSV), split)?;
            ds.adjust(resolution, channels)?
        } else if let Some((images, labels)) = find_idx(&location, split)? {
            let ds = ImageDataset::from_idx(&images, labels.as_deref())?;
            ds.adjust(resolution, channels)?
        } else {
            let root = split_folder(&location, split);
            let first = image_files(&root)?;
            let first = &first[0];
            let (resolution, channels) = match (resolution, channels) {
                (Some(r), Some(c)) => (r, c),
                (r, c) => {
                    let img = io::decode(first)?;
                    let gray = matches!(
                        img.color(),
                        image::ColorType::L8
                            | image::ColorType::La8
                            | image::ColorType::L16
                            | image::ColorType::La16
                    );
                    (
                        r.unwrap_or(img.width().min(img.height())),
                        c.unwrap_or(if gray { 1 } else { 3 }),
                    )
                }
            };
            ImageDataset::from_folder(&root, resolution, channels)?
        };
        Ok(match named {
            Some((_, Some(names))) if dataset.labels.is_some() => {
                dataset.with_class_names(names.iter().map(|s| s.to_string()).collect())
            }
            _ => dataset,
        })
    }

    /// Resize IDX-native images to `resolution` and convert to `channels` where asked.
    fn adjust(self, resolution: Option<u32>, channels: Option<u32>) -> Result<Self> {
        let channels = channels.unwrap_or(self.channels() as u32);
        let resolution_or_native = resolution.unwrap_or(self.height() as u32);
        check_resolution_channels(resolution_or_native, channels)?;
        let mut ds = self;
        let (h, w) = (ds.height(), ds.width());
        if let Some(r) = resolution.filter(|&r| !(r as i64 == h && r as i64 == w)) {
            ds.pixels = resize_pixels(&ds.pixels, r)?;
        }
        match (ds.channels(), channels) {
            (a, b) if a == b as i64 => {}
            (1, 3) => ds.pixels = ds.pixels.repeat([1, 3, 1, 1]),
            (3, 1) => ds.pixels = rgb_to_gray(&ds.pixels),
            (a, b) => {
                return Err(Error::InvalidArgument(format!(
                    "cannot convert {a}-channel images to {b} channels"
                )))
            }
        }
        Ok(ds)
    }

    /// Where named datasets live ([`diffuse_tensor::data::default_datasets_dir`], one rule for
    /// every modality).
    pub fn default_datasets_dir() -> PathBuf {
        diffuse_tensor::data::default_datasets_dir()
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.pixels.size()[0] as usize
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Channels per image (1 or 3).
    pub fn channels(&self) -> i64 {
        self.pixels.size()[1]
    }

    /// Image height in pixels.
    pub fn height(&self) -> i64 {
        self.pixels.size()[2]
    }

    /// Image width in pixels.
    pub fn width(&self) -> i64 {
        self.pixels.size()[3]
    }

    /// Number of classes when the dataset has labels.
    pub fn num_classes(&self) -> Option<i64> {
        self.num_classes
    }

    /// Class names (label `i` is `names[i]`) when known: folder datasets and named IDX datasets.
    pub fn class_names(&self) -> Option<&[String]> {
        self.class_names.as_deref()
    }

    /// Labels `[N]` i64 (CPU), if any.
    pub fn labels(&self) -> Option<&Tensor> {
        self.labels.as_ref()
    }

    /// Pixels u8 `[N, C, H, W]` (CPU).
    pub fn pixels(&self) -> &Tensor {
        &self.pixels
    }

    /// The first `n` images (all of them if fewer), e.g. for tests and evaluation limits.
    pub fn take(&self, n: usize) -> Self {
        let n = n.min(self.len());
        self.select(&(0..n).collect::<Vec<_>>())
    }

    /// The images at `indices` (in that order; repeats allowed). Panics on an index out of range.
    pub fn select(&self, indices: &[usize]) -> Self {
        let idx = index_tensor(indices, self.len());
        ImageDataset {
            pixels: self.pixels.index_select(0, &idx),
            labels: self.labels.as_ref().map(|l| l.index_select(0, &idx)),
            num_classes: self.num_classes,
            class_names: self.class_names.clone(),
        }
    }

    /// Batch `[B, C, H, W]` f32 in [-1, 1] on `device`, with labels `[B]`. With `hflip` each image
    /// is mirrored with probability 0.5, drawn from libtorch's global CPU generator (so the
    /// trainer's seeding fixes it, whatever the device).
    pub fn batch(
        &self,
        indices: &[usize],
        hflip: bool,
        device: Device,
    ) -> (Tensor, Option<Tensor>) {
        let flips = hflip.then(|| {
            let mut draws = vec![0f32; indices.len()];
            Tensor::rand([indices.len() as i64], (Kind::Float, Device::Cpu))
                .copy_data(&mut draws, indices.len());
            draws.iter().map(|&u| u < 0.5).collect::<Vec<bool>>()
        });
        let (x, y) = assemble(
            &self.pixels,
            self.labels.as_ref(),
            indices,
            flips.as_deref(),
        );
        (x.to_device(device), y.map(|y| y.to_device(device)))
    }

    /// Batch as [`ImageDataset::batch`] with the flips given (`flips[i]` mirrors image `i`).
    pub fn batch_with_flips(
        &self,
        indices: &[usize],
        flips: &[bool],
        device: Device,
    ) -> (Tensor, Option<Tensor>) {
        let (x, y) = assemble(&self.pixels, self.labels.as_ref(), indices, Some(flips));
        (x.to_device(device), y.map(|y| y.to_device(device)))
    }

    /// Write the dataset as IDX u8 files (images `[N, H, W]`, labels `[N]`; gzipped when a name
    /// ends in `.gz`), atomically. Only single-channel datasets fit the idx3 layout.
    pub fn write_idx(&self, images: &Path, labels: Option<&Path>) -> Result<()> {
        if self.channels() != 1 {
            return Err(Error::InvalidArgument(format!(
                "{}: IDX images are single-channel, this dataset has {} channels",
                images.display(),
                self.channels()
            )));
        }
        let (n, h, w) = (self.len(), self.height() as usize, self.width() as usize);
        let mut data = vec![0u8; n * h * w];
        self.pixels.copy_data(&mut data, n * h * w);
        write_idx_file(images, &[n, h, w], &data)?;
        if let Some(path) = labels {
            let l = self.labels.as_ref().ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "{}: the dataset has no labels to write",
                    path.display()
                ))
            })?;
            let mut values = vec![0i64; n];
            l.copy_data(&mut values, n);
            let bytes = values
                .iter()
                .map(|&v| {
                    u8::try_from(v).map_err(|_| {
                        Error::InvalidArgument(format!(
                            "{}: label {v} does not fit in an IDX u8",
                            path.display()
                        ))
                    })
                })
                .collect::<Result<Vec<u8>>>()?;
            write_idx_file(path, &[n], &bytes)?;
        }
        Ok(())
    }
}

/// The bytes available for new allocations (Linux's MemAvailable), when the system says.
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A zeroed buffer for `images` decoded images of `per_image` bytes, refused with a clear error
/// (instead of an allocation abort) when it cannot fit in memory.
fn pixel_buffer(images: usize, per_image: usize, resolution: u32) -> Result<Vec<u8>> {
    let gb = |b: f64| b / 1e9;
    let too_big = |needed: f64, available: Option<u64>| {
        Error::InvalidArgument(format!(
            "--resolution {resolution}: {images} images at {resolution}x{resolution} need {:.1} GB \
             of memory{}; use a smaller --resolution",
            gb(needed),
            available.map_or(String::new(), |a| format!(
                ", more than the {:.1} GB available",
                gb(a as f64)
            ))
        ))
    };
    // Twice the pixels: the decoded buffer and the tensor it is copied into live together.
    let needed = 2.0 * images as f64 * per_image as f64;
    let available = available_memory();
    if available.is_some_and(|a| needed > a as f64) {
        return Err(too_big(needed, available));
    }
    let bytes = images
        .checked_mul(per_image)
        .ok_or_else(|| too_big(needed, available))?;
    let mut out = Vec::new();
    out.try_reserve_exact(bytes)
        .map_err(|_| too_big(needed, available))?;
    out.resize(bytes, 0);
    Ok(out)
}

fn check_resolution_channels(resolution: u32, channels: u32) -> Result<()> {
    if resolution == 0 {
        return Err(Error::InvalidArgument(
            "resolution must be at least 1 pixel".into(),
        ));
    }
    if channels != 1 && channels != 3 {
        return Err(Error::InvalidArgument(format!(
            "channels must be 1 (grayscale) or 3 (RGB), got {channels}"
        )));
    }
    Ok(())
}

fn index_tensor(indices: &[usize], len: usize) -> Tensor {
    if let Some(bad) = indices.iter().find(|&&i| i >= len) {
        panic!("index {bad} out of range for a dataset of {len} images");
    }
    let idx: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
    Tensor::from_slice(&idx)
}

/// The one batch assembly both [`ImageDataset::batch`] and the [`Prefetcher`] worker run, so
/// their results agree bit for bit: gather, mirror where asked, scale to [-1, 1] (on the CPU).
fn assemble(
    pixels: &Tensor,
    labels: Option<&Tensor>,
    indices: &[usize],
    flips: Option<&[bool]>,
) -> (Tensor, Option<Tensor>) {
    let idx = index_tensor(indices, pixels.size()[0] as usize);
    let mut x = pixels.index_select(0, &idx);
    if let Some(flips) = flips {
        assert_eq!(flips.len(), indices.len(), "one flip per image");
        if flips.iter().any(|&f| f) {
            let mask: Vec<u8> = flips.iter().map(|&f| f as u8).collect();
            let mask =
                Tensor::from_slice(&mask)
                    .to_kind(Kind::Bool)
                    .view([indices.len() as i64, 1, 1, 1]);
            x = x.flip([3]).where_self(&mask, &x);
        }
    }
    (io::u8_to_unit(&x), labels.map(|l| l.index_select(0, &idx)))
}

/// Horizontal flips of step `step` for a run seeded with `seed`: a SplitMix64 stream of its own
/// (not libtorch's generator), so they depend only on (seed, step) and can be drawn on any thread.
pub fn step_flips(seed: u64, step: u64, n: usize) -> Vec<bool> {
    // A separate stream from EpochSampler's (which seeds from derive_seed(seed, epoch)), so flips
    // are not correlated with the shuffle order.
    let mut state = derive_seed(derive_seed(seed, 0x666c_6970), step);
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            (z ^ (z >> 31)) >> 63 == 1
        })
        .collect()
}

type Batch = (Tensor, Option<Tensor>);

/// Loader that assembles the next batch on a background thread while the current one trains.
///
/// Batch `step` holds the examples `sampler.batch(step)` with flips `step_flips(seed, step)`
/// (when `hflip`): a pure function of (seed, step), so training stays reproducible and resumable
/// at any step. [`Prefetcher::get`] returns CPU tensors (f32 `[B, C, H, W]` in [-1, 1] and
/// labels `[B]`) and starts on `step + 1`; asking for any other step than the one prefetched
/// just computes it directly (same result).
pub struct Prefetcher {
    dataset: Arc<ImageDataset>,
    sampler: EpochSampler,
    hflip: bool,
    seed: u64,
    requests: Option<mpsc::Sender<u64>>,
    results: mpsc::Receiver<(u64, Batch)>,
    pending: Option<u64>,
    worker: Option<std::thread::JoinHandle<()>>,
}

impl Prefetcher {
    /// Start the background worker (it shares the dataset through the Arc; nothing is copied).
    pub fn new(dataset: Arc<ImageDataset>, sampler: EpochSampler, hflip: bool, seed: u64) -> Self {
        let (req_tx, req_rx) = mpsc::channel::<u64>();
        let (res_tx, res_rx) = mpsc::channel::<(u64, Batch)>();
        let worker_data = dataset.clone();
        let worker_sampler = sampler.clone();
        let worker = std::thread::Builder::new()
            .name("diffuse-prefetch".into())
            .spawn(move || {
                while let Ok(step) = req_rx.recv() {
                    let batch = compute_step(&worker_data, &worker_sampler, hflip, seed, step);
                    if res_tx.send((step, batch)).is_err() {
                        break;
                    }
                }
            })
            .expect("spawning the prefetch thread");
        Prefetcher {
            dataset,
            sampler,
            hflip,
            seed,
            requests: Some(req_tx),
            results: res_rx,
            pending: None,
            worker: Some(worker),
        }
    }

    /// The batch of `step` (CPU tensors); then prefetches `step + 1` in the background.
    pub fn get(&mut self, step: u64) -> (Tensor, Option<Tensor>) {
        let batch = match self.pending.take() {
            Some(p) => {
                let (got, batch) = self.receive();
                debug_assert_eq!(got, p);
                if p == step {
                    batch
                } else {
                    self.compute(step)
                }
            }
            None => self.compute(step),
        };
        if let Some(tx) = &self.requests {
            if tx.send(step + 1).is_ok() {
                self.pending = Some(step + 1);
            }
        }
        batch
    }

    /// The batch of `step` computed on the calling thread (what [`Prefetcher::get`] returns).
    pub fn compute(&self, step: u64) -> (Tensor, Option<Tensor>) {
        compute_step(&self.dataset, &self.sampler, self.hflip, self.seed, step)
    }

    /// The sampler deciding which examples each step sees.
    pub fn sampler(&self) -> &EpochSampler {
        &self.sampler
    }

    /// The dataset served.
    pub fn dataset(&self) -> &Arc<ImageDataset> {
        &self.dataset
    }

    fn receive(&mut self) -> (u64, Batch) {
        match self.results.recv() {
            Ok(r) => r,
            Err(_) => {
                // The worker only hangs up by panicking: surface its panic here.
                self.requests = None;
                match self.worker.take().map(|w| w.join()) {
                    Some(Err(panic)) => std::panic::resume_unwind(panic),
                    _ => panic!("the prefetch thread stopped"),
                }
            }
        }
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        // Closing the request channel ends the worker's loop once its current batch is done.
        self.requests = None;
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

fn compute_step(
    data: &ImageDataset,
    sampler: &EpochSampler,
    hflip: bool,
    seed: u64,
    step: u64,
) -> Batch {
    let indices = sampler.batch(step);
    let flips = hflip.then(|| step_flips(seed, step, indices.len()));
    assemble(
        &data.pixels,
        data.labels.as_ref(),
        &indices,
        flips.as_deref(),
    )
}

// ---------------------------------------------------------------------------------------------
// IDX files

/// Read an IDX file of unsigned bytes (gzipped or not, by magic bytes): its dimensions and data.
/// Errors name the file and say what is wrong (not IDX, not u8, truncated, trailing bytes).
pub fn read_idx(path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| Error::format(path, format!("corrupt gzip data: {e}")))?;
        out
    } else {
        raw
    };
    if bytes.len() < 4 {
        return Err(Error::format(
            path,
            format!("not an IDX file: only {} bytes", bytes.len()),
        ));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(Error::format(
            path,
            format!(
                "not an IDX file: starts with {:02x} {:02x} {:02x} {:02x} (IDX starts with 00 00)",
                bytes[0], bytes[1], bytes[2], bytes[3]
            ),
        ));
    }
    if bytes[2] != 0x08 {
        return Err(Error::format(
            path,
            format!(
                "IDX data type 0x{:02x} is not unsigned byte (0x08), the only type image datasets use",
                bytes[2]
            ),
        ));
    }
    let ndims = bytes[3] as usize;
    let header = 4 + 4 * ndims;
    if ndims == 0 || bytes.len() < header {
        return Err(Error::format(
            path,
            format!(
                "truncated IDX header: {ndims} dimension(s) need {header} bytes, file has {}",
                bytes.len()
            ),
        ));
    }
    let dims: Vec<usize> = (0..ndims)
        .map(|i| {
            let b = &bytes[4 + 4 * i..8 + 4 * i];
            u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
        })
        .collect();
    let expected = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let found = bytes.len() - header;
    let problem = match expected {
        Some(e) if e == found => None,
        Some(e) if e > found => Some(format!(
            "truncated: the header promises {dims:?} = {e} bytes of data, the file has {found}"
        )),
        Some(e) => Some(format!(
            "{} unexpected bytes after the {dims:?} data the header describes",
            found - e
        )),
        None => Some(format!("impossible IDX dimensions {dims:?}")),
    };
    if let Some(message) = problem {
        return Err(Error::format(path, message));
    }
    let mut bytes = bytes;
    bytes.drain(..header);
    Ok((dims, bytes))
}

/// Write an unsigned-byte IDX file atomically (gzipped when the name ends in `.gz`).
fn write_idx_file(path: &Path, dims: &[usize], data: &[u8]) -> Result<()> {
    let mut bytes = vec![0, 0, 0x08, dims.len() as u8];
    for &d in dims {
        let d = u32::try_from(d).map_err(|_| {
            Error::InvalidArgument(format!(
                "{}: dimension {d} too large for IDX",
                path.display()
            ))
        })?;
        bytes.extend_from_slice(&d.to_be_bytes());
    }
    bytes.extend_from_slice(data);
    let gz = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gz"));
    atomic::write_atomic(path, |w| {
        if gz {
            let mut enc = flate2::write::GzEncoder::new(w, flate2::Compression::best());
            enc.write_all(&bytes)?;
            enc.finish().map(|_| ())
        } else {
            w.write_all(&bytes)
        }
    })
}

/// `dir/name` or `dir/name.gz`, whichever exists (plain first).
fn existing_plain_or_gz(dir: &Path, names: &[String]) -> Option<PathBuf> {
    names.iter().find_map(|n| {
        [dir.join(n), dir.join(format!("{n}.gz"))]
            .into_iter()
            .find(|p| p.is_file())
    })
}

/// The split's IDX files in `dir` (None when `dir` holds no IDX images at all).
fn find_idx(dir: &Path, split: Split) -> Result<Option<(PathBuf, Option<PathBuf>)>> {
    let names = |prefix: &str, kind: &str| {
        vec![
            format!("{prefix}-{kind}-ubyte"),
            format!("{prefix}-{}-ubyte", kind.replacen('-', ".", 1)),
        ]
    };
    let p = split.idx_prefix();
    if let Some(images) = existing_plain_or_gz(dir, &names(p, "images-idx3")) {
        let labels = existing_plain_or_gz(dir, &names(p, "labels-idx1"));
        return Ok(Some((images, labels)));
    }
    let any_idx = ["train", "t10k"]
        .iter()
        .any(|q| existing_plain_or_gz(dir, &names(q, "images-idx3")).is_some());
    if any_idx {
        return Err(Error::format(
            dir,
            format!("no {p}-images-idx3-ubyte[.gz] for the {split:?} split in this IDX folder"),
        ));
    }
    Ok(None)
}

/// The labels file beside an IDX images file, if one exists.
fn sibling_labels(images: &Path) -> Option<PathBuf> {
    let name = images.file_name()?.to_str()?;
    ["images-idx3", "images.idx3"].iter().find_map(|pat| {
        let labels = images.with_file_name(name.replace(
            pat,
            &pat.replace("images", "labels").replace("idx3", "idx1"),
        ));
        (name.contains(pat) && labels.is_file()).then_some(labels)
    })
}

// ---------------------------------------------------------------------------------------------
// Folders

/// `root/train` or `root/test` (`root/val`) when `root` is laid out by split, else `root`.
fn split_folder(root: &Path, split: Split) -> PathBuf {
    let train = root.join("train");
    let test = ["test", "val"]
        .iter()
        .map(|n| root.join(n))
        .find(|p| p.is_dir());
    match (train.is_dir(), test, split) {
        (true, Some(_), Split::Train) => train,
        (true, Some(test), Split::Test) => test,
        (_, _, Split::Test) => {
            tracing::info!(
                "{} has no train/ and test/ subfolders: the test split is the same images as the training split",
                root.display()
            );
            root.to_path_buf()
        }
        _ => root.to_path_buf(),
    }
}

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

/// Every PNG/JPEG under `root`, recursively, sorted; hidden files and folders skipped. Symbolic
/// links are followed (to a depth of 32 folders, which also stops link cycles).
pub fn image_files(root: &Path) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<()> {
        let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
        for entry in entries {
            let path = entry.map_err(|e| Error::io(dir, e))?.path();
            if is_hidden(&path) {
                continue;
            }
            // fs::metadata follows links: a link to an image counts as an image.
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                if depth < 32 {
                    walk(&path, depth + 1, out)?;
                }
            } else if io::is_image_path(&path) {
                out.push(path);
            }
        }
        Ok(())
    }
    if !root.is_dir() {
        return Err(Error::io(
            root,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such folder"),
        ));
    }
    let mut out = Vec::new();
    walk(root, 0, &mut out)?;
    if out.is_empty() {
        return Err(Error::format(
            root,
            "no PNG or JPEG images found (searched recursively; hidden files skipped)",
        ));
    }
    out.sort();
    Ok(out)
}

/// Round half to even, as Python's `round` in torchvision's `CenterCrop`.
fn half_even_div2(d: u32) -> u32 {
    let (q, r) = (d / 2, d % 2);
    if r == 1 && q % 2 == 1 {
        q + 1
    } else {
        q
    }
}

/// torchvision's `Resize(r)` (shorter side to `r`, the longer to `int(r * long / short)`)
/// with an antialiased bilinear filter, then `CenterCrop(r)`.
fn resize_crop(img: &DynamicImage, r: u32) -> DynamicImage {
    let (w, h) = (img.width(), img.height());
    let (nw, nh) = if w <= h {
        (r, (r as u64 * h as u64 / w as u64) as u32)
    } else {
        ((r as u64 * w as u64 / h as u64) as u32, r)
    };
    let resized = if (nw, nh) == (w, h) {
        img.clone()
    } else {
        img.resize_exact(nw, nh, image::imageops::FilterType::Triangle)
    };
    if (nw, nh) == (r, r) {
        return resized;
    }
    let (left, top) = (half_even_div2(nw - r), half_even_div2(nh - r));
    resized.crop_imm(left, top, r, r)
}

/// Resize u8 `[N, C, H, W]` pixels (C = 1 or 3) to `r x r` as folder images are resized.
fn resize_pixels(pixels: &Tensor, r: u32) -> Result<Tensor> {
    let size = pixels.size();
    let (n, c, h, w) = (size[0] as usize, size[1], size[2] as u32, size[3] as u32);
    let per_in = c as usize * (h * w) as usize;
    let mut input = vec![0u8; n * per_in];
    pixels.copy_data(&mut input, n * per_in);
    let items: Vec<&[u8]> = input.chunks(per_in.max(1)).collect();
    let per_out = c as usize * (r * r) as usize;
    let mut out = vec![0u8; n * per_out];
    par_fill(&items, per_out, &mut out, |chw, slot| {
        let img = chw_to_image(chw, c, h, w);
        slot.copy_from_slice(&io::to_chw(&resize_crop(&img, r)));
        Ok(())
    })?;
    Ok(Tensor::from_slice(&out).view([n as i64, c, r as i64, r as i64]))
}

fn chw_to_image(chw: &[u8], c: i64, h: u32, w: u32) -> DynamicImage {
    let hw = (h * w) as usize;
    if c == 1 {
        return DynamicImage::ImageLuma8(
            image::GrayImage::from_raw(w, h, chw.to_vec()).expect("size"),
        );
    }
    let mut hwc = vec![0u8; 3 * hw];
    for i in 0..hw {
        for k in 0..3 {
            hwc[3 * i + k] = chw[k * hw + i];
        }
    }
    DynamicImage::ImageRgb8(image::RgbImage::from_raw(w, h, hwc).expect("size"))
}

/// u8 RGB `[N, 3, H, W]` to grayscale `[N, 1, H, W]` with PIL's `convert("L")` weights.
fn rgb_to_gray(pixels: &Tensor) -> Tensor {
    let p = pixels.to_kind(Kind::Int64);
    let l =
        (p.narrow(1, 0, 1) * 19595 + p.narrow(1, 1, 1) * 38470 + p.narrow(1, 2, 1) * 7471 + 0x8000)
            .divide_scalar_mode(65536, "floor");
    l.to_kind(Kind::Uint8)
}

/// Run `f(item, slot)` for every item on all cores; `out` is split into one `per_item`-byte slot
/// per item. Items are cut into contiguous chunks, so the error returned is always the one of the
/// first failing item in order, whatever the thread timing.
fn par_fill<T: Sync>(
    items: &[T],
    per_item: usize,
    out: &mut [u8],
    f: impl Fn(&T, &mut [u8]) -> Result<()> + Sync,
) -> Result<()> {
    if items.is_empty() {
        return Ok(());
    }
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(items.len());
    let chunk = items.len().div_ceil(threads);
    let f = &f;
    let results: Vec<Result<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .zip(out.chunks_mut((chunk * per_item).max(1)))
            .map(|(items, out)| {
                s.spawn(move || {
                    for (item, slot) in items.iter().zip(out.chunks_mut(per_item.max(1))) {
                        f(item, slot)?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    results.into_iter().collect()
}
