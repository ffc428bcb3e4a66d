import itertools
import math
import sys

import pytest
import torch

from picmap.model import EmbeddingNet, make_backbone
from picmap.train import (
    DivergedError,
    Interrupted,
    Stage,
    TrainConfig,
    Trainer,
    largest_batch_size,
    learning_rate,
)


def _net(out_dim=128):
    backbone, dim = make_backbone("small", 1, 8)
    return EmbeddingNet(backbone, dim, 32, out_dim)


def _images(n=32, size=8):
    return (torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(0)) * 255).to(
        torch.uint8
    )


def _config(stages, batch_size=16, **kw):
    return TrainConfig(stages=stages, batch_size=batch_size, image_size=8, verbose=False, **kw)


def test_learning_rate_warmup_then_cosine():
    stage = Stage(epochs=10, lr=0.1, warmup_epochs=2, out_dim=2, readout_only=False)
    steps = 5
    lrs = [learning_rate(stage, s, steps) for s in range(10 * steps)]
    assert lrs[0] == pytest.approx(0.1 / 10)
    assert lrs[9] == pytest.approx(0.1)  # end of warm-up
    assert lrs[10] == pytest.approx(0.1)  # cosine starts at the peak
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))
    mid = 10 + (40 // 2)
    assert lrs[mid] == pytest.approx(0.05)
    assert lrs[-1] < 0.001


def test_each_stage_trains_the_right_parameters_and_output_size():
    net = _net()
    stages = [
        Stage(1, 0.05, 0, 128, False),
        Stage(1, 0.05, 0, 2, True),
        Stage(1, 0.05, 0, 2, False),
    ]
    trainer = Trainer(net, _images(), _config(stages), 0)
    seen = {}

    def record(t: Trainer) -> None:
        params = dict(t.net.named_parameters())
        seen[t.progress.stage] = (
            {n for n, p in params.items() if p.requires_grad},
            t.net(torch.rand(3, 1, 8, 8)).shape,
            {n: p.detach().clone() for n, p in params.items()},
        )

    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    trainer.on_epoch_end = record
    trainer.run()
    all_names = set(before)
    assert seen[0][0] == all_names and seen[0][1] == (3, 128)
    assert seen[1][0] == {"head.readout.weight", "head.readout.bias"} and seen[1][1] == (3, 2)
    assert seen[2][0] == all_names and seen[2][1] == (3, 2)
    # Stage 2 changed the readout and nothing else.
    after1, after2 = seen[0][2], seen[1][2]
    frozen = [n for n in all_names if not n.startswith("head.readout")]
    assert all(torch.equal(after1[n], after2[n]) for n in frozen)
    assert not torch.equal(after1["backbone.0.weight"], before["backbone.0.weight"])
    assert not torch.equal(after2["backbone.0.weight"], seen[2][2]["backbone.0.weight"])


def test_loss_history_has_one_entry_per_epoch():
    stages = [
        Stage(3, 0.05, 1, 128, False),
        Stage(1, 0.05, 0, 2, True),
        Stage(2, 1e-4, 1, 2, False),
    ]
    trainer = Trainer(_net(), _images(), _config(stages), 0)
    losses = trainer.run()
    assert [len(x) for x in losses] == [3, 1, 2]
    assert all(math.isfinite(v) for stage in losses for v in stage)


def test_more_neighbours_than_images_are_refused():
    config = _config([Stage(1, 0.01, 0, 128, False)], 8, neighbour_share=1.0, neighbour_k=8)
    with pytest.raises(ValueError, match="neighbour_k=8 needs more images than that"):
        Trainer(_net(), _images(8), config, 0)


def test_batch_larger_than_data_is_refused():
    with pytest.raises(ValueError, match="batch_size=64 is larger than the data"):
        Trainer(_net(), _images(32), _config([Stage(1, 0.1, 0, 2, False)], 64), 0)


def test_nan_loss_stops_and_keeps_last_good_weights():
    net = _net()
    stages = [Stage(1, 0.05, 0, 128, False), Stage(2, 1e30, 0, 2, False)]
    trainer = Trainer(net, _images(), _config(stages, grad_clip=None), 0)
    snapshots = []
    trainer.on_epoch_end = lambda t: snapshots.append(
        {k: v.clone() for k, v in t.net.state_dict().items()}
    )
    with pytest.raises(DivergedError, match=r"stage 2, epoch 1"):
        trainer.run()
    kept = net.state_dict()
    assert all(torch.isfinite(v).all() for v in kept.values() if v.is_floating_point())
    assert all(
        torch.equal(kept[k], snapshots[-1][k]) for k in kept if not k.startswith("head.readout")
    )


@pytest.mark.parametrize(
    ("neighbour_share", "space", "backbone_lr_ratio"),
    [(0.0, "pixels", 1.0), (0.5, "pixels", 1.0), (1.0, "features", 1.0), (0.0, "pixels", 0.1)],
)
def test_stop_request_saves_and_resume_continues_exactly(
    tmp_path, neighbour_share, space, backbone_lr_ratio
):
    stages = [
        Stage(2, 0.05, 1, 128, False),
        Stage(1, 0.05, 0, 2, True),
        Stage(2, 1e-4, 1, 2, False),
    ]

    def make(ckpt):
        torch.manual_seed(0)
        config = _config(
            stages,
            neighbour_share=neighbour_share,
            neighbour_k=3,
            neighbour_space=space,
            neighbour_refresh=1,
            backbone_lr_ratio=backbone_lr_ratio,  # ≠ 1: two optimizer groups to checkpoint
        )
        return Trainer(_net(), _images(), config, 7, ckpt)

    straight = make(None)
    straight.run()

    first = make(tmp_path)

    def stop_soon(t):
        if t.progress.stage == 2:
            t.stop_requested = True

    first.on_epoch_end = stop_soon
    with pytest.raises(Interrupted):
        first.run()
    second = make(tmp_path)
    assert second.resume()
    p = second.progress
    assert (p.stage, p.epoch, p.step) == (2, 1, 1)  # mid-epoch: one step into stage 3's epoch 2
    losses = second.run()
    flat = [v for stage in losses for v in stage]
    assert flat == pytest.approx([v for stage in straight.progress.losses for v in stage])
    probe = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(straight.net.eval()(probe), second.net.eval()(probe), atol=1e-5)


def test_largest_batch_size_halves_until_the_step_fits():
    tried = []

    def step(batch: int) -> None:
        tried.append(batch)
        if batch > 300:
            raise torch.OutOfMemoryError("CUDA out of memory")

    assert largest_batch_size(step, 2048) == 256
    assert tried == [2048, 1024, 512, 256]


def test_largest_batch_size_frees_memory_outside_the_failed_step(monkeypatch):
    # cuBLAS reports running out of memory as a RuntimeError; memory is freed only once the
    # traceback (which holds the failed step's tensors) is gone.
    freed_while_handling = []
    monkeypatch.setattr(
        "picmap.train.free_device_memory",
        lambda: freed_while_handling.append(sys.exc_info()[0] is not None),
    )

    def step(batch: int) -> None:
        if batch > 64:
            raise RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate")

    assert largest_batch_size(step, 512) == 64
    assert freed_while_handling == [False, False, False]


def test_largest_batch_size_passes_other_errors_on():
    def step(batch: int) -> None:
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        largest_batch_size(step, 512)


def test_pca_readout_starts_the_map_as_the_pca_of_the_previous_output():
    stages = [Stage(2, 0.05, 0, 128, False), Stage(0, 0.05, 0, 2, True)]
    trainer = Trainer(_net(), _images(), _config(stages, readout_init="pca"), 0)
    inputs = _images().float() / 255
    before = {}

    def keep_output(t: Trainer) -> None:
        before["z"] = t.net.eval()(inputs).detach()
        t.net.train()

    trainer.on_epoch_end = keep_output
    trainer.run()
    after = trainer.net.eval()(inputs).detach()
    centred = before["z"] - before["z"].mean(0)
    expected = centred @ torch.linalg.svd(centred, full_matrices=False).Vh[:2].T
    signs = torch.sign((after * expected).sum(0))  # principal axes are defined up to sign
    torch.testing.assert_close(after, expected * signs, atol=1e-4, rtol=1e-4)
    assert after.var(0)[0] > after.var(0)[1] > 0  # the first axis carries the most variance


def test_neighbour_positives_pair_each_image_with_a_pixel_neighbour(monkeypatch):
    images = _images(64, size=7)  # 49 pixels: the pixel PCA keeps every dimension
    views = []

    def keep_views(batch, size, gen, cfg):
        views.append(batch)
        return batch.float() / 255

    monkeypatch.setattr("picmap.train.augment", keep_views)
    config = _config([Stage(2, 0.01, 0, 128, False)], neighbour_share=1.0, neighbour_k=4)
    trainer = Trainer(_net(), images, config, 0)
    trainer.run()
    flat = images.flatten(1).float()
    roots = flat.sqrt()  # neighbours are found on the square roots of the pixels
    neighbours = torch.cdist(roots, roots).topk(5, largest=False).indices[:, 1:]  # not itself

    def index_of(rows):
        return torch.cdist(rows.flatten(1).float(), flat).argmin(1)

    pairs = [(index_of(a), index_of(b)) for a, b in zip(views[::2], views[1::2], strict=True)]
    assert len(pairs) == 2 * trainer.steps_per_epoch
    for first, second in pairs:
        assert (neighbours[first] == second[:, None]).any(1).all()


def test_time_estimate_leaves_out_the_first_step(monkeypatch, caplog):
    """The first step also pays for warm-up: here it takes 100 s on a fake clock, every other
    step 1 s, so the estimate must be 1 s a step over the schedule, not more."""
    clock = [0.0]
    monkeypatch.setattr("picmap.train.time.perf_counter", lambda: clock[0])

    def tick(*_):
        clock[0] += 100.0 if clock[0] == 0 else 1.0

    net = _net()
    net.register_forward_hook(tick)
    stages = [
        Stage(2, 0.01, 0, 128, False),
        Stage(1, 0.01, 0, 2, True),
        Stage(2, 1e-3, 0, 2, False),
    ]
    trainer = Trainer(net, _images(64), _config(stages), 0)
    with caplog.at_level("INFO", logger="picmap"):
        trainer.run()
    # 4 steps an epoch: 8 + 8 full steps, and 4 readout-only steps counted at 0.4.
    assert "estimated training time 18 s" in caplog.text


@pytest.mark.parametrize("mixed_precision", [True, False])
def test_without_mixed_precision_training_turns_tf32_off_and_restores_it(mixed_precision):
    seen = []
    config = _config([Stage(1, 0.05, 0, 2, False)], mixed_precision=mixed_precision)
    trainer = Trainer(_net(), _images(), config, 0)
    trainer.on_epoch_end = lambda _: seen.append(
        (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    )
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        trainer.run()
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (
            True,
            True,
        )
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before
    assert seen == [(True, True)] if mixed_precision else [(False, False)]


def test_feature_neighbours_are_found_after_stage_1_and_refreshed_in_stage_3(monkeypatch):
    found = []
    real = Trainer._feature_neighbours

    def record(trainer):
        found.append((trainer.progress.stage, trainer.progress.epoch))
        return real(trainer)

    monkeypatch.setattr(Trainer, "_feature_neighbours", record)
    partners_drawn = []
    monkeypatch.setattr(
        "picmap.train.draw_partners",
        lambda order, graph, share, gen: partners_drawn.append(share) or order.flip(0),
    )
    stages = [Stage(2, 0.05, 0, 128, False), Stage(1, 0.05, 0, 2, True)]
    stages.append(Stage(4, 0.05, 0, 2, False))
    config = _config(
        stages, neighbour_share=1.0, neighbour_k=3, neighbour_space="features", neighbour_refresh=2
    )
    trainer = Trainer(_net(), _images(), config, 0)
    trainer.run()
    assert found == [(1, 0), (2, 0), (2, 2)]  # stage 1 trains on views of each image alone
    assert partners_drawn == [1.0] * 5
    graph = trainer.neighbours()
    assert graph.shape == (32, 3) and not (graph == torch.arange(32)[:, None]).any()


def test_feature_neighbours_are_the_nearest_by_cosine_of_the_backbone_features():
    config = _config([Stage(1, 0.05, 0, 128, False)], neighbour_k=4, neighbour_space="features")
    trainer = Trainer(_net(), _images(), config, 0)
    trainer.net.eval()
    with torch.no_grad():
        f = torch.nn.functional.normalize(trainer.net.backbone(_images().float() / 255), dim=1)
    similarity = f @ f.T - 2 * torch.eye(len(f))
    expected = similarity.topk(4).indices
    assert torch.equal(trainer._feature_neighbours(), expected)


def test_a_checkpoint_with_a_foreign_neighbour_graph_is_refused(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    stages = [Stage(1, 0.05, 0, 128, False), Stage(1, 0.05, 0, 2, True)]
    config = _config(stages, neighbour_share=1.0, neighbour_k=3, neighbour_space="features")
    Trainer(_net(), _images(), config, 0, tmp_path).run()  # its last checkpoint has the graph
    path = tmp_path / "checkpoint.safetensors"
    tensors = load_file(path)
    assert tensors["neighbours"].shape == (32, 3)
    assert Trainer(_net(), _images(), config, 0, tmp_path).resume()
    with safe_open(str(path), "pt") as saved:
        meta = saved.metadata()
    tensors["neighbours"] = torch.full((32, 3), 99, dtype=torch.int32)
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(ValueError, match="neighbour graph names images that do not exist"):
        Trainer(_net(), _images(), config, 0, tmp_path).resume()


def test_a_backbone_lr_ratio_scales_the_backbone_learning_rate_alone():
    stages = [Stage(2, 0.05, 0, 128, False)]
    trainer = Trainer(_net(), _images(), _config(stages, backbone_lr_ratio=0.1), 0)
    seen = []
    trainer.on_epoch_end = lambda t: seen.append(list(t.optimizer.param_groups))
    trainer.run()
    backbone = {id(p) for p in trainer.net.backbone.parameters()}
    for first, second in seen:
        assert {id(p) for p in first["params"]} == backbone
        assert not backbone & {id(p) for p in second["params"]}
        assert first["lr"] == pytest.approx(0.1 * second["lr"]) and second["lr"] > 0
    assert len(seen) == 2


def test_feature_inputs_train_unaugmented_on_their_cosine_neighbours(monkeypatch):
    features = torch.randn(40, 6, generator=torch.Generator().manual_seed(0))
    net = EmbeddingNet(torch.nn.Identity(), 6, 16, 128)
    config = _config(
        [Stage(1, 0.05, 0, 128, False)], neighbour_share=1.0, neighbour_k=3, inputs="features"
    )
    trainer = Trainer(net, features, config, 0)
    fed = []
    forward = net.forward
    monkeypatch.setattr(net, "forward", lambda x: fed.append(x) or forward(x))
    trainer.run()
    unit = torch.nn.functional.normalize(features, dim=1)
    cosine = unit @ unit.T
    cosine.fill_diagonal_(-2)
    assert torch.equal(trainer.neighbours(), cosine.topk(3, dim=1).indices)
    rows = {tuple(row.tolist()) for row in features}
    assert fed and all(tuple(row.tolist()) in rows for x in fed for row in x)  # no augmentation
