//! Pictures <-> tensors: read PNG/JPEG files as `[1, C, H, W]` tensors in [-1, 1], read
//! inpainting masks, and write batches as grids or one file per image.
//!
//! Conventions shared with [`crate::data`]:
//! - pixels map to [-1, 1] as torchvision's `ToTensor` + `Normalize([0.5], [0.5])` do in
//!   diffusers' training scripts (`x / 255`, then `* 2 - 1`, bit for bit in f32), and back as
//!   diffusers' `DDPMPipeline` + `numpy_to_pil` do ([`to_u8`]);
//! - transparency is composited onto WHITE before anything else (a transparent emoji background
//!   becomes white, as a viewer shows it; PIL's `convert("RGB")` would instead expose whatever
//!   colour the transparent pixels happen to store, often black);
//! - grayscale is ITU-R 601-2 luma with PIL's `convert("L")` integer arithmetic, so a grayscale
//!   load equals PIL's.

use diffuse_tensor::{atomic, Error, Result};
use image::{DynamicImage, GrayImage, ImageEncoder, RgbImage};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// File extensions (lower case) read as images: PNG and JPEG.
pub const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// Whether `path` has a PNG or JPEG extension (case-insensitive).
pub fn is_image_path(path: &Path) -> bool {
    extension(path).is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str()))
}

fn extension(path: &Path) -> Option<String> {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
}

/// Decode a PNG or JPEG (format sniffed from the bytes, so a misnamed file still reads).
pub fn decode(path: &Path) -> Result<DynamicImage> {
    let reader = image::ImageReader::open(path)
        .map_err(|e| Error::io(path, e))?
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?;
    reader.decode().map_err(|e| match e {
        image::ImageError::IoError(io) => Error::io(path, io),
        other => Error::format(path, format!("cannot decode image: {}", one_line(&other))),
    })
}

/// Decoder messages sometimes span lines; a user error is one line.
fn one_line(e: &dyn std::fmt::Display) -> String {
    e.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Convert to 8-bit grayscale (`channels == 1`) or RGB (`channels == 3`), compositing any alpha
/// onto white. Panics on other channel counts (validate user input first).
pub fn convert_channels(img: &DynamicImage, channels: u32) -> DynamicImage {
    assert!(
        channels == 1 || channels == 3,
        "channels must be 1 or 3, got {channels}"
    );
    if img.color().has_alpha() {
        let rgba = img.to_rgba8();
        let (w, h) = rgba.dimensions();
        let mut rgb = RgbImage::new(w, h);
        for (dst, src) in rgb.pixels_mut().zip(rgba.pixels()) {
            let a = src[3] as u32;
            for c in 0..3 {
                // c*a + 255*(1-a) with rounding: "over" onto a white background.
                dst[c] = ((src[c] as u32 * a + 255 * (255 - a) + 127) / 255) as u8;
            }
        }
        return if channels == 3 {
            DynamicImage::ImageRgb8(rgb)
        } else {
            DynamicImage::ImageLuma8(luma_pil(&rgb))
        };
    }
    let gray_source = matches!(
        img.color(),
        image::ColorType::L8 | image::ColorType::L16 | image::ColorType::La8
    );
    match (channels, gray_source) {
        (1, true) => DynamicImage::ImageLuma8(img.to_luma8()),
        (1, false) => DynamicImage::ImageLuma8(luma_pil(&img.to_rgb8())),
        _ => DynamicImage::ImageRgb8(img.to_rgb8()),
    }
}

/// PIL's `convert("L")`: L = (R*19595 + G*38470 + B*7471 + 0x8000) >> 16 (ITU-R 601-2 in 16.16
/// fixed point). The image crate's own `to_luma8` uses Rec. 709 weights, which would make a
/// grayscale load differ from every PyTorch pipeline that reads with PIL.
fn luma_pil(rgb: &RgbImage) -> GrayImage {
    let (w, h) = rgb.dimensions();
    let mut out = GrayImage::new(w, h);
    for (dst, src) in out.pixels_mut().zip(rgb.pixels()) {
        let l = src[0] as u32 * 19595 + src[1] as u32 * 38470 + src[2] as u32 * 7471 + 0x8000;
        dst[0] = (l >> 16) as u8;
    }
    out
}

/// Interleaved `[H, W, C]` bytes of an 8-bit L or RGB image, rearranged to `[C, H, W]`.
pub(crate) fn to_chw(img: &DynamicImage) -> Vec<u8> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (c, hwc): (usize, &[u8]) = match img {
        DynamicImage::ImageLuma8(b) => (1, b.as_raw()),
        DynamicImage::ImageRgb8(b) => (3, b.as_raw()),
        _ => panic!("to_chw expects an L8 or RGB8 image"),
    };
    if c == 1 {
        return hwc.to_vec();
    }
    let mut out = vec![0u8; c * h * w];
    for (i, px) in hwc.chunks_exact(c).enumerate() {
        for (k, v) in px.iter().enumerate() {
            out[k * h * w + i] = *v;
        }
    }
    out
}

/// u8 pixels (any shape) to f32 in [-1, 1] exactly as torchvision's `ToTensor()` followed by
/// `Normalize([0.5], [0.5])`: `(x / 255 - 0.5) / 0.5`, which equals `x / 255 * 2 - 1` in f32.
pub fn u8_to_unit(pixels: &Tensor) -> Tensor {
    pixels.to_kind(Kind::Float) / 255.0 * 2.0 - 1.0
}

/// Read a PNG/JPEG as f32 `[1, C, H, W]` in [-1, 1] on the CPU; `channels` 1 (grayscale) or 3
/// (RGB) converts (alpha composited onto white). Unreadable or corrupt files give one clear error.
pub fn read_image(path: &Path, channels: i64) -> Result<Tensor> {
    if channels != 1 && channels != 3 {
        return Err(Error::InvalidArgument(format!(
            "channels must be 1 or 3, got {channels}"
        )));
    }
    let img = convert_channels(&decode(path)?, channels as u32);
    let (w, h) = (img.width() as i64, img.height() as i64);
    let chw = Tensor::from_slice(&to_chw(&img)).view([1, channels, h, w]);
    Ok(u8_to_unit(&chw))
}

/// Read an inpainting mask as f32 `[1, 1, H, W]`: 1 = known pixel to KEEP, 0 = pixel to GENERATE.
///
/// Colours follow diffusers' `RePaintPipeline` (its `mask_image`: white/1 keeps the original,
/// black/0 is inpainted) — note that diffusers' Stable Diffusion inpainting pipelines use the
/// opposite (white = repaint). The file is converted to grayscale (alpha composited onto white)
/// and must be binary: every pixel <= 5 (black) or >= 250 (white), so JPEG noise passes but a
/// soft or anti-aliased mask is refused rather than silently thresholded.
pub fn read_mask(path: &Path) -> Result<Tensor> {
    let img = convert_channels(&decode(path)?, 1);
    let gray = img.as_luma8().expect("converted to L8");
    let grey_pixels = gray.as_raw().iter().filter(|&&v| v > 5 && v < 250).count();
    if grey_pixels > 0 {
        return Err(Error::format(
            path,
            format!(
                "mask is not binary: {grey_pixels} of {} pixels lie between 6 and 249 \
                 (use black = generate, white = keep)",
                gray.as_raw().len()
            ),
        ));
    }
    let keep: Vec<f32> = gray
        .as_raw()
        .iter()
        .map(|&v| if v >= 128 { 1.0 } else { 0.0 })
        .collect();
    Ok(Tensor::from_slice(&keep).view([1, 1, gray.height() as i64, gray.width() as i64]))
}

/// Quantise `[.., C, H, W]` images in [-1, 1] to u8 exactly as diffusers' `DDPMPipeline` and
/// `numpy_to_pil`: `(x / 2 + 0.5).clamp(0, 1)`, then `(x * 255).round()` (half to even) in f32.
/// NaN counts as 0 (mid gray; numpy leaves that cast undefined). The result is on the input's device.
pub fn to_u8(images: &Tensor) -> Tensor {
    let x = images
        .to_kind(Kind::Float)
        .nan_to_num(0.0, None::<f64>, None::<f64>);
    let x = (x / 2.0 + 0.5).clamp(0.0, 1.0);
    (x * 255.0).round().to_kind(Kind::Uint8)
}

/// The encoder chosen by a file's extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Png,
    Jpeg,
}

fn format_for(path: &Path) -> Result<Format> {
    match extension(path).as_deref() {
        Some("png") => Ok(Format::Png),
        Some("jpg") | Some("jpeg") => Ok(Format::Jpeg),
        other => Err(Error::InvalidArgument(format!(
            "{}: cannot write images with extension {}: use .png, .jpg or .jpeg",
            path.display(),
            other.map_or_else(|| "(none)".to_owned(), |e| format!(".{e}"))
        ))),
    }
}

/// Quality of written JPEGs: high enough that samples look like samples, not like artefacts.
const JPEG_QUALITY: u8 = 95;

/// Encode interleaved `[H, W, C]` u8 bytes (C = 1 or 3) and write them atomically.
fn write_u8_image(path: &Path, hwc: &[u8], width: u32, height: u32, channels: i64) -> Result<()> {
    let format = format_for(path)?;
    let color = match channels {
        1 => image::ExtendedColorType::L8,
        3 => image::ExtendedColorType::Rgb8,
        c => {
            return Err(Error::InvalidArgument(format!(
                "{}: can only write 1- or 3-channel images, got {c} channels",
                path.display()
            )))
        }
    };
    let mut bytes = Vec::new();
    let encoded = match format {
        Format::Png => {
            image::codecs::png::PngEncoder::new(&mut bytes).write_image(hwc, width, height, color)
        }
        Format::Jpeg => {
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, JPEG_QUALITY)
                .write_image(hwc, width, height, color)
        }
    };
    encoded.map_err(|e| Error::format(path, format!("cannot encode image: {e}")))?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    atomic::write_atomic(path, |w| std::io::Write::write_all(w, &bytes))
}

fn check_batch(images: &Tensor) -> (i64, i64, i64, i64) {
    let size = images.size();
    assert!(
        size.len() == 4,
        "expected images [B, C, H, W], got shape {size:?}"
    );
    (size[0], size[1], size[2], size[3])
}

/// `[C, H, W]` u8 CPU tensor to interleaved `[H, W, C]` bytes.
fn hwc_bytes(chw: &Tensor) -> Vec<u8> {
    let hwc = chw.permute([1, 2, 0]).contiguous();
    let n = hwc.numel();
    let mut out = vec![0u8; n];
    hwc.copy_data(&mut out, n);
    out
}

/// Save a batch `[B, C, H, W]` in [-1, 1] (C = 1 or 3) as one grid picture, PNG or JPEG by the
/// extension (case-insensitive; any other extension is an `InvalidArgument` and writes nothing).
///
/// Layout as torchvision's `make_grid(padding=2, pad_value=0)`: `nrow` images per row (default
/// ceil(sqrt(B))), 2 px of black around and between images. Parent folders are created; the
/// file is written atomically.
pub fn save_grid(images: &Tensor, path: &Path, nrow: Option<usize>) -> Result<()> {
    format_for(path)?;
    let (b, c, h, w) = check_batch(images);
    if b == 0 {
        return Err(Error::InvalidArgument(format!(
            "{}: no images to write",
            path.display()
        )));
    }
    let ncol = match nrow {
        Some(0) => {
            return Err(Error::InvalidArgument(
                "images per row must be at least 1".into(),
            ))
        }
        Some(n) => (n as i64).min(b),
        None => (b as f64).sqrt().ceil() as i64,
    };
    let nrows = (b + ncol - 1) / ncol;
    const PAD: i64 = 2;
    let (gh, gw) = (nrows * (h + PAD) + PAD, ncol * (w + PAD) + PAD);
    let pixels = to_u8(images).to_device(Device::Cpu);
    let grid = Tensor::zeros([c, gh, gw], (Kind::Uint8, Device::Cpu));
    for i in 0..b {
        let (row, col) = (i / ncol, i % ncol);
        let (y, x) = (PAD + row * (h + PAD), PAD + col * (w + PAD));
        let mut cell = grid.narrow(1, y, h).narrow(2, x, w);
        cell.copy_(&pixels.get(i));
    }
    write_u8_image(path, &hwc_bytes(&grid), gw as u32, gh as u32, c)
}

/// Save one image, `[C, H, W]` or `[1, C, H, W]` in [-1, 1], as PNG or JPEG by the extension
/// (no padding; other extensions are an `InvalidArgument` and write nothing). Atomic; parent
/// folders are created.
pub fn save_image(image: &Tensor, path: &Path) -> Result<()> {
    format_for(path)?;
    let image = match image.dim() {
        3 => image.unsqueeze(0),
        _ => image.shallow_clone(),
    };
    let (b, c, h, w) = check_batch(&image);
    if b != 1 {
        return Err(Error::InvalidArgument(format!(
            "{}: save_image writes one image, got a batch of {b} (use a grid)",
            path.display()
        )));
    }
    let pixels = to_u8(&image).to_device(Device::Cpu);
    write_u8_image(path, &hwc_bytes(&pixels.get(0)), w as u32, h as u32, c)
}

/// Save each image of `[B, C, H, W]` in [-1, 1] as `dir/{prefix}{index:05}.png` (atomic each;
/// `dir` is created). Returns the paths written, in batch order.
pub fn save_images(images: &Tensor, dir: &Path, prefix: &str) -> Result<Vec<PathBuf>> {
    let (b, c, h, w) = check_batch(images);
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let pixels = to_u8(images).to_device(Device::Cpu);
    let mut paths = Vec::with_capacity(b as usize);
    for i in 0..b {
        let path = dir.join(format!("{prefix}{i:05}.png"));
        write_u8_image(&path, &hwc_bytes(&pixels.get(i)), w as u32, h as u32, c)?;
        paths.push(path);
    }
    Ok(paths)
}
