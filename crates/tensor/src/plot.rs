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

    let mut bytes = Vec::new();
    image::codecs::png::PngEncoder::new(&mut bytes)
        .write_image(img.as_raw(), WIDTH, HEIGHT, image::ExtendedColorType::Rgb8)
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

/// The 5x7 bitmap of a character (lower case drawn as upper case; unknown characters as `?`).
fn glyph(c: char) -> [&'static str; 7] {
    match c.to_ascii_uppercase() {
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

    #[test]
    fn ema_is_debiased() {
        let s = ema(&[2.0, 2.0, 2.0]);
        assert!(s.iter().all(|v| (v - 2.0).abs() < 1e-12));
    }
}
