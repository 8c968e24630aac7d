//! Loss curves as PNG pictures, drawn pixel by pixel (no plotting or font crates): raw losses as a
//! faint line, an exponential moving average as a bold one, axes with tick labels written in a
//! built-in 5x7 bitmap font (upper-case letters, digits and a little punctuation; lower case is
//! drawn as upper case).

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
    for (v, label) in &y_ticks {
        let y = py(*v).round() as i64;
        hline(&mut img, LEFT, RIGHT, y, GRID);
        hline(&mut img, LEFT - 5, LEFT, y, BLACK);
        let w = text_width(label, 2);
        draw_text(&mut img, label, LEFT - 9 - w, y - 7, 2, BLACK);
    }
    for (v, step) in linear_ticks(x_lo, x_hi) {
        if v.fract() != 0.0 {
            continue; // steps are whole numbers
        }
        let x = px(v).round() as i64;
        vline(&mut img, x, TOP, BOTTOM, GRID);
        vline(&mut img, x, BOTTOM, BOTTOM + 5, BLACK);
        let label = format_count(v, step);
        let w = text_width(&label, 2);
        draw_text(&mut img, &label, x - w / 2, BOTTOM + 10, 2, BLACK);
    }
    // Axes frame.
    hline(&mut img, LEFT, RIGHT, BOTTOM, BLACK);
    hline(&mut img, LEFT, RIGHT, TOP, BLACK);
    vline(&mut img, LEFT, TOP, BOTTOM, BLACK);
    vline(&mut img, RIGHT, TOP, BOTTOM, BLACK);

    let tw = text_width(title, 3);
    draw_text(&mut img, title, (WIDTH as i64 - tw) / 2, 8, 3, BLACK);
    let y_name = if log { "loss (log scale)" } else { "loss" };
    draw_text(&mut img, y_name, LEFT, TOP - 18, 2, TEXT_GRAY);
    let x_name = "step";
    let w = text_width(x_name, 2);
    draw_text(
        &mut img,
        x_name,
        RIGHT - w,
        HEIGHT as i64 - 22,
        2,
        TEXT_GRAY,
    );

    if pts.is_empty() {
        let msg = "no data";
        let w = text_width(msg, 3);
        draw_text(
            &mut img,
            msg,
            (LEFT + RIGHT - w) / 2,
            (TOP + BOTTOM) / 2 - 10,
            3,
            TEXT_GRAY,
        );
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

/// Draw `text` with its top-left corner at (x, y), each font pixel a `scale` x `scale` square.
fn draw_text(img: &mut RgbImage, text: &str, x: i64, y: i64, scale: i64, c: Rgb<u8>) {
    for (i, ch) in text.chars().enumerate() {
        let gx = x + i as i64 * 6 * scale;
        for (row, bits) in glyph(ch).iter().enumerate() {
            for (col, b) in bits.bytes().enumerate() {
                if b == b'#' {
                    for dy in 0..scale {
                        for dx in 0..scale {
                            put(
                                img,
                                gx + col as i64 * scale + dx,
                                y + row as i64 * scale + dy,
                                c,
                            );
                        }
                    }
                }
            }
        }
    }
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

    #[test]
    fn ema_is_debiased() {
        let s = ema(&[2.0, 2.0, 2.0]);
        assert!(s.iter().all(|v| (v - 2.0).abs() < 1e-12));
    }
}
