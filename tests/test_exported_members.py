"""The public API is exactly what ``dai_swarm.__all__`` says."""

import types

import dai_swarm
import dai_swarm.errors as errors


def test_all_is_sorted_and_complete():
    # sub-modules and sub-packages are reachable as attributes but are not re-exported names
    public = {
        name
        for name in dir(dai_swarm)
        if not name.startswith("_") and not isinstance(getattr(dai_swarm, name), types.ModuleType)
    }
    public |= {"__version__"}
    assert sorted(dai_swarm.__all__) == dai_swarm.__all__
    assert set(dai_swarm.__all__) == public


def test_every_error_derives_from_swarm_error():
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.SwarmError), name
        assert cls.__doc__, f"{name} has no docstring"
        assert getattr(dai_swarm, name) is cls
