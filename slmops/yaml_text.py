"""YAML for recipes and configs, read as people write it: `1e-3` is a number (YAML 1.2), not the string PyYAML's
YAML 1.1 rules make of an exponent without a dot. PyYAML is imported on first use (the agent never needs it)."""
from __future__ import annotations

import re

_FLOAT = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X)
_LOADER = None


def load_yaml(text: str):
    """yaml.safe_load, with YAML 1.2's floats."""
    global _LOADER
    import yaml

    if _LOADER is None:
        class Loader(yaml.SafeLoader):
            pass
        Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
        Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))
        _LOADER = Loader
    return yaml.load(text, Loader=_LOADER)
