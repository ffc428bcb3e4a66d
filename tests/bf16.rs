//! bf16 autocast trains on the current weights: a short run under bf16 follows the f32 run of
//! the same config step by step, and its trunk moves away from its first step's weights.
//!
//! The bound: bf16 keeps 8 significant bits, so each trunk output is rounded by at most
//! 2⁻⁸ ≈ 0.4 % of itself. A logit −log(1 + d²) then moves by at most 2 · 0.4 % · d²/(1 + d²)
//! < 0.008, and a loss term (a log-sum-exp of logits minus one logit) by at most twice that,
//! 0.016, at equal weights; the weights of the two runs drift apart by rounding over the steps,
//! which may double it again. 0.05 bounds both; measured here: 0.013 at most over 42 steps.
//! A run whose autocast keeps its first step's weights (the cast cache never cleared) misses
//! the f32 losses by up to 0.48 in the same setting.

mod common;
use common::*;

const SETS: &[&str] = &["epochs=[4,1,2]"];
const BOUND: f64 = 0.05;

#[test]
fn a_bf16_run_follows_the_f32_run_and_its_trunk_learns() {
    let (tmp, data) = scratch_with_cifar(40);
    let run = |name: &str, extra: &[&str]| {
        let out = tmp.path().join(name);
        let sets: Vec<&str> = SETS.iter().chain(extra).copied().collect();
        assert_ok(&train(1, "exactness.toml", &data, &out, &sets));
        out
    };
    let f32_run = run("f32", &[]);
    let bf16_run = run("bf16", &["precision=bf16"]);
    let (f32_losses, bf16_losses) = (losses(&f32_run), losses(&bf16_run));
    assert_eq!(f32_losses.len(), 42, "6 steps per epoch, 7 epochs");
    assert_eq!(bf16_losses.len(), f32_losses.len());
    for (step, (a, b)) in f32_losses.iter().zip(&bf16_losses).enumerate() {
        assert!(
            (a - b).abs() <= BOUND,
            "step {step}: bf16 loss {b} vs f32 {a} (bound {BOUND})"
        );
    }
    assert!(
        f32_losses[0] != bf16_losses[0],
        "the first bf16 loss is rounded differently (is autocast on?)"
    );

    let first_step = run("bf16-step1", &["precision=bf16", "max_steps=1"]);
    let trunk = |dir| -> Named {
        parameters(&newest_checkpoint(dir))
            .into_iter()
            .filter(|(n, _)| n.starts_with("backbone."))
            .collect()
    };
    let (moved, name) = max_relative_difference(&trunk(&first_step), &trunk(&bf16_run), 1e-6);
    assert!(
        moved > 1e-3,
        "the trunk barely moved after its first step ({name}: {moved:e})"
    );
}
