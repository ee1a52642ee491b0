"""Synthesizer on tiny random models, 2D and 3D: geometry, units, seeds, guidance, errors, SDEdit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsynth import Synthesizer
from medsynth.errors import InputError
from medsynth.io.scan import Scan
from medsynth.sampling.samplers import make_sampler
from medsynth.seeding import derive_seed, torch_generator


@pytest.mark.parametrize("dims", [2, 3])
def test_scans_are_on_the_model_grid_with_metadata(dims: int, model2d, model3d) -> None:
    model = model2d if dims == 2 else model3d
    scans = Synthesizer(model)("nodule", "MR", num_samples=2, num_inference_steps=3, seed=7)
    assert len(scans) == 2
    for i, s in enumerate(scans):
        assert isinstance(s, Scan) and s.modality == "MR" and s.spatial_dims == dims
        assert s.array.shape == (1, *model.preprocessing.size) and s.array.dtype == np.float32
        np.testing.assert_array_equal(s.affine, model.preprocessing.output_affine())
        assert s.spacing == (2.5,) * dims
        assert s.metadata == {
            "pathology": "nodule",
            "seed": derive_seed(7, i),
            "sampler": "dpm++",
            "synthetic": True,
            "source_format": "synthetic",
        }
    assert scans[0].orientation == ("PL" if dims == 2 else "SPL")
    assert not np.array_equal(scans[0].array, scans[1].array)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++"])
@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_exact_denoiser_gives_guided_latent_decoded_in_hounsfield_units(
    model2d, make_oracle, sampler: str, guidance: float
) -> None:
    """With an exact denoiser every sampler ends at x0_u + g (x0_c - x0_u); the scan is its decode in HU."""
    model = make_oracle(model2d)
    oracle = model.unet
    synth = Synthesizer(model)
    scans = synth("mass", "CT", num_samples=3, num_inference_steps=6, guidance_scale=guidance, sampler=sampler)
    with torch.no_grad():
        cond = model.context(["mass"], ["CT"])
        x0_c, x0_u = oracle.clean(cond), oracle.clean(model.conditioner.null(1))
        expected_latent = x0_u + guidance * (x0_c - x0_u)
        x = model.decode(expected_latent)
        hu = (x.clamp(-1, 1) + 1) * 1000 - 1000  # linear CT window [-1000, 1000]
    for s in scans:
        np.testing.assert_allclose(s.array, hu[0].numpy(), atol=0.5)  # HU, float32 rounding
        assert s.array.min() >= -1000 and s.array.max() <= 1000
    # One UNet call per step: batch 2B with the null context first when guiding, else B.
    sizes = {b for b, _ in oracle.calls}
    assert sizes == ({6} if guidance != 1.0 else {3}) and len(oracle.calls) == 6
    if guidance != 1.0:
        ctx = oracle.calls[0][1]
        torch.testing.assert_close(ctx[:3], model.conditioner.null(3))
        torch.testing.assert_close(ctx[3:], cond.expand(3, -1, -1))


def test_unnamed_guidance_is_the_models_own_default(model2d, make_oracle) -> None:
    """guidance_scale=None (the default) samples with config.default_guidance_scale, named values win."""
    model = make_oracle(model2d)
    model.config.default_guidance_scale = 5.0
    synth = Synthesizer(model)
    assert synth.default_guidance_scale == 5.0
    own = synth("mass", "CT", num_samples=2, num_inference_steps=4, sampler="ddim")
    named = synth("mass", "CT", num_samples=2, num_inference_steps=4, sampler="ddim", guidance_scale=5.0)
    other = synth("mass", "CT", num_samples=2, num_inference_steps=4, sampler="ddim", guidance_scale=3.0)
    np.testing.assert_array_equal(own[0].array, named[0].array)
    assert not np.allclose(own[0].array, other[0].array, atol=1.0)
    model.unet.reset()
    synth.variation(own[0], strength=0.5, num_inference_steps=4, sampler="ddim")
    assert {b for b, _ in model.unet.calls} == {2}  # guided (batch [null; cond]) at the default 5
    model.config.default_guidance_scale = 1.0
    model.unet.reset()
    synth("mass", "CT", num_samples=3, num_inference_steps=4, sampler="ddim")
    assert {b for b, _ in model.unet.calls} == {3}  # default 1: conditional only, one pass per step


def test_rflow_model_samples_with_rflow_only(model_rflow, make_oracle) -> None:
    model = make_oracle(model_rflow, seed=3)
    synth = Synthesizer(model)
    assert synth.default_sampler == "rflow"
    scans = synth("normal", "CT", num_samples=2, num_inference_steps=5, guidance_scale=1.0)
    with torch.no_grad():
        x = model.decode(model.unet.clean(model.context(["normal"], ["CT"])))
    np.testing.assert_allclose(scans[1].array, model.preprocessing.denormalise(x, "CT")[0].numpy(), atol=0.5)
    assert scans[0].metadata["sampler"] == "rflow"
    with pytest.raises(InputError, match="needs a model trained as 'ddpm'"):
        synth("normal", "CT", sampler="dpm++")


@pytest.mark.parametrize("sampler", ["ddpm", "dpm++"])
def test_results_do_not_depend_on_batch_size(model2d, sampler: str) -> None:
    synth = Synthesizer(model2d)
    kw = dict(num_samples=4, num_inference_steps=4, sampler=sampler, seed=11)
    one = synth("nodule", "CT", batch_size=1, **kw)
    four = synth("nodule", "CT", batch_size=4, **kw)
    three = synth("nodule", "CT", batch_size=3, **kw)
    for a, b, c in zip(one, four, three, strict=True):
        np.testing.assert_allclose(a.array, b.array, atol=0.05)  # HU; float rounding only
        np.testing.assert_allclose(a.array, c.array, atol=0.05)
    assert np.abs(one[0].array - one[1].array).max() > 1.0


def test_seeds_are_deterministic_and_reproducible_alone(model2d) -> None:
    synth = Synthesizer(model2d)
    a = synth("normal", "MR", num_samples=3, num_inference_steps=3, sampler="ddpm", seed=5)
    b = synth("normal", "MR", num_samples=3, num_inference_steps=3, sampler="ddpm", seed=5)
    c = synth("normal", "MR", num_samples=1, num_inference_steps=3, sampler="ddpm", seed=6)
    assert all(np.array_equal(x.array, y.array) for x, y in zip(a, b, strict=True))
    assert np.abs(a[0].array - c[0].array).max() > 1.0
    # The per-sample seed recorded in the metadata regenerates that sample alone, in any company.
    again = synth.generate(
        ["mass", "normal"], ["CT", "MR"], [1, a[2].metadata["seed"]], num_inference_steps=3, sampler="ddpm"
    )
    np.testing.assert_allclose(again[1].array, a[2].array, atol=0.05)
    assert again[0].modality == "CT" and again[0].metadata["pathology"] == "mass"


def test_several_pathologies_in_one_scan(model2d, make_oracle) -> None:
    model = make_oracle(model2d)
    oracle = model.unet
    synth = Synthesizer(model)
    both = synth(["nodule", "mass"], "CT", num_inference_steps=2)[0]
    assert both.metadata["pathology"] == "nodule|mass"
    ctx = oracle.calls[-1][1][1:]
    torch.testing.assert_close(ctx, model.context([["nodule", "mass"]], ["CT"]))
    single = synth("nodule", "CT", num_inference_steps=2)[0]
    assert np.abs(both.array - single.array).max() > 0.1


def test_one_modality_model_needs_no_modality(make_tiny) -> None:
    m = make_tiny(2)
    m.config.modalities = ["CT"]
    assert Synthesizer(m)("normal", num_inference_steps=1)[0].modality == "CT"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pathology": "fracture"}, "unknown pathology 'fracture'; this model knows ['normal', 'nodule', 'mass']"),
        ({"pathology": []}, "pathology=[]: expected a label or a non-empty list"),
        ({"pathology": ["nodule", "tumour"]}, "unknown pathology 'tumour'"),
        ({"modality": "PET"}, "unknown modality 'PET'; this model knows ['CT', 'MR']"),
        ({"modality": None}, "modality is required for this model; choose one of ['CT', 'MR']"),
        ({"sampler": "heun"}, "sampler 'heun' is unknown; choose one of ['ddpm', 'ddim', 'dpm++']"),
        ({"sampler": "rflow"}, "sampler 'rflow' needs a model trained as 'rflow'"),
        ({"num_inference_steps": 0}, "num_inference_steps=0: expected an integer from 1 to 1000"),
        ({"num_inference_steps": 5000}, "num_inference_steps=5000"),
        ({"guidance_scale": -1.0}, "guidance_scale=-1.0: expected a number in [0, 20]"),
        ({"guidance_scale": float("nan")}, "guidance_scale=nan"),
        ({"guidance_scale": 25}, "guidance_scale=25"),
        ({"num_samples": 0}, "num_samples=0: expected a positive integer"),
        ({"batch_size": 0}, "batch_size=0: expected a positive integer"),
        ({"seed": -3}, "seed=-3: expected a non-negative integer"),
        ({"seed": 1.5}, "seed=1.5"),
    ],
)
def test_bad_arguments_raise_input_error_naming_value_and_choices(model2d, kwargs: dict, message: str) -> None:
    args = {"pathology": "nodule", "modality": "CT", "num_inference_steps": 2, **kwargs}
    with pytest.raises(InputError) as err:
        Synthesizer(model2d)(**args)
    assert message in str(err.value)


def test_bad_decode_window_is_refused(model3d) -> None:
    with pytest.raises(InputError, match="decode_window=0: expected a positive number of latent rows"):
        Synthesizer(model3d, decode_window=0)
    with pytest.raises(InputError, match=r"decode_window=\[4, 4, 4\]"):
        Synthesizer(model3d, decode_window=[4, 4, 4])


def _source_scan(model) -> Scan:
    """A CT scan on a different grid from the model's (the variation resamples it)."""
    size = model.preprocessing.size[0] + 4
    yy, xx = np.mgrid[:size, :size]
    arr = np.where((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2, 40.0, -900.0)
    aff = np.diag([-2.0, -2.0, 3.0, 1.0])[[1, 0, 2, 3]]  # rows posterior, columns left
    aff[:3, 3] = [10.0, -20.0, 5.0]
    return Scan(arr[None].astype(np.float32), aff, "CT", {"pathology": "nodule"})


def test_variation_strength_zero_is_the_reconstruction(model2d) -> None:
    scan = _source_scan(model2d)
    out = Synthesizer(model2d).variation(scan, strength=0.0, num_samples=2, num_inference_steps=4)
    with torch.no_grad():
        recon = model2d.decode(model2d.encode(model2d.preprocessing.to_model(scan)[None]))
        hu = model2d.preprocessing.denormalise(recon, "CT")[0].numpy()
    for s in out:
        np.testing.assert_allclose(s.array, hu, atol=0.05)
        np.testing.assert_array_equal(s.affine, model2d.preprocessing.output_affine())
        assert s.metadata["pathology"] == "nodule" and s.modality == "CT"


def test_variation_moves_with_strength_and_takes_a_new_condition(model2d, make_oracle) -> None:
    model = make_oracle(model2d)
    oracle = model.unet
    scan = _source_scan(model)
    synth = Synthesizer(model)
    full = synth.variation(
        scan, strength=1.0, pathology="mass", modality="MR", num_inference_steps=5, guidance_scale=1.0
    )
    assert len(oracle.calls) == 5 and full[0].modality == "MR" and full[0].metadata["pathology"] == "mass"
    with torch.no_grad():  # an exact denoiser lands on its target whatever the start
        x = model.decode(oracle.clean(model.context(["mass"], ["MR"])))
    np.testing.assert_allclose(full[0].array, model.preprocessing.denormalise(x, "MR")[0].numpy(), atol=0.5)

    # strength 0.4 of 5 steps: start from the source latent noised to step 3, run steps 3 and 4.
    oracle.reset()
    synth.variation(scan, strength=0.4, num_inference_steps=5, seed=2, sampler="ddim", guidance_scale=1.0)
    schedule = make_sampler("ddim", model.make_scheduler(), "ddpm", 5, model.latent_shape).timesteps
    assert [int(t) for t in oracle.timesteps] == [int(t) for t in schedule[3:]]
    with torch.no_grad():
        z0 = model.encode(model.preprocessing.to_model(scan)[None])
        noise = torch.randn(model.latent_shape, generator=torch_generator(derive_seed(2, 0), "initial-noise"))
        t3 = oracle.timesteps[0].reshape(1)
        expected_start = model.make_scheduler().add_noise(z0, noise[None], t3)
    torch.testing.assert_close(oracle.inputs[0], expected_start, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"strength": 1.5}, "strength=1.5: expected a number in [0, 1]"),
        ({"strength": -0.1}, "strength=-0.1"),
        ({"pathology": "fracture"}, "unknown pathology 'fracture'"),
    ],
)
def test_variation_bad_arguments(model2d, kwargs: dict, message: str) -> None:
    with pytest.raises(InputError) as err:
        Synthesizer(model2d).variation(_source_scan(model2d), **kwargs)
    assert message in str(err.value)


def test_variation_without_pathology_metadata_asks_for_one(model2d) -> None:
    scan = _source_scan(model2d)
    scan.metadata.pop("pathology")
    with pytest.raises(InputError, match="pass pathology="):
        Synthesizer(model2d).variation(scan)


def test_variation_refuses_a_scan_of_the_wrong_dimensionality(model3d) -> None:
    with pytest.raises(InputError, match="scan is 2D but the model grid is 3D"):
        Synthesizer(model3d).variation(_source_scan(model3d), pathology="normal")
