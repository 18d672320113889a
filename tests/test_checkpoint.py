"""Safe model files: exact round trips, atomic writes, and refusal of pickles and foreign files."""

import json
import pickle

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import ndgeo
from ndgeo.checkpoint import load_model, save_model
from ndgeo.errors import NdgeoError
from ndgeo.nn import MLP, NDClassifier

META = {  # a complete, consistent file: the models below read 4 bands into 2 classes
    "bands": [{"name": "B02", "letter": "B"}, {"name": "B03", "letter": "G"},
              {"name": "B04", "letter": "R"}, {"name": "B08", "letter": "N"}],
    "classes": [{"id": 0, "name": "crop", "color": "#00ff00"}, {"id": 1, "name": "bare"}],
    "training": {"epochs": 3, "lr": 0.01},
    "metrics": {"val_accuracy": 0.875},
}


def _trained(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(128, 4, generator=g) + 0.01
    labels = (x[:, 3] > x[:, 2]).long()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), labels).backward()
        opt.step()
    return model.eval()


def _models():
    torch.manual_seed(0)
    mlp = MLP(4, 2, hidden=(6, 3))
    mlp.fit_standardizer(torch.rand(50, 4))
    return {
        "nd-stacked": NDClassifier(4, 2, n_indices=3, depth=2, band_scale=[1.0, 2.0, 0.5, 3.0]),
        "nd-pairwise": NDClassifier(4, 2, pairs=[(3, 2), (1, 0)], head_norm="affine"),
        "mlp": mlp,
    }


@pytest.mark.parametrize("name", ["nd-stacked", "nd-pairwise", "mlp"])
def test_round_trip_is_bit_identical(tmp_path, name):
    model = _trained(_models()[name])
    path = tmp_path / "model.safetensors"
    save_model(path, model, META)
    loaded, meta = load_model(path)
    assert not loaded.training
    x = torch.rand(64, 4) + 0.01
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    for key, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key
    assert meta["config"] == model.config()
    assert meta["ndgeo_version"] == ndgeo.__version__
    assert {k: meta[k] for k in META} == META
    if name.startswith("nd"):
        assert meta["eps"] == 1e-6
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no temp files left


def test_overwrite_and_failed_save_leave_a_valid_file(tmp_path):
    path = tmp_path / "model.safetensors"
    first, second = _models()["nd-stacked"], _trained(_models()["nd-stacked"])
    save_model(path, first, META)
    save_model(path, second, {**META, "metrics": {"val_accuracy": 0.9}, "training": None})
    loaded, meta = load_model(path)
    assert torch.equal(loaded.nd_layers[0].raw_pos, second.nd_layers[0].raw_pos)
    assert meta["metrics"] == {"val_accuracy": 0.9} and meta["training"] is None
    with pytest.raises(NdgeoError, match="JSON"):
        save_model(path, first, {"bad": object()})
    assert load_model(path)[1]["metrics"] == {"val_accuracy": 0.9}
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
    with pytest.raises(NdgeoError, match="config"):
        save_model(tmp_path / "linear.safetensors", nn.Linear(2, 1), META)


class _Payload:
    """Unpickling this calls open(marker, "w"), i.e. creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_crafted_pickle_is_refused_without_running_it(tmp_path, protocol):
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Payload(probe), protocol=protocol)).close()
    assert probe.exists()  # the payload is live: unpickling it does create a file

    marker = tmp_path / "marker"
    for name in ("evil.pkl", "evil.safetensors"):
        path = tmp_path / name
        path.write_bytes(pickle.dumps(_Payload(marker), protocol=protocol))
        with pytest.raises(NdgeoError, match=r"pickle|not a safetensors|truncated"):
            load_model(path)
    assert not marker.exists()


def test_torch_save_files_are_refused(tmp_path):
    model = _models()["nd-stacked"]
    for name, obj in (("state.pt", model.state_dict()), ("whole.pt", model)):
        path = tmp_path / name
        torch.save(obj, path)
        with pytest.raises(NdgeoError, match="pickle/torch.save"):
            load_model(path)


def test_truncated_empty_and_foreign_files_are_refused(tmp_path):
    path = tmp_path / "model.safetensors"
    save_model(path, _models()["nd-stacked"], META)
    data = path.read_bytes()
    for cut in (len(data) - 10, 40, 3, 0):
        truncated = tmp_path / f"cut{cut}.safetensors"
        truncated.write_bytes(data[:cut])
        with pytest.raises(NdgeoError):
            load_model(truncated)

    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, foreign, metadata={"format": "pt"})
    with pytest.raises(NdgeoError, match="without ndgeo metadata"):
        load_model(foreign)

    broken = tmp_path / "broken.safetensors"
    save_file({"weight": torch.zeros(2)}, broken, metadata={"ndgeo": "{not json"})
    with pytest.raises(NdgeoError, match="unreadable ndgeo metadata"):
        load_model(broken)

    unknown = tmp_path / "unknown.safetensors"
    save_file({"w": torch.zeros(2)}, unknown, metadata={"ndgeo": json.dumps({"config": {
        "kind": "no-such-kind"}})})
    with pytest.raises(NdgeoError, match="unknown model kind"):
        load_model(unknown)

    mismatched = tmp_path / "mismatched.safetensors"
    config = _models()["nd-stacked"].config()
    save_file({"w": torch.zeros(2)}, mismatched,
              metadata={"ndgeo": json.dumps({**META, "config": config})})
    with pytest.raises(NdgeoError, match="tensor .* is missing"):
        load_model(mismatched)

    with pytest.raises(NdgeoError, match="not found"):
        load_model(tmp_path / "missing.safetensors")
