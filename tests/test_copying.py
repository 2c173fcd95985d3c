"""The data-copying figures (genlit.metrics.copying): known answers on hand-made and real features."""

from __future__ import annotations

import math

import pytest
import torch

from datamodules.images import Digits
from genlit.errors import GenlitError
from genlit.metrics.copying import (
    Copying,
    c_t_statistic,
    copying_sides,
    member_share,
    memorization_distance,
    mifid,
    nearest,
)
from genlit.metrics.features import load_features
from genlit.metrics.fid import ReferenceStats, real_batches, to_uint8


def test_c_t_is_the_papers_z_scored_mann_whitney_u_on_a_hand_checked_case():
    # One cell around one training point at 0: held-out distances 1, 2, 3; samples 0.5, 1.5.
    # U counts (sample, held-out) pairs with the sample farther: only (1.5, 1): U = 1.
    # z = (U - (m n / 2 - 0.5)) / sqrt(m n (m + n + 1) / 12) = (1 - 2.5) / sqrt(3).
    train = torch.zeros(1, 1)
    held = torch.tensor([[1.0], [2.0], [3.0]])
    samples = torch.tensor([[0.5], [1.5]])
    c_t, cells = c_t_statistic(samples, held, train, torch.zeros(1, 1), min_cell_samples=1)
    assert cells == 1
    assert c_t == pytest.approx(-1.5 / math.sqrt(3))
    # The paper skips cells with too few samples: here the only cell, so no value.
    c_t, cells = c_t_statistic(samples, held, train, torch.zeros(1, 1), min_cell_samples=3)
    assert cells == 0 and math.isnan(c_t)


def test_nearest_searches_in_chunks_and_finds_the_exact_neighbour(monkeypatch):
    import genlit.metrics.copying as copying

    monkeypatch.setattr(copying, "_ELEMENTS", 64)  # 4 queries per chunk against 16 points
    reference = torch.arange(16.0)[:, None] * torch.ones(1, 3)
    queries = reference[[3, 7, 15, 0, 9, 2, 2, 11, 5]] + 0.25
    distances, index = nearest(queries, reference)
    assert index.tolist() == [3, 7, 15, 0, 9, 2, 2, 11, 5]
    torch.testing.assert_close(distances, torch.full((9,), 0.25 * math.sqrt(3)))
    cosine, _ = nearest(torch.tensor([[1.0, 0.0], [0.0, -2.0]]), torch.tensor([[0.0, 1.0]]), cosine=True)
    torch.testing.assert_close(cosine, torch.tensor([1.0, 0.0]))  # 1 - |cos|: the sign is ignored


def test_mifid_divides_the_fid_only_below_the_threshold():
    assert mifid(10.0, 0.05) == pytest.approx(200.0)
    assert mifid(10.0, 0.2) == 10.0
    same = torch.randn(20, 4)
    assert memorization_distance(same, same) == pytest.approx(0.0, abs=1e-6)


@pytest.fixture(scope="module")
def digit_features():
    """Digit-classifier features of every Digits image (1,797), in a fixed random order, and
    the images themselves."""
    network = load_features("digits")
    images = torch.cat(list(real_batches(Digits(image_size=16, batch_size=512, val_fraction=0.0), "train")))
    assert len(images) == 1797
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    images = images[order]
    with torch.no_grad():
        features = torch.cat([network(chunk) for chunk in images.split(256)])
    return network, images, features


def figures(train, held, samples, **kwargs):
    metric = Copying(train, held, **kwargs)
    metric.update(samples)
    return metric.compute()


def test_held_out_images_generalise_and_noisy_training_images_copy(digit_features):
    network, images, features = digit_features
    train, held, fresh = features[:1000], features[1000:1400], features[1400:]
    real = figures(train, held, fresh)
    assert abs(real["c_t"]) < 2 and 0.85 < real["nn_ratio"] < 1.15
    assert real["closer_share"] < 0.12  # about 5% by construction
    # The first 400 training images, lightly changed (pixel noise of 4 grey levels).
    noise = torch.randint(-4, 5, images[:400].shape, generator=torch.Generator().manual_seed(1))
    copies = (images[:400].int() + noise).clamp(0, 255).to(torch.uint8)
    with torch.no_grad():
        copied = figures(train, held, network(copies))
    assert copied["c_t"] < -5 and copied["nn_ratio"] < 0.5 and copied["closer_share"] > 0.5
    assert copied["memorization"] < real["memorization"]


def test_a_blurred_mixture_far_from_the_data_underfits(digit_features):
    network, images, features = digit_features
    train, held = features[:1000], features[1000:1400]
    # Averages of random pairs of real digits, blurred: blobs between the digits.
    g = torch.Generator().manual_seed(2)
    a, b = images[torch.randint(1797, (400,), generator=g)], images[torch.randint(1797, (400,), generator=g)]
    mixed = (a.float() + b.float()) / 2
    blurred = torch.nn.functional.avg_pool2d(mixed, 3, stride=1, padding=1)
    with torch.no_grad():
        far = figures(train, held, network(blurred.round().to(torch.uint8)))
    assert far["c_t"] > 2 and far["nn_ratio"] > 1.2


def test_the_member_test_is_a_coin_for_held_out_images_and_certain_for_the_members(digit_features):
    _, _, features = digit_features
    members, others = features[:300], features[300:600]
    assert 0.4 < member_share(features[1000:1400], members, others) < 0.6
    assert member_share(members, members, others) == 1.0
    # Through the metric: the members given as indices into the training features.
    found = figures(
        features[:1000], features[1000:1400], features[:300],
        members=torch.arange(300), non_members=others,
    )  # fmt: skip
    assert found["member_share"] == 1.0


def test_bad_input_gets_one_clear_line(digit_features):
    _, _, features = digit_features
    with pytest.raises(GenlitError, match="needs at least 60 samples.*raise num_samples or lower copying_cells"):
        figures(features[:1000], features[1000:1400], features[1400:1440], cells=60)
    with pytest.raises(GenlitError, match="member and non-member"):
        member_share(features[:10], features[:0], features[10:20])

    class NoTestSplit:
        pass

    stats = ReferenceStats.from_features(features[:100], {"split": "train"}, (1, 16, 16))

    def load(split):
        if split == "test":
            raise GenlitError("NoTestSplit has no test split")
        return stats

    with pytest.raises(GenlitError, match="no held-out split.*give the datamodule a test split, or set copying: off"):
        copying_sides(NoTestSplit(), "train", stats, load)

    class NoState:
        def copying_members(self):
            return None

    train, held, members, others, cache = copying_sides(NoTestSplit(), "test", stats, lambda split: stats, NoState())
    assert members is None and others is None and len(train) == len(held) == 100
    assert cache is None  # statistics never saved: nothing to name a cache file after


def test_to_uint8_round_trip_keeps_copies_exact(digit_features):
    _, images, features = digit_features
    # A model that returns training images exactly: distance 0, all "closer" than real images.
    network = load_features("digits")
    with torch.no_grad():
        exact = network(to_uint8(images[:50].float() / 127.5 - 1))
    torch.testing.assert_close(exact, features[:50])


def test_the_held_out_side_is_cached_and_a_second_metric_gives_the_same_figures(digit_features, tmp_path):
    _, _, features = digit_features
    train, held, samples = features[:1000], features[1000:1400], features[1400:]
    paths = []

    def cache_file(cells):
        paths.append(tmp_path / f"held-{cells}.pt")
        return paths[-1]

    first = Copying(train, held, cache_file=cache_file)
    first.update(samples)
    cold = first.compute()
    assert paths and paths[-1].is_file()
    second = Copying(train, held, cache_file=cache_file)
    second.update(samples)
    import genlit.metrics.copying as copying

    calls = []
    original = copying.kmeans_cells
    copying.kmeans_cells = lambda *a, **k: calls.append(a) or original(*a, **k)
    try:
        warm = second.compute()
    finally:
        copying.kmeans_cells = original
    assert calls == []  # read from the file, not fitted again
    assert warm == cold
    # A file of other sizes (other data) is a miss, not a wrong answer.
    third = Copying(train[:900], held, cache_file=cache_file)
    third.update(samples)
    assert third.compute()["c_t_cells"] >= 1


def test_one_pass_search_matches_the_two_searches(digit_features):
    _, _, features = digit_features
    from genlit.metrics.copying import nearest_both

    euclid, index, cosine = nearest_both(features[1400:], features[:1000])
    want, want_index = nearest(features[1400:], features[:1000])
    torch.testing.assert_close(euclid, want, rtol=1e-4, atol=1e-4)
    assert (index == want_index).float().mean() > 0.99  # ties aside
    torch.testing.assert_close(cosine, nearest(features[1400:], features[:1000], cosine=True)[0], rtol=1e-4, atol=1e-5)


def test_the_member_sides_come_from_the_models_positions(tmp_path):
    from genlit.metrics.fid import FeatureDistances, reference_statistics

    datamodule = Digits(image_size=16, batch_size=256, val_fraction=0.1, indices=True)
    distances = FeatureDistances(load_features("digits"), (1, 16, 16), kid=False, copying=True)

    def load(split):
        return reference_statistics(datamodule, split, distances, tmp_path)

    reference = load("train")

    class Holds:
        def __init__(self, positions):
            self.positions = positions

        def copying_members(self):
            return self.positions

    from genlit.metrics.fid import real_positions

    positions = real_positions(datamodule, "train")
    assert len(positions) == 1617 and len(set(positions.tolist())) == 1617
    # A model holding 300 training images: 300 members against 300 other training images.
    train, held, members, others, cache = copying_sides(datamodule, "train", reference, load, Holds(positions[:300]))
    assert len(members) == len(others) == 300
    assert set(members.tolist()) == set(range(300))  # rows of those images in the training features
    # A model holding every training image: the held-out images are the non-members.
    _, held, members, others, _ = copying_sides(datamodule, "train", reference, load, Holds(positions))
    assert len(members) == len(others) == len(held) == 180
    assert cache is not None and cache(3).parent == tmp_path
    # Positions of another dataset: one clear line.
    with pytest.raises(GenlitError, match="holds no image of this training split"):
        copying_sides(datamodule, "train", reference, load, Holds(torch.tensor([10**6])))
    # A datamodule without positions: the line names the switch.
    plain = Digits(image_size=16, batch_size=256, val_fraction=0.1)
    with pytest.raises(GenlitError, match="indices: true"):
        copying_sides(plain, "train", reference, load, Holds(positions[:10]))


def test_the_figures_names_are_the_stats_fields():
    from genlit.metrics.copying import FIGURES, CopyingStats

    assert tuple(CopyingStats.__annotations__) == FIGURES
