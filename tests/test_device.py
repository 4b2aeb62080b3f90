"""The ``device`` option (Evaluator, SymbreakCalculator, serve, run): the CPU path gives the
numbers of the default, a device torch cannot use is refused when it is given, naming
it; on a machine with CUDA the GPU path equals the CPU in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import REPO, export_tiny, small_water
from symbreak import exit_codes
from symbreak.engines.ase import SymbreakCalculator
from symbreak.evaluator import Evaluator, Structure, resolve_device
from symbreak.export import load_model

CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    return load_model(export_tiny(tmp_path_factory.mktemp("model") / "tiny.pt", seed=1))


@pytest.mark.parametrize("policy", ["none", "lebedev:3+inv", "random+seed=4"])
def test_cpu_device_gives_the_default_numbers(loaded, policy):
    atoms = small_water(seed=2)
    default = Evaluator(loaded, dtype=torch.float64).compute(Structure.from_atoms(atoms), policy)
    on_cpu = Evaluator(loaded, dtype=torch.float64, device="cpu")
    result = on_cpu.compute(Structure.from_atoms(atoms), policy)
    assert on_cpu.device == torch.device("cpu")
    assert result[0].energy == default[0].energy
    np.testing.assert_array_equal(result[0].forces, default[0].forces)
    np.testing.assert_array_equal(result[0].virial, default[0].virial)


@pytest.mark.parametrize(
    "device, message",
    [
        ("gpu", "is not a torch device"),
        ("mps", "runs on 'cpu' or 'cuda"),
        pytest.param("cuda", "sees no CUDA", marks=pytest.mark.skipif(CUDA, reason="has CUDA")),
        ("cuda:99", "sees no CUDA" if not CUDA else "CUDA device"),
    ],
)
def test_unusable_devices_are_refused_when_given(loaded, device, message):
    with pytest.raises(ValueError, match=message):
        resolve_device(device)
    with pytest.raises(ValueError, match=message):
        Evaluator(loaded, device=device)
    with pytest.raises(ValueError, match=message):
        SymbreakCalculator(loaded, device=device)


def test_calculator_sharing_an_evaluator_must_agree_on_the_device(loaded):
    shared = Evaluator(loaded)
    assert SymbreakCalculator(shared, device="cpu").evaluator is shared
    if CUDA:
        with pytest.raises(ValueError, match="differs from the shared Evaluator's"):
            SymbreakCalculator(shared, device="cuda")


def test_serve_and_run_refuse_an_unusable_device_before_starting(loaded, capsys):
    from symbreak.cli import main

    model = str(loaded.path)
    xml = str(REPO / "ipi_inputs" / "nvt_water64" / "input.xml")
    template = str(REPO / "ipi_inputs" / "nvt_water64" / "water_64h2o.xyz")
    serve = ["serve", "--model", model, "--address", "x", "--template", template]
    assert main([*serve, "--device", "gpu"]) == exit_codes.USAGE
    assert "device 'gpu'" in capsys.readouterr().err
    assert main(["run", xml, "--model", model, "--device", "mps", "--dry-run"]) == (
        exit_codes.USAGE
    )
    assert "--device" in capsys.readouterr().err


@pytest.mark.skipif(not CUDA, reason="no CUDA device here (benchmarks/gpu.sh on a GPU machine)")
@pytest.mark.parametrize("policy", ["none", "lebedev:3+inv"])
def test_cuda_equals_cpu_in_float64(loaded, policy):
    atoms = small_water(seed=3)
    cpu = Evaluator(loaded, dtype=torch.float64).compute(Structure.from_atoms(atoms), policy)[0]
    gpu = Evaluator(loaded, dtype=torch.float64, device="cuda")
    result = gpu.compute(Structure.from_atoms(atoms), policy)[0]
    assert abs(result.energy - cpu.energy) < 1e-10 * abs(cpu.energy)
    np.testing.assert_allclose(result.forces, cpu.forces, atol=1e-10)
    np.testing.assert_allclose(result.virial, cpu.virial, atol=1e-9)


def _tiny_pet_and_graph():
    from test_direct_forces import graph_tensors

    from helpers import water_frame
    from symbreak.model import PET, PETConfig

    torch.manual_seed(0)
    cfg = dict(d_model=16, n_heads=2, d_ff=32, n_mp_layers=2, n_transformer_layers=1)
    model = PET(PETConfig(species=[1, 8], three_body=True, **cfg)).double()
    for p in model.parameters():  # non-zero readouts and priors
        torch.nn.init.normal_(p, std=0.2)
    return model, graph_tensors(model, water_frame())


def test_the_layers_chunk_size_follows_the_device():
    """The CPU runs the layers and priors in cache-sized chunks, a CUDA device whole
    (``layer_chunk_edges_cuda``): chosen by where the vectors are, not by a setting."""
    model, args = _tiny_pet_and_graph()
    vectors = args[3]
    assert model._layer_chunk_edges(vectors) == model.layer_chunk_edges > 0
    assert model.layer_chunk_edges_cuda == 0
    if CUDA:
        assert model._layer_chunk_edges(vectors.cuda()) == 0


@pytest.mark.skipif(not CUDA, reason="no CUDA device here (benchmarks/gpu.sh on a GPU machine)")
def test_cuda_runs_the_layers_whole_with_the_chunked_cpu_numbers():
    """Float64: the GPU's whole-graph layers and priors give the energies and gradients of
    the CPU's chunks (300 edges: several chunks on this frame)."""
    model, args = _tiny_pet_and_graph()
    model.layer_chunk_edges = 300
    assert args[1].shape[0] > 3 * 300

    def energies_and_gradient(m, tensors):
        vectors = tensors[3].clone().requires_grad_(True)
        inputs = (*tensors[:3], vectors, tensors[4])
        eps = m.learned_energies(*inputs) + m.prior_energies(*inputs[:4])
        (grad,) = torch.autograd.grad(eps.sum(), vectors)
        return eps.detach().cpu(), grad.cpu()

    eps_cpu, grad_cpu = energies_and_gradient(model, args)
    eps_gpu, grad_gpu = energies_and_gradient(model.cuda(), tuple(t.cuda() for t in args))
    torch.testing.assert_close(eps_gpu, eps_cpu, rtol=0, atol=1e-10)
    torch.testing.assert_close(grad_gpu, grad_cpu, rtol=0, atol=1e-10)
