//! The global batch is exact: 1, 2 and 4 ranks with the same global batch take the same steps
//! (configs/exactness.toml: group norm, so no statistic depends on how the batch is split).

mod common;
use common::*;

#[test]
fn one_two_and_four_ranks_give_the_same_losses_and_parameters() {
    let (tmp, data) = scratch_with_cifar(40);
    let mut results = Vec::new();
    for ranks in [1, 2, 4] {
        let out = tmp.path().join(format!("run{ranks}"));
        assert_ok(&train(
            ranks,
            "exactness.toml",
            &data,
            &out,
            &["max_steps=3"],
        ));
        let (model, optim) = model_and_optimizer(&newest_checkpoint(&out));
        results.push((ranks, losses(&out), model, optim));
    }
    let (_, base_losses, base_params, base_optim) = &results[0];
    assert_eq!(base_losses.len(), 3);
    for (ranks, l, p, o) in &results[1..] {
        for (a, b) in base_losses.iter().zip(l) {
            assert!(
                (a - b).abs() <= 1e-5 * a.abs(),
                "{ranks} ranks: loss {b} vs {a}"
            );
        }
        let (diff, name) = max_relative_difference(base_params, p, 1e-6);
        assert!(
            diff < 1e-5,
            "{ranks} ranks: {name} differs by {diff:e} of its norm"
        );
        // Momentum buffers hold raw gradient sums, whose rounding depends on how the batch is
        // split; the readout biases' gradients are zero but for rounding (the loss sees only
        // differences between embeddings), so they are left out.
        let keep = |v: &Vec<(String, Vec<f32>)>| {
            v.iter()
                .filter(|(n, _)| !n.ends_with("out.bias"))
                .cloned()
                .collect::<Vec<_>>()
        };
        let (diff, name) = max_relative_difference(&keep(base_optim), &keep(o), 1e-6);
        assert!(
            diff < 1e-4,
            "{ranks} ranks: {name} differs by {diff:e} of its norm"
        );
    }
    // The parameters moved: the comparison is not between copies of an untrained state.
    let early = tmp.path().join("early");
    assert_ok(&train(1, "exactness.toml", &data, &early, &["max_steps=1"]));
    let (moved, _) = max_relative_difference(
        &model_and_optimizer(&newest_checkpoint(&early)).0,
        base_params,
        1e-6,
    );
    assert!(
        moved > 1e-3,
        "two more steps changed the parameters by only {moved:e}"
    );
}
