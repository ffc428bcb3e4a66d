//! The paper's augmentations as batched tensor ops on the rank's device: random resized crop
//! (scale 0.2–1), horizontal flip, colour jitter in a random order (p 0.8) and greyscale (p 0.2),
//! following torchvision's definitions.
//!
//! Each image's random numbers come from its own ChaCha stream, keyed by (seed, stage, epoch)
//! and numbered by (global image index, view): a view does not depend on which rank draws it
//! or how many ranks there are. Drawing them is a few dozen numbers per image on the host; they
//! reach the device as one small tensor, and then every op runs on the whole batch at once.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

use crate::config::AugmentConfig;
use crate::rng::ViewStreams;

/// Luminance weights, as torchvision's `rgb_to_grayscale`.
const LUMA: [f64; 3] = [0.2989, 0.587, 0.114];
/// Crop tries before falling back to the centred box, as torchvision.
const CROP_TRIES: usize = 10;
/// Jitter ops in torchvision's numbering.
const BRIGHTNESS: usize = 0;
const CONTRAST: usize = 1;
const SATURATION: usize = 2;
const HUE: usize = 3;
/// Seven jitter slots: each image's hue step is moved to slot 3 so the costly hue pass runs once
/// per batch instead of four times; the three blend ops fill the slots around it.
const SLOTS: usize = 7;
const HUE_SLOT: usize = 3;

/// One view's random parameters: crop box (centre x, centre y, width, height in pixels), flip,
/// and per jitter slot the image's weight `f` and its partner's weight `g` (out = f·x + g·other),
/// whether the partner is the greyscale image (saturation) or its mean (contrast), the hue
/// shift (0 when the image is not jittered) and the greyscale flag.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewParams {
    pub crop: [f64; 4],
    pub flip: bool,
    pub scale: [f64; SLOTS],
    pub weight: [f64; SLOTS],
    pub saturate: [bool; SLOTS],
    pub hue: f64,
    pub gray: bool,
}

/// Draws the parameters of one view of one image.
pub fn draw_view(
    rng: &mut ChaCha8Rng,
    cfg: &AugmentConfig,
    height: usize,
    width: usize,
) -> ViewParams {
    let crop = draw_crop(rng, cfg, height, width);
    let flip = rng.random::<f64>() < cfg.flip_p;
    let apply = rng.random::<f64>() < cfg.jitter_p;
    let [b, c, s, h] = cfg.jitter;
    let factors = [
        rng.random_range(1.0 - b..=1.0 + b),
        rng.random_range(1.0 - c..=1.0 + c),
        rng.random_range(1.0 - s..=1.0 + s),
        rng.random_range(-h..=h),
    ];
    let mut order = [BRIGHTNESS, CONTRAST, SATURATION, HUE];
    rand::seq::SliceRandom::shuffle(&mut order[..], rng);
    let gray = rng.random::<f64>() < cfg.grayscale_p;

    let mut scale = [1.0; SLOTS];
    let mut weight = [0.0; SLOTS];
    let mut saturate = [false; SLOTS];
    if apply {
        let hue_step = order.iter().position(|&o| o == HUE).unwrap_or(0);
        for (step, &op) in order.iter().enumerate() {
            let slot = step + HUE_SLOT - hue_step;
            if op == BRIGHTNESS || op == CONTRAST || op == SATURATION {
                scale[slot] = factors[op];
                weight[slot] = if op == BRIGHTNESS {
                    0.0
                } else {
                    1.0 - factors[op]
                };
                saturate[slot] = op == SATURATION;
            }
        }
    }
    ViewParams {
        crop,
        flip,
        scale,
        weight,
        saturate,
        hue: if apply { factors[HUE] } else { 0.0 },
        gray,
    }
}

/// A crop box as torchvision's RandomResizedCrop draws it: area fraction and log-uniform aspect
/// ratio, rounded to whole pixels, up to ten tries; then the largest centred box in range.
fn draw_crop(rng: &mut ChaCha8Rng, cfg: &AugmentConfig, height: usize, width: usize) -> [f64; 4] {
    let (hf, wf) = (height as f64, width as f64);
    let area = hf * wf;
    let (lo, hi) = (cfg.crop_ratio[0].ln(), cfg.crop_ratio[1].ln());
    for _ in 0..CROP_TRIES {
        let target = area * rng.random_range(cfg.crop_scale[0]..=cfg.crop_scale[1]);
        let ratio = rng.random_range(lo..=hi).exp();
        let w = (target * ratio).sqrt().round();
        let h = (target / ratio).sqrt().round();
        if w > 0.0 && h > 0.0 && w <= wf && h <= hf {
            let left = (rng.random::<f64>() * (wf - w + 1.0)).floor();
            let top = (rng.random::<f64>() * (hf - h + 1.0)).floor();
            return [left + w / 2.0, top + h / 2.0, w, h];
        }
    }
    let in_ratio = wf / hf;
    let (w, h) = if in_ratio < cfg.crop_ratio[0] {
        (wf, wf / cfg.crop_ratio[0])
    } else if in_ratio > cfg.crop_ratio[1] {
        (hf * cfg.crop_ratio[1], hf)
    } else {
        (wf, hf)
    };
    [wf / 2.0, hf / 2.0, w, h]
}

/// The two views' parameters of each image in `indices`: rows `0..n` are the first views,
/// rows `n..2n` the second.
pub fn draw_pairs(
    seed: u64,
    stage: usize,
    epoch: usize,
    indices: &[usize],
    cfg: &AugmentConfig,
    (height, width): (usize, usize),
) -> Vec<ViewParams> {
    let streams = ViewStreams::new(seed, stage, epoch);
    let mut out = Vec::with_capacity(2 * indices.len());
    for view in 0..2u64 {
        for &i in indices {
            out.push(draw_view(&mut streams.view(i, view), cfg, height, width));
        }
    }
    out
}

/// The constants the views are made with, kept on the device (made once, not copied there
/// every step): per-channel normalisation as one scale and shift, and the luminance weights.
#[derive(Debug)]
pub struct Normalize {
    scale: Tensor,
    shift: Tensor,
    luma: Tensor,
}

impl Normalize {
    /// Normalisation by per-channel `mean` and `std` of pixels in [0, 1].
    pub fn new(mean: &[f64], std: &[f64], device: Device) -> Normalize {
        let channel = |v: Vec<f64>| {
            Tensor::from_slice(&v)
                .to_kind(Kind::Float)
                .to(device)
                .view([1, -1, 1, 1])
        };
        let scale: Vec<f64> = std.iter().map(|s| 1.0 / s).collect();
        let shift = mean.iter().zip(std).map(|(m, s)| -m / s).collect();
        Normalize {
            scale: channel(scale),
            shift: channel(shift),
            luma: channel(LUMA.to_vec()),
        }
    }

    /// `(x − mean) / std` per channel, for float images N×C×H×W in [0, 1].
    pub fn apply(&self, x: &Tensor) -> Tensor {
        self.shift.addcmul(x, &self.scale)
    }

    /// Luminance N×1×H×W of RGB images (the images themselves when grey).
    fn grayscale(&self, x: &Tensor) -> Tensor {
        if x.size()[1] == 1 {
            return x.shallow_clone();
        }
        (x * &self.luma).sum_dim_intlist(1, true, Kind::Float)
    }
}

/// Columns of the parameter table: the affine matrix's six entries (scale x, 0, shift x, 0,
/// scale y, shift y), hue, (f, g, saturate) per jitter slot, and the greyscale flag.
const THETA: i64 = 6;
const HUE_COL: i64 = THETA;
const SLOT_COLS: i64 = HUE_COL + 1;
const GRAY_COL: i64 = SLOT_COLS + 3 * SLOTS as i64;
pub const COLUMNS: usize = GRAY_COL as usize + 1;

/// The parameters of `params` as one rows × [`COLUMNS`] table, on the host (it reaches the
/// device in one copy).
pub fn param_table(params: &[ViewParams], (height, width): (usize, usize)) -> Vec<f32> {
    let (width, height) = (width as f64, height as f64);
    let mut flat = Vec::with_capacity(params.len() * COLUMNS);
    for p in params {
        let [cx, cy, w, h] = p.crop;
        let sign = if p.flip { -1.0 } else { 1.0 };
        let theta = [
            w / width * sign,
            0.0,
            2.0 * cx / width - 1.0,
            0.0,
            h / height,
            2.0 * cy / height - 1.0,
        ];
        flat.extend(theta.iter().map(|&v| v as f32));
        flat.push(p.hue as f32);
        for s in 0..SLOTS {
            flat.extend_from_slice(&[
                p.scale[s] as f32,
                p.weight[s] as f32,
                f32::from(u8::from(p.saturate[s])),
            ]);
        }
        flat.push(f32::from(u8::from(p.gray)));
    }
    flat
}

/// Applies the parameter `table` (rows × [`COLUMNS`], float, on the device) to `images` (u8,
/// N×C×H×W, on the device; row `j` of the output uses image `j % N`) and returns normalised
/// float views, 2N×C×H×W for two views per image.
pub fn apply(images: &Tensor, table: &Tensor, norm: &Normalize) -> Tensor {
    let (n, c, h, w) = images.size4().unwrap_or((0, 0, 0, 0)); // ok: loader builds 4-D tensors
    let rows = table.size()[0];
    let x = (images.to_kind(Kind::Float) / 255.0).repeat([rows / n.max(1), 1, 1, 1]);
    // Every column as rows×1×1×1, broadcasting over an image; flags compared once.
    let columns = table.view([rows, COLUMNS as i64, 1, 1]);
    let flags = columns.gt(0.5);
    let column = |i: i64| columns.narrow(1, i, 1);

    // Crop, resize and flip in one bilinear resampling.
    let theta = table.narrow(1, 0, THETA).reshape([rows, 2, 3]);
    let grid = Tensor::affine_grid_generator(&theta, [rows, c, h, w], false);
    // padding mode 1: border (a crop never leaves the image, but bilinear taps at its edge may).
    let mut out = x.grid_sampler(&grid, 0, 1, false);

    // Colour jitter: seven blend/hue slots (see SLOTS).
    for slot in 0..SLOTS as i64 {
        if slot == HUE_SLOT as i64 {
            if c == 3 {
                out = adjust_hue(&out, &table.select(1, HUE_COL));
            }
            continue;
        }
        let at = SLOT_COLS + 3 * slot;
        let gray = norm.grayscale(&out);
        let mean = gray.mean_dim(&[1i64, 2, 3][..], true, Kind::Float);
        let other = gray.where_self(&flags.narrow(1, at + 2, 1), &mean);
        out = (out * column(at))
            .addcmul_(&other, &column(at + 1))
            .clamp_(0.0, 1.0);
    }
    if c == 3 {
        out = norm
            .grayscale(&out)
            .expand_as(&out)
            .where_self(&flags.narrow(1, GRAY_COL, 1), &out);
    }
    norm.apply(&out)
}

/// Rotates each image's hue by `shift` turns (an HSV round trip, as torchvision's adjust_hue).
fn adjust_hue(x: &Tensor, shift: &Tensor) -> Tensor {
    let (maxc, argmax) = x.max_dim(1, false);
    let minc = x.amin(&[1i64][..], false);
    let delta = &maxc - minc;
    let spread = delta.gt(0.0);
    let ones = delta.ones_like();
    // Hue in sixths of a turn: (G−B)/Δ, (B−R)/Δ + 2 or (R−G)/Δ + 4 as R, G or B is largest.
    let diffs = x.roll([-1], [1]) - x.roll([-2], [1]);
    let sixths = diffs.gather(1, &argmax.unsqueeze(1), false).squeeze_dim(1)
        / delta.where_self(&spread, &ones)
        + argmax.to_kind(Kind::Float) * 2.0
        + shift.view([-1, 1, 1]) * 6.0;
    let sat = &delta / maxc.where_self(&spread, &ones);
    // Back to RGB: channel = v·(1 − s·clamp(min(k, 4−k), 0, 1)), k = (n + hue·6) mod 6, n = 5, 3, 1.
    let n = Tensor::from_slice(&[5.0f32, 3.0, 1.0])
        .to(x.device())
        .view([1, 3, 1, 1]);
    let k = (n + sixths.unsqueeze(1)).remainder(6.0);
    let ramp = k.minimum(&(k.neg() + 4.0)).clamp(0.0, 1.0);
    maxc.unsqueeze(1) * (ramp * sat.unsqueeze(1)).neg().g_add_scalar(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> AugmentConfig {
        AugmentConfig::default()
    }

    /// `apply` with the table made from `params`, as a step makes it.
    fn apply_params(images: &Tensor, params: &[ViewParams], norm: &Normalize) -> Tensor {
        let (_, _, h, w) = images.size4().unwrap();
        let table = Tensor::from_slice(&param_table(params, (h as usize, w as usize)))
            .view([params.len() as i64, COLUMNS as i64]);
        apply(images, &table, norm)
    }

    #[test]
    fn views_depend_on_the_image_index_not_on_the_batch_it_is_in() {
        let a = draw_pairs(3, 0, 2, &[5, 9, 11], &cfg(), (32, 32));
        let b = draw_pairs(3, 0, 2, &[11, 5], &cfg(), (32, 32));
        assert_eq!(a[2], b[0]); // image 11, first view
        assert_eq!(a[3], b[3]); // image 5, second view
        assert_ne!(a[0], a[3], "two views of one image differ");
        assert_ne!(
            a,
            draw_pairs(3, 0, 3, &[5, 9, 11], &cfg(), (32, 32)),
            "epochs differ"
        );
    }

    #[test]
    fn crops_stay_inside_the_image_and_follow_the_scale() {
        let mut areas = Vec::new();
        for p in draw_pairs(1, 0, 0, &(0..2000).collect::<Vec<_>>(), &cfg(), (32, 28)) {
            let [cx, cy, w, h] = p.crop;
            assert!(
                cx - w / 2.0 >= 0.0 && cx + w / 2.0 <= 28.0 + 1e-9,
                "{:?}",
                p.crop
            );
            assert!(
                cy - h / 2.0 >= 0.0 && cy + h / 2.0 <= 32.0 + 1e-9,
                "{:?}",
                p.crop
            );
            areas.push(w * h / (32.0 * 28.0));
        }
        let mean = areas.iter().sum::<f64>() / areas.len() as f64;
        assert!((0.5..0.7).contains(&mean), "mean crop area {mean}");
        assert!(areas.iter().all(|&a| a > 0.15 && a <= 1.0));
    }

    #[test]
    fn an_identity_view_returns_the_image_and_outputs_stay_in_range() {
        let images = Tensor::randint(256, [4, 3, 8, 8], (Kind::Uint8, Device::Cpu));
        let id = ViewParams {
            crop: [4.0, 4.0, 8.0, 8.0],
            flip: false,
            scale: [1.0; SLOTS],
            weight: [0.0; SLOTS],
            saturate: [false; SLOTS],
            hue: 0.0,
            gray: false,
        };
        let unit = Normalize::new(&[0.0; 3], &[1.0; 3], Device::Cpu);
        let out = apply_params(&images, &vec![id.clone(); 4], &unit);
        let x = images.to_kind(Kind::Float) / 255.0;
        assert!(f64::try_from((&out - &x).abs().max()).unwrap() < 1e-5);
        // A flip mirrors the columns exactly.
        let flipped = apply_params(
            &images,
            &vec![
                ViewParams {
                    flip: true,
                    ..id.clone()
                };
                4
            ],
            &unit,
        );
        assert!(f64::try_from((&flipped - x.flip([3])).abs().max()).unwrap() < 1e-5);
        // A hue shift of a whole turn is the identity, half a turn is not.
        let whole = apply_params(
            &images,
            &vec![
                ViewParams {
                    hue: 0.5,
                    ..id.clone()
                };
                4
            ],
            &unit,
        );
        let again = adjust_hue(
            &adjust_hue(&x, &Tensor::full([4], 0.25, (Kind::Float, Device::Cpu))),
            &Tensor::full([4], -0.25, (Kind::Float, Device::Cpu)),
        );
        assert!(f64::try_from((&again - &x).abs().max()).unwrap() < 1e-4);
        assert!(f64::try_from((&whole - &x).abs().max()).unwrap() > 0.05);
        // Random parameters: values stay in [0, 1] and grey views have equal channels.
        let params = draw_pairs(
            0,
            0,
            0,
            &[0, 1, 2, 3],
            &AugmentConfig {
                grayscale_p: 1.0,
                ..cfg()
            },
            (8, 8),
        );
        let out = apply_params(&images, &params, &unit);
        assert_eq!(out.size(), [8, 3, 8, 8]);
        assert!(
            f64::try_from(out.min()).unwrap() >= 0.0 && f64::try_from(out.max()).unwrap() <= 1.0
        );
        assert!(f64::try_from((out.select(1, 0) - out.select(1, 2)).abs().max()).unwrap() < 1e-6);
    }
}
