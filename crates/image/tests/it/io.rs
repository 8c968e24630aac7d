//! Picture I/O: grids, single images, masks, diffusers' quantisation and loss-curve plots.
//! Golden values from `data/fixtures/image_io_golden.py` (torch 2.11, numpy 2.4, Pillow 13).

use diffuse_image::io::{read_image, read_mask, save_grid, save_image, save_images, to_u8};
use diffuse_image::plot::save_loss_curve;
use diffuse_tensor::Error;
use image::{GrayImage, Luma, Rgb, RgbImage};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// `n` solid-colour images `[n, 3, h, w]` in [-1, 1]; image i has colour (20i, 255 - 20i, 128).
fn solid_batch(n: i64, h: i64, w: i64) -> Tensor {
    let colours: Vec<f32> = (0..n)
        .flat_map(|i| [20.0 * i as f32, 255.0 - 20.0 * i as f32, 128.0])
        .collect();
    let c = Tensor::from_slice(&colours).view([n, 3, 1, 1]) / 255.0 * 2.0 - 1.0;
    c.expand([n, 3, h, w], false).contiguous()
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn to_u8_quantises_exactly_as_diffusers() {
    // diffusers: (x / 2 + 0.5).clamp(0, 1), then numpy (x * 255).round().astype(uint8).
    let xs: [f32; 15] = [
        -2.0,
        -1.0,
        -0.996_078_43,
        -0.996_078_4,
        -0.5,
        -0.003_921_569,
        0.0,
        0.001_960_784_4,
        0.003_921_569,
        0.33,
        0.5,
        0.99,
        0.996_078_43,
        1.0,
        3.0,
    ];
    let golden: [u8; 15] = [
        0, 0, 0, 1, 64, 127, 128, 128, 128, 170, 191, 254, 254, 255, 255,
    ];
    let got = to_u8(&Tensor::from_slice(&xs));
    assert_eq!(got.kind(), Kind::Uint8);
    assert_eq!(Vec::<u8>::try_from(&got).unwrap(), golden);
    let nan = to_u8(&Tensor::from_slice(&[f32::NAN, f32::INFINITY]));
    assert_eq!(Vec::<u8>::try_from(&nan).unwrap(), [128, 255]);
}

#[test]
fn save_grid_png_has_torchvision_layout_and_exact_pixels() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/grid.png");
    let images = solid_batch(5, 8, 6);
    save_grid(&images, &path, None).unwrap();
    let img = image::open(&path).unwrap().to_rgb8();
    // ceil(sqrt(5)) = 3 per row, 2 rows, 2 px padding around and between.
    assert_eq!(img.dimensions(), (3 * (6 + 2) + 2, 2 * (8 + 2) + 2));
    assert_eq!(img.get_pixel(0, 0), &Rgb([0, 0, 0]));
    let u8s = to_u8(&images);
    for i in 0..5u32 {
        let (x, y) = (2 + (i % 3) * 8, 2 + (i / 3) * 10);
        let want = |c: i64| u8s.int64_value(&[i as i64, c, 0, 0]) as u8;
        let want = Rgb([want(0), want(1), want(2)]);
        assert_eq!(img.get_pixel(x, y), &want, "image {i}");
        assert_eq!(img.get_pixel(x + 5, y + 7), &want, "image {i}");
    }
    // The sixth cell is empty padding.
    assert_eq!(img.get_pixel(2 + 2 * 8, 2 + 10), &Rgb([0, 0, 0]));

    let wide = dir.path().join("wide.png");
    save_grid(&images, &wide, Some(5)).unwrap();
    assert_eq!(image::image_dimensions(&wide).unwrap(), (5 * 8 + 2, 12));
}

#[test]
fn save_grid_jpeg_and_grayscale() {
    let dir = tempfile::tempdir().unwrap();
    let jpg = dir.path().join("grid.JPG");
    save_grid(&solid_batch(4, 16, 16), &jpg, Some(2)).unwrap();
    let img = image::open(&jpg).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (2 * 18 + 2, 2 * 18 + 2));
    let p = img.get_pixel(10, 10);
    assert!(
        p[0] < 8 && p[1] > 247 && (p[2] as i32 - 128).abs() < 8,
        "{p:?}"
    );

    let gray = dir.path().join("gray.jpeg");
    save_grid(
        &Tensor::zeros([3, 1, 10, 10], (Kind::Float, Device::Cpu)),
        &gray,
        None,
    )
    .unwrap();
    let img = image::open(&gray).unwrap();
    assert_eq!(img.color(), image::ColorType::L8);
    assert_eq!((img.width(), img.height()), (2 * 12 + 2, 2 * 12 + 2));
}

#[test]
fn save_grid_refuses_other_extensions_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["grid.gif", "grid"] {
        let err = save_grid(&solid_batch(2, 4, 4), &dir.path().join(name), None).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
        assert!(err.to_string().contains(name), "{err}");
    }
    assert!(err_mentions_gif(&dir.path().join("x.GIF")));
    assert!(names_in(dir.path()).is_empty());
}

fn err_mentions_gif(path: &Path) -> bool {
    let err = save_grid(&solid_batch(1, 4, 4), path, None).unwrap_err();
    err.to_string().contains(".gif")
}

#[test]
fn save_images_then_read_image_round_trips_the_quantised_values() {
    let dir = tempfile::tempdir().unwrap();
    let x =
        Tensor::linspace(-1.0, 1.0, 2 * 3 * 5 * 7, (Kind::Float, Device::Cpu)).view([2, 3, 5, 7]);
    let paths = save_images(&x, &dir.path().join("samples"), "s").unwrap();
    assert_eq!(
        names_in(&dir.path().join("samples")),
        ["s00000.png", "s00001.png"]
    );
    for (i, path) in paths.iter().enumerate() {
        let back = read_image(path, 3).unwrap();
        assert_eq!(back.size(), [1, 3, 5, 7]);
        let want = to_u8(&x.get(i as i64)).to_kind(Kind::Float) / 255.0 * 2.0 - 1.0;
        assert!(back.get(0).equal(&want));
    }
}

#[test]
fn save_image_writes_one_unpadded_picture() {
    let dir = tempfile::tempdir().unwrap();
    let x = solid_batch(1, 5, 9);
    for (name, image) in [("a.png", x.shallow_clone()), ("b.jpeg", x.get(0))] {
        let path = dir.path().join(name);
        save_image(&image, &path).unwrap();
        assert_eq!(image::image_dimensions(&path).unwrap(), (9, 5));
    }
    let back = read_image(&dir.path().join("a.png"), 3).unwrap();
    assert!(back.equal(&(to_u8(&x).to_kind(Kind::Float) / 255.0 * 2.0 - 1.0)));
    let err = save_image(&solid_batch(2, 5, 9), &dir.path().join("c.png")).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    assert!(save_image(&x, &dir.path().join("d.bmp")).is_err());
    assert_eq!(names_in(dir.path()), ["a.png", "b.jpeg"]);
}

#[test]
fn read_image_converts_channels_with_pils_luma_and_white_background() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.png");
    // Pillow's convert("L") of these colours: 76, 150, 29, 130 (golden).
    let colours = [[255, 0, 0], [0, 255, 0], [0, 0, 255], [12, 200, 77]];
    RgbImage::from_fn(4, 1, |x, _| Rgb(colours[x as usize]))
        .save(&path)
        .unwrap();
    let gray = read_image(&path, 1).unwrap();
    assert_eq!(gray.size(), [1, 1, 1, 4]);
    let got = Vec::<u8>::try_from(to_u8(&gray).flatten(0, -1)).unwrap();
    assert_eq!(got, [76, 150, 29, 130]);
    let rgb = read_image(&path, 3).unwrap();
    assert_eq!(rgb.size(), [1, 3, 1, 4]);
    assert_eq!(rgb.double_value(&[0, 0, 0, 0]), 1.0);
    assert_eq!(rgb.double_value(&[0, 1, 0, 0]), -1.0);

    // A gray file read as RGB repeats the channel; transparency becomes white.
    let la = dir.path().join("la.png");
    image::GrayAlphaImage::from_fn(2, 1, |x, _| {
        image::LumaA([40, if x == 0 { 0 } else { 255 }])
    })
    .save(&la)
    .unwrap();
    let t = to_u8(&read_image(&la, 3).unwrap());
    assert_eq!(
        Vec::<u8>::try_from(t.flatten(0, -1)).unwrap(),
        [255, 40, 255, 40, 255, 40]
    );
    assert!(matches!(
        read_image(&la, 2).unwrap_err(),
        Error::InvalidArgument(_)
    ));
}

#[test]
fn read_image_of_a_corrupt_or_missing_file_is_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("broken.jpg");
    std::fs::write(&bad, [0xff, 0xd8, 0xff, 0xe0, 0, 16, b'J', b'F']).unwrap();
    let err = read_image(&bad, 3).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Format { .. }), "{msg}");
    assert!(
        msg.contains("broken.jpg") && msg.contains("cannot decode image"),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "{msg}");
    let missing = dir.path().join("missing.png");
    let err = read_image(&missing, 3).unwrap_err();
    assert!(
        matches!(err, Error::Io { .. }) && err.to_string().contains("missing.png"),
        "{err}"
    );
}

#[test]
fn masks_are_white_keep_black_generate_and_must_be_binary() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mask.png");
    // Near-black and near-white values (as a lossy save leaves them) are accepted.
    let values = [0u8, 5, 250, 255, 3, 252];
    GrayImage::from_fn(3, 2, |x, y| Luma([values[(y * 3 + x) as usize]]))
        .save(&path)
        .unwrap();
    let m = read_mask(&path).unwrap();
    assert_eq!(m.size(), [1, 1, 2, 3]);
    assert_eq!(m.kind(), Kind::Float);
    let got = Vec::<f32>::try_from(m.flatten(0, -1)).unwrap();
    assert_eq!(got, [0.0, 0.0, 1.0, 1.0, 0.0, 1.0]);

    let soft = dir.path().join("soft.png");
    GrayImage::from_fn(4, 1, |x, _| Luma([[0, 6, 128, 255][x as usize]]))
        .save(&soft)
        .unwrap();
    let err = read_mask(&soft).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("soft.png") && msg.contains("not binary: 2 of 4 pixels"),
        "{msg}"
    );

    // An RGB mask is judged after grayscale conversion: pure red is gray 76, so not binary.
    let red = dir.path().join("red.png");
    RgbImage::from_pixel(2, 2, Rgb([255, 0, 0]))
        .save(&red)
        .unwrap();
    assert!(read_mask(&red).is_err());
}

#[test]
fn loss_curves_are_pngs_of_the_stated_size() {
    let dir = tempfile::tempdir().unwrap();
    // Spans three decades: log axis; one NaN is left out.
    let mut points: Vec<(u64, f64)> = (0..2000u64)
        .map(|s| {
            (
                s * 5,
                2.0 * (-(s as f64) / 300.0).exp() + 0.001 * (1.0 + (s as f64).sin()),
            )
        })
        .collect();
    points[100].1 = f64::NAN;
    let path = dir.path().join("loss.png");
    save_loss_curve(&points, "Training loss: mnist", &path).unwrap();
    let img = image::open(&path).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (800, 500));
    let blue = img.pixels().filter(|p| p.0 == [31, 119, 180]).count();
    assert!(blue > 500, "smoothed line drawn: {blue} pixels");
    let dark = img.pixels().filter(|p| p.0 == [0, 0, 0]).count();
    assert!(dark > 1000, "axes and labels drawn: {dark} pixels");

    // Degenerate inputs still give a picture: one point, a flat line, nothing at all.
    for pts in [vec![(3u64, 0.5)], vec![(0, 1.0), (10, 1.0)], vec![]] {
        let p = dir.path().join("small.png");
        save_loss_curve(&pts, "x", &p).unwrap();
        assert_eq!(image::image_dimensions(&p).unwrap(), (800, 500));
    }
}
