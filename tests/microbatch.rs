//! Micro-batches change how a step is computed, not what: with group norm (configs/exactness.toml)
//! three steps in micro-batches of 5 images (uneven: 5+5+5+5+5+5+2 of 32 on one rank, 5+5+5+1
//! of 16 on each of two) give the losses and parameters of whole passes, on 1 and on 2 ranks.
//! With batch norm they do not (statistics per micro-batch): that shows the setting is used.

mod common;
use common::*;

#[test]
fn micro_batches_give_the_steps_of_whole_passes() {
    let (tmp, data) = scratch_with_cifar(40);
    let run_with = |ranks: usize, micro: usize, norm: &str| {
        let out = tmp.path().join(format!("r{ranks}-m{micro}-{norm}"));
        let sets = [
            "max_steps=3".to_owned(),
            format!("micro_batch={micro}"),
            format!("model.norm={norm}"),
        ];
        assert_ok(&train(ranks, "exactness.toml", &data, &out, &strs(&sets)));
        let (model, _) = model_and_optimizer(&newest_checkpoint(&out));
        (losses(&out), model)
    };
    let run = |ranks, micro| run_with(ranks, micro, "group");
    let (base_losses, base_model) = run(1, 0);
    assert_eq!(base_losses.len(), 3);
    for (ranks, micro) in [(1, 5), (2, 5), (2, 0)] {
        let (l, m) = run(ranks, micro);
        for (a, b) in base_losses.iter().zip(&l) {
            assert!(
                (a - b).abs() <= 1e-5 * a.abs(),
                "{ranks} ranks, micro-batch {micro}: loss {b} vs {a}"
            );
        }
        let (diff, name) = max_relative_difference(&base_model, &m, 1e-6);
        assert!(
            diff < 1e-5,
            "{ranks} ranks, micro-batch {micro}: {name} differs by {diff:e} of its norm"
        );
    }
    let (whole, _) = run_with(1, 0, "batch");
    let (micro, _) = run_with(1, 5, "batch");
    assert!(
        (whole[0] - micro[0]).abs() > 1e-4,
        "batch norm over micro-batches of 5 normalises differently: {whole:?} vs {micro:?}"
    );
}
