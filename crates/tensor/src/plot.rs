//! Plots as PNG pictures, drawn pixel by pixel (no plotting or font crates): loss curves (raw
//! losses as a faint line, an exponential moving average as a bold one), count histograms,
//! confusion matrices and line plots, with axes and labels written in a built-in 5x7 bitmap font
//! (letters, digits and a little punctuation).

use crate::{atomic, Error, Result};
use image::{ImageEncoder, Rgb, RgbImage};
use std::path::Path;

/// Width of the picture in pixels.
pub const WIDTH: u32 = 800;
/// Height of the picture in pixels.
pub const HEIGHT: u32 = 500;

// Plot area inside the picture: room on the left for y labels, below for x labels, above for the title.
const LEFT: i64 = 96;
const RIGHT: i64 = WIDTH as i64 - 24;
const TOP: i64 = 52;
const BOTTOM: i64 = HEIGHT as i64 - 56;

const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
const BLACK: Rgb<u8> = Rgb([0, 0, 0]);
const GRID: Rgb<u8> = Rgb([228, 228, 228]);
const RAW: Rgb<u8> = Rgb([176, 203, 230]);
// matplotlib's first colour (C0), the colour people expect of a loss curve.
const SMOOTH: Rgb<u8> = Rgb([31, 119, 180]);
const TEXT_GRAY: Rgb<u8> = Rgb([90, 90, 90]);

/// Draw a loss curve PNG of [`WIDTH`] x [`HEIGHT`] pixels (written atomically): x = step,
/// y = loss on a log scale when all losses are positive and span more than 10x, else linear.
///
/// Raw values are a faint line; the bold line is a debiased EMA (span = n / 50 points) taken in the
/// plotted space (of log10 losses on a log axis, so spikes do not drag it up). Non-finite losses
/// are left out. No points still gives a picture (empty axes saying "no data").
pub fn save_loss_curve(points: &[(u64, f64)], title: &str, path: &Path) -> Result<()> {
    let mut pts: Vec<(f64, f64)> = points
        .iter()
        .filter(|(_, y)| y.is_finite())
        .map(|&(x, y)| (x as f64, y))
        .collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));

    let mut img = RgbImage::from_pixel(WIDTH, HEIGHT, WHITE);
    let (ymin, ymax) = pts
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &(_, y)| {
            (lo.min(y), hi.max(y))
        });
    let log = !pts.is_empty() && ymin > 0.0 && ymax / ymin > 10.0;
    let fy = |y: f64| if log { y.log10() } else { y };

    let (x_lo, x_hi) = match (pts.first(), pts.last()) {
        (Some(a), Some(b)) if b.0 > a.0 => (a.0, b.0),
        (Some(a), _) => (a.0 - 1.0, a.0 + 1.0),
        _ => (0.0, 1.0),
    };
    let (y_lo, y_hi) = if pts.is_empty() {
        (0.0, 1.0)
    } else {
        let (lo, hi) = (fy(ymin), fy(ymax));
        let pad = if hi > lo {
            (hi - lo) * 0.05
        } else {
            (lo.abs() * 0.1).max(1e-6)
        };
        (lo - pad, hi + pad)
    };
    let px = |x: f64| LEFT as f64 + (x - x_lo) / (x_hi - x_lo) * (RIGHT - LEFT) as f64;
    let py = |v: f64| BOTTOM as f64 - (v - y_lo) / (y_hi - y_lo) * (BOTTOM - TOP) as f64;

    // Grid and tick labels first so the curves draw over them.
    let y_ticks = if log {
        log_ticks(y_lo, y_hi)
    } else {
        linear_ticks(y_lo, y_hi)
            .into_iter()
            .map(|(v, step)| (v, format_value(v, step)))
            .collect()
    };
    let y_ticks: Vec<(i64, String)> = y_ticks
        .into_iter()
        .map(|(v, label)| (py(v).round() as i64, label))
        .collect();
    let x_ticks: Vec<(i64, String)> = linear_ticks(x_lo, x_hi)
        .into_iter()
        .filter(|(v, _)| v.fract() == 0.0) // steps are whole numbers
        .map(|(v, step)| (px(v).round() as i64, format_count(v, step)))
        .collect();
    draw_axes(&mut img, &y_ticks, &x_ticks);
    let y_name = if log { "loss (log scale)" } else { "loss" };
    draw_names(&mut img, title, "step", y_name);

    if pts.is_empty() {
        draw_no_data(&mut img);
    } else {
        let screen: Vec<(f64, f64)> = pts.iter().map(|&(x, y)| (px(x), py(fy(y)))).collect();
        polyline(&mut img, &screen, 1, RAW);
        let smooth = ema(&pts.iter().map(|&(_, y)| fy(y)).collect::<Vec<_>>());
        let screen: Vec<(f64, f64)> = pts
            .iter()
            .zip(&smooth)
            .map(|(&(x, _), &s)| (px(x), py(s)))
            .collect();
        polyline(&mut img, &screen, 3, SMOOTH);
    }

    write_png(&img, path)
}

/// Grid lines, tick marks and tick labels of the plot area of a [`WIDTH`] x [`HEIGHT`] chart, at
/// the given screen rows (y ticks) and columns (x ticks), then the frame around the plot area.
fn draw_axes(img: &mut RgbImage, y_ticks: &[(i64, String)], x_ticks: &[(i64, String)]) {
    for (y, label) in y_ticks {
        hline(img, LEFT, RIGHT, *y, GRID);
        hline(img, LEFT - 5, LEFT, *y, BLACK);
        let w = text_width(label, 2);
        draw_text(img, label, LEFT - 9 - w, y - 7, 2, BLACK);
    }
    for (x, label) in x_ticks {
        vline(img, *x, TOP, BOTTOM, GRID);
        vline(img, *x, BOTTOM, BOTTOM + 5, BLACK);
        let w = text_width(label, 2);
        draw_text(img, label, x - w / 2, BOTTOM + 10, 2, BLACK);
    }
    frame(img, LEFT, RIGHT, TOP, BOTTOM);
}

/// The title of a [`WIDTH`] x [`HEIGHT`] chart centred on top (smaller or cut short when too
/// wide), the y axis name above the plot area's top-left corner and the x axis name under its
/// bottom-right corner.
fn draw_names(img: &mut RgbImage, title: &str, x_name: &str, y_name: &str) {
    let (text, scale) = fit_title(title, WIDTH as i64 - 16);
    let tw = text_width(&text, scale);
    draw_text(
        img,
        &text,
        (WIDTH as i64 - tw) / 2,
        8 + 7 * (3 - scale) / 2,
        scale,
        BLACK,
    );
    draw_text(img, y_name, LEFT, TOP - 18, 2, TEXT_GRAY);
    let w = text_width(x_name, 2);
    draw_text(img, x_name, RIGHT - w, HEIGHT as i64 - 22, 2, TEXT_GRAY);
}

/// "no data" in the middle of the plot area of a [`WIDTH`] x [`HEIGHT`] chart.
fn draw_no_data(img: &mut RgbImage) {
    let msg = "no data";
    let w = text_width(msg, 3);
    let (x, y) = ((LEFT + RIGHT - w) / 2, (TOP + BOTTOM) / 2 - 10);
    draw_text(img, msg, x, y, 3, TEXT_GRAY);
}

/// Encode `img` as PNG and write it atomically to `path`.
fn write_png(img: &RgbImage, path: &Path) -> Result<()> {
    let mut bytes = Vec::new();
    image::codecs::png::PngEncoder::new(&mut bytes)
        .write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|e| Error::format(path, format!("cannot encode PNG: {e}")))?;
    atomic::write_atomic(path, |w| std::io::Write::write_all(w, &bytes))
}

/// Debiased exponential moving average (as TensorBoard's smoothing) with span max(n / 50, 1).
fn ema(values: &[f64]) -> Vec<f64> {
    let span = (values.len() as f64 / 50.0).max(1.0);
    let decay = 1.0 - 2.0 / (span + 1.0);
    let (mut acc, mut weight) = (0.0, 0.0);
    values
        .iter()
        .map(|&v| {
            acc = decay * acc + (1.0 - decay) * v;
            weight = decay * weight + (1.0 - decay);
            acc / weight
        })
        .collect()
}

/// About six ticks at 1, 2 or 5 times a power of ten inside [lo, hi], each with the tick spacing.
fn linear_ticks(lo: f64, hi: f64) -> Vec<(f64, f64)> {
    let raw = (hi - lo) / 6.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|k| (k as f64 * step, step)).collect()
}

/// Ticks of a log10 axis spanning [lo, hi] (in log10 units): decades, plus 2x and 5x when the
/// axis spans less than 2.5 decades; positions in log10 units with their labels.
fn log_ticks(lo: f64, hi: f64) -> Vec<(f64, String)> {
    let (a, b) = (lo.floor() as i64, hi.ceil() as i64);
    let mults: &[f64] = if hi - lo < 2.5 {
        &[1.0, 2.0, 5.0]
    } else {
        &[1.0]
    };
    let mut out = Vec::new();
    for k in a..=b {
        for &m in mults {
            let v = m * 10f64.powi(k as i32);
            let p = v.log10();
            if p >= lo && p <= hi {
                out.push((p, format_power(m, k)));
            }
        }
    }
    out
}

fn format_power(m: f64, k: i64) -> String {
    if (-4..=4).contains(&k) {
        let v = m * 10f64.powi(k as i32);
        let decimals = (-k).max(0) as usize;
        format!("{v:.decimals$}")
    } else {
        format!("{m}e{k}")
    }
}

/// A tick value with as many decimals as the tick spacing needs.
fn format_value(v: f64, step: f64) -> String {
    let v = if v.abs() < step * 1e-9 { 0.0 } else { v };
    if v != 0.0 && (v.abs() >= 1e5 || v.abs() < 1e-4) {
        return format!("{v:.1e}");
    }
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    format!("{v:.decimals$}")
}

/// A step count, shortened with k / M suffixes when large.
fn format_count(v: f64, step: f64) -> String {
    for (unit, suffix) in [(1e6, "M"), (1e3, "k")] {
        if v.abs() >= unit && step >= unit / 10.0 {
            let decimals = if (step / unit).fract() == 0.0 { 0 } else { 1 };
            return format!("{:.decimals$}{suffix}", v / unit);
        }
    }
    format!("{v:.0}")
}

fn put(img: &mut RgbImage, x: i64, y: i64, c: Rgb<u8>) {
    if x >= 0 && y >= 0 && x < img.width() as i64 && y < img.height() as i64 {
        img.put_pixel(x as u32, y as u32, c);
    }
}

fn hline(img: &mut RgbImage, x0: i64, x1: i64, y: i64, c: Rgb<u8>) {
    for x in x0..=x1 {
        put(img, x, y, c);
    }
}

fn vline(img: &mut RgbImage, x: i64, y0: i64, y1: i64, c: Rgb<u8>) {
    for y in y0..=y1 {
        put(img, x, y, c);
    }
}

/// Connect screen points with a `thickness`-pixel line (Bresenham with a square brush), clipped
/// to the plot area.
fn polyline(img: &mut RgbImage, pts: &[(f64, f64)], thickness: i64, c: Rgb<u8>) {
    let mut brush = |x: i64, y: i64| {
        let r0 = -(thickness - 1) / 2;
        for dy in r0..r0 + thickness {
            for dx in r0..r0 + thickness {
                let (px, py) = (x + dx, y + dy);
                if (LEFT..=RIGHT).contains(&px) && (TOP..=BOTTOM).contains(&py) {
                    put(img, px, py, c);
                }
            }
        }
    };
    if pts.len() == 1 {
        let (x, y) = (pts[0].0.round() as i64, pts[0].1.round() as i64);
        for d in -2..=2 {
            brush(x + d, y);
            brush(x, y + d);
        }
        return;
    }
    for w in pts.windows(2) {
        let (mut x0, mut y0) = (w[0].0.round() as i64, w[0].1.round() as i64);
        let (x1, y1) = (w[1].0.round() as i64, w[1].1.round() as i64);
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let mut err = dx + dy;
        loop {
            brush(x0, y0);
            if x0 == x1 && y0 == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x0 += sx;
            }
            if e2 <= dx {
                err += dx;
                y0 += sy;
            }
        }
    }
}

/// Width in pixels of `text` drawn at `scale`.
fn text_width(text: &str, scale: i64) -> i64 {
    let n = text.chars().count() as i64;
    if n == 0 {
        0
    } else {
        (6 * n - 1) * scale
    }
}

/// Call `f(dx, dy)` for every lit pixel of `text` drawn at `scale`, (dx, dy) counted from the
/// text's top-left corner, each font pixel a `scale` x `scale` square.
fn text_pixels(text: &str, scale: i64, mut f: impl FnMut(i64, i64)) {
    for (i, ch) in text.chars().enumerate() {
        let gx = i as i64 * 6 * scale;
        for (row, bits) in glyph(ch).iter().enumerate() {
            for (col, b) in bits.bytes().enumerate() {
                if b == b'#' {
                    for dy in 0..scale {
                        for dx in 0..scale {
                            f(gx + col as i64 * scale + dx, row as i64 * scale + dy);
                        }
                    }
                }
            }
        }
    }
}

/// Draw `text` with its top-left corner at (x, y), each font pixel a `scale` x `scale` square.
fn draw_text(img: &mut RgbImage, text: &str, x: i64, y: i64, scale: i64, c: Rgb<u8>) {
    text_pixels(text, scale, |dx, dy| put(img, x + dx, y + dy, c));
}

/// Draw `text` turned a quarter turn anticlockwise (read from bottom to top, as a y axis name),
/// the bottom-left corner of the turned text at (x, y).
fn draw_text_up(img: &mut RgbImage, text: &str, x: i64, y: i64, scale: i64, c: Rgb<u8>) {
    text_pixels(text, scale, |dx, dy| put(img, x + dy, y - dx, c));
}

/// The 5x7 bitmap of a character (unknown characters as `?`). Lower case has its own glyphs, so
/// labels such as a data file's column names are drawn as written.
fn glyph(c: char) -> [&'static str; 7] {
    match c {
        ' ' => [
            ".....", ".....", ".....", ".....", ".....", ".....", ".....",
        ],
        '0' => [
            ".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###.",
        ],
        '1' => [
            "..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###.",
        ],
        '2' => [
            ".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####",
        ],
        '3' => [
            "#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###.",
        ],
        '4' => [
            "...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#.",
        ],
        '5' => [
            "#####", "#....", "####.", "....#", "....#", "#...#", ".###.",
        ],
        '6' => [
            "..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###.",
        ],
        '7' => [
            "#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#...",
        ],
        '8' => [
            ".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###.",
        ],
        '9' => [
            ".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##..",
        ],
        'A' => [
            ".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#",
        ],
        'B' => [
            "####.", "#...#", "#...#", "####.", "#...#", "#...#", "####.",
        ],
        'C' => [
            ".###.", "#...#", "#....", "#....", "#....", "#...#", ".###.",
        ],
        'D' => [
            "###..", "#..#.", "#...#", "#...#", "#...#", "#..#.", "###..",
        ],
        'E' => [
            "#####", "#....", "#....", "####.", "#....", "#....", "#####",
        ],
        'F' => [
            "#####", "#....", "#....", "####.", "#....", "#....", "#....",
        ],
        'G' => [
            ".###.", "#...#", "#....", "#.###", "#...#", "#...#", ".####",
        ],
        'H' => [
            "#...#", "#...#", "#...#", "#####", "#...#", "#...#", "#...#",
        ],
        'I' => [
            ".###.", "..#..", "..#..", "..#..", "..#..", "..#..", ".###.",
        ],
        'J' => [
            "..###", "...#.", "...#.", "...#.", "...#.", "#..#.", ".##..",
        ],
        'K' => [
            "#...#", "#..#.", "#.#..", "##...", "#.#..", "#..#.", "#...#",
        ],
        'L' => [
            "#....", "#....", "#....", "#....", "#....", "#....", "#####",
        ],
        'M' => [
            "#...#", "##.##", "#.#.#", "#.#.#", "#...#", "#...#", "#...#",
        ],
        'N' => [
            "#...#", "#...#", "##..#", "#.#.#", "#..##", "#...#", "#...#",
        ],
        'O' => [
            ".###.", "#...#", "#...#", "#...#", "#...#", "#...#", ".###.",
        ],
        'P' => [
            "####.", "#...#", "#...#", "####.", "#....", "#....", "#....",
        ],
        'Q' => [
            ".###.", "#...#", "#...#", "#...#", "#.#.#", "#..#.", ".##.#",
        ],
        'R' => [
            "####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#",
        ],
        'S' => [
            ".####", "#....", "#....", ".###.", "....#", "....#", "####.",
        ],
        'T' => [
            "#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#..",
        ],
        'U' => [
            "#...#", "#...#", "#...#", "#...#", "#...#", "#...#", ".###.",
        ],
        'V' => [
            "#...#", "#...#", "#...#", "#...#", "#...#", ".#.#.", "..#..",
        ],
        'W' => [
            "#...#", "#...#", "#...#", "#.#.#", "#.#.#", "#.#.#", ".#.#.",
        ],
        'X' => [
            "#...#", "#...#", ".#.#.", "..#..", ".#.#.", "#...#", "#...#",
        ],
        'Y' => [
            "#...#", "#...#", ".#.#.", "..#..", "..#..", "..#..", "..#..",
        ],
        'Z' => [
            "#####", "....#", "...#.", "..#..", ".#...", "#....", "#####",
        ],
        'a' => [
            ".....", ".....", ".###.", "....#", ".####", "#...#", ".####",
        ],
        'b' => [
            "#....", "#....", "#.##.", "##..#", "#...#", "#...#", "####.",
        ],
        'c' => [
            ".....", ".....", ".###.", "#....", "#....", "#...#", ".###.",
        ],
        'd' => [
            "....#", "....#", ".##.#", "#..##", "#...#", "#...#", ".####",
        ],
        'e' => [
            ".....", ".....", ".###.", "#...#", "#####", "#....", ".###.",
        ],
        'f' => [
            "..##.", ".#..#", ".#...", "###..", ".#...", ".#...", ".#...",
        ],
        'g' => [
            ".....", ".####", "#...#", "#...#", ".####", "....#", ".###.",
        ],
        'h' => [
            "#....", "#....", "#.##.", "##..#", "#...#", "#...#", "#...#",
        ],
        'i' => [
            "..#..", ".....", ".##..", "..#..", "..#..", "..#..", ".###.",
        ],
        'j' => [
            "...#.", ".....", "..##.", "...#.", "...#.", "#..#.", ".##..",
        ],
        'k' => [
            "#....", "#....", "#..#.", "#.#..", "##...", "#.#..", "#..#.",
        ],
        'l' => [
            ".##..", "..#..", "..#..", "..#..", "..#..", "..#..", ".###.",
        ],
        'm' => [
            ".....", ".....", "##.#.", "#.#.#", "#.#.#", "#...#", "#...#",
        ],
        'n' => [
            ".....", ".....", "#.##.", "##..#", "#...#", "#...#", "#...#",
        ],
        'o' => [
            ".....", ".....", ".###.", "#...#", "#...#", "#...#", ".###.",
        ],
        'p' => [
            ".....", "####.", "#...#", "#...#", "####.", "#....", "#....",
        ],
        'q' => [
            ".....", ".####", "#...#", "#...#", ".####", "....#", "....#",
        ],
        'r' => [
            ".....", ".....", "#.##.", "##..#", "#....", "#....", "#....",
        ],
        's' => [
            ".....", ".....", ".####", "#....", ".###.", "....#", "####.",
        ],
        't' => [
            ".#...", ".#...", "###..", ".#...", ".#...", ".#..#", "..##.",
        ],
        'u' => [
            ".....", ".....", "#...#", "#...#", "#...#", "#..##", ".##.#",
        ],
        'v' => [
            ".....", ".....", "#...#", "#...#", "#...#", ".#.#.", "..#..",
        ],
        'w' => [
            ".....", ".....", "#...#", "#...#", "#.#.#", "#.#.#", ".#.#.",
        ],
        'x' => [
            ".....", ".....", "#...#", ".#.#.", "..#..", ".#.#.", "#...#",
        ],
        'y' => [
            ".....", "#...#", "#...#", "#...#", ".####", "....#", ".###.",
        ],
        'z' => [
            ".....", ".....", "#####", "...#.", "..#..", ".#...", "#####",
        ],
        '.' => [
            ".....", ".....", ".....", ".....", ".....", ".##..", ".##..",
        ],
        ',' => [
            ".....", ".....", ".....", ".....", ".##..", "..#..", ".#...",
        ],
        '-' => [
            ".....", ".....", ".....", ".###.", ".....", ".....", ".....",
        ],
        '+' => [
            ".....", "..#..", "..#..", "#####", "..#..", "..#..", ".....",
        ],
        ':' => [
            ".....", ".##..", ".##..", ".....", ".##..", ".##..", ".....",
        ],
        '/' => [
            ".....", "....#", "...#.", "..#..", ".#...", "#....", ".....",
        ],
        '(' => [
            "...#.", "..#..", ".#...", ".#...", ".#...", "..#..", "...#.",
        ],
        ')' => [
            ".#...", "..#..", "...#.", "...#.", "...#.", "..#..", ".#...",
        ],
        '[' => [
            ".###.", ".#...", ".#...", ".#...", ".#...", ".#...", ".###.",
        ],
        ']' => [
            ".###.", "...#.", "...#.", "...#.", "...#.", "...#.", ".###.",
        ],
        '_' => [
            ".....", ".....", ".....", ".....", ".....", ".....", "#####",
        ],
        '=' => [
            ".....", ".....", "#####", ".....", "#####", ".....", ".....",
        ],
        '%' => [
            "##...", "##..#", "...#.", "..#..", ".#...", "#..##", "...##",
        ],
        '\'' => [
            "..#..", "..#..", ".#...", ".....", ".....", ".....", ".....",
        ],
        '"' => [
            ".#.#.", ".#.#.", ".....", ".....", ".....", ".....", ".....",
        ],
        '!' => [
            "..#..", "..#..", "..#..", "..#..", "..#..", ".....", "..#..",
        ],
        '#' => [
            ".#.#.", ".#.#.", "#####", ".#.#.", "#####", ".#.#.", ".#.#.",
        ],
        '*' => [
            ".....", "..#..", "#.#.#", ".###.", "#.#.#", "..#..", ".....",
        ],
        '<' => [
            "...#.", "..#..", ".#...", "#....", ".#...", "..#..", "...#.",
        ],
        '>' => [
            ".#...", "..#..", "...#.", "....#", "...#.", "..#..", ".#...",
        ],
        '@' => [
            ".###.", "#...#", "#.###", "#.#.#", "#.###", "#....", ".###.",
        ],
        '&' => [
            ".##..", "#..#.", "#.#..", ".#...", "#.#.#", "#..#.", ".##.#",
        ],
        _ => [
            ".###.", "#...#", "....#", "...#.", "..#..", ".....", "..#..",
        ],
    }
}

/// Width of one panel of [`save_count_histograms`] in pixels.
pub const PANEL_WIDTH: u32 = 320;
/// Height of one panel of [`save_count_histograms`] in pixels.
pub const PANEL_HEIGHT: u32 = 240;
/// Height of the title and legend strip above the panels of [`save_count_histograms`].
pub const HEADER_HEIGHT: u32 = 60;
/// Panels per row of [`save_count_histograms`].
pub const PANELS_PER_ROW: usize = 4;
/// The most panels [`save_count_histograms`] draws; further columns are left out.
pub const MAX_PANELS: usize = 16;
/// The most bins of one histogram.
const MAX_BINS: f64 = 60.0;
/// Share of the values that fixes the right end of a panel's range (the rest go into the last bin).
const RANGE_QUANTILE: f64 = 0.995;

const BAR: Rgb<u8> = Rgb([200, 200, 200]);
const BAR_EDGE: Rgb<u8> = Rgb([150, 150, 150]);
const GENERATED: Rgb<u8> = SMOOTH;

/// One panel of [`save_count_histograms`]: the values of one column of count data.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistogramPanel {
    /// Panel title, e.g. the column name and its earth mover's distance ("a  EMD 0.42").
    pub title: String,
    /// The reference values (held-out data), drawn as light gray filled bars.
    pub reference: Vec<f64>,
    /// The generated values, drawn as a bold coloured outline (step line) over the same bins.
    pub generated: Vec<f64>,
}

/// Histograms of count data, one panel per column, written atomically as a PNG.
///
/// Layout: panels in a grid of up to [`PANELS_PER_ROW`] per row, each [`PANEL_WIDTH`] x
/// [`PANEL_HEIGHT`] pixels, under a [`HEADER_HEIGHT`]-pixel strip holding `title` and a legend
/// (gray box "DATA", coloured line "GENERATED"). At most [`MAX_PANELS`] panels are drawn; with
/// more, the title says "first 16 of N columns". No panels gives a one-panel picture saying
/// "no data" (not an error).
///
/// Bins (shared by both sets of a panel): the panel's range runs from 0 to the 99.5th percentile
/// of both sets together rounded up to a whole number (at least 1). With at most 60 whole numbers
/// in it, each whole number has its own bin; otherwise the bins are 60 or fewer of equal
/// whole-number width (ceil(values / 60), so counts never alias into uneven bins). Values above
/// the range go into the last bin, whose tick then reads e.g. "120+"; negative values go into the
/// first. Non-finite values are ignored. Bar heights are each set's fraction of its own values,
/// so sets of different sizes compare; the y axis runs from 0 to 1.05 x the largest fraction in
/// the panel. An empty set draws just the other one.
pub fn save_count_histograms(panels: &[HistogramPanel], title: &str, path: &Path) -> Result<()> {
    let shown = &panels[..panels.len().min(MAX_PANELS)];
    let cols = shown.len().clamp(1, PANELS_PER_ROW);
    let rows = shown.len().div_ceil(PANELS_PER_ROW).max(1);
    let width = PANEL_WIDTH * cols as u32;
    let height = PANEL_HEIGHT * rows as u32 + HEADER_HEIGHT;
    let mut img = RgbImage::from_pixel(width, height, WHITE);

    let title = if panels.len() > MAX_PANELS {
        format!("{title} - first {MAX_PANELS} of {} columns", panels.len())
    } else {
        title.to_string()
    };
    let (text, scale) = fit_text(&title, width as i64 - 16);
    let w = text_width(&text, scale);
    draw_text(&mut img, &text, (width as i64 - w) / 2, 8, scale, BLACK);

    if shown.is_empty() {
        let msg = "no data";
        let w = text_width(msg, 3);
        let mid = HEADER_HEIGHT as i64 + PANEL_HEIGHT as i64 / 2;
        draw_text(
            &mut img,
            msg,
            (width as i64 - w) / 2,
            mid - 10,
            3,
            TEXT_GRAY,
        );
        return write_png(&img, path);
    }

    draw_legend(&mut img, width as i64);
    // One scale for every panel title, so they read alike.
    let title_scale = if shown
        .iter()
        .all(|p| text_width(&p.title, 2) <= PANEL_WIDTH as i64 - 12)
    {
        2
    } else {
        1
    };
    for (i, panel) in shown.iter().enumerate() {
        let ox = (i % PANELS_PER_ROW) as i64 * PANEL_WIDTH as i64;
        let oy = HEADER_HEIGHT as i64 + (i / PANELS_PER_ROW) as i64 * PANEL_HEIGHT as i64;
        draw_histogram_panel(&mut img, panel, ox, oy, title_scale);
    }
    write_png(&img, path)
}

/// The legend strip: a gray box "DATA" and a coloured line "GENERATED", centred.
fn draw_legend(img: &mut RgbImage, width: i64) {
    let (scale, y) = (2, 36);
    let (box_w, line_w, gap, sep) = (18, 26, 6, 28);
    let (data, generated) = ("DATA", "GENERATED");
    let total =
        box_w + gap + text_width(data, scale) + sep + line_w + gap + text_width(generated, scale);
    let mut x = (width - total) / 2;
    let all = (0, 0, width, i64::MAX);
    fill_rect(img, x, y + 1, x + box_w - 1, y + 12, BAR, all);
    rect_outline(img, x, y + 1, x + box_w - 1, y + 12, BAR_EDGE);
    x += box_w + gap;
    draw_text(img, data, x, y, scale, BLACK);
    x += text_width(data, scale) + sep;
    fill_rect(img, x, y + 6, x + line_w - 1, y + 8, GENERATED, all);
    x += line_w + gap;
    draw_text(img, generated, x, y, scale, BLACK);
}

/// The bins of one panel: `count` bins of `width` whole numbers each, bin `k` holding the values
/// that round to `k * width ..= (k + 1) * width - 1` (the last one also everything above).
#[derive(Debug, Clone, PartialEq)]
struct CountBins {
    width: f64,
    count: usize,
    /// Each set's fraction of its finite values per bin; empty when the set has none.
    reference: Vec<f64>,
    generated: Vec<f64>,
    /// Whether some value lies above the range (in the last bin).
    overflow: bool,
}

impl CountBins {
    fn new(reference: &[f64], generated: &[f64]) -> Self {
        let mut all: Vec<f64> = reference
            .iter()
            .chain(generated)
            .copied()
            .filter(|v| v.is_finite())
            .collect();
        let top = if all.is_empty() {
            1.0
        } else {
            // Nearest-rank percentile, found in linear time.
            let rank = ((all.len() as f64 * RANGE_QUANTILE).ceil() as usize).clamp(1, all.len());
            let (_, p, _) = all.select_nth_unstable_by(rank - 1, f64::total_cmp);
            p.ceil().clamp(1.0, 1e15)
        };
        drop(all);
        let values = top + 1.0; // the whole numbers 0 ..= top
        let width = if values <= MAX_BINS {
            1.0
        } else {
            (values / MAX_BINS).ceil()
        };
        let count = (values / width).ceil() as usize;
        let end = count as f64 * width; // first whole number past the last bin
        let mut overflow = false;
        let mut fractions = |set: &[f64]| {
            let mut counts = vec![0u64; count];
            let mut n = 0u64;
            for &v in set.iter().filter(|v| v.is_finite()) {
                let x = v + 0.5;
                overflow |= x >= end;
                let k = ((x / width).floor().max(0.0) as usize).min(count - 1);
                counts[k] += 1;
                n += 1;
            }
            if n == 0 {
                return Vec::new();
            }
            counts
                .iter()
                .map(|&c| c as f64 / n as f64)
                .collect::<Vec<f64>>()
        };
        let reference = fractions(reference);
        let generated = fractions(generated);
        CountBins {
            width,
            count,
            reference,
            generated,
            overflow,
        }
    }
}

/// The plot area (left, right, top, bottom, inclusive) of a panel whose cell starts at (ox, oy).
fn panel_area(ox: i64, oy: i64) -> (i64, i64, i64, i64) {
    (
        ox + 46,
        ox + PANEL_WIDTH as i64 - 14,
        oy + 32,
        oy + PANEL_HEIGHT as i64 - 26,
    )
}

fn draw_histogram_panel(img: &mut RgbImage, panel: &HistogramPanel, ox: i64, oy: i64, ts: i64) {
    let (l, r, t, b) = panel_area(ox, oy);
    let (text, scale) = fit_text(&panel.title, PANEL_WIDTH as i64 - 12);
    let scale = scale.min(ts);
    let tw = text_width(&text, scale);
    let tx = ((l + r - tw) / 2).max(ox + 6);
    let ty = t - 10 - 7 * scale;
    draw_text(img, &text, tx, ty, scale, BLACK);

    let bins = CountBins::new(&panel.reference, &panel.generated);
    if bins.reference.is_empty() && bins.generated.is_empty() {
        let msg = "no data";
        let w = text_width(msg, 2);
        draw_text(img, msg, (l + r - w) / 2, (t + b) / 2 - 7, 2, TEXT_GRAY);
        frame(img, l, r, t, b);
        return;
    }

    let peak = bins
        .reference
        .iter()
        .chain(&bins.generated)
        .fold(0.0f64, |m, &f| m.max(f));
    let y_hi = if peak > 0.0 { peak * 1.05 } else { 1.0 };
    let py = |f: f64| (b as f64 - f / y_hi * (b - t) as f64).round() as i64;
    let n = bins.count as f64;
    let bx = |k: usize| (l as f64 + k as f64 / n * (r - l) as f64).round() as i64;
    let clip = (l, t, r, b);

    // Y grid and labels.
    for (v, step) in linear_ticks(0.0, y_hi) {
        let y = py(v);
        if v > 0.0 {
            hline(img, l, r, y, GRID);
        }
        hline(img, l - 4, l, y, BLACK);
        let label = format_value(v, step);
        let w = text_width(&label, 1);
        draw_text(img, &label, l - 7 - w, y - 3, 1, BLACK);
    }

    // X ticks: whole numbers at their place in the bins; the last bin's tick says "N+" when it
    // also holds values above the range.
    let end = bins.count as f64 * bins.width;
    let vx = |v: f64| (l as f64 + (v + 0.5) / end * (r - l) as f64).round() as i64;
    let mut ticks: Vec<(i64, String)> = Vec::new();
    let overflow_tick = bins.overflow.then(|| {
        let last = (bins.count - 1) as f64 * bins.width;
        let x = ((bx(bins.count - 1) + bx(bins.count)) as f64 / 2.0).round() as i64;
        (x, format!("{}+", format_count(last, 1.0)))
    });
    for (v, step) in linear_ticks(0.0, end - 1.0) {
        if v.fract() != 0.0 {
            continue;
        }
        let label = format_count(v, step.max(1.0));
        let x = vx(v);
        if let Some((ox_, ol)) = &overflow_tick {
            let room = (text_width(&label, 1) + text_width(ol, 1)) / 2 + 6;
            if (x - ox_).abs() < room {
                continue;
            }
        }
        ticks.push((x, label));
    }
    ticks.extend(overflow_tick);
    for (x, label) in &ticks {
        vline(img, *x, b, b + 4, BLACK);
        let w = text_width(label, 1);
        draw_text(img, label, x - w / 2, b + 8, 1, BLACK);
    }

    // Reference: filled gray bars, a pixel apart when they are wide enough.
    for (k, &f) in bins.reference.iter().enumerate() {
        if f <= 0.0 {
            continue;
        }
        let (mut x0, x1) = (bx(k), bx(k + 1) - 1);
        if x1 - x0 >= 3 {
            x0 += 1;
        }
        let y = py(f).min(b - 1);
        fill_rect(img, x0, y, x1, b, BAR, clip);
    }

    // Generated: a 2-pixel step outline from the baseline, over every bin, back to the baseline.
    if !bins.generated.is_empty() {
        let mut prev = b;
        for (k, &f) in bins.generated.iter().enumerate() {
            let (x0, x1) = (bx(k), bx(k + 1));
            let y = py(f);
            fill_rect(
                img,
                x0 - 1,
                prev.min(y) - 1,
                x0,
                prev.max(y),
                GENERATED,
                clip,
            );
            fill_rect(img, x0 - 1, y - 1, x1, y, GENERATED, clip);
            prev = y;
        }
        fill_rect(img, r - 1, prev.min(b) - 1, r, b, GENERATED, clip);
    }

    frame(img, l, r, t, b);
}

/// Black rectangle outline of the plot area.
fn frame(img: &mut RgbImage, l: i64, r: i64, t: i64, b: i64) {
    rect_outline(img, l, t, r, b, BLACK);
}

fn rect_outline(img: &mut RgbImage, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb<u8>) {
    hline(img, x0, x1, y0, c);
    hline(img, x0, x1, y1, c);
    vline(img, x0, y0, y1, c);
    vline(img, x1, y0, y1, c);
}

/// Fill the rectangle (x0, y0)-(x1, y1), corners inclusive, clipped to `clip` = (left, top,
/// right, bottom), inclusive.
fn fill_rect(
    img: &mut RgbImage,
    x0: i64,
    y0: i64,
    x1: i64,
    y1: i64,
    c: Rgb<u8>,
    clip: (i64, i64, i64, i64),
) {
    let (cl, ct, cr, cb) = clip;
    for y in y0.max(ct)..=y1.min(cb) {
        hline(img, x0.max(cl), x1.min(cr), y, c);
    }
}

/// `text` and the scale (2, else 1) at which it fits in `max_w` pixels; when even scale 1 is too
/// wide, the text is cut short and ends in "...".
fn fit_text(text: &str, max_w: i64) -> (String, i64) {
    for scale in [2, 1] {
        if text_width(text, scale) <= max_w {
            return (text.to_string(), scale);
        }
    }
    let fit = ((max_w + 1) / 6).max(3) as usize;
    let cut: String = text.chars().take(fit - 3).collect();
    (format!("{cut}..."), 1)
}

/// Side of one cell of [`save_confusion_matrix`] in pixels.
pub const CELL: u32 = 72;

/// matplotlib's "Blues" colour map at its nine anchors, from 0 (near white) to 1 (dark blue).
const BLUES: [[u8; 3]; 9] = [
    [247, 251, 255],
    [222, 235, 247],
    [198, 219, 239],
    [158, 202, 225],
    [107, 174, 214],
    [66, 146, 198],
    [33, 113, 181],
    [8, 81, 156],
    [8, 48, 107],
];
/// A cell of a row with no counts.
const EMPTY_CELL: Rgb<u8> = Rgb([217, 217, 217]);
/// The widest row label of a confusion matrix, in pixels; wider ones are drawn smaller or cut.
const MAX_ROW_LABEL: i64 = 240;
/// The longest turned column label of a confusion matrix, in pixels.
const MAX_COL_LABEL: i64 = 160;

/// "Blues" at `f` in [0, 1], linear between its anchors.
fn blues(f: f64) -> Rgb<u8> {
    let t = f.clamp(0.0, 1.0) * (BLUES.len() - 1) as f64;
    let k = (t.floor() as usize).min(BLUES.len() - 2);
    let u = t - k as f64;
    Rgb(std::array::from_fn(|i| {
        (f64::from(BLUES[k][i]) * (1.0 - u) + f64::from(BLUES[k + 1][i]) * u).round() as u8
    }))
}

/// Perceived brightness of a colour, 0 to 255 (ITU-R BT.601 weights).
fn luma(c: Rgb<u8>) -> f64 {
    let [r, g, b] = c.0.map(f64::from);
    0.299 * r + 0.587 * g + 0.114 * b
}

/// A confusion matrix as a PNG, written atomically: one row per requested (true) class, one
/// column per predicted class (there may be more columns than rows, e.g. an "other" column).
///
/// Each cell is shaded from white to dark blue (matplotlib's "Blues") by its share of its row's
/// counts and holds that share as a whole percent, in white on dark cells and black on light ones;
/// a row with no counts is gray with "-" in every cell. Row labels stand on the left under the
/// caption "REQUESTED", column labels on top under "PREDICTED", `title` above all. Cells are
/// [`CELL`] pixels square, so the picture grows with the matrix; labels too wide for their place
/// are drawn smaller or cut short. An empty matrix, rows of unequal length, or label counts that
/// do not match the matrix's rows and columns are [`Error::InvalidArgument`].
pub fn save_confusion_matrix(
    matrix: &[Vec<u64>],
    row_labels: &[String],
    col_labels: &[String],
    title: &str,
    path: &Path,
) -> Result<()> {
    let invalid = |msg: String| Err(Error::InvalidArgument(format!("confusion matrix: {msg}")));
    let (rows, cols) = (matrix.len(), matrix.first().map_or(0, Vec::len));
    if rows == 0 || cols == 0 {
        return invalid(format!("no cells ({rows} rows, {cols} columns)"));
    }
    if let Some((i, row)) = matrix.iter().enumerate().find(|(_, r)| r.len() != cols) {
        return invalid(format!("row {i} has {} cells, row 0 has {cols}", row.len()));
    }
    if row_labels.len() != rows || col_labels.len() != cols {
        return invalid(format!(
            "{} row and {} column labels for {rows} rows and {cols} columns",
            row_labels.len(),
            col_labels.len()
        ));
    }

    let lay = MatrixLayout::new(rows, cols, row_labels, col_labels, title);
    let mut img = RgbImage::from_pixel(lay.width as u32, lay.height as u32, WHITE);
    let cell = CELL as i64;
    let (left, top) = (lay.left, lay.top);
    let (right, bottom) = (left + cols as i64 * cell, top + rows as i64 * cell);
    let all = (0, 0, lay.width, lay.height);

    let tw = text_width(&lay.title, lay.title_scale);
    let ty = 8 + 7 * (3 - lay.title_scale) / 2;
    draw_text(
        &mut img,
        &lay.title,
        (lay.width - tw) / 2,
        ty,
        lay.title_scale,
        BLACK,
    );
    let caption = "PREDICTED";
    let w = text_width(caption, 2);
    draw_text(&mut img, caption, (left + right - w) / 2, 40, 2, TEXT_GRAY);
    let caption = "REQUESTED";
    let cs = if text_width(caption, 2) <= bottom - top {
        2
    } else {
        1
    };
    let w = text_width(caption, cs);
    draw_text_up(
        &mut img,
        caption,
        lay.caption_x,
        (top + bottom + w) / 2,
        cs,
        TEXT_GRAY,
    );

    for (c, label) in lay.col_labels.iter().enumerate() {
        let (s, x0) = (lay.col_scale, left + c as i64 * cell);
        if lay.col_turned {
            draw_text_up(&mut img, label, x0 + (cell - 7 * s) / 2, top - 9, s, BLACK);
        } else {
            let w = text_width(label, s);
            draw_text(&mut img, label, x0 + (cell - w) / 2, top - 22, s, BLACK);
        }
    }
    for (r, (label, counts)) in lay.row_labels.iter().zip(matrix).enumerate() {
        let y0 = top + r as i64 * cell;
        let s = lay.row_scale;
        let w = text_width(label, s);
        draw_text(
            &mut img,
            label,
            left - 10 - w,
            y0 + (cell - 7 * s) / 2,
            s,
            BLACK,
        );
        let total: f64 = counts.iter().map(|&v| v as f64).sum();
        for (c, &v) in counts.iter().enumerate() {
            let x0 = left + c as i64 * cell;
            let (fill, text, ink) = if total > 0.0 {
                let f = v as f64 / total;
                let fill = blues(f);
                let ink = if luma(fill) < 140.0 { WHITE } else { BLACK };
                (fill, format!("{:.0}%", f * 100.0), ink)
            } else {
                (EMPTY_CELL, "-".to_string(), TEXT_GRAY)
            };
            fill_rect(&mut img, x0, y0, x0 + cell - 1, y0 + cell - 1, fill, all);
            let w = text_width(&text, 2);
            draw_text(
                &mut img,
                &text,
                x0 + (cell - w) / 2,
                y0 + (cell - 14) / 2,
                2,
                ink,
            );
        }
    }
    // White lines between the cells, a black frame just outside them.
    for c in 1..cols as i64 {
        vline(&mut img, left + c * cell, top, bottom - 1, WHITE);
    }
    for r in 1..rows as i64 {
        hline(&mut img, left, right - 1, top + r * cell, WHITE);
    }
    rect_outline(&mut img, left - 1, top - 1, right, bottom, BLACK);
    write_png(&img, path)
}

/// Where [`save_confusion_matrix`] puts things: the picture's size, the top-left corner of the
/// cells, the x of the turned "REQUESTED" caption, and the labels as drawn with their scales
/// (column labels turned to read upwards when one of them is too wide for its cell).
struct MatrixLayout {
    width: i64,
    height: i64,
    left: i64,
    top: i64,
    caption_x: i64,
    title: String,
    title_scale: i64,
    row_labels: Vec<String>,
    row_scale: i64,
    col_labels: Vec<String>,
    col_scale: i64,
    col_turned: bool,
}

impl MatrixLayout {
    fn new(
        rows: usize,
        cols: usize,
        row_labels: &[String],
        col_labels: &[String],
        title: &str,
    ) -> Self {
        let margin = 16;
        let (row_labels, row_scale) = fit_all(row_labels, MAX_ROW_LABEL);
        let flat = col_labels
            .iter()
            .all(|l| text_width(l, 2) <= CELL as i64 - 6);
        let (col_labels, col_scale) = if flat {
            (col_labels.to_vec(), 2)
        } else {
            fit_all(col_labels, MAX_COL_LABEL)
        };
        let col_h = if flat {
            7 * col_scale
        } else {
            let widest = col_labels.iter().map(|l| text_width(l, col_scale)).max();
            widest.unwrap_or(0)
        };
        let label_w = row_labels.iter().map(|l| text_width(l, row_scale)).max();
        // Caption (14 px) and a gap, the row labels, a gap, then the cells.
        let left = margin + 14 + 12 + label_w.unwrap_or(0) + 10;
        let cells_w = cols as i64 * CELL as i64;
        let natural = left + cells_w + margin;
        let width = natural.max((text_width(title, 3) + 32).min(1200)).max(240);
        let shift = (width - natural) / 2;
        let (title, title_scale) = fit_title(title, width - 16);
        // Title (8..29), "PREDICTED" (40..54), column labels (from 62), then the cells.
        let top = 62 + col_h + 8;
        MatrixLayout {
            width,
            height: top + rows as i64 * CELL as i64 + margin + 4,
            left: left + shift,
            top,
            caption_x: margin + shift,
            title,
            title_scale,
            row_labels,
            row_scale,
            col_labels,
            col_scale,
            col_turned: !flat,
        }
    }
}

/// matplotlib's "tab10" colours in its order (C0 blue, C1 orange, C2 green, C3 red, ...); series
/// `i` of [`save_line_plot`] is drawn in colour `i % 10`.
const TAB10: [Rgb<u8>; 10] = [
    Rgb([31, 119, 180]),
    Rgb([255, 127, 14]),
    Rgb([44, 160, 44]),
    Rgb([214, 39, 40]),
    Rgb([148, 103, 189]),
    Rgb([140, 86, 75]),
    Rgb([227, 119, 194]),
    Rgb([127, 127, 127]),
    Rgb([188, 189, 34]),
    Rgb([23, 190, 207]),
];
/// Opacity of a band of [`save_line_plot`] over what lies under it.
const BAND_ALPHA: f64 = 0.25;

/// One curve of [`save_line_plot`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LineSeries {
    /// The text of the curve in the legend.
    pub label: String,
    /// The (x, y) points, joined in the given order; non-finite points are left out.
    pub points: Vec<(f64, f64)>,
    /// An optional shaded band of (x, lo, hi), e.g. the 25-75% quantiles at each x, drawn under
    /// the lines as a light tint of the curve's colour (joined in order of x; non-finite triples
    /// are left out).
    pub band: Option<Vec<(f64, f64, f64)>>,
}

/// Curves on linear axes as a PNG of [`WIDTH`] x [`HEIGHT`] pixels, written atomically.
///
/// The axes cover every finite point and band value with 5% to spare on each side, with grid
/// lines at round tick values (as [`save_loss_curve`]'s), `x_label` under the x axis and `y_label`
/// above the y axis; negative values are fine. Each series is drawn in its own colour
/// (matplotlib's tab10 order: blue, orange, green, red, ...) as a 2-pixel line with a dot at each
/// point, over its band, if any, as a light tint of the same colour; a legend box lists the labels
/// with their colours, in the corner of the plot area where it hides the least. No series, or no
/// finite values at all, gives a picture saying "no data" (not an error).
pub fn save_line_plot(
    series: &[LineSeries],
    title: &str,
    x_label: &str,
    y_label: &str,
    path: &Path,
) -> Result<()> {
    let lines: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|s| {
            let finite = |p: &&(f64, f64)| p.0.is_finite() && p.1.is_finite();
            s.points.iter().filter(finite).copied().collect()
        })
        .collect();
    let bands: Vec<Vec<(f64, f64, f64)>> = series
        .iter()
        .map(|s| {
            let finite = |b: &&(f64, f64, f64)| [b.0, b.1, b.2].iter().all(|v| v.is_finite());
            let mut band: Vec<_> = s.band.iter().flatten().filter(finite).copied().collect();
            band.sort_by(|a, b| a.0.total_cmp(&b.0));
            band
        })
        .collect();
    let xs = lines.iter().flatten().map(|p| p.0);
    let xs = xs.chain(bands.iter().flatten().map(|b| b.0));
    let ys = lines.iter().flatten().map(|p| p.1);
    let ys = ys.chain(bands.iter().flatten().flat_map(|b| [b.1, b.2]));
    let (x_range, y_range) = (padded_range(xs), padded_range(ys));
    let (x_lo, x_hi) = x_range.unwrap_or((0.0, 1.0));
    let (y_lo, y_hi) = y_range.unwrap_or((0.0, 1.0));
    // Screen positions, kept near the picture so that wild values cannot make long lines.
    let px = |x: f64| {
        (LEFT as f64 + (x - x_lo) / (x_hi - x_lo) * (RIGHT - LEFT) as f64).clamp(-1e4, 1e4)
    };
    let py = |y: f64| {
        (BOTTOM as f64 - (y - y_lo) / (y_hi - y_lo) * (BOTTOM - TOP) as f64).clamp(-1e4, 1e4)
    };

    let mut img = RgbImage::from_pixel(WIDTH, HEIGHT, WHITE);
    let ticks = |lo: f64, hi: f64, screen: &dyn Fn(f64) -> f64| -> Vec<(i64, String)> {
        linear_ticks(lo, hi)
            .into_iter()
            .map(|(v, step)| (screen(v).round() as i64, format_value(v, step)))
            .collect()
    };
    draw_axes(&mut img, &ticks(y_lo, y_hi, &py), &ticks(x_lo, x_hi, &px));
    draw_names(&mut img, title, x_label, y_label);
    if x_range.is_none() {
        draw_no_data(&mut img);
        return write_png(&img, path);
    }

    // Bands under every line, blended so that overlapping ones both show.
    for (i, band) in bands.iter().enumerate() {
        let screen: Vec<(f64, f64, f64)> = band
            .iter()
            .map(|&(x, lo, hi)| (px(x), py(lo), py(hi)))
            .collect();
        fill_band(&mut img, &screen, TAB10[i % TAB10.len()]);
    }
    for (i, line) in lines.iter().enumerate() {
        let c = TAB10[i % TAB10.len()];
        let screen: Vec<(f64, f64)> = line.iter().map(|&(x, y)| (px(x), py(y))).collect();
        if screen.len() >= 2 {
            polyline(&mut img, &screen, 2, c);
        }
        for &(x, y) in &screen {
            dot(&mut img, x.round() as i64, y.round() as i64, c);
        }
    }
    let labels: Vec<&str> = series.iter().map(|s| s.label.as_str()).collect();
    draw_series_legend(&mut img, &labels);
    write_png(&img, path)
}

/// The smallest and largest of `values` widened by 5% of their span on each side (by 10% of
/// their size, or 1 at zero, when they are all equal); `None` when there are none.
fn padded_range(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if lo > hi {
        return None;
    }
    let pad = if hi > lo {
        (hi - lo) * 0.05
    } else if lo == 0.0 {
        1.0
    } else {
        lo.abs() * 0.1
    };
    Some((lo - pad, hi + pad))
}

/// Tint the region between the lower and upper edges of a band of screen points (x, lo, hi),
/// sorted by x, inside the plot area; each pixel once, `c` blended over it at [`BAND_ALPHA`].
fn fill_band(img: &mut RgbImage, pts: &[(f64, f64, f64)], c: Rgb<u8>) {
    let (Some(first), Some(last)) = (pts.first(), pts.last()) else {
        return;
    };
    let (x0, x1) = (first.0.round() as i64, last.0.round() as i64);
    // A band of one x is a 3-pixel column.
    let (x0, x1) = if x0 == x1 { (x0 - 1, x1 + 1) } else { (x0, x1) };
    let mut k = 0;
    for x in x0.max(LEFT + 1)..=x1.min(RIGHT - 1) {
        let xf = x as f64;
        while k + 2 < pts.len() && pts[k + 1].0 < xf {
            k += 1;
        }
        let (a, b) = (pts[k], pts[(k + 1).min(pts.len() - 1)]);
        let t = if b.0 > a.0 {
            ((xf - a.0) / (b.0 - a.0)).clamp(0.0, 1.0)
        } else {
            0.0
        };
        let lo = a.1 + (b.1 - a.1) * t;
        let hi = a.2 + (b.2 - a.2) * t;
        let (y0, y1) = (lo.min(hi).round() as i64, lo.max(hi).round() as i64);
        for y in y0.max(TOP + 1)..=y1.min(BOTTOM - 1) {
            let under = *img.get_pixel(x as u32, y as u32);
            let mix = |i: usize| {
                (f64::from(under[i]) * (1.0 - BAND_ALPHA) + f64::from(c[i]) * BAND_ALPHA).round()
                    as u8
            };
            img.put_pixel(x as u32, y as u32, Rgb([mix(0), mix(1), mix(2)]));
        }
    }
}

/// A round dot of radius 3 centred on (x, y), clipped to the plot area.
fn dot(img: &mut RgbImage, x: i64, y: i64, c: Rgb<u8>) {
    for dy in -3..=3i64 {
        for dx in -3..=3i64 {
            let (px, py) = (x + dx, y + dy);
            let inside = (LEFT..=RIGHT).contains(&px) && (TOP..=BOTTOM).contains(&py);
            if dx * dx + dy * dy <= 10 && inside {
                put(img, px, py, c);
            }
        }
    }
}

/// The legend of [`save_line_plot`]: a white box with a line and dot in each series' colour and
/// its label, in the corner of the plot area whose box covers the fewest drawn pixels (top right
/// first when that is a tie).
fn draw_series_legend(img: &mut RgbImage, labels: &[&str]) {
    if labels.is_empty() {
        return;
    }
    let (labels, scale) = fit_all(labels, (RIGHT - LEFT) / 2);
    let (pad, swatch, gap, row_h) = (8, 24, 8, 7 * scale + 8);
    let text_w = labels
        .iter()
        .map(|l| text_width(l, scale))
        .max()
        .unwrap_or(0);
    let (w, h) = (
        pad + swatch + gap + text_w + pad,
        row_h * labels.len() as i64 + pad,
    );
    let inset = 10;
    let corners = [
        (RIGHT - inset - w, TOP + inset),
        (LEFT + inset, TOP + inset),
        (RIGHT - inset - w, BOTTOM - inset - h),
        (LEFT + inset, BOTTOM - inset - h),
    ];
    let covered = |(x0, y0): (i64, i64)| {
        let mut n = 0;
        for y in y0.max(0)..(y0 + h).min(HEIGHT as i64) {
            for x in x0.max(0)..(x0 + w).min(WIDTH as i64) {
                let p = *img.get_pixel(x as u32, y as u32);
                n += usize::from(p != WHITE && p != GRID);
            }
        }
        n
    };
    let (x0, y0) = *corners
        .iter()
        .min_by_key(|c| covered(**c))
        .unwrap_or(&corners[0]);
    let all = (0, 0, WIDTH as i64, HEIGHT as i64);
    fill_rect(img, x0, y0, x0 + w - 1, y0 + h - 1, WHITE, all);
    rect_outline(img, x0, y0, x0 + w - 1, y0 + h - 1, BAR_EDGE);
    for (i, label) in labels.iter().enumerate() {
        let c = TAB10[i % TAB10.len()];
        let y = y0 + pad + i as i64 * row_h;
        let mid = y + 7 * scale / 2;
        fill_rect(img, x0 + pad, mid - 1, x0 + pad + swatch - 1, mid, c, all);
        dot(img, x0 + pad + swatch / 2, mid, c);
        draw_text(img, label, x0 + pad + swatch + gap, y, scale, BLACK);
    }
}

/// A title and its scale: 3 when it fits in `max_w` pixels, else as [`fit_text`].
fn fit_title(title: &str, max_w: i64) -> (String, i64) {
    if text_width(title, 3) <= max_w {
        (title.to_string(), 3)
    } else {
        fit_text(title, max_w)
    }
}

/// `texts` fitted to `max_w` pixels at one shared scale: 2 when they all fit at 2, else 1 (those
/// still too wide cut short, ending in "...").
fn fit_all<S: AsRef<str>>(texts: &[S], max_w: i64) -> (Vec<String>, i64) {
    let scale = if texts.iter().all(|t| text_width(t.as_ref(), 2) <= max_w) {
        2
    } else {
        1
    };
    let fitted = texts
        .iter()
        .map(|t| match t.as_ref() {
            t if text_width(t, scale) <= max_w => t.to_string(),
            t => fit_text(t, max_w).0,
        })
        .collect();
    (fitted, scale)
}

/// Redraw `RUN_DIR/loss.png` from the run's `metrics.jsonl` (nothing when it has fewer than two
/// records), as every training command does after its checkpoints and preview samples.
pub fn write_loss_curve(run_dir: &Path) -> Result<()> {
    let records = crate::metrics::read_metrics(&run_dir.join("metrics.jsonl"))?;
    let points: Vec<(u64, f64)> = records
        .iter()
        .filter_map(|r| Some((r.get("step")?.as_u64()?, r.get("loss")?.as_f64()?)))
        .collect();
    if points.len() >= 2 {
        save_loss_curve(&points, "training loss", &run_dir.join("loss.png"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letters_keep_their_case() {
        let unknown = glyph('\u{2603}');
        for c in ('a'..='z').chain('A'..='Z').chain('0'..='9') {
            assert_ne!(glyph(c), unknown, "{c:?} has no glyph");
            assert!(glyph(c).iter().all(|row| row.len() == 5));
        }
        for (lower, upper) in ('a'..='z').zip('A'..='Z') {
            assert_ne!(glyph(lower), glyph(upper), "{lower:?} drawn as {upper:?}");
        }
    }

    #[test]
    fn ticks_are_round_numbers_inside_the_range() {
        let t = linear_ticks(0.03, 0.98);
        let labels: Vec<String> = t.iter().map(|&(v, s)| format_value(v, s)).collect();
        assert_eq!(labels, ["0.2", "0.4", "0.6", "0.8"]);
        let l = log_ticks(-2.5, 0.3);
        let labels: Vec<&str> = l.iter().map(|(_, s)| s.as_str()).collect();
        assert!(
            labels.contains(&"0.01") && labels.contains(&"1"),
            "{labels:?}"
        );
        assert_eq!(format_count(12000.0, 2000.0), "12k");
        assert_eq!(format_count(1500.0, 500.0), "1.5k");
        assert_eq!(format_count(300.0, 100.0), "300");
        assert_eq!(format_power(1.0, -7), "1e-7");
    }

    /// Deterministic count-like data: a geometric-ish variable with the given mean.
    fn counts(n: usize, mean: f64, seed: u64) -> Vec<f64> {
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let u = ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
                (-u.ln() * mean).floor()
            })
            .collect()
    }

    fn panels(n: usize) -> Vec<HistogramPanel> {
        (0..n)
            .map(|i| HistogramPanel {
                title: format!("col_{i}  EMD 0.{i}"),
                reference: counts(2000, 1.0 + 3.0 * i as f64, i as u64),
                generated: counts(1500, 1.2 + 3.0 * i as f64, 100 + i as u64),
            })
            .collect()
    }

    #[test]
    fn count_histograms_have_the_grid_size() {
        let dir = tempfile::tempdir().unwrap();
        for (n, w, h) in [
            (0, 320, 300),
            (1, 320, 300),
            (3, 960, 300),
            (5, 1280, 540),
            (20, 1280, 4 * 240 + 60),
        ] {
            let path = dir.path().join(format!("h{n}.png"));
            save_count_histograms(&panels(n), "count histograms", &path).unwrap();
            let img = image::open(&path).unwrap();
            assert_eq!((img.width(), img.height()), (w, h), "{n} panels");
        }
        if let Some(example) = std::env::var_os("DIFFUSE_HISTOGRAM_EXAMPLE") {
            let mut p = panels(6);
            p[1].reference.extend([500.0, 900.0, f64::NAN]);
            p[2].generated.clear();
            p[3].reference.clear();
            p[4].reference = counts(3000, 40.0, 7);
            p[4].generated = counts(3000, 30.0, 8);
            p[5].title = "all empty".into();
            p[5].reference.clear();
            p[5].generated.clear();
            save_count_histograms(
                &p,
                "synthetic counts: data vs generated",
                Path::new(&example),
            )
            .unwrap();
        }
    }

    #[test]
    fn count_histogram_bars_sit_in_their_bins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bars.png");
        let panel = HistogramPanel {
            title: "a".into(),
            reference: vec![0.0; 100],
            generated: vec![5.0; 40],
        };
        save_count_histograms(&[panel], "bars", &path).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        let (l, r, t, b) = panel_area(0, HEADER_HEIGHT as i64);
        let mid = (l + r) / 2;
        let (mut gray, mut line) = (Vec::new(), Vec::new());
        for y in t..=b {
            for x in l..=r {
                let c = *img.get_pixel(x as u32, y as u32);
                if c == BAR {
                    gray.push((x, y));
                }
                // Line pixels well above the baseline (the outline also runs along it).
                if c == GENERATED && y < b - 5 {
                    line.push((x, y));
                }
            }
        }
        // Six bins (0..=5): the gray bar fills the first sixth up to near the top, the outline's
        // tall part is the last sixth.
        assert!(!gray.is_empty() && !line.is_empty());
        assert!(
            gray.iter().all(|&(x, _)| x < l + (r - l) / 6 + 1),
            "{gray:?}"
        );
        assert!(gray.iter().any(|&(_, y)| y < t + 20));
        assert!(line.iter().all(|&(x, _)| x > mid), "{line:?}");
        assert!(line.iter().any(|&(x, y)| x > r - 20 && y < t + 20));
    }

    #[test]
    fn count_bins_whole_numbers_and_wide_bins() {
        let bins = CountBins::new(&[0.0, 1.0, 1.0, 3.0], &[]);
        assert_eq!((bins.width, bins.count, bins.overflow), (1.0, 4, false));
        assert_eq!(bins.reference, [0.25, 0.5, 0.0, 0.25]);
        assert!(bins.generated.is_empty());
        // All zeros: the range is still 0..=1.
        let bins = CountBins::new(&[0.0; 5], &[0.0; 3]);
        assert_eq!(
            (bins.count, bins.reference[0], bins.generated[0]),
            (2, 1.0, 1.0)
        );
        // 0..=999: 17 whole numbers per bin, 59 bins.
        let values: Vec<f64> = (0..1000).map(f64::from).collect();
        let bins = CountBins::new(&values, &values);
        assert_eq!((bins.width, bins.count, bins.overflow), (17.0, 59, false));
        assert!(bins.count as f64 <= MAX_BINS);
        assert!((bins.reference.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn count_histograms_put_large_values_in_the_last_bin() {
        let mut reference: Vec<f64> = (0..1000).map(|i| f64::from(i % 10)).collect();
        reference.extend([1e9, 1e300, f64::MAX, -3.0]);
        let generated = vec![2.0, 4.0, 1e12];
        let bins = CountBins::new(&reference, &generated);
        assert_eq!((bins.width, bins.count), (1.0, 10));
        assert!(bins.overflow);
        assert!((bins.reference[9] - 103.0 / 1004.0).abs() < 1e-12);
        assert!((bins.reference[0] - 101.0 / 1004.0).abs() < 1e-12);
        assert!((bins.generated[9] - 1.0 / 3.0).abs() < 1e-12);
        // Huge values throughout: wide bins, no panic.
        let huge: Vec<f64> = (0..100).map(|i| f64::from(i) * 1e17).collect();
        let bins = CountBins::new(&huge, &[f64::MAX]);
        assert!(bins.count >= 1 && bins.count as f64 <= MAX_BINS && bins.overflow);
        let dir = tempfile::tempdir().unwrap();
        let panels = [
            HistogramPanel {
                title: "large".into(),
                reference,
                generated,
            },
            HistogramPanel {
                title: "huge".into(),
                reference: huge,
                generated: vec![f64::MAX],
            },
        ];
        save_count_histograms(&panels, "large", &dir.path().join("large.png")).unwrap();
    }

    #[test]
    fn count_histograms_ignore_non_finite_values() {
        let clean = [0.0, 1.0, 2.0, 2.0];
        let dirty = [
            f64::NAN,
            0.0,
            f64::INFINITY,
            1.0,
            2.0,
            f64::NEG_INFINITY,
            2.0,
        ];
        assert_eq!(CountBins::new(&dirty, &[]), CountBins::new(&clean, &[]));
        let only_nan = CountBins::new(&[f64::NAN], &[f64::NAN, f64::INFINITY]);
        assert!(only_nan.reference.is_empty() && only_nan.generated.is_empty());
        let dir = tempfile::tempdir().unwrap();
        let panels = [
            HistogramPanel {
                title: "nan".into(),
                reference: dirty.to_vec(),
                generated: vec![f64::NAN; 3],
            },
            HistogramPanel {
                title: "all nan".into(),
                reference: vec![f64::NAN],
                generated: vec![],
            },
        ];
        save_count_histograms(&panels, "nan", &dir.path().join("nan.png")).unwrap();
    }

    #[test]
    fn count_histograms_to_a_missing_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no").join("such").join("dir.png");
        assert!(save_count_histograms(&panels(2), "x", &path).is_err());
        assert!(save_count_histograms(&[], "x", &path).is_err());
    }

    #[test]
    fn count_histograms_of_a_million_values_are_quick() {
        let dir = tempfile::tempdir().unwrap();
        let panels: Vec<HistogramPanel> = (0..4)
            .map(|i| HistogramPanel {
                title: format!("c{i}"),
                reference: counts(125_000, 5.0 * (i + 1) as f64, i),
                generated: counts(125_000, 6.0 * (i + 1) as f64, 10 + i),
            })
            .collect();
        let start = std::time::Instant::now();
        save_count_histograms(&panels, "million", &dir.path().join("m.png")).unwrap();
        let elapsed = start.elapsed();
        eprintln!("1e6 values: {elapsed:?}");
        // Generous: a shared, unoptimised test build; only catches accidental quadratic work.
        assert!(elapsed.as_secs_f64() < 20.0, "{elapsed:?}");
    }

    fn strings(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    /// A pixel near the top-left corner of cell (r, c), away from its text.
    fn cell_colour(img: &RgbImage, lay: &MatrixLayout, r: usize, c: usize) -> Rgb<u8> {
        let x = lay.left + c as i64 * CELL as i64 + 5;
        let y = lay.top + r as i64 * CELL as i64 + 5;
        *img.get_pixel(x as u32, y as u32)
    }

    /// Whether the middle of cell (r, c) (where its text is) has a pixel of colour `ink`.
    fn cell_has_ink(img: &RgbImage, lay: &MatrixLayout, r: usize, c: usize, ink: Rgb<u8>) -> bool {
        let (x0, y0) = (
            lay.left + c as i64 * CELL as i64,
            lay.top + r as i64 * CELL as i64,
        );
        (y0 + 24..y0 + 48)
            .any(|y| (x0 + 8..x0 + 64).any(|x| *img.get_pixel(x as u32, y as u32) == ink))
    }

    #[test]
    fn confusion_matrix_grows_with_its_cells() {
        let dir = tempfile::tempdir().unwrap();
        let rows = strings(&["kick", "snare", "hihat", "tom", "cymbal"]);
        let cols6 = strings(&["kick", "snare", "hihat", "tom", "cymbal", "other"]);
        let mut sizes = Vec::new();
        for (n_rows, n_cols) in [(5, 6), (5, 5), (4, 6), (1, 1)] {
            let m = vec![vec![1u64; n_cols]; n_rows];
            let path = dir.path().join(format!("m{n_rows}x{n_cols}.png"));
            save_confusion_matrix(&m, &rows[..n_rows], &cols6[..n_cols], "drums", &path).unwrap();
            let img = image::open(&path).unwrap();
            let lay = MatrixLayout::new(n_rows, n_cols, &rows[..n_rows], &cols6[..n_cols], "drums");
            assert_eq!(
                (img.width() as i64, img.height() as i64),
                (lay.width, lay.height)
            );
            sizes.push((img.width() as i64, img.height() as i64));
        }
        // One more column is one cell wider, one more row one cell taller.
        assert_eq!(sizes[0].0 - sizes[1].0, CELL as i64);
        assert_eq!(sizes[0].1 - sizes[2].1, CELL as i64);
        // "cymbal" is too wide for a cell at scale 2: the column labels are turned.
        let lay = MatrixLayout::new(5, 6, &rows, &cols6, "drums");
        assert!(lay.col_turned && lay.col_scale == 2);
        assert_eq!(lay.top, 62 + text_width("cymbal", 2) + 8);
        assert_eq!(sizes[0].1, lay.top + 5 * CELL as i64 + 20);
        let short = strings(&["kick", "snare"]);
        let lay = MatrixLayout::new(2, 2, &short, &short, "drums");
        assert!(!lay.col_turned && lay.top == 84);
        // Even one cell leaves room for the captions.
        assert!(sizes[3].0 >= 240);
    }

    #[test]
    fn confusion_matrix_shades_each_cell_by_its_share_of_the_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.png");
        let m = vec![vec![3, 1], vec![1, 1], vec![50, 50], vec![0, 0]];
        let (rows, cols) = (strings(&["a", "b", "c", "d"]), strings(&["x", "y"]));
        save_confusion_matrix(&m, &rows, &cols, "shares", &path).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        let lay = MatrixLayout::new(4, 2, &rows, &cols, "shares");
        let cell = |r, c| cell_colour(&img, &lay, r, c);
        // 75% is darker than 25%; 50% lies between; shares, not counts, set the shade.
        assert_eq!(cell(0, 0), blues(0.75));
        assert_eq!(cell(0, 1), blues(0.25));
        assert!(luma(cell(0, 0)) < luma(cell(1, 0)) && luma(cell(1, 0)) < luma(cell(0, 1)));
        assert_eq!(cell(1, 0), cell(1, 1));
        assert_eq!(cell(1, 0), cell(2, 0));
        // White text on the dark cell, black on the light one, gray "-" on the empty row.
        assert!(cell_has_ink(&img, &lay, 0, 0, WHITE));
        assert!(!cell_has_ink(&img, &lay, 0, 0, BLACK));
        assert!(cell_has_ink(&img, &lay, 0, 1, BLACK));
        assert_eq!((cell(3, 0), cell(3, 1)), (EMPTY_CELL, EMPTY_CELL));
        assert!(cell_has_ink(&img, &lay, 3, 1, TEXT_GRAY));
        // The colour map runs from near white to dark blue.
        assert!(luma(blues(0.0)) > 245.0 && luma(blues(1.0)) < 60.0);
        assert!((0..20).all(|k| luma(blues(k as f64 / 20.0)) > luma(blues((k + 1) as f64 / 20.0))));
    }

    #[test]
    fn confusion_matrix_of_an_identity_is_darkest_on_the_diagonal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id.png");
        // Four requested classes, five predicted ones (the last "other").
        let m: Vec<Vec<u64>> = (0..4)
            .map(|r| (0..5).map(|c| if r == c { 7 } else { 0 }).collect())
            .collect();
        let rows = strings(&["kick", "snare", "closed hihat", "tom"]);
        let cols = strings(&["kick", "snare", "closed hihat", "tom", "other"]);
        save_confusion_matrix(&m, &rows, &cols, "identity", &path).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        let lay = MatrixLayout::new(4, 5, &rows, &cols, "identity");
        let darkest = (0..4)
            .flat_map(|r| (0..5).map(move |c| (r, c)))
            .map(|(r, c)| luma(cell_colour(&img, &lay, r, c)))
            .fold(f64::INFINITY, f64::min);
        for r in 0..4 {
            for c in 0..5 {
                let l = luma(cell_colour(&img, &lay, r, c));
                if r == c {
                    assert_eq!(l, darkest);
                    assert_eq!(cell_colour(&img, &lay, r, c), blues(1.0));
                } else {
                    assert!(l > darkest + 100.0, "({r}, {c})");
                }
            }
        }
    }

    #[test]
    fn confusion_matrix_of_the_wrong_shape_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.png");
        let (two, three) = (strings(&["a", "b"]), strings(&["a", "b", "c"]));
        let rejected = |m: &[Vec<u64>], rows: &[String], cols: &[String], want: &str| {
            match save_confusion_matrix(m, rows, cols, "bad", &path) {
                Err(Error::InvalidArgument(msg)) => assert!(msg.contains(want), "{msg}"),
                other => panic!("{m:?}: {other:?}"),
            }
        };
        rejected(&[], &[], &[], "no cells");
        rejected(&[vec![]], &two[..1], &[], "no cells");
        rejected(&[vec![1, 2], vec![3]], &two, &two, "row 1 has 1 cells");
        let want = "2 row and 2 column labels for 3 rows";
        rejected(&[vec![1, 2], vec![3, 4], vec![5, 6]], &two, &two, want);
        let want = "2 row and 3 column labels for 2 rows and 2 columns";
        rejected(&[vec![1, 2], vec![3, 4]], &two, &three, want);
        assert!(!path.exists());
        // A good matrix into a missing directory is an I/O error.
        let missing = dir.path().join("no").join("m.png");
        assert!(save_confusion_matrix(&[vec![1]], &two[..1], &two[..1], "x", &missing).is_err());
    }

    /// Rows of column `x` whose pixel is exactly `c`.
    fn rows_of(img: &RgbImage, x: i64, c: Rgb<u8>) -> Vec<i64> {
        (0..HEIGHT as i64)
            .filter(|&y| *img.get_pixel(x as u32, y as u32) == c)
            .collect()
    }

    #[test]
    fn line_plot_draws_each_curve_at_its_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lines.png");
        let xs = 1..=8;
        let series = [
            LineSeries {
                label: "real".into(),
                points: xs.clone().map(|x| (f64::from(x), -10.0)).collect(),
                band: None,
            },
            LineSeries {
                label: "generated".into(),
                points: xs.clone().map(|x| (f64::from(x), -40.0)).collect(),
                band: Some(xs.map(|x| (f64::from(x), -45.0, -35.0)).collect()),
            },
        ];
        save_line_plot(&series, "decay", "eighth", "dB", &path).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (WIDTH, HEIGHT));
        // y spans -45..-10 (band included) with 5% to spare: -46.75..-8.25; x spans 0.65..8.35.
        let py = |v: f64| BOTTOM as f64 - (v + 46.75) / 38.5 * (BOTTOM - TOP) as f64;
        let px = |v: f64| LEFT as f64 + (v - 0.65) / 7.7 * (RIGHT - LEFT) as f64;
        let x = px(4.5).round() as i64; // between two dots
        let (blue, orange) = (rows_of(&img, x, TAB10[0]), rows_of(&img, x, TAB10[1]));
        assert_eq!(blue.len(), 2, "{blue:?}");
        assert_eq!(orange.len(), 2, "{orange:?}");
        assert!(
            blue.iter().all(|&y| (y as f64 - py(-10.0)).abs() <= 1.5),
            "{blue:?}"
        );
        assert!(
            orange.iter().all(|&y| (y as f64 - py(-40.0)).abs() <= 1.5),
            "{orange:?}"
        );
        // The band: an orange tint between -45 and -35 (away from the line), nothing above it.
        let tint = *img.get_pixel(x as u32, py(-43.0).round() as u32);
        assert_eq!(tint, Rgb([255, 223, 195]));
        let above = *img.get_pixel(x as u32, py(-30.0).round() as u32);
        assert!(above == WHITE || above == GRID, "{above:?}");
        // Dots are wider than the line: at x = 1 the curve has more than 2 rows.
        assert!(rows_of(&img, px(1.0).round() as i64, TAB10[0]).len() >= 5);
    }

    #[test]
    fn line_plot_puts_the_legend_where_there_is_no_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("legend.png");
        // Both curves rise from the bottom-left to the top-right corner.
        let series: Vec<LineSeries> = (0..2)
            .map(|i| LineSeries {
                label: format!("curve {i}"),
                points: (0..=10).map(|x| (f64::from(x), f64::from(x + i))).collect(),
                band: None,
            })
            .collect();
        save_line_plot(&series, "legend", "x", "y", &path).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        let count = |x0: i64, y0: i64, c: Rgb<u8>| {
            (y0..y0 + 60)
                .flat_map(|y| (x0..x0 + 160).map(move |x| (x, y)))
                .filter(|&(x, y)| *img.get_pixel(x as u32, y as u32) == c)
                .count()
        };
        // Top left: both swatches and black label text; bottom right: nothing of the curves.
        let (l, t) = (LEFT + 2, TOP + 2);
        assert!(count(l, t, TAB10[0]) > 20 && count(l, t, TAB10[1]) > 20);
        assert!(count(l, t, BLACK) > 50);
        let (r, b) = (RIGHT - 162, BOTTOM - 62);
        assert_eq!(count(r, b, TAB10[0]) + count(r, b, TAB10[1]), 0);
    }

    #[test]
    fn line_plot_without_finite_data_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.png"), dir.path().join("b.png"));
        save_line_plot(&[], "t", "x", "y", &a).unwrap();
        let nan = LineSeries {
            label: "nan".into(),
            points: vec![(f64::NAN, 1.0), (2.0, f64::INFINITY)],
            band: Some(vec![(1.0, f64::NAN, 2.0)]),
        };
        save_line_plot(&[nan], "t", "x", "y", &b).unwrap();
        let (a, b) = (
            image::open(&a).unwrap().to_rgb8(),
            image::open(&b).unwrap().to_rgb8(),
        );
        assert_eq!(a.dimensions(), (WIDTH, HEIGHT));
        assert!(a == b, "all-NaN series differ from no series");
        let mid = (TOP + BOTTOM) / 2;
        assert!((LEFT..RIGHT).any(|x| *a.get_pixel(x as u32, mid as u32) == TEXT_GRAY));
        // A lone finite point among NaNs sits in the middle.
        let path = dir.path().join("one.png");
        let one = LineSeries {
            label: "one".into(),
            points: vec![(f64::NAN, 0.0), (3.0, -20.0)],
            band: None,
        };
        save_line_plot(&[one], "t", "x", "y", &path).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        let centre = *img.get_pixel(((LEFT + RIGHT) / 2) as u32, mid as u32);
        assert_eq!(centre, TAB10[0]);
        assert!(save_line_plot(&[], "t", "x", "y", &dir.path().join("no/such.png")).is_err());
    }

    #[test]
    fn turned_text_reads_upwards() {
        let mut img = RgbImage::from_pixel(40, 40, WHITE);
        draw_text_up(&mut img, "AB", 10, 30, 1, BLACK);
        let ink: Vec<(u32, u32)> = img
            .enumerate_pixels()
            .filter(|(_, _, p)| **p == BLACK)
            .map(|(x, y, _)| (x, y))
            .collect();
        // 7 pixels wide, 11 tall, its bottom at y = 30: the glyphs' bottom rows run along the
        // right side (x = 16), the left side of "A" along the bottom and "B" above it.
        assert!(ink
            .iter()
            .all(|&(x, y)| (10..17).contains(&x) && (20..=30).contains(&y)));
        assert!(ink.iter().any(|&(x, y)| x == 16 && y == 30));
        assert!(ink.iter().any(|&(_, y)| y == 20));
    }

    /// Writes one example of each plot into the directory `DIFFUSE_PLOT_EXAMPLES` when it is set.
    #[test]
    fn plot_examples() {
        let Some(dir) = std::env::var_os("DIFFUSE_PLOT_EXAMPLES") else {
            return;
        };
        let dir = Path::new(&dir);
        let rows = strings(&["kick", "snare", "closed hihat", "tom", "crash"]);
        let cols = strings(&["kick", "snare", "closed hihat", "tom", "crash", "other"]);
        let m = vec![
            vec![41, 2, 0, 5, 0, 2],
            vec![3, 30, 6, 1, 2, 8],
            vec![0, 4, 44, 0, 1, 1],
            vec![0, 0, 0, 0, 0, 0],
            vec![0, 3, 12, 0, 20, 15],
        ];
        let title = "drum classes: requested vs classified";
        save_confusion_matrix(&m, &rows, &cols, title, &dir.join("confusion.png")).unwrap();
        let envelope = |peak: f64, slope: f64| -> Vec<(f64, f64)> {
            (1..=8)
                .map(|k| (f64::from(k), peak - slope * f64::from(k - 1)))
                .collect()
        };
        let band = |pts: &[(f64, f64)], w: f64| -> Vec<(f64, f64, f64)> {
            pts.iter().map(|&(x, y)| (x, y - w, y + w)).collect()
        };
        let (real, generated) = (envelope(-12.0, 6.5), envelope(-14.0, 5.0));
        let series = [
            LineSeries {
                label: "real".into(),
                band: Some(band(&real, 4.0)),
                points: real,
            },
            LineSeries {
                label: "generated".into(),
                band: Some(band(&generated, 6.0)),
                points: generated,
            },
        ];
        let path = dir.join("envelope.png");
        save_line_plot(
            &series,
            "decay envelope",
            "eighth of the clip",
            "RMS dB",
            &path,
        )
        .unwrap();
    }

    #[test]
    fn ema_is_debiased() {
        let s = ema(&[2.0, 2.0, 2.0]);
        assert!(s.iter().all(|v| (v - 2.0).abs() < 1e-12));
    }
}
