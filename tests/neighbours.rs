//! Neighbour positives (`augment.neighbours`) pair each image with one of its nearest training
//! images. The graph is searched once, by rank 0, and every rank pairs the same way: with group
//! norm (configs/exactness.toml) three steps give the same losses and parameters on 1 and 2
//! ranks. And the setting is used: the steps differ from those of plain t-SimCNE pairs.

mod common;
use common::*;

#[test]
fn neighbour_positives_give_the_same_steps_on_any_number_of_ranks() {
    let (tmp, data) = scratch_with_cifar(40);
    let run = |ranks: usize, k: usize| {
        let out = tmp.path().join(format!("r{ranks}-k{k}"));
        let sets = ["max_steps=3".to_owned(), format!("augment.neighbours={k}")];
        let run = train(ranks, "exactness.toml", &data, &out, &strs(&sets));
        assert_ok(&run);
        let graph_lines = run.stderr.matches("neighbour positives").count();
        assert_eq!(graph_lines, usize::from(k > 0), "{}", run.stderr);
        let (model, _) = model_and_optimizer(&newest_checkpoint(&out));
        (losses(&out), model)
    };
    let (one_losses, one_model) = run(1, 3);
    let (two_losses, two_model) = run(2, 3);
    assert_eq!(one_losses.len(), 3);
    for (a, b) in one_losses.iter().zip(&two_losses) {
        assert!((a - b).abs() <= 1e-5 * a.abs(), "2 ranks: loss {b} vs {a}");
    }
    let (diff, name) = max_relative_difference(&one_model, &two_model, 1e-6);
    assert!(
        diff < 1e-5,
        "2 ranks: {name} differs by {diff:e} of its norm"
    );
    let (plain, _) = run(1, 0);
    assert!(
        (plain[0] - one_losses[0]).abs() > 1e-3,
        "pairs of neighbours change the first loss: {plain:?} vs {one_losses:?}"
    );
}
