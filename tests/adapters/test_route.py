import numpy as np
import pytest

from adapters import RouteConfig, RouteError, register_scheme, route, scheme_names
from adapters.route import RouteInputs, UnknownSchemeError, needs_keys, needs_losses

# Three shards; validation samples 0-1 lie near the query, 2-3 far from it.
QUERY = np.array([1.0, 0.0])
INPUTS = RouteInputs(
    query=QUERY,
    centroids=np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]),
    validation=np.array([[1.0, 0.0], [0.99, 0.14], [0.0, 1.0], [-1.0, 0.0]]),
    # Shard 1 has the lowest loss near the query; shard 0 the lowest far from it.
    losses=np.array([[2.0, 2.0, 0.1, 0.1],
                     [0.5, 0.5, 3.0, 3.0],
                     [1.0, 1.0, 1.0, 1.0]]),
)
SHARDS = [0, 1, 2]


def weights(**config) -> dict[int, float]:
    return route(INPUTS, RouteConfig(quantum=0, **config), SHARDS)


def test_apa_weights_favour_the_shard_with_the_lowest_loss_on_the_request_neighbours():
    w = weights(scheme="apa", neighbours=2, tau=1.0)
    expected = np.exp([-2.0, -0.5, -1.0]) / np.exp([-2.0, -0.5, -1.0]).sum()
    assert list(w.values()) == pytest.approx(expected, abs=1e-6)


def test_tau_zero_gives_uniform_weights():
    assert list(weights(scheme="apa", tau=0.0).values()) == pytest.approx([1 / 3] * 3)


def test_semantic_weights_favour_the_nearest_centroid():
    w = weights(scheme="semantic", tau=10.0)
    assert max(w, key=w.get) == 0


def test_nearest_attends_over_the_nearest_training_prompts_of_each_shard():
    # five training prompts: two of shard 2 near the query, the others far from it
    keys = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0], [0.6, -0.8]])
    inputs = RouteInputs(query=QUERY, centroids=INPUTS.centroids, keys=keys,
                         key_rows=np.array([2, 2, 0, 1, 0]))
    w = route(inputs, RouteConfig(scheme="nearest", neighbours=3, tau=2.0, quantum=0), SHARDS)
    a = np.exp(2.0 * np.array([1.0, 0.8, 0.6]))  # the three nearest: shard 2, 2, 0
    assert w[2] == pytest.approx((a[0] + a[1]) / a.sum(), abs=1e-6)
    assert w[0] == pytest.approx(a[2] / a.sum(), abs=1e-6)
    assert 1 not in w  # no training prompt of shard 1 among the nearest
    with pytest.raises(RouteError, match="routing keys"):
        route(INPUTS, RouteConfig(scheme="nearest"), SHARDS)
    assert [s for s in scheme_names() if needs_keys(s)] == ["nearest"]


def test_major_puts_all_weight_on_one_shard():
    assert weights(scheme="major", neighbours=2) == {1: 1.0}


def test_excluded_shards_get_zero_weight():
    w = route(INPUTS, RouteConfig(scheme="uniform", quantum=0), SHARDS, excluded={1})
    assert w == {0: 0.5, 2: 0.5}
    assert route(INPUTS, RouteConfig(scheme="uniform"), SHARDS, excluded={0, 1, 2}) == {}


def test_top_m_and_quantisation():
    w = route(INPUTS, RouteConfig(scheme="apa", neighbours=2, tau=1.0, top_m=2, quantum=0.1),
              SHARDS)
    assert set(w) == {1, 2}  # the two lowest-error shards
    assert sum(w.values()) == pytest.approx(1.0)
    assert all(round(x * 10, 6) == round(x * 10) for x in w.values())


def test_apa_without_a_loss_table_says_what_it_needs():
    inputs = RouteInputs(query=QUERY, centroids=INPUTS.centroids)
    with pytest.raises(RouteError, match="validation"):
        route(inputs, RouteConfig(scheme="apa"), SHARDS)
    # the registry says which schemes read the loss table (a store without one serves semantic)
    assert [s for s in scheme_names() if needs_losses(s)] == ["apa", "major"]
    route(inputs, RouteConfig(scheme="semantic"), SHARDS)


def test_scheme_registry_refuses_duplicates_and_lists_names():
    with pytest.raises(ValueError, match="already registered"):
        register_scheme("apa", lambda i, c: None)
    assert scheme_names() == ["apa", "major", "nearest", "semantic", "uniform"]
    with pytest.raises(UnknownSchemeError, match="registered: apa, major"):
        route(INPUTS, RouteConfig.model_construct(scheme="nope", quantum=0), SHARDS)
