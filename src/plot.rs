//! `map.png`: the 2-D embedding as a scatter plot coloured by label, with a legend and the kNN
//! accuracy in the title. Text needs a TrueType font; DejaVu Sans (Debian's fonts-dejavu-core)
//! is looked for, and without it the map is drawn with colour swatches only.

use std::path::Path;

use plotters::prelude::*;

use crate::outputs::{write_atomic, OutputError};

/// Matplotlib's tab10, the colours readers of such maps know.
const TAB10: [(u8, u8, u8); 10] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
];

const FONT_PATHS: [&str; 2] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

fn colour(label: i64, classes: usize) -> RGBColor {
    if classes <= TAB10.len() {
        let (r, g, b) = TAB10[label as usize % TAB10.len()];
        return RGBColor(r, g, b);
    }
    let hsl = HSLColor(label as f64 / classes as f64, 0.7, 0.45);
    let rgb = hsl.to_rgba();
    RGBColor(rgb.0, rgb.1, rgb.2)
}

/// Registers a sans-serif font once; false when none is installed.
fn have_font() -> bool {
    static FONT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FONT.get_or_init(|| {
        FONT_PATHS.iter().any(|p| {
            std::fs::read(p).is_ok_and(|bytes| {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
            })
        })
    })
}

/// Draws `points` (x, y) with `labels` into `path`.
pub fn draw_map(
    path: &Path,
    points: &[(f32, f32)],
    labels: &[i64],
    class_names: &[String],
    title: &str,
) -> Result<(), OutputError> {
    let plot_err = |e: String| OutputError::Plot {
        path: path.to_owned(),
        message: e,
    };
    let classes = labels.iter().max().map_or(1, |&m| m as usize + 1);
    // One scale for both axes: distances in the map mean the same in every direction.
    let (lo_x, hi_x) = bounds(points.iter().map(|p| p.0));
    let (lo_y, hi_y) = bounds(points.iter().map(|p| p.1));
    let half = 0.5 * (hi_x - lo_x).max(hi_y - lo_y);
    let (mid_x, mid_y) = (0.5 * (lo_x + hi_x), 0.5 * (lo_y + hi_y));
    let (lo_x, hi_x, lo_y, hi_y) = (mid_x - half, mid_x + half, mid_y - half, mid_y + half);
    let text = have_font();
    let (w, h) = (1400u32, 1200u32);
    let mut pixels = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(e.to_string()))?;
        let (map_area, legend_area) = root.split_horizontally(h);
        let mut chart = ChartBuilder::on(&map_area);
        chart.margin(20);
        if text {
            chart.caption(title, ("sans-serif", 26));
        }
        let mut chart = chart
            .build_cartesian_2d(lo_x..hi_x, lo_y..hi_y)
            .map_err(|e| plot_err(e.to_string()))?;
        let radius = if points.len() > 20_000 { 1 } else { 2 };
        chart
            .draw_series(points.iter().zip(labels).map(|(&(x, y), &l)| {
                Circle::new((x, y), radius, colour(l, classes).mix(0.6).filled())
            }))
            .map_err(|e| plot_err(e.to_string()))?;
        for c in 0..classes {
            let y = 60 + 30 * c as i32;
            if y > h as i32 - 20 {
                break;
            }
            legend_area
                .draw(&Rectangle::new(
                    [(10, y), (30, y + 20)],
                    colour(c as i64, classes).filled(),
                ))
                .map_err(|e| plot_err(e.to_string()))?;
            if text {
                let name = class_names.get(c).cloned().unwrap_or_else(|| c.to_string());
                legend_area
                    .draw(&Text::new(name, (40, y + 2), ("sans-serif", 18)))
                    .map_err(|e| plot_err(e.to_string()))?;
            }
        }
        root.present().map_err(|e| plot_err(e.to_string()))?;
    }
    write_atomic(path, |tmp| {
        let img = image_buffer(w, h, pixels)?;
        img.save_with_format(tmp, image::ImageFormat::Png)
            .map_err(std::io::Error::other)
    })
}

fn image_buffer(w: u32, h: u32, pixels: Vec<u8>) -> std::io::Result<image::RgbImage> {
    image::RgbImage::from_raw(w, h, pixels)
        .ok_or_else(|| std::io::Error::other("pixel buffer of the wrong size"))
}

/// The range of `values` with a 3 % margin (a unit range around a single value).
fn bounds(values: impl Iterator<Item = f32>) -> (f32, f32) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if lo.partial_cmp(&hi) != Some(std::cmp::Ordering::Less) {
        let c = if lo.is_finite() { lo } else { 0.0 };
        return (c - 1.0, c + 1.0);
    }
    let pad = 0.03 * (hi - lo);
    (lo - pad, hi + pad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_each_class_in_its_colour() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("map.png");
        let points: Vec<(f32, f32)> = (0..200)
            .map(|i| ((i % 2) as f32 * 10.0 - 5.0, i as f32 / 20.0))
            .collect();
        let labels: Vec<i64> = (0..200).map(|i| i % 2).collect();
        draw_map(&path, &points, &labels, &["a".into(), "b".into()], "test").unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (1400, 1200));
        let count = |c: (u8, u8, u8)| {
            img.pixels()
                .filter(|p| {
                    let d = |a: u8, b: u8| (a as i32 - b as i32).abs();
                    d(p[0], c.0) + d(p[1], c.1) + d(p[2], c.2) < 80
                })
                .count()
        };
        // Both classes' colours appear (their points mixed with white at 60 %).
        let mixed = |c: (u8, u8, u8)| {
            let m = |v: u8| (0.6 * v as f64 + 0.4 * 255.0) as u8;
            (m(c.0), m(c.1), m(c.2))
        };
        assert!(count(mixed(TAB10[0])) > 5 && count(mixed(TAB10[1])) > 5);
    }
}
