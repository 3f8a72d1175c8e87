"""The prediction ensemble: its probabilities are the mean of its members' softmax outputs."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from ofexp.errors import ConfigError
from ofexp.models import ModelSpec, build_model
from ofexp.models.ensemble import Ensemble, EnsembleSpec, build_ensemble, spec_from_dict

MLP = ModelSpec("mlp", num_classes=10, in_channels=1, input_size=32, width=0.125)


def _members() -> list[torch.nn.Module]:
    """Three different networks on the same inputs: two MLPs (one with batch-norm) and a VGG11."""
    torch.manual_seed(0)
    specs = [MLP, ModelSpec("mlp", 10, 1, 32, width=0.25, bias=True, batchnorm=True),
             ModelSpec("vgg11", 10, 1, 32, width=0.125)]
    return [build_model(s).eval() for s in specs]


def test_predictions_are_the_mean_of_the_members_softmax():
    members = _members()
    ensemble = Ensemble(members).eval()
    x = torch.randn(16, 1, 32, 32)  # [B, C, H, W]
    with torch.no_grad():
        expected = torch.stack([F.softmax(m(x), dim=1) for m in members]).mean(dim=0)  # [B, classes]
        out = ensemble(x)  # log of the mean probabilities
    assert torch.allclose(ensemble.predict_proba(x), expected, atol=1e-7)
    assert torch.allclose(F.softmax(out, dim=1), expected, atol=1e-6)
    assert torch.allclose(out.exp().sum(dim=1), torch.ones(16), atol=1e-6)  # already normalised
    assert torch.equal(out.argmax(dim=1), expected.argmax(dim=1))
    # cross-entropy of the output is the ensemble's negative log-likelihood
    y = torch.randint(0, 10, (16,))
    nll = -expected[torch.arange(16), y].log().mean()
    assert torch.allclose(F.cross_entropy(out, y), nll, atol=1e-5)


def test_a_confident_member_does_not_underflow_to_minus_infinity():
    members = _members()[:2]
    with torch.no_grad():
        for m in members:
            m.classifier.weight.mul_(1e4)  # each member's softmax is one-hot in float32
        x = torch.randn(4, 1, 32, 32)
        naive = torch.stack([F.softmax(m(x), dim=1) for m in members]).mean(dim=0).log()
        out = Ensemble(members).eval()(x)
    assert not torch.isfinite(naive).all()  # log of the mean probabilities underflows ...
    assert torch.isfinite(out).all()  # ... logsumexp of the log-probabilities does not


def test_spec_round_trips_through_json_and_rebuilds_the_same_function():
    ensemble = Ensemble(_members()).eval()
    blob = json.loads(json.dumps(ensemble.spec.to_dict()))
    spec = spec_from_dict(blob)
    assert spec == ensemble.spec and spec.arch == "ensemble" and spec.num_classes == 10
    rebuilt = build_ensemble(spec)
    rebuilt.load_state_dict(ensemble.state_dict())
    x = torch.randn(5, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), ensemble(x))
    assert spec_from_dict(MLP.to_dict()) == MLP  # a plain spec stays a plain spec


@pytest.mark.parametrize("members,words", [
    ((MLP,), "at least 2"),
    ((MLP, ModelSpec("mlp", 100, 1, 32, width=0.125)), "num_classes"),
    ((MLP, ModelSpec("mlp", 10, 3, 32, width=0.125)), "in_channels"),
])
def test_members_that_do_not_fit_together_are_refused(members, words):
    with pytest.raises(ConfigError, match=words):
        EnsembleSpec(members)


def test_unknown_combination_rule_is_refused():
    blob = EnsembleSpec((MLP, MLP)).to_dict()
    with pytest.raises(ConfigError, match="combine"):
        EnsembleSpec.from_dict({**blob, "combine": "majority_vote"})
