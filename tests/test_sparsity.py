import pytest
import torch

from verisparse.errors import VeriSparseError
from verisparse.trainer import sparsity as sp
from verisparse.trainer.models import ARCHS, build_model, prunable


def _model(arch="cnn_4layer", shape=(1, 28, 28)):
    torch.manual_seed(0)
    return build_model(arch, shape, 10)


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.95, 0.99])
def test_erk_counts_are_exact(arch, sparsity):
    model = _model(arch)
    counts = sp.erk_counts(model, sparsity)
    sizes = [m.weight.numel() for _, m in prunable(model)]
    assert sum(counts) == round((1 - sparsity) * sum(sizes))
    assert all(1 <= c <= s for c, s in zip(counts, sizes))
    # ERK: small layers keep a larger share than big ones
    dens = [c / s for c, s in zip(counts, sizes)]
    assert dens[0] >= min(dens)


def test_random_mask_then_prune_regrow_keep_exact_counts():
    model = _model()
    gen = torch.Generator().manual_seed(0)
    sp.random_unstructured(model, 0.9, gen)
    before = [int(m.weight_mask.sum()) for _, m in prunable(model)]
    total = sp.sparsity_summary(model)["effective_params"]
    assert total == round(0.1 * sp.sparsity_summary(model)["dense_params"])
    grads = [torch.randn_like(m.weight) for _, m in prunable(model)]
    masks_before = [m.weight_mask.clone() for _, m in prunable(model)]
    moved = sp.prune_regrow(model, 0.3, grads)
    assert moved > 0
    assert [int(m.weight_mask.sum()) for _, m in prunable(model)] == before
    changed = sum(int((m.weight_mask != b).sum()) for (_, m), b in zip(prunable(model), masks_before))
    assert changed == 2 * moved
    for _, m in prunable(model):
        assert (m.weight[m.weight_mask == 0] == 0).all()
    sp.prune_regrow(model, 0.3, None, torch.Generator().manual_seed(1))
    assert [int(m.weight_mask.sum()) for _, m in prunable(model)] == before


def test_rigl_regrows_largest_gradients_and_drops_smallest_weights():
    model = build_model("mlp_2layer", (4,), 2)
    layer = prunable(model)[0][1]
    with torch.no_grad():
        layer.weight_mask.zero_()
        layer.weight_mask[0, :2] = 1
        layer.weight.zero_()
        layer.weight[0, 0], layer.weight[0, 1] = 0.01, 5.0
    grads = [torch.zeros_like(m.weight) for _, m in prunable(model)]
    grads[0][3, 2] = 7.0
    for _, m in prunable(model)[1:]:
        m.weight_mask.fill_(1)  # nothing to regrow there
    sp.prune_regrow(model, 0.5, grads)
    assert layer.weight_mask[0, 0] == 0 and layer.weight_mask[0, 1] == 1 and layer.weight_mask[3, 2] == 1
    assert layer.weight[3, 2] == 0  # regrown weights start at zero


def test_update_fraction_decays_to_zero():
    fr = [sp.update_fraction(s, 1000, 0.3, 0.75) for s in range(0, 1000, 50)]
    assert fr[0] == pytest.approx(0.3)
    assert all(a >= b for a, b in zip(fr, fr[1:]))
    assert sp.update_fraction(750, 1000, 0.3, 0.75) == 0


@pytest.mark.parametrize("arch", ["mlp_3layer", "cnn_4layer", "cnn_7layer"])
@pytest.mark.parametrize("sparsity", [0.5, 0.9])
def test_structured_counts_meet_the_budget_and_remove_next_layer_inputs(arch, sparsity):
    model = _model(arch)
    counts = sp.structured_counts(model, sparsity)
    sp.select_units(model, counts, torch.Generator().manual_seed(0))
    s = sp.sparsity_summary(model)
    budget = int((1 - sparsity) * s["dense_params"])
    assert s["effective_params"] <= budget
    assert s["effective_params"] >= 0.9 * budget  # the budget is used, not wasted
    assert counts[-1] == 10  # classes are never removed
    # the second layer's count reflects the first layer's removed units
    layers = prunable(model)
    m0, m1 = layers[0][1], layers[1][1]
    assert s["layers"][1]["effective"] == counts[1] * (m1.weight[0].numel() * counts[0] // m0.weight.shape[0])


def test_structured_parameter_budget_and_l2_selection():
    model = _model("mlp_2layer")
    counts = sp.structured_counts(model, budget=5000)
    assert sp._param_count(model, counts) <= 5000
    layer = prunable(model)[0][1]
    with torch.no_grad():
        layer.weight[7] *= 100
    sp.select_units(model, counts)
    assert layer.out_mask[7] == 1
    assert int(layer.out_mask.sum()) == counts[0]
    with pytest.raises(VeriSparseError):
        sp.structured_counts(model, budget=10)


def test_masked_layers_compute_with_effective_weights():
    model = _model()
    sp.select_units(model, sp.structured_counts(model, 0.7), torch.Generator().manual_seed(0))
    x = torch.rand(3, 1, 28, 28)
    first = prunable(model)[0][1]
    dead = (first.out_mask == 0).nonzero().squeeze(1)
    h = model[:2](x)
    assert (h[:, dead] == 0).all()


def test_gradual_density_follows_the_cubic_schedule():
    d = [sp.gradual_density(s, 100, 0.5, 0.05) for s in range(0, 121, 10)]
    assert d[0] == pytest.approx(0.5) and d[10] == d[12] == pytest.approx(0.05)
    assert all(a > b for a, b in zip(d[:10], d[1:11]))
    assert d[0] - d[1] > d[8] - d[9]  # fastest first
    assert sp.gradual_density(50, 100, 1.0, 0.1) == pytest.approx(0.1 + 0.9 / 8)


def test_thinning_keeps_the_largest_active_weights_and_ends_at_the_exact_budget():
    model = _model()
    sp.random_unstructured(model, 0.5, torch.Generator().manual_seed(0))
    final = sp.erk_counts(model, 0.95)
    layer = prunable(model)[1][1]
    with torch.no_grad():  # an active weight at exactly zero (just regrown) still outranks inactive ones
        layer.weight.view(-1)[torch.nonzero(layer.weight_mask.flatten())[0]] = 0.0
    for density in (0.3, 0.2, 0.1):
        before = [(m.weight_mask.clone(), (m.weight * m.weight_mask).abs()) for _, m in prunable(model)]
        removed = sp.thin_unstructured(model, density, final)
        counts = [int(m.weight_mask.sum()) for _, m in prunable(model)]
        assert removed == sum(int(b.sum()) for b, _ in before) - sum(counts) > 0
        assert counts == [max(f, min(n, int(b.sum()))) for f, n, (b, _) in
                          zip(final, sp.erk_counts(model, 1 - density), before)]
        for (_, m), (mask, mag) in zip(prunable(model), before):
            kept = m.weight_mask.bool()
            assert not (kept & ~mask.bool()).any()  # nothing grows back
            dropped = mask.bool() & ~kept
            if dropped.any():
                assert mag[dropped].max() <= mag[kept].min()
            assert (m.weight[~kept] == 0).all()
    sp.thin_unstructured(model, 0.05, final)
    assert [int(m.weight_mask.sum()) for _, m in prunable(model)] == final
    assert sp.thin_unstructured(model, 0.01, final) == 0  # never below the final count


@pytest.mark.parametrize("arch", ["mlp_3layer", "cnn_4layer", "cnn_7layer"])
def test_gradual_structured_counts_start_at_the_density_and_never_go_below_the_final(arch):
    model = _model(arch)
    final = sp.structured_counts(model, 0.95)
    units = [m.weight.shape[0] for _, m in prunable(model)]
    assert sp.gradual_structured_counts(model, 1.0, final) == units  # D = 1: dense
    dense = sp.sparsity_summary(model)["dense_params"]
    for density in (0.8, 0.5, 0.2, 0.06):
        counts = sp.gradual_structured_counts(model, density, final)
        assert all(c >= f for c, f in zip(counts, final))
        assert counts[-1] == units[-1]
        # the structured budget of that density (plus what the floor adds), not less
        assert sp._param_count(model, counts) >= 0.9 * density * dense
    assert sp.gradual_structured_counts(model, 0.05, final) == final


def test_structured_thinning_keeps_the_largest_norm_units_and_ends_at_the_final_counts():
    model = _model()
    final = sp.structured_counts(model, 0.95)
    sp.select_units(model, sp.gradual_structured_counts(model, 0.6, final), torch.Generator().manual_seed(0))
    weights = [m.weight.detach().clone() for _, m in prunable(model)]
    for density in (0.4, 0.2, 0.1):
        before = [(m.out_mask.clone(), sp.unit_norms(m)) for _, m in prunable(model)]
        target = sp.gradual_structured_counts(model, density, final)
        removed = sp.thin_structured(model, target, final)
        assert sp.kept_units(model) == [min(n, int(b.sum())) for n, (b, _) in zip(target, before)]
        assert removed == sum(int(b.sum()) for b, _ in before) - sum(sp.kept_units(model)) > 0
        for (_, m), (mask, norms) in zip(prunable(model), before):
            kept = m.out_mask.bool()
            assert not (kept & ~mask.bool()).any()  # dropped units keep large norms, yet never come back
            dropped = mask.bool() & ~kept
            if dropped.any():
                assert norms[dropped].max() <= norms[kept].min()
    # dropped units keep their weights (a later re-mask may revive them)
    assert all(torch.equal(w, m.weight) for w, (_, m) in zip(weights, prunable(model)))
    assert sp.thin_structured(model, final, final) > 0
    assert sp.kept_units(model) == final
    assert sp.thin_structured(model, [1] * len(final), final) == 0  # never below the final count
